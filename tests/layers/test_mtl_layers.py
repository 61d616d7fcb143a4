"""Multi-task layers (`mtl_keras.architectures.LAYERS`): every class gets the
same harness (config, `.keras`, XLA, training, the fixed-weights gradient
equivalence, shared-variable detection), plus hand-checked values."""

import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from _tiny import LOSSES, tiny_data

from mtl_keras import architectures, balancers
from mtl_keras.architectures import (
    CGC,
    PLE,
    CrossStitch,
    DSelectK,
    MMoE,
    MTANAttention,
    SoftmaxGate,
)
from mtl_keras.model import MultiTaskModel

FIXED_WEIGHTS = (0.7, 0.3)


def _heads(towers):
    return {
        "a": keras.layers.Dense(3, activation="softmax", name="a")(towers[0]),
        "b": keras.layers.Dense(1, name="b")(towers[1]),
    }


# Per class: a tiny two-task network on `tiny_data` (inputs "x", 8 features),
# the layer instance under test, and the path prefixes of the variables that
# reach both tasks.
def _mmoe(gate="softmax"):
    inputs = keras.Input((8,), name="x")
    layer = MMoE(2, num_experts=3, expert_units=(8,), gate=gate, name="mmoe")
    return inputs, _heads(layer(inputs)), layer, ["mmoe/experts/"]


def _gated(gate):
    def build():
        inputs, outputs, mmoe, shared = _mmoe(gate)
        return inputs, outputs, mmoe.gates[0], shared
    return build


def _cgc():
    inputs = keras.Input((8,), name="x")
    layer = CGC(2, num_shared_experts=2, num_task_experts=1, expert_units=8,
                name="cgc")
    return inputs, _heads(layer(inputs)), layer, ["cgc/shared_experts/"]


def _ple():
    inputs = keras.Input((8,), name="x")
    layer = PLE(2, num_levels=2, expert_units=(8,), name="ple")
    shared = ["ple/level_0/shared_experts/", "ple/level_0/shared_gate/",
              "ple/level_0/task_experts_", "ple/level_1/shared_experts/"]
    return inputs, _heads(layer(inputs)), layer, shared


def _cross_stitch():
    inputs = keras.Input((8,), name="x")
    columns = architectures.cross_stitch_columns(
        inputs, lambda i, task: keras.layers.Dense(8, activation="tanh",
                                                   name=f"{task}_dense{i}"),
        tasks=["a", "b"], num_blocks=2, name="stitch")
    outputs = _heads([columns["a"], columns["b"]])
    model = keras.Model(inputs, outputs)
    layer = model.get_layer("stitch_0")
    return inputs, outputs, layer, ["a_dense0/", "b_dense0/", "stitch_0/"]


def _mtan():
    inputs = keras.Input((8,), name="x")
    p1 = keras.layers.Dense(8, activation="relu", name="trunk1")(inputs)
    first = MTANAttention(2, name="attention1")(p1)
    p2 = keras.layers.Dense(8, activation="relu", name="trunk2")(p1)
    layer = MTANAttention(2, hidden_units=4, name="attention2")
    return inputs, _heads(layer(p2, first)), layer, ["trunk1/", "trunk2/"]


BUILDERS = {
    CGC: _cgc,
    CrossStitch: _cross_stitch,
    DSelectK: _gated(DSelectK(num_experts=3, k=2, entropy_regularization=1e-3)),
    MMoE: _mmoe,
    MTANAttention: _mtan,
    PLE: _ple,
    SoftmaxGate: _gated(SoftmaxGate(num_experts=3, use_bias=True)),
}
CLASSES = [pytest.param(cls, id=cls.__name__) for cls in architectures.LAYERS]


def _network(cls, model_class=MultiTaskModel, seed=0):
    keras.utils.set_random_seed(seed)
    inputs, outputs, layer, _ = BUILDERS[cls]()
    return model_class(inputs, outputs), layer


