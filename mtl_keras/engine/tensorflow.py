"""The gradient engine on TensorFlow: what differs from the neutral core.

J is computed with a persistent `tf.GradientTape` (K backward passes, or
`tape.jacobian` with pfor); replicas are reduced with the `tf.distribute`
replica context; loss scaling enters as the seed of every backward pass.
`TensorFlowTrainer` is `MultiTaskModel`'s train step on this backend.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from mtl_keras.balancers.base import GradientBalancer, GramianBalancer
from mtl_keras.engine import amortise, core
from mtl_keras.engine import gramian as gramian_lib
from mtl_keras.engine.backend import check_jacobian_method
from mtl_keras.engine.core import BalancedGradients

# ------------------------------------------------------------ replicas

def num_replicas() -> int:
    """Replicas in sync under the current `tf.distribute` strategy."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def scale_for_distribution(value):
    """Divides a per-replica loss by the replica count, as Keras losses do,
    so that summing the replicas' gradients gives the global-batch mean."""
    count = num_replicas()
    return value if count == 1 else value / count


def unscale_for_distribution(value):
    """Inverse of `scale_for_distribution`."""
    count = num_replicas()
    return value if count == 1 else value * count


def all_reduce_sum(value):
    """Sums a tensor over replicas (identity on one device)."""
    if num_replicas() == 1:
        return value
    context = tf.distribute.get_replica_context()
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def replica_mean(value):
    """Averages a tensor over replicas (identity on one device)."""
    count = num_replicas()
    return value if count == 1 else all_reduce_sum(value) / count


def global_value_local_gradient(value):
    """`value` with its mean over replicas as value and its own gradient.

    A loss balancer's total is not always linear in the task losses (GLS's
    geometric mean, FAMO's weights `∝ 1 / L_k`): computed on each replica's
    losses and summed, it is not the total of the global batch. Computed on
    this instead, each replica's total is the global one and the summed
    gradients are the global total's. Identity on one device.
    """
    if num_replicas() == 1:
        return value
    local = ops.stop_gradient(value)
    return replica_mean(local) + (value - local)


# ------------------------------------------------------------ the Jacobian

def _zeros_for_none(grads, targets) -> list:
    # `unconnected_gradients=ZERO` crashes with Keras 3 variables on TF 2.21.
    return [tf.zeros_like(t) if g is None else g for g, t in zip(grads, targets)]


def weighted_gradient(tape, task_losses, sources, seeds) -> list:
    """The gradient of `Σ_k seeds[k]·task_losses[k]` over `sources`.

    `task_losses` is a (K,) tensor or a list of K scalars recorded on the
    tape (then each seed goes to its own loss, no stacked vector).
    """
    if isinstance(task_losses, (list, tuple)):
        return tape.gradient(
            list(task_losses), sources,
            output_gradients=[ops.cast(seeds[k], loss.dtype)
                              for k, loss in enumerate(task_losses)])
    return tape.gradient(task_losses, sources, output_gradients=seeds)


