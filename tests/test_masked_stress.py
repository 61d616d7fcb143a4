"""Missing labels under stress: half of each task's labels masked at random,
and each task entirely unlabelled in one batch.

A masked sample must have exactly no effect. The reference is a model whose
task losses are computed by hand on the labelled samples only: Keras' own
mean over the samples kept for that task (`tf.boolean_mask`), 0 for a batch
with none. Both go through the same train step and balancer, so equal
weights after training mean equal updates at every step.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from _tiny import LOSSES, tiny_data, tiny_network
from keras import ops

from mtl_keras.model import MultiTaskModel
from mtl_keras.task_losses import MISSING_LABEL

BATCH_SIZE = 16


class _LabelledOnly(MultiTaskModel):
    """Task losses on the labelled samples alone; `sample_weight[task]`
    carries the 0/1 "labelled" flags, not weights."""

    def compute_task_losses(self, y, y_pred, sample_weight=None):
        return ops.stack([
            self._labelled_loss(task, y[task], y_pred[task], sample_weight[task])
            for task in self.task_names
        ])

    def _labelled_loss(self, task, labels, predictions, labelled):
        labelled = ops.cast(labelled, "bool")
        labels = tf.boolean_mask(labels, labelled)
        predictions = tf.boolean_mask(predictions, labelled)
        return tf.cond(
            tf.size(labels) > 0,
            lambda: self.task_losses[task](labels, predictions),
            lambda: tf.constant(0.0),
        )


def _labelled_flags(num_samples, seed=3):
    """Half of each task's labels at random; task a has none in batch 2 and
    task b none in batch 3."""
    rng = np.random.RandomState(seed)
    flags = {task: rng.rand(num_samples) < 0.5 for task in ("a", "b")}
    flags["a"][2 * BATCH_SIZE: 3 * BATCH_SIZE] = False
    flags["b"][3 * BATCH_SIZE: 4 * BATCH_SIZE] = False
    return flags


def _masked(y, flags):
    return {
        "a": np.where(flags["a"], y["a"], MISSING_LABEL).astype("int32"),
        "b": np.where(flags["b"][:, None], y["b"], np.nan).astype("float32"),
    }


def _train(cls, balancer, x, y, sample_weight=None, run_eagerly=False):
    model = tiny_network(cls)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=LOSSES,
        balancer=balancer,
        run_eagerly=run_eagerly,
    )
    history = model.fit(
        x, y, sample_weight=sample_weight, epochs=1, batch_size=BATCH_SIZE,
        shuffle=False, verbose=0,
    )
    return model, history.history


# The reference's loss is a constant 0 for a task without labels in a batch,
# so Keras warns that its head gets no gradient there.
@pytest.mark.filterwarnings("ignore:Gradients do not exist")
@pytest.mark.parametrize("balancer", ["uw", "gradnorm"])
def test_masked_samples_have_exactly_no_effect(balancer):
    x, y = tiny_data()
    flags = _labelled_flags(len(x))
    assert 0.3 < flags["a"].mean() < 0.6 and 0.3 < flags["b"].mean() < 0.6
    model, history = _train(MultiTaskModel, balancer, x, _masked(y, flags))
    # The reference is a check, not the subject: eager keeps it cheap.
    reference, want_history = _train(
        _LabelledOnly, balancer, x, y,
        sample_weight={t: f.astype("float32") for t, f in flags.items()},
        run_eagerly=True,
    )
    assert history["skipped_steps"] == [0.0]
    for variable in [*model.weights, *model.optimizer.variables]:
        assert np.isfinite(variable.numpy()).all(), variable.path
    for ours, want in zip(model.weights, reference.weights):
        np.testing.assert_allclose(
            ours.numpy(), want.numpy(), rtol=1e-5, atol=1e-6, err_msg=ours.path
        )
    for name in ("a_loss", "b_loss", "loss"):
        np.testing.assert_allclose(history[name], want_history[name], rtol=1e-5)
