"""The Gramian engine (`compile(jacobian="gramian")`, TensorFlow): `J Jᵀ`
without J.

For a balancer whose weights depend only on the Gramian (a
`GramianBalancer`), J itself is never needed: the step needs `G = J Jᵀ`
(K×K) for the weights and `wᵀJ = ∇ Σ w_k L_k` (one backward pass) for the
update. `G` is a sum over the shared variables of their K×K blocks, and for
a layer computing `z = x W` the block of `W` follows from the layer's input
and the per-task gradients of its output, without any per-task gradient of
`W`: with `X` (N×I) the layer's inputs over the N examples (or positions,
or patches) and `Δ_k` (N×O) task k's gradients of `z`,
`g_k = Xᵀ Δ_k`, so

    G_kl = ⟨Xᵀ Δ_k, Xᵀ Δ_l⟩ = Σ_{n,m} (x_n·x_m) (δ_kn·δ_lm)
         = ⟨Δ_k, (X Xᵀ) Δ_l⟩.

That is `(N²(I + K·O) + K²·N·O)` multiply-adds against `K·N·I·O + K²·I·O`
for forming the K gradients of `W` and their Gramian: far fewer whenever
N (the batch) is small against the layer's width. When it is not (a
convolution over many positions) the layer's K gradients are formed from
`X` and `Δ` for that layer alone and dropped after its block. Handled this
way: `Dense`, `EinsumDense` (equations of the form batch·contracted,
contracted·free → batch·free), `Embedding` (`X Xᵀ` is then the equality of
the ids), `Conv1D` and `Conv2D` (channels last, one group; `X` are the
patches). The layer must be called once, in the model's own functional
graph; its activation is read from its output (ReLU) or recomputed from its
input (any other elementwise activation). Every other shared variable (a
bias, a normalisation's scale and offset, a layer of a nested model, a
`MultiHeadAttention`'s projections) gets its block from its own per-task
gradients, which are held only for those variables.

The K backward passes go to the layers' outputs (and those variables) only,
not to the kernels, so they skip the weight-gradient products as well.
TensorFlow only, one replica, for now.
"""

from __future__ import annotations

import weakref
from typing import Any

import keras
import tensorflow as tf

#: The layer types whose kernel block is formed from inputs and output
#: gradients (exact types: a subclass may compute something else).
FACTORED_LAYERS = (
    keras.layers.Dense,
    keras.layers.EinsumDense,
    keras.layers.Embedding,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
)

_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def gramian_needs_loop_error(balancer) -> ValueError:
    """The error for a balancer that needs J itself under the Gramian engine."""
    return ValueError(
        f"{type(balancer).__name__} computes its update from J itself (not "
        "only from the Gramian J Jᵀ): compile with jacobian='loop' (or "
        "'pfor'); jacobian='gramian' serves the balancers whose weights "
        "depend only on the Gramian (GramianBalancer)."
    )


def _kernel_of(layer):
    """The kernel whose block can be factored, or `None`."""
    kind = type(layer)
    if kind not in FACTORED_LAYERS:
        return None
    if (
        getattr(layer, "lora_enabled", False)
        or getattr(layer, "quantization_mode", None) is not None
    ):
        return None
    activation = getattr(layer, "activation", None)
    if activation in (keras.activations.softmax, keras.activations.log_softmax):
        return None  # not elementwise
    if kind is keras.layers.Embedding:
        return layer.embeddings
    if kind in (keras.layers.Conv1D, keras.layers.Conv2D):
        if layer.data_format != "channels_last" or layer.groups != 1:
            return None
    if kind is keras.layers.EinsumDense and _einsum_axes(layer.equation, None) is None:
        return None
    return layer.kernel


def _layer_tensors(layer):
    """`(input, output)` of a layer called once in the functional graph,
    or `None`."""
    try:
        inputs, outputs = layer.input, layer.output
    except (AttributeError, ValueError, RuntimeError):
        return None
    if isinstance(inputs, (list, tuple, dict)) or isinstance(
        outputs, (list, tuple, dict)
    ):
        return None
    return inputs, outputs


class GramianPlan:
    """How the Gramian engine forms `J Jᵀ` for one model.

    Attributes:
        layers: The layers whose kernel block is factored.
        fallback: The other shared variables (their blocks come from their
            own per-task gradients).
        capture: A model over the same layers, `x -> [{task: output},
            [layer inputs], [layer outputs]]`, or `None` when no layer is
            factored.
    """

    def __init__(self, model):
        shared = list(model.shared_variables)
        shared_ids = {id(v) for v in shared}
        layers, inputs, outputs, factored = [], [], [], set()
        for layer in model.layers:
            kernel = _kernel_of(layer)
            if kernel is None or id(kernel) not in shared_ids:
                continue
            tensors = _layer_tensors(layer)
            if tensors is None:
                continue
            layers.append(layer)
            inputs.append(tensors[0])
            outputs.append(tensors[1])
            factored.add(id(kernel))
        self.layers = layers
        self.fallback = [v for v in shared if id(v) not in factored]
        self.capture = None
        if layers:
            named = {t: model.outputs[i] for i, t in enumerate(model.task_names)}
            self.capture = keras.Model(model.input, [named, inputs, outputs])