def jacobian_blocks(tape, task_losses, targets, method: str = "loop",
                    loss_scale=1.0) -> list:
    """The task Jacobian J as blocks: one (K, P_v) float32 matrix per target,
    whose row k is ∇ (loss_scale·task_losses[k]) over that target.

    Args:
        tape: A persistent `tf.GradientTape` that recorded the losses.
        task_losses: The (K,) losses, or (`"loop"` only) a list of K scalar
            losses: each backward pass then starts from its own task's loss
            and visits its own head only.
        targets: Variables or tensors (the shared representation).
        method: `"loop"`: K `tape.gradient` calls. `"pfor"`: the same
            backward pass vectorised over the K seeds (`tf.vectorized_map`,
            as `tape.jacobian` does). On the reference model the loop
            measured faster (benchmarks/backends.py); a `tf.while_loop`
            Jacobian must never be used (64× slower under XLA).
        loss_scale: Seed of the backward passes (a loss scale multiplies
            every gradient; the losses themselves stay unscaled).
    """
    def as_float32(grads):
        return [tf.cast(g, "float32") for g in _zeros_for_none(grads, targets)]

    if isinstance(task_losses, (list, tuple)):
        if method == "pfor":
            raise ValueError("jacobian='pfor' needs the task losses as one (K,) "
                             "tensor recorded on the tape, not a list.")
        num_tasks = len(task_losses)
        rows = [as_float32(tape.gradient(
            loss, targets, output_gradients=ops.cast(loss_scale, loss.dtype)))
            for loss in task_losses]
    else:
        num_tasks = task_losses.shape[0]
        # Selecting task k by `output_gradients` (not by indexing the loss
        # vector, an op the tape would not have recorded).
        seeds = tf.eye(num_tasks, dtype=task_losses.dtype) * loss_scale
        if method == "pfor":
            stacked = tf.vectorized_map(
                lambda seed: as_float32(tape.gradient(
                    task_losses, targets, output_gradients=seed)), seeds)
            return [tf.reshape(block, [num_tasks, -1]) for block in stacked]
        rows = [as_float32(tape.gradient(task_losses, targets,
                                         output_gradients=seeds[k]))
                for k in range(num_tasks)]
    stacked = [tf.stack(per_task) for per_task in zip(*rows)]
    return [tf.reshape(block, [num_tasks, -1]) for block in stacked]


# J as per-task rows: the loop engine for `GramianBalancer`s keeps the K
# per-task gradients as they come out of the backward passes (1× J, no
# stacked copy) and forms the Gramian (and, under several replicas, `wᵀJ`)
# from them in column chunks: one (K, chunk) stack at a time, each chunk's
# stack ordered after the previous chunk's product (control dependencies),
# so that TensorFlow's executor never holds more than one or two of them
# (`core.column_chunks`).


def task_gradient_rows(tape, task_losses, targets, loss_scale=1.0) -> list:
    """The K per-task gradients: `rows[k][v]`, the flat float32 gradient of
    `loss_scale·task_losses[k]` over `targets[v]` (K backward passes, each
    from its own task's scalar loss). Nothing is stacked."""
    rows = []
    for loss in task_losses:
        grads = tape.gradient(loss, targets,
                              output_gradients=ops.cast(loss_scale, loss.dtype))
        rows.append([tf.reshape(tf.cast(g, "float32"), [-1])
                     for g in _zeros_for_none(grads, targets)])
    return rows


def _column_chunks(rows) -> list:
    """`core.column_chunks` of the flat per-task rows."""
    return core.column_chunks([int(g.shape[0]) for g in rows[0]])


def _stacked_chunk(rows, v, start, size, whole):
    """The (K, size) stack of the K gradients' columns [start, start+size)
    of target v."""
    if whole:
        return tf.stack([row[v] for row in rows])
    return tf.stack([row[v][start:start + size] for row in rows])


def gramian_of_rows(rows):
    """`J Jᵀ` from the per-task gradients, one column chunk at a time."""
    num_tasks = len(rows)
    gramian = tf.zeros((num_tasks, num_tasks), "float32")
    for v, start, size in _column_chunks(rows):
        with tf.control_dependencies([gramian]):
            block = _stacked_chunk(rows, v, start, size,
                                   size == int(rows[0][v].shape[0]))
        gramian = gramian + tf.matmul(block, block, transpose_b=True)
    return gramian


def combine_task_rows(weights, rows) -> list:
    """`wᵀJ` from the per-task gradients: one flat vector per target, one
    column chunk at a time (the first chunk waits for `weights`)."""
    pieces = [[] for _ in rows[0]]
    last = weights
    weights = weights[None, :]
    for v, start, size in _column_chunks(rows):
        with tf.control_dependencies([last]):
            block = _stacked_chunk(rows, v, start, size,
                                   size == int(rows[0][v].shape[0]))
        last = tf.matmul(weights, block)[0]
        pieces[v].append(last)
    return [p[0] if len(p) == 1 else tf.concat(p, axis=0) for p in pieces]


