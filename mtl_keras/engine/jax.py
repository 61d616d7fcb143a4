"""The gradient engine on JAX: what differs from the neutral core.

Keras' JAX trainer is stateless: `train_step(state, data)` gets the values
of every variable and returns new ones. Here J comes from one `jax.vjp` of
the task losses, pulled back K times (a loop of VJPs, or `jax.vmap` over
the VJP); the balancer runs as a pure function of its state
(`stateless_update`) inside `ops.cond`. Under `keras.distribution` arrays
are global, so there is no replica reduction to do.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import keras
from keras import ops

from mtl_keras import _compat
from mtl_keras.balancers.base import GradientBalancer, GramianBalancer
from mtl_keras.engine import amortise, core
from mtl_keras.engine.backend import check_jacobian_method
from mtl_keras.engine.core import BalancedGradients


def replica_mean(value):
    """`value` itself: JAX arrays are global under `keras.distribution`."""
    return value


def jacobian_blocks(vjp_fn, num_tasks: int, loss_scale=1.0,
                    method: str = "loop") -> list:
    """J as blocks, one (K, P_v) float32 matrix per shared value, from a VJP
    of `(losses, regularization)`; `vjp_fn` maps cotangents `((K,), ())`
    to `(shared, heads)` cotangents."""
    seeds = jnp.eye(num_tasks, dtype="float32") * loss_scale
    zero = jnp.zeros((), "float32")
    if method == "pfor":
        stacked = jax.vmap(lambda seed: vjp_fn((seed, zero))[0])(seeds)
    else:
        rows = [vjp_fn((seeds[k], zero))[0] for k in range(num_tasks)]
        stacked = [jnp.stack(per_task) for per_task in zip(*rows)]
    return [jnp.reshape(b.astype("float32"), (num_tasks, -1)) for b in stacked]


def task_gradient_rows(vjp_fn, num_tasks: int, loss_scale=1.0) -> list:
    """The K per-task gradients, `rows[k][v]` (float32, the shape of shared
    value v), from K pull-backs of `vjp_fn`; nothing is stacked."""
    zero = jnp.zeros((), "float32")
    rows = []
    for k in range(num_tasks):
        seed = jnp.zeros((num_tasks,), "float32").at[k].set(loss_scale)
        rows.append([g.astype("float32") for g in vjp_fn((seed, zero))[0]])
    return rows


#: Up to this many tasks the loop engine forms `J Jᵀ` from inner products of
#: the rows; above it, from stacks: of whole values while J holds at most
#: `WHOLE_STACKS_MAX_BYTES` (rep mode's J), else of column chunks. Measured
#: on 2 CPU cores, UPGrad on a 7.35M-parameter MLP, step ms (inner products
#: / column chunks): K = 16: 396 / 315, K = 32: 1576 / 678 (whole values:
#: 1119); XLA's temporary buffers over plain's (`memory_analysis`), in |J|:
#: inner products 0.55× at K = 8 and 0.58× at K = 32 (XLA interleaves the K
#: backward passes layer by layer and frees each layer's K gradients after
#: their products), column chunks 1.10× at K = 32 (whole values 1.56×);
#: inner products compile twice as long at K = 32. MGDA-UB in rep mode at
#: K = 32 (J of 8 MB): whole values compile in 5.3 s and step in 17 ms,
#: column chunks take 9.5 s and 43 ms.
PAIRWISE_MAX_TASKS = 16
WHOLE_STACKS_MAX_BYTES = 2**26


def gramian_of_rows(rows, whole_stacks_max_bytes: int = WHOLE_STACKS_MAX_BYTES):
    """`J Jᵀ` from the per-task gradients: one inner product per pair of
    tasks and value for up to `PAIRWISE_MAX_TASKS` tasks; above, one (K,
    P_v) stack per value for a J of at most `whole_stacks_max_bytes`, else
    one (K, chunk) stack of the rows' columns at a time
    (`core.column_chunks`)."""
    num_tasks = len(rows)
    if num_tasks <= PAIRWISE_MAX_TASKS:
        return _gramian_of_pairs(rows)
    sizes = [g.size for g in rows[0]]
    if num_tasks * sum(sizes) * 4 <= whole_stacks_max_bytes:
        return sum(core.gramian_of(jnp.reshape(jnp.stack(per_value), (num_tasks, -1)))
                   for per_value in zip(*rows))
    flat = [[jnp.reshape(g, (-1,)) for g in row] for row in rows]
    return sum(
        core.gramian_of(jnp.stack([row[v][start:start + size] for row in flat]))
        for v, start, size in core.column_chunks(sizes))


def _gramian_of_pairs(rows):
    num_tasks = len(rows)
    entries = {}
    for i in range(num_tasks):
        for j in range(i, num_tasks):
            entries[i, j] = sum(jnp.vdot(a, b) for a, b in zip(rows[i], rows[j]))
    return jnp.stack([
        jnp.stack([entries[min(i, j), max(i, j)] for j in range(num_tasks)])
        for i in range(num_tasks)])


def _shared_step(vjp_fn, task_losses, runner, loss_scale,
                 jacobian) -> core.SharedStep:
    """J from the VJP, the balancer and the shared update; `runner` is the
    balancer or an `amortise.UpdateEvery` around it. `vjp_fn` maps
    cotangents `((K,), ())` to `(shared, heads)` ones. The update is `None`
    where it is `wᵀJ` (the caller pulls the weights back once)."""
    scale = 1.0 if loss_scale is None else ops.cast(loss_scale, "float32")
    task_losses = ops.cast(task_losses, "float32")
    runner.ensure_built(task_losses)
    amortised = isinstance(runner, amortise.UpdateEvery)
    balancer = runner.balancer if amortised else runner
    if jacobian == "loop" and isinstance(balancer, GramianBalancer):
        refresh = _refresh_from_rows(vjp_fn, task_losses, balancer, loss_scale,
                                     scale)
    else:
        refresh = _refresh_from_blocks(vjp_fn, task_losses, balancer,
                                       loss_scale, scale, jacobian)
    if not amortised:
        return core.every_step(balancer, refresh)
    return runner.step(refresh, lambda weights: _reused_update(
        vjp_fn, weights, task_losses, loss_scale, scale))


def _refresh_from_blocks(vjp_fn, task_losses, balancer, loss_scale, scale,
                         jacobian):
    """`refresh(state) -> (SharedStep, new_state)` from J as (K, P_v)
    blocks (any balancer, `jacobian` `"loop"` or `"pfor"`)."""

    def refresh(state):
        blocks = jacobian_blocks(vjp_fn, task_losses.shape[0], scale, jacobian)
        rows_finite = core.rows_finite(blocks)
        grads_finite = True if loss_scale is not None else rows_finite
        finite_tasks = core.finite_task_flags(task_losses, grads_finite)
        usable = ops.logical_and(ops.all(finite_tasks), ops.all(rows_finite))
        update, weights, gramian, new_state = core.guarded_balance(
            balancer, state, ops.stop_gradient(task_losses), blocks, usable, scale)
        return core.SharedStep(update, weights, gramian, finite_tasks,
                               usable), new_state

    return refresh


def _refresh_from_rows(vjp_fn, task_losses, balancer, loss_scale, scale):
    """`refresh(state) -> (SharedStep, new_state)` for a `GramianBalancer`
    on the loop engine: the K per-task gradients, their Gramian, the
    weights; the update is left to the caller's pull-back of the weights,
    after which nothing reads the rows (XLA frees them: J is held once)."""

    def refresh(state):
        rows = task_gradient_rows(vjp_fn, task_losses.shape[0], scale)
        return core.weights_from_gramian(
            balancer, state, task_losses, ops.stop_gradient(task_losses),
            gramian_of_rows(rows), loss_scale is not None, scale)

    return refresh


def _reused_update(vjp_fn, weights, task_losses, loss_scale, scale):
    """`(update, finite_tasks)`: the pull-back of cached weights, `wᵀJ`
    (flat float32 blocks), checked for finite values unless a loss scaler
    checks them."""
    grads = vjp_fn((weights * scale, jnp.zeros((), "float32")))[0]
    update = [jnp.reshape(g.astype("float32"), (-1,)) for g in grads]
    grads_finite = True if loss_scale is not None else core.gradients_finite(update)
    return update, core.finite_task_flags(task_losses, grads_finite)


def _with_update(step: core.SharedStep, pulled) -> core.SharedStep:
    """`step` with its update: `pulled` (the weights' pull-back, `wᵀJ`)
    where the step left it `None` (its finite flags came from the
    Gramian)."""
    if step.update is not None:
        return step
    return step._replace(
        update=[jnp.reshape(g.astype("float32"), (-1,)) for g in pulled])


def _balanced_step(loss_fn, shared_values, head_values, balancer, loss_scale,
                   jacobian, has_regularization=False):
    """The engine on values. `loss_fn(shared, heads)` returns
    `((task_losses (K,), regularization ()), aux)`."""
    (task_losses, regularization), vjp_fn, aux = jax.vjp(
        loss_fn, list(shared_values), list(head_values), has_aux=True)
    del regularization
    step = _shared_step(vjp_fn, task_losses, balancer, loss_scale, jacobian)
    weights = step.weights
    # Heads: one more pull-back, weights held constant; its shared part is
    # the update where the step left it to us (else XLA drops it).
    scale = 1.0 if loss_scale is None else ops.cast(loss_scale, "float32")
    pulled_shared, head_grads = vjp_fn((weights * scale, jnp.zeros((), "float32")))
    step = _with_update(step, pulled_shared)
    shared_grads = [jnp.reshape(u, v.shape).astype(v.dtype)
                    for u, v in zip(step.update, shared_values)]
    if callable(has_regularization):
        has_regularization = has_regularization()
    if has_regularization:
        shared_reg, head_reg = vjp_fn(
            (jnp.zeros_like(weights), jnp.asarray(scale, "float32")))
        shared_grads = [s + r for s, r in zip(shared_grads, shared_reg)]
        head_grads = [h + r for h, r in zip(head_grads, head_reg)]
    result = BalancedGradients(
        grads=list(shared_grads) + list(head_grads), weights=weights,
        gramian=step.gramian, finite_tasks=step.finite_tasks,
        balanced=step.balanced)
    return result, aux


def _rep_balanced_step(trunk_fn, heads_fn, shared_values, head_values, balancer,
                       loss_scale, jacobian):
    """The engine over the shared representation (`mode="rep"`), on values.

    `trunk_fn(shared) -> (representations (list), trunk_aux)`;
    `heads_fn(representations, heads, trunk_aux) -> (task_losses (K,), aux)`
    (`trunk_aux` leaves the trunk's VJP as an output, e.g. the batch
    statistics the trunk updated: a closure would leak its tracers). J is
    taken over the representations (K VJPs of the heads only), the
    balanced update is pulled back through the trunk in one VJP, and the
    heads get the gradient of `Σ w_k L_k`. Returns `(BalancedGradients,
    trunk_aux, aux)`.
    """
    representations, trunk_vjp, trunk_aux = jax.vjp(
        trunk_fn, list(shared_values), has_aux=True)

    def losses_and_zero(reps, heads):
        task_losses, aux = heads_fn(reps, heads, trunk_aux)
        return (task_losses, jnp.zeros((), "float32")), aux

    (task_losses, _), heads_vjp, aux = jax.vjp(
        losses_and_zero, list(representations), list(head_values), has_aux=True)
    step = _shared_step(heads_vjp, task_losses, balancer, loss_scale, jacobian)
    scale = 1.0 if loss_scale is None else ops.cast(loss_scale, "float32")
    pulled_reps, head_grads = heads_vjp(
        (step.weights * scale, jnp.zeros((), "float32")))
    step = _with_update(step, pulled_reps)
    # One update block per representation, pulled back through the trunk.
    (shared_grads,) = trunk_vjp([jnp.reshape(u, r.shape).astype(r.dtype)
                                 for u, r in zip(step.update, representations)])
    result = BalancedGradients(
        grads=list(shared_grads) + list(head_grads), weights=step.weights,
        gramian=step.gramian, finite_tasks=step.finite_tasks,
        balanced=step.balanced)
    return result, trunk_aux, aux


def balanced_gradients(
    loss_fn,
    shared_values: list,
    head_values: list,
    balancer: GradientBalancer,
    *,
    representation=None,
    loss_scale=None,
    jacobian: str = "loop",
) -> BalancedGradients:
    """Balanced gradients of several task losses, on JAX (functional).

    The JAX counterpart of `mtl_keras.engine.tensorflow.balanced_gradients`:
    instead of a tape it takes functions of the values. The balancer's
    state is read from and assigned to its variables, so inside a jitted
    function wrap the call in a `keras.StatelessScope` mapping
    `balancer.non_trainable_variables` to their values.

    For a `mode="rep"` balancer (e.g. `"mgda_ub"`), split the forward pass
    at the shared representation: `representation(shared_values)` runs the
    trunk and returns the representation (an array or a list of arrays),
    and `loss_fn(representation, head_values)` runs the heads. J is then
    taken over the representation and the balanced update pulled back
    through the trunk with one VJP (the JAX form of TensorFlow's
    `representation=` tensor on the tape).

    Args:
        loss_fn: `loss_fn(shared_values, head_values) -> task_losses (K,)`,
            or `loss_fn(representation, head_values)` with `representation`.
        shared_values: The shared parameters (arrays).
        head_values: The other parameters.
        balancer: A gradient balancer (or its name), or an
            `mtl_keras.engine.UpdateEvery` around one.
        representation: For `mode="rep"` balancers (required there):
            `representation(shared_values) -> array or list of arrays`.
        loss_scale: An optional loss scale multiplying every gradient.
        jacobian: `"loop"` (K VJPs) or `"pfor"` (`jax.vmap` over the VJP).

    Returns:
        `BalancedGradients`, `grads` in `shared_values + head_values` order.

    Example (with `KERAS_BACKEND=jax`; MGDA-UB in a plain JAX loop):

    ```python
    import jax.numpy as jnp
    import numpy as np
    import mtl_keras

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, 4)), "float32")
    targets = [x[:, :1], -x[:, 1:2]]
    shared = [jnp.asarray(rng.normal(size=(4, 8)) * 0.5, "float32")]
    heads = [jnp.zeros((8, 1)), jnp.zeros((8, 1))]
    balancer = mtl_keras.balancers.get("mgda_ub")

    def trunk(shared_values):
        return jnp.tanh(x @ shared_values[0])

    def task_losses(features, head_values):
        return jnp.stack([jnp.mean((features @ h - t) ** 2)
                          for h, t in zip(head_values, targets)])

    for step in range(20):
        result = mtl_keras.engine.balanced_gradients(
            task_losses, shared, heads, balancer, representation=trunk)
        new_values = [v - 0.1 * g for v, g in zip(shared + heads, result.grads)]
        shared, heads = new_values[:1], new_values[1:]
    ```
    """
    balancer, runner = amortise.resolve(balancer)
    _check_balancer(balancer, jacobian, has_representation=representation is not None)
    if representation is not None:
        return _balanced_over_representation(
            loss_fn, representation, shared_values, head_values, runner,
            loss_scale, jacobian)
    balancer.build_for_jacobian(sum(int(v.size) for v in shared_values))

    def losses_and_zero(shared, heads):
        return (loss_fn(shared, heads), jnp.zeros((), "float32")), None

    return _balanced_step(losses_and_zero, shared_values, head_values, runner,
                          loss_scale, jacobian)[0]


def _balanced_over_representation(loss_fn, representation, shared_values,
                                  head_values, balancer, loss_scale, jacobian):
    single = []  # whether `representation` returns one array (set on trace)

    def trunk_fn(shared):
        features = representation(shared)
        single.append(not isinstance(features, (list, tuple)))
        return ([features] if single[0] else list(features)), None

    def heads_fn(features, heads, trunk_aux):
        del trunk_aux
        return loss_fn(features[0] if single[0] else features, heads), None

    return _rep_balanced_step(trunk_fn, heads_fn, shared_values, head_values,
                              balancer, loss_scale, jacobian)[0]


def _check_balancer(balancer, jacobian: str, has_representation: bool = False) -> None:
    if not isinstance(balancer, GradientBalancer):
        raise ValueError(
            f"balanced_gradients needs a gradient balancer, got {balancer!r}.")
    check_jacobian_method(jacobian)
    if balancer.mode == "rep" and not has_representation:
        raise ValueError(
            f"{type(balancer).__name__}(mode='rep') differentiates with respect "
            "to the shared representation: pass `representation=` (a function "
            "`representation(shared_values) -> array(s)`, with "
            "`loss_fn(representation, head_values)`).")


class _Values(NamedTuple):
    """What `core.train_step` threads through a JAX step: the values."""

    trainable: list
    non_trainable: list
    optimizer: list
    loss_scale: object


class _Forward(NamedTuple):
    y_pred: object
    task_losses: object
    weighted: object
    regularization: object
    total: object
    balance: object
    non_trainable: list


class JaxTrainer:
    """`MultiTaskModel`'s stateless train step on JAX.

    `train_step(state, data) -> (logs, state)` as Keras' JAX trainer
    expects: `core.train_step` over the JAX pieces
    (`mtl_keras.engine.backend.StepPieces`), threading the variables'
    values; the model's own bookkeeping (`record_train_step`) runs under a
    `keras.StatelessScope` whose updates become the new state.

    Args:
        model: The `MultiTaskModel` to train.
    """

    def __init__(self, model):
        self.model = model
        self.has_regularization = False

    # ------------------------------------------------------------ pieces

    def forward(self, trainable, non_trainable, x, y, sample_weight,
                training=True) -> _Forward:
        """The task losses as a pure function of the variables' values."""
        model = self.model
        mapping = (list(zip(model.trainable_variables, trainable))
                   + list(zip(model.non_trainable_variables, non_trainable)))
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            y_pred = model(x, training=training)
            task_losses = ops.stack(
                model.compute_task_loss_list(y, y_pred, sample_weight))
            weighted = model.task_weights(task_losses)
            # Known at trace time; read by the engine after the VJP.
            self.has_regularization = bool(model.losses)
            regularization = model.regularization_loss()
            total, balance = model.balanced_total(weighted)
            total = total + regularization
        new_non_trainable = _current_values(
            scope, model.non_trainable_variables, non_trainable)
        return _Forward(y_pred, task_losses, weighted, regularization, total,
                        balance, new_non_trainable)

    def loss_scale(self, optimizer_values):
        optimizer = self.model.optimizer
        if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            return None
        mapping = list(zip(optimizer.variables, optimizer_values))
        with keras.StatelessScope(state_mapping=mapping):
            return ops.cast(optimizer.scale_loss(ops.ones(())), "float32")

    def apply_if_finite(self, values, finite, grads) -> _Values:
        """The optimizer's step on the values, kept only when `finite`."""
        new_trainable, new_optimizer = self.model.optimizer.stateless_apply(
            values.optimizer, grads, values.trainable)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        return values._replace(
            trainable=[keep(n, o) for n, o in zip(new_trainable, values.trainable)],
            optimizer=[keep(n, o) for n, o in zip(new_optimizer, values.optimizer)])

    # ------------------------------------------------------------ the step

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_values, metrics_values = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        values = _Values(trainable, non_trainable, optimizer_values,
                         self.loss_scale(optimizer_values))
        step, values = core.train_step(self, self.model.balancer, values, x, y,
                                       sample_weight)
        logs, non_trainable, metrics_values = self.finish(
            x, y, sample_weight, step, values.non_trainable, metrics_values)
        return logs, (values.trainable, non_trainable, values.optimizer,
                      metrics_values)

    def state_before(self, values) -> list:
        """The non-trainable values the step starts from."""
        return values.non_trainable

    def loss_step(self, values, x, y, sample_weight):
        trainable, non_trainable, _, loss_scale = values
        scale = 1.0 if loss_scale is None else loss_scale

        def scaled_total(values):
            forward = self.forward(values, non_trainable, x, y, sample_weight)
            return forward.total * scale, forward

        (_, forward), grads = jax.value_and_grad(scaled_total, has_aux=True)(
            list(trainable))
        grads_finite = True
        if loss_scale is None:
            grads_finite = core.gradients_finite(grads)
        finite_tasks = core.finite_task_flags(forward.task_losses, grads_finite)
        step = core.TrainStep(
            y_pred=forward.y_pred, task_losses=forward.task_losses,
            balance=forward.balance,
            loss=ops.sum(forward.weighted) + forward.regularization,
            balanced_loss=forward.total, finite_tasks=finite_tasks)
        return (step, grads, forward.weighted,
                values._replace(non_trainable=forward.non_trainable))

    def gradient_step(self, values, x, y, sample_weight):
        model = self.model
        if model.balancer.mode == "rep":
            return self.rep_gradient_step(values, x, y, sample_weight)
        trainable, non_trainable, _, loss_scale = values
        _check_balancer(model.balancer, model.jacobian_method)
        runner = model.update_schedule or model.balancer
        shared_ids = {id(v) for v in model.shared_variables}
        is_shared = [id(v) in shared_ids for v in model.trainable_variables]
        shared = [t for t, s in zip(trainable, is_shared) if s]
        heads = [t for t, s in zip(trainable, is_shared) if not s]

        def losses(shared_values, head_values):
            shared_iter, head_iter = iter(shared_values), iter(head_values)
            values = [next(shared_iter) if s else next(head_iter) for s in is_shared]
            forward = self.forward(values, non_trainable, x, y, sample_weight)
            return (forward.weighted, forward.regularization), forward

        mapping = list(zip(model.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            result, forward = _balanced_step(
                losses, shared, heads, runner, loss_scale,
                model.jacobian_method,
                has_regularization=lambda: self.has_regularization)
            balancer_values = _current_values(
                scope, model.non_trainable_variables, non_trainable)
        # Forward-pass updates (batch statistics, seeds), then the
        # balancer's new state.
        balancer_ids = {id(v) for v in amortise.runner_variables(runner)}
        non_trainable = [
            b if id(v) in balancer_ids else f
            for v, f, b in zip(model.non_trainable_variables,
                               forward.non_trainable, balancer_values)]
        shared_grads = iter(result.grads[:len(shared)])
        head_grads = iter(result.grads[len(shared):])
        grads = [next(shared_grads) if s else next(head_grads) for s in is_shared]
        step = core.TrainStep(
            y_pred=forward.y_pred, task_losses=forward.task_losses,
            balance=result.weights,
            loss=ops.sum(forward.weighted) + forward.regularization,
            balanced_loss=(ops.sum(result.weights * forward.weighted)
                           + forward.regularization),
            finite_tasks=result.finite_tasks,
            gramian=result.gramian, balanced=result.balanced)
        return (step, grads, forward.weighted,
                values._replace(non_trainable=non_trainable))

    def rep_gradient_step(self, values, x, y, sample_weight):
        """`mode="rep"` (MGDA-UB): J over the shared representation.

        The forward is split at `shared=` into a trunk (inputs → the shared
        tensor(s)) and heads (inputs and shared tensor(s) → outputs), both
        functional views over the model's own layers: K VJPs through the
        heads give J, one VJP through the trunk pulls back the balanced
        update. Regularization gets its own gradient.
        """
        model = self.model
        trainable, non_trainable, _, loss_scale = values
        _check_balancer(model.balancer, model.jacobian_method,
                        has_representation=True)
        runner = model.update_schedule or model.balancer
        trunk_model, heads_model = self._split_models()
        # Arrays, not NumPy: a functional call refuses a mix of the two.
        x = keras.tree.map_structure(ops.convert_to_tensor, x)
        shared_ids = {id(v) for v in model.shared_variables}
        is_shared = [id(v) in shared_ids for v in model.trainable_variables]
        shared = [t for t, s in zip(trainable, is_shared) if s]
        heads = [t for t, s in zip(trainable, is_shared) if not s]

        def scope_for(shared_values, head_values, non_trainable_values):
            shared_iter, head_iter = iter(shared_values), iter(head_values)
            values = [next(shared_iter) if s else next(head_iter) for s in is_shared]
            mapping = (list(zip(model.trainable_variables, values))
                       + list(zip(model.non_trainable_variables,
                                  non_trainable_values)))
            return keras.StatelessScope(state_mapping=mapping)

        def trunk_fn(shared_values):
            with scope_for(shared_values, heads, non_trainable) as scope:
                features = keras.tree.flatten(trunk_model(x, training=True))
            # The non-trainable values after the trunk's pass.
            return features, _current_values(
                scope, model.non_trainable_variables, non_trainable)

        def heads_fn(features, head_values, after_trunk):
            with scope_for(shared, head_values, after_trunk) as scope:
                y_pred = heads_model([x, features], training=True)
                task_losses = ops.stack(
                    model.compute_task_loss_list(y, y_pred, sample_weight))
                weighted = model.task_weights(task_losses)
            forward_values = _current_values(
                scope, model.non_trainable_variables, after_trunk)
            return weighted, (y_pred, task_losses, weighted, forward_values)

        mapping = list(zip(model.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            result, _, aux = _rep_balanced_step(
                trunk_fn, heads_fn, shared, heads, runner, loss_scale,
                model.jacobian_method)
            balancer_values = _current_values(
                scope, model.non_trainable_variables, non_trainable)
        y_pred, task_losses, weighted, forward_values = aux
        regularization, regularization_grads = self.regularization_gradients(
            trainable, non_trainable, x, loss_scale)
        balancer_ids = {id(v) for v in amortise.runner_variables(runner)}
        non_trainable = [
            b if id(v) in balancer_ids else f
            for v, f, b in zip(model.non_trainable_variables, forward_values,
                               balancer_values)]
        shared_grads = iter(result.grads[:len(shared)])
        head_grads = iter(result.grads[len(shared):])
        grads = [next(shared_grads) if s else next(head_grads) for s in is_shared]
        if regularization_grads is not None:
            grads = [g + r for g, r in zip(grads, regularization_grads)]
        step = core.TrainStep(
            y_pred=y_pred, task_losses=task_losses, balance=result.weights,
            loss=ops.sum(weighted) + regularization,
            balanced_loss=ops.sum(result.weights * weighted) + regularization,
            finite_tasks=result.finite_tasks,
            gramian=result.gramian, balanced=result.balanced)
        return step, grads, weighted, values._replace(non_trainable=non_trainable)

    def regularization_gradients(self, trainable, non_trainable, x, loss_scale):
        """`(regularization, its (loss-scaled) gradients or None)`.

        The model's `losses` (weight and activity regularizers) as a
        function of the trainable values; without regularizers the
        gradients are `None`.
        """
        model = self.model
        has_losses = []  # known once traced

        def regularization_fn(values):
            mapping = (list(zip(model.trainable_variables, values))
                       + list(zip(model.non_trainable_variables, non_trainable)))
            with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
                model(x, training=True)
                has_losses.append(bool(model.losses))
                return model.regularization_loss()

        regularization, vjp_fn = jax.vjp(regularization_fn, list(trainable))
        if not has_losses[0]:
            return regularization, None
        scale = 1.0 if loss_scale is None else loss_scale
        (grads,) = vjp_fn(jnp.asarray(scale, regularization.dtype))
        return regularization, grads

    def _split_models(self):
        """`(trunk, heads)`: functional views of the model cut at `shared=`."""
        if getattr(self, "_split", None) is None:
            model = self.model
            model.representation_model()  # a clear error without `shared=`
            shared = keras.tree.flatten(model.shared_tensors)
            task_outputs = {t: model.outputs[i]
                            for i, t in enumerate(model.task_names)}
            trunk = keras.Model(model.input, shared)
            heads = keras.Model([model.input, shared], task_outputs)
            self._split = (trunk, heads)
        return self._split

    def post_step_update(self, values, before, x, y, sample_weight,
                         losses_before, finite) -> _Values:
        """FAMO-style: the same batch's losses after the optimizer step.

        The second forward pass runs in training mode from `before` (the
        non-trainable values the step started from: the step's own dropout
        masks) with the updated trainable values, and its new state is
        dropped (no second batch-norm update), so the two losses differ only
        by the optimizer's update. The balancer's update lands on the step's
        non-trainable values.
        """
        model = self.model
        non_trainable = values.non_trainable
        after = self.forward(values.trainable, before, x, y, sample_weight).weighted
        losses_before = ops.stop_gradient(losses_before)
        apply = ops.logical_and(finite, ops.all(ops.isfinite(after)))
        mapping = list(zip(model.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            core.guarded_post_step(model.balancer, losses_before, after, apply)
        return values._replace(non_trainable=_current_values(
            scope, model.non_trainable_variables, non_trainable))

    def test_step(self, state, data):
        """`(logs, state)`: the model's `record_test_step`, statelessly."""
        model = self.model
        trainable, non_trainable, metrics_values = state
        mapping = (list(zip(model.trainable_variables, trainable))
                   + list(zip(model.non_trainable_variables, non_trainable))
                   + list(zip(model.metrics_variables, metrics_values)))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = model.record_test_step(data)
        return logs, (
            trainable,
            _current_values(scope, model.non_trainable_variables, non_trainable),
            _current_values(scope, model.metrics_variables, metrics_values))

    def finish(self, x, y, sample_weight, step, non_trainable, metrics_values):
        """The model's bookkeeping, statelessly: `(logs, non_trainable,
        metrics)`."""
        model = self.model
        mapping = (list(zip(model.non_trainable_variables, non_trainable))
                   + list(zip(model.metrics_variables, metrics_values)))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = model.record_train_step(x, y, sample_weight, step)
        return (logs,
                _current_values(scope, model.non_trainable_variables, non_trainable),
                _current_values(scope, model.metrics_variables, metrics_values))


def _current_values(scope, variables, defaults) -> list:
    values = []
    for variable, default in zip(variables, defaults):
        value = scope.get_current_value(variable)
        values.append(default if value is None else value)
    return values


class JaxBackend:
    """The JAX engine, as registered (`mtl_keras.engine.get_backend`)."""

    name = "jax"
    trainer = staticmethod(JaxTrainer)
    replica_mean = staticmethod(replica_mean)
    balanced_gradients = staticmethod(balanced_gradients)

    @staticmethod
    def values_guard() -> keras.callbacks.Callback:
        """A `_compat.JaxValuesGuard`: Keras' JAX trainer detaches the
        variables' values while a loop runs."""
        return _compat.JaxValuesGuard()

    @staticmethod
    def variables_by_task(network) -> None:
        """`None`: a JAX gradient is never `None`, so differentiation cannot
        tell which variables reach an output (the layer graph does)."""
        del network

    @staticmethod
    def step_logs(model, logs: dict) -> dict:
        """The logs unchanged: JAX arrays are global."""
        del model
        return logs


BACKEND = JaxBackend()
