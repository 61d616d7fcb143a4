"""The reference job behind `mtl-keras demo`: shapes data, reference model.

Kept in the library (not in the CLI) so notebooks and tests run the very
same training as the command.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from mtl_keras import architectures, methods
from mtl_keras.callbacks import TaskBoard
from mtl_keras.datasets import shapes
from mtl_keras.suites import shapes as shapes_suite

# The shapes suite's spec (kept here under their former names).
SHAPES_LOSSES = shapes_suite.LOSSES
SHAPES_HEADLINE = shapes_suite.HEADLINE
shapes_metrics = shapes_suite.metrics


@dataclasses.dataclass
class DemoResult:
    """What a demo run returns: the model, its history and the baseline."""

    model: keras.Model
    history: dict
    tasks: tuple
    background_miou: float


def background_miou(seg_labels: np.ndarray) -> float:
    """Mean IoU of a model that predicts background for every pixel.

    Background IoU is then the background fraction; every shape class has
    IoU 0 (Keras' MeanIoU averages over the classes present in labels or
    predictions, which here are all the label classes).
    """
    present = np.unique(seg_labels)
    background_fraction = float(np.mean(seg_labels == 0))
    return background_fraction / len(present)


def train_shapes(
    balancer=None,
    epochs: int = 8,
    logdir: str | None = None,
    seed: int = 0,
    train_size: int = 4096,
    validation_size: int = 1024,
    batch_size: int = 64,
    jit_compile: bool | str = "auto",
    tasks=shapes.TASKS,
    callbacks=(),
    verbose: int = 1,
) -> DemoResult:
    """Trains the reference shapes model and returns the run.

    Args:
        balancer: A method name (`mtl_keras.methods`: a balancer, or a
            callback method such as `"dwa"`), a balancer instance, or `None`
            for static weights.
        epochs: Training epochs.
        logdir: If given, `TaskBoard` writes TensorBoard logs there (the
            Keras scalars plus the per-task custom-scalars layout).
        seed: Seeds the data, the initial weights and the balancer.
        train_size: Number of training images.
        validation_size: Number of validation images.
        batch_size: Batch size.
        jit_compile: Compile the train step with XLA: `True`, `False`, or
            Keras' `"auto"` (XLA on JAX, and on TensorFlow with a GPU; on
            JAX `False` runs the step op by op, several times slower).
        tasks: Which of the shapes tasks to train.
        callbacks: Extra Keras callbacks.
        verbose: Keras' `fit` verbosity (1 shows progress bars).
    """
    keras.utils.set_random_seed(seed)
    tasks = tuple(tasks)
    train = shapes.load(
        "train", num_examples=train_size, seed=seed, batch_size=batch_size, tasks=tasks
    )
    validation = shapes.load(
        "validation",
        num_examples=validation_size,
        seed=seed,
        batch_size=256,
        tasks=tasks,
    )
    callbacks = list(callbacks)
    if isinstance(balancer, str):
        parts = methods.get(balancer).parts()
        balancer = parts.balancer
        callbacks = [*parts.callbacks, *callbacks]
    if logdir:
        callbacks.append(TaskBoard(logdir))
    model = architectures.shapes_network(tasks=tasks)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={task: SHAPES_LOSSES[task] for task in tasks},
        metrics=shapes_metrics(tasks),
        balancer=balancer,
        jit_compile=jit_compile,
    )
    # `shuffle=False`: the training dataset reshuffles itself every epoch.
    history = model.fit(
        train,
        validation_data=validation,
        epochs=epochs,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,
    )
    baseline = float("nan")
    if "seg" in tasks:
        _, labels = shapes.load_numpy(
            "validation", validation_size, seed=seed, tasks=("seg",)
        )
        baseline = background_miou(labels["seg"])
    return DemoResult(model, history.history, tasks, baseline)


def format_table(result: DemoResult) -> str:
    """The per-task table of final train/validation loss and metric."""
    final = {key: values[-1] for key, values in result.history.items()}
    header = (
        f"{'task':<7}{'metric':<10}{'train loss':>12}{'val loss':>10}"
        f"{'train':>9}{'val':>9}{'weight':>8}"
    )
    lines = [header, "-" * len(header)]
    for task in result.tasks:
        metric, _ = SHAPES_HEADLINE[task]
        lines.append(
            f"{task:<7}{metric:<10}{final[f'{task}_loss']:>12.4f}"
            f"{final.get(f'val_{task}_loss', float('nan')):>10.4f}"
            f"{final[f'{task}_{metric}']:>9.4f}"
            f"{final.get(f'val_{task}_{metric}', float('nan')):>9.4f}"
            f"{final[f'{task}_weight']:>8.3f}"
        )
    if "seg" in result.tasks:
        lines.append(
            f"\nseg baseline: predicting background everywhere gives validation "
            f"mean IoU {result.background_miou:.4f}."
        )
    return "\n".join(lines)