def _rows_are_static(targets) -> bool:
    return all(t.shape.is_fully_defined() for t in targets)


def task_jacobian(tape, task_losses, targets, method: str = "loop",
                  loss_scale=1.0):
    """The task Jacobian J (K×P) as one matrix (see `jacobian_blocks`)."""
    return tf.concat(
        jacobian_blocks(tape, task_losses, targets, method, loss_scale), axis=1)


# ------------------------------------------------------------ public entry

def balanced_gradients(
    tape: tf.GradientTape,
    task_losses,
    shared_variables: list,
    head_variables: list,
    balancer: GradientBalancer,
    *,
    representation=None,
    regularization=None,
    loss_scale=None,
    jacobian: str = "loop",
) -> BalancedGradients:
    """Balanced gradients of several task losses, for a custom training loop.

    The analogue of torchjd's `mtl_backward` for Keras on TensorFlow: the
    per-task gradients over the shared part form J (K×P); the balancer turns
    J (or its Gramian `J Jᵀ`) into task weights w and a shared update (`wᵀJ`,
    or its own update for GradDrop / DB-MTL); the head variables get the
    gradient of `Σ w_k L_k` with w held constant. `MultiTaskModel.fit` runs
    the same computation (after the checks of `compile`).

    Under a `tf.distribute` strategy, call it in replica context with each
    replica's losses divided by the replica count (as Keras' losses are):
    J and the losses are summed over replicas before balancing, so every
    replica applies the update of the global batch.

    Args:
        tape: A persistent `tf.GradientTape` that recorded `task_losses`.
        task_losses: The (K,) task losses (already task-weighted), or a
            list of K scalar losses recorded on the tape: with many tasks
            prefer the list, so that each backward pass visits its own
            task's head only (`jacobian="loop"`).
        shared_variables: The variables shared by the tasks.
        head_variables: The other trainable variables (task heads, a
            learnable balancer's variables).
        balancer: A `mtl_keras.balancers.GradientBalancer` (or its name),
            or an `mtl_keras.engine.UpdateEvery` around one.
        representation: For `mode="rep"` balancers: the shared
            representation tensor (or a list of tensors), recorded on the
            tape; J is taken over it and the update pulled back through the
            trunk.
        regularization: An optional scalar added to the loss of every
            variable (e.g. `sum(model.losses)`), recorded on the tape.
        loss_scale: The dynamic loss scale of a `LossScaleOptimizer`
            (`optimizer.scale_loss(1.0)`), or `None`. The returned gradients
            are then scaled, as that optimizer expects.
        jacobian: `"loop"` (K backward passes, the default) or `"pfor"`
            (`"gramian"` needs the layers of a `MultiTaskModel`: it raises
            here).

    Returns:
        A `BalancedGradients(grads, weights, gramian, finite_tasks,
        balanced)`; `grads` follows `shared_variables + head_variables`.
        A step with a non-finite task loss or gradient is not balanced
        (`balanced` false, balancer state unchanged).

    Example:

    ```python
    import keras
    import numpy as np
    import tensorflow as tf
    import mtl_keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    trunk = keras.layers.Dense(8, activation="relu")
    heads = [keras.layers.Dense(1), keras.layers.Dense(1)]
    features = trunk(inputs)
    model = keras.Model(inputs, [head(features) for head in heads])
    optimizer = keras.optimizers.SGD(0.1)
    balancer = mtl_keras.balancers.get("upgrad")
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = [x[:, :1], -x[:, 1:2]]
    shared = trunk.trainable_variables
    head_variables = [v for h in heads for v in h.trainable_variables]
    for step in range(3):
        with tf.GradientTape(persistent=True) as tape:
            outputs = model(x, training=True)
            task_losses = keras.ops.stack([
                keras.ops.mean((o - t) ** 2) for o, t in zip(outputs, y)])
        result = mtl_keras.engine.balanced_gradients(
            tape, task_losses, shared, head_variables, balancer)
        optimizer.apply(result.grads, shared + head_variables)
    ```
    """
    balancer, runner = amortise.resolve(balancer)
    if not isinstance(balancer, GradientBalancer):
        raise ValueError(
            f"balanced_gradients needs a gradient balancer, got {balancer!r}; "
            "a loss balancer needs no per-task gradients: differentiate "
            "`balancer.total_loss(task_losses)` instead.")
    check_jacobian_method(jacobian)
    if jacobian == "gramian":
        raise ValueError(
            "jacobian='gramian' reads the shared layers' inputs and outputs, "
            "which a tape alone does not give: train a MultiTaskModel "
            "compiled with jacobian='gramian', or use jacobian='loop' here.")
    if balancer.mode == "rep" and representation is None:
        raise ValueError(
            f"{type(balancer).__name__}(mode='rep') differentiates with "
            "respect to the shared representation: pass `representation=`.")
    return _balanced_gradients(
        tape, task_losses, shared_variables, head_variables, balancer, runner,
        representation, regularization, loss_scale, jacobian)