def plan_for(model) -> GramianPlan:
    """The model's `GramianPlan` (built once, kept while the model lives)."""
    plan = _PLANS.get(model)
    if plan is None:
        plan = GramianPlan(model)
        _PLANS[model] = plan
    return plan


def forward(model, plan: GramianPlan, x):
    """The training forward pass: `(y_pred, layer inputs, layer outputs)`."""
    if plan.capture is None:
        return model(x, training=True), [], []
    y_pred, inputs, outputs = plan.capture(x, training=True)
    return y_pred, list(inputs), list(outputs)


# ------------------------------------------------------------ the factors


def _einsum_axes(equation: str, rank):
    """`(input, kernel, output, batch, contracted, free)` letters of a
    dense-like equation (ellipsis expanded for an input of `rank`), or
    `None`."""
    try:
        lhs, out = equation.split("->")
        inp, ker = lhs.split(",")
    except ValueError:
        return None
    if "..." in inp or "..." in out:
        if rank is None:
            rank = len(inp.replace("...", "")) + 1  # a placeholder check
        spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in equation]
        dots = "".join(spare[: rank - len(inp.replace("...", ""))])
        inp, out = inp.replace("...", dots), out.replace("...", dots)
    if len(set(inp)) != len(inp) or len(set(ker)) != len(ker) or "." in ker:
        return None
    batch = [c for c in inp if c in out and c not in ker]
    contracted = [c for c in inp if c in ker and c not in out]
    free = [c for c in ker if c in out and c not in inp]
    if (
        set(inp) != set(batch) | set(contracted)
        or set(ker) != set(contracted) | set(free)
        or set(out) != set(batch) | set(free)
        or len(out) != len(set(out))
    ):
        return None
    return inp, ker, out, batch, contracted, free


def _pre_activation(layer, x):
    """The layer's output before its activation, recomputed from `x`."""
    kind = type(layer)
    kernel = tf.cast(layer.kernel, "float32")
    if kind is keras.layers.Dense:
        z = tf.matmul(x, kernel) if x.shape.rank == 2 else tf.tensordot(x, kernel, 1)
    elif kind is keras.layers.EinsumDense:
        z = tf.einsum(layer.equation, x, kernel)
    else:
        z = tf.cast(layer.convolution_op(x, kernel), "float32")
    bias = getattr(layer, "bias", None)
    if bias is not None:
        z = z + tf.cast(bias, "float32")
    return z


def _activation_derivative(layer, x, y):
    """`f'(z)` of the layer's elementwise activation, or `None` (linear)."""
    activation = getattr(layer, "activation", None)
    if activation is None or activation is keras.activations.linear:
        return None
    if activation is keras.activations.relu:
        return tf.cast(y > 0, "float32")
    z = tf.stop_gradient(_pre_activation(layer, x))
    with tf.GradientTape() as tape:
        tape.watch(z)
        value = activation(z)
    return tape.gradient(value, z)


def _patches(layer, x):
    """The convolution's input patches, (N, kernel size × channels in)."""
    if type(layer) is keras.layers.Conv1D:
        (width,), (stride,), (rate,) = (
            layer.kernel_size,
            layer.strides,
            layer.dilation_rate,
        )
        padding = layer.padding
        if padding == "causal":
            x = tf.pad(x, [[0, 0], [rate * (width - 1), 0], [0, 0]])
            padding = "valid"
        x = x[:, None]
        sizes, strides, rates = [1, 1, width, 1], [1, 1, stride, 1], [1, 1, rate, 1]
    else:
        sizes = [1, *layer.kernel_size, 1]
        strides = [1, *layer.strides, 1]
        rates = [1, *layer.dilation_rate, 1]
        padding = layer.padding
    patches = tf.image.extract_patches(x, sizes, strides, rates, padding.upper())
    return tf.reshape(patches, [-1, patches.shape[-1]])