class _FixedWeights(balancers.GramianBalancer):
    """A gradient balancer that always answers the same weights."""

    def compute_weights(self, task_losses, gramian):
        del gramian
        return keras.ops.cast(keras.ops.convert_to_tensor(FIXED_WEIGHTS),
                              task_losses.dtype)


def _fit(model, epochs=3, **compile_kwargs):
    x, y = tiny_data()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSSES,
                  **compile_kwargs)
    return model.fit(x, y, epochs=epochs, batch_size=16, shuffle=False,
                     verbose=0).history


def _task_loss_sum(history):
    return np.sum([history["a_loss"], history["b_loss"]], axis=0)


def test_every_layer_class_has_a_test_network():
    assert set(BUILDERS) == set(architectures.LAYERS)


@pytest.mark.parametrize("cls", CLASSES)
def test_config_round_trips(cls):
    _, layer = _network(cls)
    config = layer.get_config()
    assert cls.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer))
    assert type(revived) is cls and revived.get_config() == config


@pytest.mark.parametrize("cls", CLASSES)
def test_keras_file_gives_identical_outputs(cls, tmp_path):
    model, _ = _network(cls)
    _fit(model, epochs=1)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x, _ = tiny_data()
    want, got = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    for task in ("a", "b"):
        np.testing.assert_array_equal(got[task], want[task])
    assert [v.path for v in loaded.weights] == [v.path for v in model.weights]


# XLA compiles take seconds each: every class compiles a plain training step
# except those another case compiles inside it (SoftmaxGate is MMoE's
# default gate, CGC is each PLE level); MMoE compiles the gradient engine too.
_XLA_COVERED_BY = {SoftmaxGate: MMoE, CGC: PLE}


@pytest.mark.parametrize("cls, balancer", [
    *[pytest.param(cls, None, id=cls.__name__) for cls in architectures.LAYERS
      if cls not in _XLA_COVERED_BY],
    pytest.param(MMoE, "pcgrad", id="MMoE-pcgrad")])
def test_trains_under_xla(cls, balancer):
    model, _ = _network(cls)
    history = _fit(model, epochs=4, balancer=balancer, jit_compile=True)
    losses = _task_loss_sum(history)
    assert losses[-1] < losses[0], losses
    assert history["skipped_steps"] == [0.0] * 4


@pytest.mark.parametrize("cls", CLASSES)
def test_fixed_weights_balancer_trains_exactly_like_loss_weights(cls):
    """The gradient engine with constant w equals `keras.Model(loss_weights=w)`
    (params mode, every trainable variable, the DSelectK entropy loss too)."""
    ours, _ = _network(cls)
    theirs, _ = _network(cls, keras.Model)
    our_history = _fit(ours, epochs=2, balancer=_FixedWeights())
    their_history = _fit(theirs, epochs=2,
                         loss_weights=dict(zip("ab", FIXED_WEIGHTS)))
    assert len(ours.trainable_variables) == len(theirs.trainable_variables)
    for mine, keras_own in zip(ours.trainable_variables, theirs.trainable_variables):
        np.testing.assert_allclose(mine.numpy(), keras_own.numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=mine.path)
    # The balancer's objective Σ w_k L_k (+ regularization) is Keras' loss
    # with loss_weights=w; our `loss` keeps the task weights (1 here).
    np.testing.assert_allclose(our_history["balanced_loss"], their_history["loss"],
                               rtol=1e-5)


def _paths(variables):
    return sorted(v.path for v in variables)


@pytest.mark.parametrize("cls", CLASSES)
def test_variables_reaching_both_tasks_are_the_papers_shared_ones(cls):
    model, _ = _network(cls)
    _, _, _, prefixes = BUILDERS[cls]()
    shared = _paths(architectures.shared_variables(model))
    expected = [p for p in _paths(model.trainable_variables)
                if p.startswith(tuple(prefixes))]
    assert shared == expected
    reach = architectures.variables_by_task(model)
    heads = {task: [v for v in reach[task] if v.path not in shared]
             for task in ("a", "b")}
    assert heads["a"] and heads["b"]
    assert not {id(v) for v in heads["a"]} & {id(v) for v in heads["b"]}