def _balanced_gradients(tape, task_losses, shared_variables, head_variables,
                        balancer, runner, representation, regularization,
                        loss_scale, jacobian, layer_tensors=None) -> BalancedGradients:
    """`balanced_gradients` for a checked balancer and its runner (the
    balancer or an `UpdateEvery` around it); `layer_tensors` is the Gramian
    engine's `(plan, layer inputs, layer outputs)`."""
    recorded = (list(task_losses) if isinstance(task_losses, (list, tuple))
                else task_losses)
    task_losses = ops.cast(ops.stack(recorded) if isinstance(recorded, list)
                           else recorded, "float32")
    runner.ensure_built(task_losses)
    scale = 1.0 if loss_scale is None else ops.cast(loss_scale, "float32")
    targets = (list(shared_variables) if representation is None
               else keras.tree.flatten(representation))
    if representation is None:
        balancer.build_for_jacobian(sum(int(np.prod(v.shape)) for v in targets))
    step = _shared_step(tape, recorded, task_losses, targets, runner, jacobian,
                        scale, loss_scale is not None, layer_tensors)
    weights = step.weights
    if step.update is None:
        # `wᵀJ`, left to one backward pass of `Σ w_k L_k` (one replica):
        # the shared variables' and the heads' gradients together.
        grads = weighted_gradient(
            tape, recorded, list(shared_variables) + list(head_variables),
            weights * scale)
        # Dense, as the rows are (an Embedding's gradient is IndexedSlices).
        shared_grads = [tf.convert_to_tensor(g) for g in _zeros_for_none(
            grads[:len(shared_variables)], shared_variables)]
        head_grads = grads[len(shared_variables):]
    else:
        shared_grads, head_grads = _apply_update(
            tape, recorded, step, targets, shared_variables, head_variables,
            representation, scale)
    if regularization is not None:
        variables = list(shared_variables) + list(head_variables)
        # Scaled after the backward pass: an op on the loss outside the
        # tape's block would be unrecorded (every gradient `None`).
        extra = [None if g is None else g * ops.cast(scale, g.dtype)
                 for g in tape.gradient(regularization, variables)]
        shared_grads = core.add_gradients(shared_grads, extra[:len(shared_grads)])
        head_grads = core.add_gradients(head_grads, extra[len(shared_grads):])
    return BalancedGradients(
        grads=list(shared_grads) + list(head_grads), weights=weights,
        gramian=step.gramian, finite_tasks=step.finite_tasks,
        balanced=step.balanced)


def _apply_update(tape, recorded, step, targets, shared_variables,
                  head_variables, representation, scale):
    """`(shared gradients, head gradients)` from the step's update over
    `targets` (pulled back through the trunk in rep mode) and one backward
    pass of `Σ w_k L_k` over the heads."""
    # J was summed over replicas and optimizer.apply sums again.
    replicas = num_replicas()
    update = [ops.cast(ops.reshape(piece if replicas == 1 else piece / replicas,
                                   ops.shape(t)), t.dtype)
              for piece, t in zip(step.update, targets)]
    if representation is not None:
        shared_grads = tape.gradient(targets, list(shared_variables),
                                     output_gradients=update)
    else:
        shared_grads = update
    head_grads = (weighted_gradient(tape, recorded, list(head_variables),
                                    step.weights * scale)
                  if head_variables else [])
    return shared_grads, head_grads


