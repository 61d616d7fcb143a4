"""Per-task gradient plumbing for the gradient-balancing train step (TF).

Kept apart from the model so each piece does one job: the task Jacobian,
its all-reduce across replicas, flattening, and the Gramian diagnostics.
"""

from __future__ import annotations

import itertools

import numpy as np
import tensorflow as tf
from keras import ops


def num_replicas() -> int:
    """Replicas in sync under the current `tf.distribute` strategy."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def scale_for_distribution(value):
    """Divides a per-replica loss by the replica count, as Keras losses do,
    so that summing the replicas' gradients gives the global-batch mean."""
    count = num_replicas()
    return value if count == 1 else value / count


def unscale_for_distribution(value):
    count = num_replicas()
    return value if count == 1 else value * count


def all_reduce_sum(value):
    """Sums a tensor over replicas (identity on one device)."""
    if num_replicas() == 1:
        return value
    context = tf.distribute.get_replica_context()
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def flatten(tensors) -> tf.Tensor:
    """Concatenates tensors (or `None`, read as zeros) into one vector."""
    return tf.concat([tf.reshape(tf.cast(t, "float32"), [-1]) for t in tensors], axis=0)


def unflatten(vector, variables) -> list:
    """Splits a flat vector back into tensors shaped like `variables`."""
    sizes = [int(np.prod(v.shape)) for v in variables]
    pieces = tf.split(vector, sizes)
    return [
        tf.cast(tf.reshape(piece, v.shape), v.dtype)
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
            summed.append(grad + tf.cast(other, grad.dtype))
    return summed


def _zeros_for_none(grads, targets) -> list:
    # `unconnected_gradients=ZERO` crashes with Keras 3 variables on TF 2.21.
    return [tf.zeros_like(t) if g is None else g for g, t in zip(grads, targets)]


def task_jacobian(tape, task_losses, targets, method: str = "loop"):
    """The task Jacobian J (K×P): row k is ∇ task_losses[k] over `targets`.

    Args:
        tape: A persistent `tf.GradientTape` that recorded the losses.
        task_losses: The (K,) losses.
        targets: Variables or tensors (the shared representation).
        method: `"loop"`: K `tape.gradient` calls. `"pfor"`:
            `tape.jacobian` vectorised with pfor. On the reference model the
            loop measured faster (benchmarks/overhead.py); the non-pfor
            Jacobian must never be used (64× slower under XLA).
    """
    num_tasks = task_losses.shape[0]
    if method == "pfor":
        jacobians = tape.jacobian(task_losses, targets, experimental_use_pfor=True)
        rows = [
            tf.reshape(tf.cast(j, "float32"), [num_tasks, -1]) if j is not None
            else tf.zeros([num_tasks, int(np.prod(t.shape))], "float32")
            for j, t in zip(jacobians, targets)
        ]
        return tf.concat(rows, axis=1)
    rows = []
    for k in range(num_tasks):
        # Selecting task k by `output_gradients` (not by indexing the loss
        # vector, an op the tape would not have recorded).
        selector = tf.one_hot(k, num_tasks, dtype=task_losses.dtype)
        grads = tape.gradient(task_losses, targets, output_gradients=selector)
        rows.append(flatten(_zeros_for_none(grads, targets)))
    return tf.stack(rows)


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