@pytest.mark.parametrize("cls", CLASSES)
def test_model_finds_the_papers_shared_variables_itself(cls):
    """Without `shared=`, `MultiTaskModel` looks inside layers: per-task
    gates, CGC's task experts and MTAN's masks are heads, not shared."""
    model, _ = _network(cls)
    _, _, _, prefixes = BUILDERS[cls]()
    expected = [p for p in _paths(model.trainable_variables)
                if p.startswith(tuple(prefixes))]
    assert _paths(model.shared_variables) == expected
    assert not {v.path for v in model.head_variables} & set(expected)


# ---------------------------------------------------------------- hand values


def test_smooth_step_by_hand():
    t = np.array([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 2.0], "float32")
    got = keras.ops.convert_to_numpy(architectures.smooth_step(t, 1.0))
    cubic = -2 * 0.25**3 + 1.5 * 0.25 + 0.5  # 0.84375
    np.testing.assert_allclose(got, [0, 0, 1 - cubic, 0.5, cubic, 1, 1], atol=1e-7)


def test_dselect_k_selects_k_experts_once_saturated():
    gate = DSelectK(num_experts=4, k=2)
    gate.build((None, 3))
    # Selector 0 codes expert 1 (digits 1, 0), selector 1 expert 2 (0, 1),
    # saturated through the bias; mixture logits favour selector 0.
    gate.selector_logits.kernel.assign(np.zeros((3, 4), "float32"))
    gate.selector_logits.bias.assign(np.array([5, -5, -5, 5], "float32"))
    gate.mixture_logits.kernel.assign(np.zeros((3, 2), "float32"))
    gate.mixture_logits.bias.assign(np.log(np.array([3.0, 1.0], "float32")))
    weights = keras.ops.convert_to_numpy(gate(np.ones((2, 3), "float32")))
    np.testing.assert_allclose(weights, [[0, 0.75, 0.25, 0]] * 2, atol=1e-6)


def test_dselect_k_weights_are_a_distribution_for_any_expert_count():
    for num_experts in (1, 3, 5, 8):
        gate = DSelectK(num_experts=num_experts, k=1)
        x = np.random.RandomState(0).randn(4, 6).astype("float32")
        weights = keras.ops.convert_to_numpy(gate(x))
        assert weights.shape == (4, num_experts)
        assert (weights >= 0).all()
        np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-5)


def test_dselect_k_entropy_regulariser_is_added():
    # Seeded: the initial digits are random, and their distance from 1/2 (so
    # the entropy's from log 4) depends on the draw.
    keras.utils.set_random_seed(0)
    gate = DSelectK(num_experts=4, k=2, entropy_regularization=0.1)
    gate(np.ones((2, 3), "float32"))
    # At initialisation every digit is ≈ 1/2: each selector is ≈ uniform over
    # 4 experts, entropy ≈ log 4, two selectors.
    np.testing.assert_allclose(float(gate.losses[0]), 0.1 * 2 * np.log(4),
                               rtol=5e-3)


def test_mmoe_output_by_hand():
    layer = MMoE(2, num_experts=2, expert_units=(3,))
    x = np.random.RandomState(0).randn(5, 4).astype("float32")
    towers = [keras.ops.convert_to_numpy(t) for t in layer(x)]
    kernel, bias = (v.numpy() for v in layer.experts.weights)
    experts = np.maximum(np.einsum("bi,eij->bej", x, kernel) + bias, 0)
    for task in range(2):
        logits = x @ layer.gates[task].logits.kernel.numpy()
        gate = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        np.testing.assert_allclose(towers[task],
                                   np.einsum("bej,be->bj", experts, gate),
                                   rtol=1e-5, atol=1e-6)


def test_omoe_gives_every_task_the_same_mixture():
    layer = MMoE(3, num_experts=4, expert_units=5, single_gate=True)
    towers = layer(np.ones((2, 6), "float32"))
    assert len(layer.gates) == 1 and len(towers) == 3
    for tower in towers[1:]:
        np.testing.assert_array_equal(tower, towers[0])