def _shared_step(tape, recorded, task_losses, targets, runner, method, scale,
                 loss_scaled: bool, layer_tensors=None) -> core.SharedStep:
    """J, the balancer and the shared update (`runner`: the balancer or an
    `amortise.UpdateEvery` around it).

    Under several replicas J is all-reduced before the conditional (a
    collective cannot run inside one), so `update_every` then saves the
    balancing math but not the K backward passes.
    """
    amortised = isinstance(runner, amortise.UpdateEvery)
    balancer = runner.balancer if amortised else runner
    global_losses = all_reduce_sum(ops.stop_gradient(task_losses))
    if layer_tensors is not None:
        return _shared_step_gramian(
            tape, recorded, task_losses, global_losses, targets, runner,
            balancer, amortised, scale, loss_scaled, layer_tensors)
    if (method == "loop" and isinstance(balancer, GramianBalancer)
            and isinstance(recorded, list) and _rows_are_static(targets)):
        return _shared_step_from_rows(
            tape, recorded, task_losses, global_losses, targets, runner,
            balancer, amortised, scale, loss_scaled)

    def jacobian():
        return all_reduce_sum(
            jacobian_blocks(tape, recorded, targets, method, scale))

    def balance(blocks, state):
        # Under loss scaling, the LossScaleOptimizer skips non-finite
        # gradients itself (and lowers its scale): only the losses decide.
        rows_finite = core.rows_finite(blocks)
        grads_finite = True if loss_scaled else rows_finite
        finite_tasks = core.finite_task_flags(task_losses, grads_finite, replica_mean)
        usable = ops.logical_and(ops.all(finite_tasks), ops.all(rows_finite))
        update, weights, gramian, new_state = core.guarded_balance(
            balancer, state, global_losses, blocks, usable, scale)
        step = core.SharedStep(update, weights, gramian, finite_tasks, usable)
        return step, new_state

    if num_replicas() > 1:
        # Every collective before the conditionals of `UpdateEvery` (none
        # can run inside one): J and the finite flags, the same for a
        # refresh and a reuse of the cached weights.
        shared_blocks = jacobian()
        rows_finite = core.rows_finite(shared_blocks)
        finite_tasks = core.finite_task_flags(
            task_losses, True if loss_scaled else rows_finite, replica_mean)
        usable = ops.logical_and(ops.all(finite_tasks), ops.all(rows_finite))

        def balance_shared(state):
            update, weights, gramian, new_state = core.guarded_balance(
                balancer, state, global_losses, shared_blocks, usable, scale)
            return core.SharedStep(update, weights, gramian, finite_tasks,
                                   usable), new_state

        if not amortised:
            return core.every_step(balancer, balance_shared)
        return runner.step(balance_shared, lambda weights: (
            core.combine_rows(weights, shared_blocks), finite_tasks))

    if not amortised:
        return core.every_step(balancer, lambda state: balance(jacobian(), state))
    return runner.step(
        lambda state: balance(jacobian(), state),
        lambda weights: _reuse_by_backward(tape, recorded, targets, task_losses,
                                           weights, scale, loss_scaled))