def layer_factors(layer: Any, x: Any, y: Any, deltas: Any) -> tuple[Any, Any]:
    """`(X (N, I), Δ (K, N, O))` with `g_k = Xᵀ Δ_k` (up to the order of the
    kernel's entries), or for an `Embedding` `(ids (N,), Δ)`."""
    num_tasks = len(deltas)
    kind = type(layer)
    if kind is keras.layers.Embedding:
        ids = tf.reshape(tf.cast(x, "int32"), [-1])
        deltas = tf.stack([tf.cast(d, "float32") for d in deltas])
        return ids, tf.reshape(deltas, [num_tasks, -1, deltas.shape[-1]])
    x = tf.cast(x, "float32")
    deltas = tf.stack([tf.cast(d, "float32") for d in deltas])
    derivative = _activation_derivative(layer, x, tf.cast(y, "float32"))
    if derivative is not None:
        deltas = deltas * derivative[None]
    if kind is keras.layers.Dense:
        inputs = tf.reshape(x, [-1, x.shape[-1]])
        return inputs, tf.reshape(deltas, [num_tasks, -1, deltas.shape[-1]])
    if kind is keras.layers.EinsumDense:
        inp, _, out, batch, contracted, free = _einsum_axes(
            layer.equation, x.shape.rank
        )
        width_in = 1
        for c in contracted:
            width_in *= x.shape[inp.index(c)]
        inputs = tf.reshape(
            tf.transpose(x, [inp.index(c) for c in batch + contracted]), [-1, width_in]
        )
        order = [0] + [1 + out.index(c) for c in batch + free]
        width_out = 1
        for c in free:
            width_out *= deltas.shape[1 + out.index(c)]
        deltas = tf.reshape(tf.transpose(deltas, order), [num_tasks, -1, width_out])
        return inputs, deltas
    return _patches(layer, x), tf.reshape(deltas, [num_tasks, -1, deltas.shape[-1]])


def _choose(cheaper_first, first, second):
    """`first()` if `cheaper_first` (a bool or a scalar tensor) else
    `second()`."""
    if isinstance(cheaper_first, bool):
        return first() if cheaper_first else second()
    return tf.cond(cheaper_first, first, second)


def factored_gramian(inputs, deltas, vocabulary: int | None = None):
    """The K×K block of one kernel from its factors (see `layer_factors`);
    `vocabulary` for an `Embedding` (then `inputs` are its ids)."""
    num_tasks, width_out = deltas.shape[0], deltas.shape[-1]
    count = inputs.shape[0]
    if count is None:
        count = tf.cast(tf.shape(inputs)[0], "float64")
    width_in = 1 if vocabulary is not None else inputs.shape[-1]
    kernel_size = (vocabulary or width_in) * width_out
    factored_cost = (
        count * count * (width_in + num_tasks * width_out)
        + num_tasks * num_tasks * count * width_out
    )
    direct_cost = (
        num_tasks * count * (1 if vocabulary else width_in) * width_out
        + num_tasks * num_tasks * kernel_size
    )
    flat = tf.reshape(deltas, [num_tasks, -1])

    def factored():
        if vocabulary is not None:
            products = tf.cast(tf.equal(inputs[:, None], inputs[None, :]), "float32")
        else:
            products = tf.matmul(inputs, inputs, transpose_b=True)
        mixed = tf.einsum("nm,kmo->kno", products, deltas)
        return tf.matmul(flat, tf.reshape(mixed, [num_tasks, -1]), transpose_b=True)

    def direct():
        if vocabulary is not None:
            grads = tf.math.unsorted_segment_sum(
                tf.transpose(deltas, [1, 0, 2]), inputs, vocabulary
            )
            grads = tf.reshape(tf.transpose(grads, [1, 0, 2]), [num_tasks, -1])
        else:
            grads = tf.reshape(
                tf.einsum("ni,kno->kio", inputs, deltas), [num_tasks, -1]
            )
        return tf.matmul(grads, grads, transpose_b=True)

    return _choose(factored_cost <= direct_cost, factored, direct)


def gramian(
    plan: GramianPlan,
    inputs,
    outputs,
    tape,
    task_losses,
    loss_scale=1.0,
    fallback_gramian=None,
):
    """`J Jᵀ` of the loss-scaled task gradients over the shared variables.

    Args:
        plan: The model's `GramianPlan`.
        inputs, outputs: The factored layers' inputs and outputs, recorded
            on `tape` by `forward`.
        tape: The persistent tape of the forward pass.
        task_losses: The K scalar task losses recorded on the tape.
        loss_scale: The seed of the backward passes.
        fallback_gramian: `f(rows) -> (K, K)`: the Gramian of the other
            variables from their per-task gradients `rows[k][v]`.
    """
    targets = list(outputs) + list(plan.fallback)
    deltas, rows = [], []
    for loss in task_losses:
        grads = tape.gradient(
            loss, targets, output_gradients=tf.cast(loss_scale, loss.dtype)
        )
        grads = [tf.zeros_like(t) if g is None else g for g, t in zip(grads, targets)]
        deltas.append(grads[: len(outputs)])
        rows.append(
            [tf.reshape(tf.cast(g, "float32"), [-1]) for g in grads[len(outputs) :]]
        )
    num_tasks = len(task_losses)
    total = tf.zeros((num_tasks, num_tasks), "float32")
    if plan.fallback:
        total = fallback_gramian(rows)
    # One layer at a time: each layer's factors wait for the previous sum.
    for i, layer in enumerate(plan.layers):
        with tf.control_dependencies([total]):
            factors = layer_factors(
                layer, inputs[i], outputs[i], [d[i] for d in deltas]
            )
            vocabulary = (
                layer.input_dim if type(layer) is keras.layers.Embedding else None
            )
            layer_inputs, layer_deltas = factors
            total = total + factored_gramian(
                layer_inputs, layer_deltas, vocabulary=vocabulary
            )
    return total
