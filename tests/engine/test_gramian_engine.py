"""The Gramian engine (`compile(jacobian="gramian")`) against the loop engine.

For every balancer whose weights depend only on the Gramian (read from the
registry), one step of each engine from the same weights, batch and
balancer state gives the same task weights and the same update (≤ 1e-5
relative) on a Dense net, a Conv net, an Embedding model, a transformer
encoder block and MobileNetV2. The step runs eagerly through the
TensorFlow trainer (no trace per balancer); one `fit` checks the traced
step.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mtl_keras
from mtl_keras import balancers, engine
from mtl_keras.balancers.base import GramianBalancer, JacobianBalancer
from mtl_keras.engine import backend as backend_lib
from mtl_keras.engine import gramian as gramian_lib

# One worker runs this module: its module-scoped fixtures are built once.
pytestmark = [
    pytest.mark.xdist_group("test_gramian_engine"),
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow", reason="TensorFlow-only engine"
    ),
]

TOLERANCE = 1e-5


def _registered(kind):
    names = []
    for name in balancers.available():
        try:
            balancer = balancers.get(name)
        except ValueError:
            continue
        if isinstance(balancer, kind) and balancer.mode == "params":
            names.append(name)
    return names


GRAMIAN_BALANCERS = _registered(GramianBalancer)
JACOBIAN_BALANCERS = _registered(JacobianBalancer)


def _multitask(inputs, shared, num_tasks=3):
    heads = {
        f"t{k}": keras.layers.Dense(1, name=f"t{k}")(shared) for k in range(num_tasks)
    }
    return mtl_keras.MultiTaskModel(inputs, heads, shared=shared)


def _targets(rng, batch, num_tasks=3):
    return {
        f"t{k}": rng.normal(size=(batch, 1)).astype("float32") for k in range(num_tasks)
    }


def dense_net(rng):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    shared = keras.layers.Dense(5, activation="tanh")(hidden)
    return _multitask(inputs, shared), rng.normal(size=(5, 6)), 2


def conv_net(rng):
    inputs = keras.Input((8, 8, 2))
    hidden = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    hidden = keras.layers.Conv2D(
        3, 3, strides=2, activation="sigmoid", dilation_rate=1
    )(hidden)
    hidden = keras.layers.Conv2D(2, 2, dilation_rate=2, padding="same")(hidden)
    shared = keras.layers.Dense(6)(keras.layers.Flatten()(hidden))
    return _multitask(inputs, shared), rng.normal(size=(3, 8, 8, 2)), 4


def embedding_net(rng):
    inputs = keras.Input((7,), dtype="int32")
    hidden = keras.layers.Embedding(11, 4)(inputs)
    hidden = keras.layers.Conv1D(
        5, 3, padding="causal", dilation_rate=2, activation="relu"
    )(hidden)
    hidden = keras.layers.Conv1D(3, 2, strides=2)(hidden)
    shared = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling1D()(hidden))
    # Repeated ids: the equality of ids carries the Embedding's block.
    return _multitask(inputs, shared), rng.integers(0, 6, size=(4, 7)), 4


def transformer_net(rng):
    inputs = keras.Input((5, 8))
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(inputs, inputs)
    hidden = keras.layers.LayerNormalization()(inputs + attended)
    projected = keras.layers.EinsumDense(
        "abc,cd->abd", output_shape=(None, 8), bias_axes="d", activation="relu"
    )(hidden)
    feed = keras.layers.Dense(16, activation="gelu")(projected)
    feed = keras.layers.Dense(8)(feed)
    hidden = keras.layers.LayerNormalization()(hidden + feed)
    shared = keras.layers.GlobalAveragePooling1D()(hidden)
    return _multitask(inputs, shared), rng.normal(size=(3, 5, 8)), 3


def mobilenet(rng):
    backbone = keras.applications.MobileNetV2(
        weights=None,
        input_shape=(32, 32, 3),
        alpha=0.35,
        include_top=False,
        pooling="avg",
    )
    return (
        _multitask(backbone.input, backbone.output, num_tasks=2),
        rng.normal(size=(2, 32, 32, 3)),
        None,
    )


NETS = {
    "dense": dense_net,
    "conv": conv_net,
    "embedding": embedding_net,
    "transformer": transformer_net,
    "mobilenet_v2": mobilenet,
}


@pytest.fixture(scope="module", params=sorted(NETS))
def net(request):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model, x, factored = NETS[request.param](rng)
    x = tf.convert_to_tensor(x)
    y = {
        t: tf.convert_to_tensor(v)
        for t, v in _targets(rng, x.shape[0], len(model.task_names)).items()
    }
    return request.param, model, x, y, factored


def _step(model, balancer, method, x, y):
    model.compile(optimizer="sgd", loss="mse", balancer=balancer, jacobian=method)
    trainer = engine.get_backend().trainer(model)
    step, grads, _, _ = trainer.gradient_step(None, x, y, None)
    return (
        np.asarray(step.balance),
        np.asarray(step.gramian),
        np.concatenate([np.ravel(g) for g in grads]),
    )


def _relative(actual, expected):
    return float(
        np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30)
    )


def test_the_layers_are_factored(net):
    name, model, _, _, factored = net
    plan = gramian_lib.plan_for(model)
    if factored is None:  # MobileNetV2: every Conv2D (not the depthwise ones)
        factored = sum(type(layer) is keras.layers.Conv2D for layer in model.layers)
        assert factored > 10
    assert len(plan.layers) == factored, name
    kernels = {
        id(layer.kernel if hasattr(layer, "kernel") else layer.embeddings)
        for layer in plan.layers
    }
    assert not kernels & {id(v) for v in plan.fallback}
    assert len(plan.fallback) + factored == len(model.shared_variables)


@pytest.mark.parametrize("name", GRAMIAN_BALANCERS)
def test_same_weights_and_update_as_the_loop_engine(net, name):
    _, model, x, y, _ = net
    balancer = balancers.get(name)
    balancer.build_for_tasks(model.task_names)
    state = balancer.get_state()
    loop = _step(model, balancer, "loop", x, y)
    balancer.set_state(state)
    gramian = _step(model, balancer, "gramian", x, y)
    assert _relative(gramian[1], loop[1]) < TOLERANCE, "Gramian"
    assert _relative(gramian[0], loop[0]) < TOLERANCE, "weights"
    assert _relative(gramian[2], loop[2]) < TOLERANCE, "update"


def test_factored_and_direct_blocks_are_the_kernels_gramian():
    rng = np.random.default_rng(1)
    # Few examples: the factored form; many: the direct one. Both exact.
    for count, width_in, width_out in [(2, 9, 7), (60, 2, 3)]:
        inputs = rng.normal(size=(count, width_in)).astype("float32")
        deltas = rng.normal(size=(4, count, width_out)).astype("float32")
        grads = np.einsum("ni,kno->kio", inputs, deltas).reshape(4, -1)
        block = gramian_lib.factored_gramian(tf.constant(inputs), tf.constant(deltas))
        np.testing.assert_allclose(block, grads @ grads.T, rtol=1e-5, atol=1e-5)
    ids = rng.integers(0, 3, size=(6,)).astype("int32")
    deltas = rng.normal(size=(2, 6, 4)).astype("float32")
    table_grads = np.zeros((2, 5, 4), "float32")
    for n, token in enumerate(ids):
        table_grads[:, token] += deltas[:, n]
    table_grads = table_grads.reshape(2, -1)
    for vocabulary in (5, 10_000):  # factored, then direct by cost
        block = gramian_lib.factored_gramian(
            tf.constant(ids), tf.constant(deltas), vocabulary=vocabulary
        )
        np.testing.assert_allclose(block, table_grads @ table_grads.T, rtol=1e-5)


def test_fit_matches_the_loop_engine():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = _targets(rng, 16)
    finals = {}
    for method in ("loop", "gramian"):
        keras.utils.set_random_seed(0)
        model, _, _ = dense_net(rng)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss="mse",
            balancer="upgrad",
            jacobian=method,
        )
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
        finals[method] = (
            np.concatenate([np.ravel(v) for v in model.get_weights()]),
            history.history["loss"],
        )
    assert _relative(finals["gramian"][0], finals["loop"][0]) < 1e-4
    np.testing.assert_allclose(finals["gramian"][1], finals["loop"][1], rtol=1e-4)


def test_update_every_runs_the_gramian_engine():
    rng = np.random.default_rng(3)
    keras.utils.set_random_seed(0)
    model, x, _ = dense_net(rng)
    model.compile(
        optimizer="sgd", loss="mse", balancer="mgda", jacobian="gramian", update_every=2
    )
    history = model.fit(x, _targets(rng, 5), epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.parametrize("name", JACOBIAN_BALANCERS)
def test_balancers_that_need_the_jacobian_say_so(name):
    keras.utils.set_random_seed(0)
    model, _, _ = dense_net(np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs|jacobian='loop'"):
        model.compile(optimizer="sgd", loss="mse", balancer=name, jacobian="gramian")


def test_other_backends_are_refused_at_compile(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match="TensorFlow-only"):
        backend_lib.check_jacobian_method("gramian", balancers.get("upgrad"))


def test_a_custom_loop_is_told_to_use_the_model():
    shared = keras.Variable(np.ones((2,), "float32"))
    with tf.GradientTape(persistent=True) as tape:
        losses = [tf.reduce_sum(shared), tf.reduce_sum(shared**2)]
    with pytest.raises(ValueError, match="MultiTaskModel compiled with"):
        engine.balanced_gradients(
            tape, losses, [shared], [], "upgrad", jacobian="gramian"
        )


def test_mixed_precision_is_close_to_the_loop_engine():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 6)).astype("float32")
    y = _targets(rng, 8)
    weights = {}
    previous = keras.mixed_precision.dtype_policy()
    try:
        keras.mixed_precision.set_dtype_policy("mixed_float16")
        for method in ("loop", "gramian"):
            keras.utils.set_random_seed(0)
            model, _, _ = dense_net(rng)
            model.compile(optimizer="sgd", loss="mse", balancer="mgda", jacobian=method)
            history = model.fit(x, y, epochs=1, verbose=0)
            weights[method] = np.array(
                [history.history[f"t{k}_weight"][0] for k in range(3)]
            )
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    np.testing.assert_allclose(weights["gramian"], weights["loop"], rtol=2e-2)


def test_rep_mode_runs_the_loop_engine():
    # J over the representation is small: "gramian" takes the same path.
    finals = {}
    for method in ("loop", "gramian"):
        keras.utils.set_random_seed(0)
        model, x, _ = dense_net(np.random.default_rng(0))
        model.compile(optimizer="sgd", loss="mse", balancer="mgda_ub", jacobian=method)
        model.fit(x, _targets(np.random.default_rng(1), 5), epochs=2, verbose=0)
        finals[method] = np.concatenate([np.ravel(w) for w in model.get_weights()])
    np.testing.assert_array_equal(finals["gramian"], finals["loop"])