def _shared_step_from_rows(tape, recorded, task_losses, global_losses, targets,
                           runner, balancer, amortised, scale,
                           loss_scaled: bool) -> core.SharedStep:
    """`_shared_step` for a `GramianBalancer` with the loop engine: the K
    per-task gradients are held once (1× J) and never stacked whole."""

    def rows():
        return all_reduce_sum(task_gradient_rows(tape, recorded, targets, scale))

    def balance(state):
        # One replica (see below for several). Not usable: the weights are
        # ones, the update the plain sum. `wᵀJ = ∇ Σ w_k L_k` is left to
        # the caller's one backward pass (the heads' gradients in the same
        # pass), after which nothing reads the rows: they are freed once the
        # Gramian is formed, so the update's backward pass does not add to
        # the peak (measured: 0.13× J less than `combine_task_rows`, and no
        # slower).
        return core.weights_from_gramian(
            balancer, state, task_losses, global_losses,
            gramian_of_rows(rows()), loss_scaled, scale)

    if num_replicas() > 1:
        # Every collective before the conditionals (none can run inside
        # one): the rows, their Gramian and the finite flags; the update is
        # formed from the all-reduced rows.
        task_rows = rows()
        scaled_gramian = gramian_of_rows(task_rows)
        finite_tasks, usable = core.finite_flags_from_gramian(
            task_losses, scaled_gramian, loss_scaled, replica_mean)

        def balance_shared(state, with_update=True):
            weights, gramian, new_state = core.guarded_weights(
                balancer, state, global_losses, scaled_gramian, usable, scale)
            update = combine_task_rows(weights, task_rows) if with_update else None
            return core.SharedStep(update, weights, gramian, finite_tasks,
                                   usable), new_state

        if not amortised:
            return core.every_step(balancer, balance_shared)
        # A refresh yields only the weights; the update is formed after.
        return runner.step(
            lambda state: balance_shared(state, with_update=False),
            lambda weights: (combine_task_rows(weights, task_rows), finite_tasks))

    if not amortised:
        return core.every_step(balancer, balance)
    # A refresh yields only the weights; the update is one backward pass after.
    return runner.step(
        balance,
        lambda weights: _reuse_by_backward(tape, recorded, targets, task_losses,
                                           weights, scale, loss_scaled))


def _shared_step_gramian(tape, recorded, task_losses, global_losses, targets,
                         runner, balancer, amortised, scale, loss_scaled: bool,
                         layer_tensors) -> core.SharedStep:
    """`_shared_step` of the Gramian engine (`mtl_keras.engine.gramian`):
    the weights from `J Jᵀ` accumulated from pieces, then one backward pass
    of `Σ w_k L_k` for the update. J is never formed."""
    if num_replicas() > 1:
        raise ValueError(
            "jacobian='gramian' runs on one replica for now (the Gramian of "
            "the global batch needs every replica's activations): compile "
            "with jacobian='loop' under a tf.distribute strategy with "
            f"{num_replicas()} replicas.")
    plan, layer_inputs, layer_outputs = layer_tensors

    def weights_of(state):
        scaled_gramian = gramian_lib.gramian(
            plan, layer_inputs, layer_outputs, tape, recorded, scale,
            gramian_of_rows)
        return core.weights_from_gramian(
            balancer, state, task_losses, global_losses, scaled_gramian,
            loss_scaled, scale)

    def reuse(weights):
        return _reuse_by_backward(tape, recorded, targets, task_losses,
                                  weights, scale, loss_scaled)

    if amortised:
        return runner.step(weights_of, reuse)
    # The update is left to the caller's one backward pass of `Σ w_k L_k`
    # (not usable: the weights are ones, the update the plain sum).
    return core.every_step(balancer, weights_of)


def _reuse_by_backward(tape, recorded, targets, task_losses, weights, scale,
                       loss_scaled):
    """`(update, finite_tasks)`: the update `∇ Σ w_k L_k` over `targets`,
    one backward pass."""
    grads = weighted_gradient(tape, recorded, targets, weights * scale)
    update = [tf.reshape(tf.cast(g, "float32"), [-1])
              for g in _zeros_for_none(grads, targets)]
    grads_finite = True if loss_scaled else core.gradients_finite(update)
    return update, core.finite_task_flags(task_losses, grads_finite)


# ------------------------------------------------------------ the trainer