def test_cgc_task_output_ignores_other_tasks_experts():
    layer = CGC(2, num_shared_experts=1, num_task_experts=1, expert_units=4,
                shared_output=True)
    x = np.random.RandomState(1).randn(3, 5).astype("float32")
    before = [keras.ops.convert_to_numpy(t) for t in layer(x)]
    kernel = layer.task_experts[1].weights[0]
    kernel.assign(kernel.numpy() + 1.0)
    after = [keras.ops.convert_to_numpy(t) for t in layer(x)]
    np.testing.assert_array_equal(after[0], before[0])  # task 0: unchanged
    assert np.abs(after[1] - before[1]).max() > 1e-3
    assert np.abs(after[2] - before[2]).max() > 1e-3  # the shared gate mixes all


def test_cross_stitch_initial_matrix_and_mixing():
    unit = CrossStitch(self_weight=0.8)
    xs = [np.full((2, 3), value, "float32") for value in (1.0, 2.0, 4.0)]
    mixed = [keras.ops.convert_to_numpy(t) for t in unit(xs)]
    np.testing.assert_allclose(unit.alpha.numpy(),
                               [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    for got, want in zip(mixed, (1.4, 2.1, 3.5)):
        np.testing.assert_allclose(got, np.full((2, 3), want), rtol=1e-6)


def test_mtan_masks_select_the_shared_features():
    features = np.random.RandomState(2).randn(2, 4, 4, 3).astype("float32")
    previous = [np.ones((2, 4, 4, 5), "float32")] * 2
    layer = MTANAttention(2)
    attended = layer(features, previous)
    masks = layer.masks(features, previous)
    assert layer.hidden_layers[0].kernel.shape == (8, 3)
    for mask, out in zip(masks, attended):
        mask = keras.ops.convert_to_numpy(mask)
        assert ((mask > 0) & (mask < 1)).all()
        np.testing.assert_allclose(out, mask * features, rtol=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda: MMoE(2, gate="sparse"), "unknown gate 'sparse'"),
    (lambda: MMoE(2, expert_units=(0,)), "expert_units"),
    (lambda: DSelectK(num_experts=2, k=3), "1 <= k <= num_experts"),
    (lambda: CrossStitch()([keras.Input((3,))]), "at least two"),
    (lambda: CrossStitch()([keras.Input((3,)), keras.Input((4,))]), "one shape"),
    (lambda: CGC(2)([keras.Input((3,))] * 2), "list of 3"),
    (lambda: MTANAttention(2)(keras.Input((3,)), [keras.Input((3,))]),
     "one tensor per task"),
])
def test_bad_arguments_say_what_to_fix(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


# ------------------------------------------------------- every balancer trains

# Each balancer (aliases of one method skipped) trains one architecture,
# assigned round robin, so every balancer and every layer class meets training
# at tiny sizes in one fit each; MMoE additionally trains with every balancer
# in the benchmark-sized scripts. Rep-mode balancers need `shared=` tensors,
# which these multi-output layers do not have as one tensor yet.
_METHODS = sorted({
    name for name in balancers.available()
    if name not in ("ew", "equal", "mgda_ub")
})


def _balancer_cases():
    for index, name in enumerate(_METHODS):
        cls = architectures.LAYERS[index % len(architectures.LAYERS)]
        yield pytest.param(name, cls, id=f"{name}-{cls.__name__}")


@pytest.mark.parametrize("name, cls", _balancer_cases())
def test_every_balancer_trains_an_architecture(name, cls):
    model, _ = _network(cls)
    x, y = tiny_data()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=LOSSES,
                  balancer=name)
    history = model.fit(x, y, epochs=3, batch_size=16, shuffle=False,
                        verbose=0).history
    losses = _task_loss_sum(history)
    assert losses[-1] < losses[0], losses
    assert all(np.isfinite(v.numpy()).all() for v in model.weights)


