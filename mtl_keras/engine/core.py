"""The backend-neutral core of the gradient engine (`keras.ops` only).

Task losses and their Jacobian J (K×P) go in; the balancer's task weights,
the shared update and the Gramian diagnostics come out. What differs per
backend (how J is computed, how replicas are reduced) lives in
`mtl_keras.engine.tensorflow` and `mtl_keras.engine.jax`.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import numpy as np
from keras import ops


class BalancedGradients(NamedTuple):
    """What `mtl_keras.engine.balanced_gradients` returns.

    Attributes:
        grads: One gradient per variable, in the order
            `shared_variables + head_variables` (`None` for a variable that
            no loss reaches). Apply them with `optimizer.apply`.
        weights: The (K,) task weights the balancer chose (constants).
        gramian: The (K, K) Gramian `J Jᵀ` of the task gradients (zeros on a
            step whose gradients were not finite).
        finite_tasks: (K,) booleans: task k's loss and gradient were finite
            on every replica.
        balanced: Scalar boolean: the balancer ran on this step (every task
            finite). When false, `grads` are the plain sum of the task
            gradients and the balancer state is unchanged.
    """

    grads: list
    weights: Any
    gramian: Any
    finite_tasks: Any
    balanced: Any


class TrainStep(NamedTuple):
    """What a backend trainer hands back to `MultiTaskModel.train_step`.

    Attributes:
        y_pred: The model outputs, `{task: output}`.
        task_losses: The (K,) unweighted task losses of this replica.
        balance: The (K,) weights the balancer applied on top of the task
            weights (ones without a balancer).
        loss: `Σ task weight × task loss + regularization` on this
            replica's batch (what `loss` logs, whatever the balancer).
        balanced_loss: The balancer's objective plus regularization (what
            the step minimised; logged as `balanced_loss`).
        finite_tasks: (K,) booleans: the task was finite on every replica;
            the step was applied only when all are.
        gramian: The (K, K) Gramian for gradient balancers, else `None`.
        balanced: Whether the balancer ran (gradient balancers), else `None`.
    """

    y_pred: Any
    task_losses: Any
    balance: Any
    loss: Any
    balanced_loss: Any
    finite_tasks: Any
    gramian: Any = None
    balanced: Any = None


def flatten(tensors) -> Any:
    """Concatenates tensors into one float32 vector."""
    return ops.concatenate(
        [ops.reshape(ops.cast(t, "float32"), (-1,)) for t in tensors], axis=0)


def unflatten(vector, variables) -> list:
    """Splits a flat vector back into tensors shaped like `variables`."""
    sizes = [int(np.prod(v.shape)) for v in variables]
    pieces = ops.split(vector, list(np.cumsum(sizes)[:-1]))
    return [
        ops.cast(ops.reshape(piece, tuple(v.shape)), v.dtype)
        for piece, v in zip(pieces, variables)
    ]


def add_gradients(grads, extra) -> list:
    """Adds two gradient lists, reading `None` as zero."""
    summed = []
    for grad, other in zip(grads, extra):
        if other is None:
            summed.append(grad)
        elif grad is None:
            summed.append(other)
        else:
            summed.append(grad + ops.cast(other, grad.dtype))
    return summed


def gramian_of(jacobian):
    """`J Jᵀ`, the (K, K) matrix of inner products of the task gradients."""
    return ops.matmul(jacobian, ops.transpose(jacobian))


def guarded_balance(balancer, task_losses, jacobian, usable, loss_scale=1.0):
    """Runs the balancer only when `usable`: `(update, weights, gramian)`.

    `jacobian` holds the gradients of the loss-scaled task losses. With
    loss scaling J may overflow while the losses are finite: the balancer
    must not see it (its state would turn NaN). On such a step the update
    is the plain (non-finite) sum of the rows, which makes a
    `LossScaleOptimizer` skip the step and lower its scale, the weights are
    ones, the Gramian zeros and the balancer state unchanged. The balancer
    runs as a pure function of its state (`stateless_update`); the new
    state is assigned after the branch.
    """
    safe_jacobian = ops.where(usable, jacobian, 0.0) / loss_scale
    gramian = gramian_of(safe_jacobian)
    state = balancer.get_state()
    update, weights, new_state = ops.cond(
        usable,
        lambda: balancer.stateless_update(state, task_losses, safe_jacobian, gramian),
        lambda: (ops.zeros_like(jacobian[0]), ops.ones_like(task_losses), state),
    )
    balancer.set_state(new_state)
    weights = ops.stop_gradient(weights)
    update = ops.where(usable, update * loss_scale, ops.sum(jacobian, axis=0))
    return update, weights, gramian


def guarded_post_step(balancer, losses_before, losses_after, apply):
    """Runs a loss balancer's `update_after_step` (FAMO) only when `apply`,
    as a pure function of its state; assigns the new state."""
    state = balancer.get_state()
    new_state = ops.cond(
        apply,
        lambda: balancer.stateless_call_method(
            balancer.update_after_step, state, losses_before, losses_after)[1],
        lambda: state,
    )
    balancer.set_state(new_state)


def finite_task_flags(task_losses, grads_finite=True, replica_mean=None):
    """(K,) booleans: each task's loss (and gradient) is finite everywhere.

    A finite loss can still give a non-finite gradient (an infinite input
    into a saturated unit gives inf·0). `grads_finite` is one flag, or one
    per task (rows of J); a single flag false while every loss is finite
    flags every task, since none can be singled out. `replica_mean`
    averages a tensor over replicas (identity when omitted).
    """
    losses_finite = ops.isfinite(task_losses)
    blame_gradients = ops.logical_or(
        grads_finite, ops.logical_not(ops.all(losses_finite)))
    flags = ops.cast(ops.logical_and(losses_finite, blame_gradients), "float32")
    if replica_mean is not None:
        flags = replica_mean(flags)
    return ops.equal(flags, 1.0)


def diagnostic_names(task_names, cosines: bool = True) -> list[str]:
    """Log names of the Gramian diagnostics, in `diagnostics` order.

    Cosines are named `grad_cos_<a>/<b>`: task names are layer names, which
    cannot contain "/", so the pair is unambiguous (`left_eye`, `left`).
    """
    names = [f"grad_norm_{t}" for t in task_names]
    if cosines:
        names += [f"grad_cos_{a}/{b}" for a, b in itertools.combinations(task_names, 2)]
    return names


def diagnostics(gramian, cosines: bool = True) -> list:
    """Per-task gradient norms, then (if `cosines`) the pairwise cosines,
    read from the Gramian."""
    gramian = ops.cast(gramian, "float32")
    squared_norms = ops.diagonal(gramian)
    norms = ops.sqrt(ops.maximum(squared_norms, 0.0))
    num_tasks = gramian.shape[0]
    values = [norms[k] for k in range(num_tasks)]
    if cosines:
        for a, b in itertools.combinations(range(num_tasks), 2):
            values.append(ops.divide_no_nan(gramian[a, b], norms[a] * norms[b]))
    return values