class TensorFlowTrainer:
    """`MultiTaskModel`'s train step on TensorFlow: the TensorFlow pieces
    (`mtl_keras.engine.backend.StepPieces`) of `core.train_step`.

    It computes the gradients (one backward pass for loss balancers, the
    engine for gradient balancers), checks that they are finite, applies
    them and runs post-step balancer updates; the model keeps the loss and
    metric bookkeeping. Variables are assigned in place: the state threaded
    through `core.train_step` is `None`.

    Args:
        model: The `MultiTaskModel` to train (an `EngineModel`).
    """

    def __init__(self, model):
        self.model = model

    def train_step(self, x, y, sample_weight) -> core.TrainStep:
        step, _ = core.train_step(self, self.model.balancer, None, x, y,
                                  sample_weight)
        return step

    def loss_scale(self):
        """The optimizer's dynamic loss scale, or `None` without one."""
        optimizer = self.model.optimizer
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            return ops.cast(optimizer.scale_loss(ops.ones(())), "float32")
        return None

    def state_before(self, state):
        """The non-trainable values, read before the forward pass advances
        the dropout seeds."""
        del state
        return [tf.identity(v.value) for v in self.model.non_trainable_variables]

    def loss_step(self, state, x, y, sample_weight):
        model = self.model
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            task_losses = ops.stack(
                model.compute_task_loss_list(y, y_pred, sample_weight))
            weighted = model.task_weights(task_losses)
            replicas_weighted = global_value_local_gradient(weighted)
            total, balance = model.balanced_total(replicas_weighted)
            regularization = model.regularization_loss()
            loss = scale_for_distribution(total + regularization)
            scaled_loss = model.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled_loss, model.trainable_variables)
        grads_finite = True
        if self.loss_scale() is None:
            grads_finite = core.gradients_finite(
                [g for g in grads if g is not None])
        finite_tasks = core.finite_task_flags(task_losses, grads_finite, replica_mean)
        step = core.TrainStep(
            y_pred=y_pred, task_losses=task_losses, balance=balance,
            loss=ops.sum(weighted) + regularization,
            balanced_loss=total + regularization, finite_tasks=finite_tasks)
        return step, grads, replicas_weighted, state

    def gradient_step(self, state, x, y, sample_weight):
        model = self.model
        rep_mode = model.balancer.mode == "rep"
        representation = None
        method = model.jacobian_method
        layer_tensors = None
        with tf.GradientTape(persistent=True) as tape:
            if rep_mode:
                y_pred, representation = model.representation_model()(
                    x, training=True)
                # J over the representation is small: the loop engine.
                method = "loop" if method == "gramian" else method
            elif method == "gramian":
                plan = gramian_lib.plan_for(model)
                y_pred, inputs, outputs = gramian_lib.forward(model, plan, x)
                layer_tensors = (plan, inputs, outputs)
            else:
                y_pred = model(x, training=True)
            losses = model.compute_task_loss_list(y, y_pred, sample_weight)
            # Kept per task for the loop Jacobian (see `jacobian_blocks`).
            task_weights = ops.cast(model.task_weights.values, "float32")
            recorded = [scale_for_distribution(task_weights[k] * loss)
                        for k, loss in enumerate(losses)]
            task_losses, weighted = ops.stack(losses), ops.stack(recorded)
            regularization = (scale_for_distribution(model.regularization_loss())
                              if model.losses else None)
        # Checked at compile: the balancer, its runner and the method.
        result = _balanced_gradients(
            tape, weighted if method == "pfor" else recorded,
            model.shared_variables, model.head_variables, model.balancer,
            model.update_schedule or model.balancer, representation,
            regularization, self.loss_scale(), method, layer_tensors)
        del tape
        by_id = {id(v): g for v, g in zip(
            model.shared_variables + model.head_variables, result.grads)}
        extra = 0.0 if regularization is None else regularization
        step = core.TrainStep(
            y_pred=y_pred, task_losses=task_losses, balance=result.weights,
            loss=unscale_for_distribution(ops.sum(weighted) + extra),
            balanced_loss=unscale_for_distribution(
                ops.sum(result.weights * weighted) + extra),
            finite_tasks=result.finite_tasks, gramian=result.gramian,
            balanced=result.balanced)
        grads = [by_id[id(v)] for v in model.trainable_variables]
        return step, grads, weighted, state

    def apply_if_finite(self, state, finite, grads):
        """Applies the gradients unless `finite` is false."""
        optimizer = self.model.optimizer
        trainable = self.model.trainable_variables
        if tf.distribute.has_strategy():  # even a one-replica strategy
            # optimizer.apply merges replicas, which cannot happen inside a
            # cond: zero the update instead (moments still decay one step).
            grads = [None if g is None else ops.where(finite, g, ops.zeros_like(g))
                     for g in grads]
            optimizer.apply(grads, trainable)
            return state
        ops.cond(finite, lambda: optimizer.apply(grads, trainable), lambda: None)
        return state

    def post_step_update(self, state, before, x, y, sample_weight,
                         weighted, finite):
        """FAMO-style: the same batch's losses after the optimizer step.

        The second forward pass runs in training mode from `before` (the
        non-trainable values the step started from), inside a
        `keras.StatelessScope`: it draws the step's own dropout masks and
        changes no state (no second batch-norm update), so the two losses
        differ only by the optimizer's update. `weighted` (the losses
        before) are already the mean over replicas; the losses after are
        averaged here.
        """
        model = self.model
        mapping = list(zip(model.non_trainable_variables, before))
        with keras.StatelessScope(state_mapping=mapping):
            y_pred = model(x, training=True)
            losses_after = model.task_weights(ops.stack(
                model.compute_task_loss_list(y, y_pred, sample_weight)))
        losses_before = ops.stop_gradient(weighted)
        losses_after = replica_mean(ops.stop_gradient(losses_after))
        core.guarded_post_step(
            model.balancer, losses_before, losses_after,
            ops.logical_and(finite, ops.all(ops.isfinite(losses_after))))
        return state