def test_round_robin_covers_every_layer_class():
    covered = {cls for _, cls in (case.values for case in _balancer_cases())}
    assert covered == set(architectures.LAYERS)


# ------------------------------------------------------------- tf.distribute


def test_mmoe_mirrored_step_equals_single_device_step(tmp_path):
    """MMoE (DSelect-k gates) with a gradient balancer: 2 replicas give the
    update of one device on the whole batch (one process per configuration:
    tensorflow#62790)."""
    out = tmp_path / "weights.npz"
    here = pathlib.Path(__file__).parents[1]  # the workers sit in tests/
    result = subprocess.run(
        [sys.executable, str(here / "_mmoe_distributed_worker.py"), "mgda",
         str(out)], capture_output=True, text=True, timeout=300, cwd=here,
        # This checkout's mtl_keras, not an installed one.
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(here.parent), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 0, result.stderr[-4000:]
    arrays = list(np.load(out).values())
    half = len(arrays) // 2
    assert half > 0
    for mirrored, single in zip(arrays[:half], arrays[half:]):
        np.testing.assert_allclose(mirrored, single, rtol=1e-5, atol=1e-6)


def test_architectures_guide_example_runs(capsys):
    guide = pathlib.Path(__file__).parents[2] / "docs" / "guides" / "architectures.md"
    section = guide.read_text().split("## An MMoE", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    exec(compile(block, str(guide), "exec"), {})
    assert capsys.readouterr().out.strip() == "2"


# ------------------------------------------ reference networks and compare


@pytest.mark.parametrize("architecture", ["mmoe", "mtan"])
def test_reference_networks_take_an_architecture(architecture):
    hard = architectures.shapes_network(image_size=16, width=4)
    soft = architectures.shapes_network(image_size=16, width=4,
                                        architecture=architecture)
    assert soft.output_shape == hard.output_shape
    layer = soft.get_layer(architecture)
    assert isinstance(layer, {"mmoe": MMoE, "mtan": MTANAttention}[architecture])
    # The trunk stays the shared tensor; the layer's task parts are heads.
    assert _paths(soft.shared_variables) == _paths(hard.shared_variables)
    reach = architectures.variables_by_task(soft)
    own = {task: {v.path for v in reach[task] if v.path.startswith(architecture)}
           for task in soft.task_names}
    mnist = architectures.multi_mnist_lenet(architecture=architecture)
    assert mnist.output_shape == architectures.multi_mnist_lenet().output_shape
    if architecture == "mtan":  # one mask per task, reaching only that task
        assert not own["cls"] & own["seg"]
    with pytest.raises(ValueError, match="Unknown architecture 'moe'"):
        architectures.shapes_network(architecture="moe")


def test_compare_cli_passes_the_architecture(monkeypatch):
    from mtl_keras import cli, compare

    seen = {}

    def fake_compare(data, methods, **kwargs):
        seen.update(kwargs, data=data)
        raise SystemExit(0)

    monkeypatch.setattr(compare, "compare", fake_compare)
    with pytest.raises(SystemExit):
        cli.main(["compare", "--balancers", "ew", "--architecture", "mtan"])
    assert seen["architecture"] == "mtan"
    data = compare.load_data("shapes", train_size=8, test_size=8,
                             architecture="mmoe")
    assert isinstance(data.build_model(("cls",)).get_layer("mmoe"), MMoE)


def test_tuning_can_choose_the_architecture():
    import keras_tuner as kt

    from mtl_keras import tuning

    hp = kt.HyperParameters()
    build = tuning.shapes_builder(["hard", "mtan"])
    assert "mtan" not in [layer.name for layer in build(hp).layers]
    assert hp.values["architecture"] == "hard"
    hp.values["architecture"] = "mtan"
    assert isinstance(build(hp).get_layer("mtan"), MTANAttention)
    with pytest.raises(ValueError, match="Unknown architectures"):
        tuning.shapes_builder(["cross"])
