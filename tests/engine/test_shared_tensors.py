"""`shared=` as one tensor or a list of tensors (several shared branches)."""

import keras
import numpy as np
import pytest

from mtl_keras import MultiTaskModel
from mtl_keras.balancers import GramianBalancer

WEIGHTS = (0.4, 1.6)


class FixedWeights(GramianBalancer):
    """Always the weights `WEIGHTS`."""

    def compute_weights(self, task_losses, gramian):
        return keras.ops.convert_to_tensor(WEIGHTS, "float32")


def _two_branch_network(model_class, seed=0):
    """Two shared branches; each head reads both."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,), name="x")
    left = keras.layers.Dense(5, activation="tanh", name="branch_left")(inputs)
    right = keras.layers.Dense(3, activation="relu", name="branch_right")(inputs)
    both = keras.layers.Concatenate(name="both")([left, right])
    outputs = {"a": keras.layers.Dense(2, activation="softmax", name="a")(both),
               "b": keras.layers.Dense(1, name="b")(both)}
    if model_class is MultiTaskModel:
        return MultiTaskModel(inputs, outputs, shared=[left, right])
    return keras.Model(inputs, outputs)


def _data():
    rng = np.random.RandomState(0)
    x = rng.randn(48, 6).astype("float32")
    return x, {"a": (x[:, 0] > 0).astype("int32"), "b": x[:, 1:2] * 2}


LOSSES = {"a": "sparse_categorical_crossentropy", "b": "mse"}


def test_rep_mode_over_a_list_of_shared_tensors_trains_like_loss_weights():
    x, y = _data()
    ours = _two_branch_network(MultiTaskModel)
    theirs = _two_branch_network(keras.Model)
    ours.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSSES,
                 balancer=FixedWeights(mode="rep"))
    theirs.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSSES,
                   loss_weights=dict(zip("ab", WEIGHTS)))
    for model in (ours, theirs):
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert {v.path for v in ours.shared_variables} == {
        "branch_left/kernel", "branch_left/bias",
        "branch_right/kernel", "branch_right/bias"}
    for mine, keras_own in zip(ours.trainable_variables, theirs.trainable_variables):
        np.testing.assert_allclose(mine.numpy(), keras_own.numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=mine.path)


def test_mgda_ub_over_a_list_of_shared_tensors_lowers_the_loss():
    x, y = _data()
    model = _two_branch_network(MultiTaskModel)
    model.compile(optimizer="adam", loss=LOSSES, balancer="mgda_ub")
    history = model.fit(x, y, batch_size=16, epochs=6, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("as_list", [False, True])
def test_shared_tensors_survive_saving(tmp_path, as_list):
    model = _two_branch_network(MultiTaskModel)
    if not as_list:  # one tensor: the left branch only
        model = MultiTaskModel(model.inputs, dict(zip(model.task_names, model.outputs)),
                               shared=model.get_layer("branch_left").output)
    model.compile(optimizer="sgd", loss=LOSSES)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [v.path for v in loaded.shared_variables] == [
        v.path for v in model.shared_variables]
    assert isinstance(loaded.get_config()["shared"][0], list) == as_list