def variables_by_task(network: keras.Model) -> dict[str, list]:
    """`{output name: trainable variables its value depends on}`, found by
    differentiation (so it looks inside layers): a variable reaches an
    output when the output's gradient with respect to it is connected
    (TensorFlow returns `None` otherwise); evaluated once, in inference
    mode, on a batch of two zero inputs (see
    `mtl_keras.sharing.variables_by_task`; `network` is any functional
    `keras.Model`, not only an `EngineModel`)."""
    reach = {}

    def differentiate():
        inputs = keras.tree.map_structure(
            lambda t: tf.zeros((2, *t.shape[1:]), t.dtype), network.input)
        variables = network.trainable_variables
        with tf.GradientTape(persistent=True) as tape:
            outputs = network(inputs, training=False)
            if not isinstance(outputs, dict):
                outputs = dict(zip(network.output_names, keras.tree.flatten(outputs)))
            totals = {name: tf.reduce_sum(tf.cast(output, "float32"))
                      for name, output in outputs.items()}
        for name, total in totals.items():
            grads = tape.gradient(total, variables)
            reach[name] = [v for v, g in zip(variables, grads) if g is not None]

    if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
        # Distributed variables are differentiated in a replica's context.
        tf.distribute.get_strategy().run(differentiate)
    else:
        differentiate()
    return reach


def step_logs(model, logs: dict) -> dict:
    """The step's logs as `tf.distribute` reduces them.

    Keras 3.15 reduces a multi-worker step's logs with
    `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars (for a
    plain keras.Model too); a (1,) shape reduces to the scalar.
    """
    strategy = model.distribute_strategy
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return logs
    return {name: ops.reshape(value, (1,)) for name, value in logs.items()}


class TensorFlowBackend:
    """The TensorFlow engine, as registered (`mtl_keras.engine.get_backend`)."""

    name = "tensorflow"
    trainer = staticmethod(TensorFlowTrainer)
    replica_mean = staticmethod(replica_mean)
    step_logs = staticmethod(step_logs)
    variables_by_task = staticmethod(variables_by_task)
    balanced_gradients = staticmethod(balanced_gradients)

    @staticmethod
    def values_guard() -> None:
        """`None`: TensorFlow keeps the variables' values through a failure."""


BACKEND = TensorFlowBackend()
