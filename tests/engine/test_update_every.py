"""`update_every=N`: the weights of every gradient balancer refreshed every N
steps, one backward pass of `Σ w_k L_k` with the cached weights in between
(`mtl_keras.engine.UpdateEvery`, around any gradient balancer)."""

import io
import json
import warnings
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from mtl_keras import balancers, engine
from mtl_keras.engine import UpdateEvery
from mtl_keras.engine.tensorflow import task_jacobian
from tests._tiny import LOSSES, max_weight_difference, tiny_data, tiny_network

GRADIENT_METHODS = sorted(
    name for name in balancers.available()
    if isinstance(balancers.get(name), balancers.GradientBalancer))


def _train(name, steps=4, update_every=None, **balancer_kwargs):
    model = tiny_network()
    balancer = balancers.get(name, **balancer_kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=LOSSES,
                  balancer=balancer, update_every=update_every)
    x, y = tiny_data(n=16 * steps)
    history = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    return model, history.history


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_update_every_one_is_the_default_exactly(name):
    default, _ = _train(name, steps=3)
    explicit, _ = _train(name, steps=3, update_every=1)
    assert max_weight_difference(default, explicit) == 0.0
    # No extra state: a `.keras` file of either has the same variables.
    assert len(default.variables) == len(explicit.variables)
    assert explicit.update_schedule is None
    assert "update_every" not in explicit.balancer.get_config()
    assert explicit.get_compile_config()["update_every"] == 1


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_every_gradient_balancer_trains_with_update_every(name):
    model, history = _train(name, steps=6, update_every=3)
    assert all(np.isfinite(v.numpy()).all() for v in model.weights)
    assert history["skipped_steps"] == [0.0]
    # Two refreshes in six steps; the countdown is back at zero.
    assert int(model.update_schedule.steps_to_refresh.numpy()) == 0
    # The balancer holds its method's state only.
    assert not {"cached_weights", "steps_to_refresh"} & {
        v.name for v in model.balancer.variables}
    restored = UpdateEvery.from_config(model.update_schedule.get_config())
    assert restored.every == 3
    assert type(restored.balancer) is type(model.balancer)


def _custom_loop_step(model, balancer, x, y):
    trunk = model.get_layer("trunk").trainable_variables
    heads = [v for task in ("a", "b")
             for v in model.get_layer(task).trainable_variables]
    with tf.GradientTape(persistent=True) as tape:
        outputs = model(x, training=True)
        task_losses = keras.ops.stack([
            keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
                y["a"], outputs["a"])),
            keras.ops.mean(keras.losses.mean_squared_error(y["b"], outputs["b"]))])
    result = engine.balanced_gradients(tape, task_losses, trunk, heads, balancer)
    weighted = tape.gradient(task_losses, trunk + heads,
                             output_gradients=result.weights)
    jacobian = task_jacobian(tape, task_losses, trunk)
    fresh = balancers.get("mgda").balance(task_losses,
                                          engine.core.gramian_of(jacobian))
    return result, weighted, fresh, trunk + heads


def test_cached_steps_apply_the_last_refreshed_weights():
    model = tiny_network()
    balancer = UpdateEvery(balancers.MGDA(), every=3)
    optimizer = keras.optimizers.SGD(0.5)
    x, y = tiny_data(n=96)
    refreshed = None
    for step in range(5):
        batch = slice(16 * step, 16 * (step + 1))
        result, weighted, fresh, variables = _custom_loop_step(
            model, balancer, x[batch], {k: v[batch] for k, v in y.items()})
        # Every step's gradients are those of Σ w_k L_k for the weights used.
        for got, want in zip(result.grads, weighted):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        if step % 3 == 0:  # refresh: MGDA's own weights on this batch
            assert bool(result.balanced)
            np.testing.assert_allclose(result.weights, fresh, atol=1e-5)
            refreshed = np.array(result.weights)
        else:  # cached: the refresh's weights, not this batch's
            assert not bool(result.balanced)
            np.testing.assert_array_equal(result.weights, refreshed)
            assert np.abs(np.array(fresh) - refreshed).max() > 1e-4
        optimizer.apply(result.grads, variables)


def test_resume_mid_cycle_continues_exactly(tmp_path):
    x, y = tiny_data(n=96)

    def fit(model, steps, start):
        batch = slice(16 * start, 16 * (start + steps))
        model.fit(x[batch], {k: v[batch] for k, v in y.items()}, batch_size=16,
                  epochs=1, shuffle=False, verbose=0)

    straight = tiny_network()
    straight.compile(optimizer="adam", loss=LOSSES,
                     balancer=balancers.PCGrad(seed=1), update_every=4)
    fit(straight, 6, 0)

    first = tiny_network()
    first.compile(optimizer="adam", loss=LOSSES,
                  balancer=balancers.PCGrad(seed=1), update_every=4)
    fit(first, 2, 0)
    path = str(tmp_path / "mid_cycle.keras")
    first.save(path)
    resumed = keras.models.load_model(path)
    assert int(resumed.update_schedule.steps_to_refresh.numpy()) == 2
    fit(resumed, 4, 2)
    assert max_weight_difference(straight, resumed) == 0.0


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "8"])
def test_bad_update_every_names_the_fix(bad):
    with pytest.raises(ValueError, match="update_every must be a whole number"):
        UpdateEvery("upgrad", bad)
    with pytest.raises(ValueError, match="update_every must be a whole number"):
        tiny_network().compile(optimizer="sgd", loss=LOSSES, balancer="upgrad",
                               update_every=bad)
    with pytest.raises(ValueError, match="update_every must be a whole number"):
        balancers.UPGrad(update_every=bad)


def test_update_every_needs_a_gradient_balancer():
    for balancer in ("uw", None):
        with pytest.raises(ValueError, match="gradient balancer"):
            tiny_network().compile(optimizer="sgd", loss=LOSSES,
                                   balancer=balancer, update_every=2)
    with pytest.raises(ValueError, match="disagree"):
        with pytest.warns(DeprecationWarning):
            balancer = balancers.MGDA(update_every=3)
        tiny_network().compile(optimizer="sgd", loss=LOSSES, balancer=balancer,
                               update_every=2)


def test_the_deprecated_spelling_trains_the_same(tmp_path):
    new, _ = _train("nash_mtl", steps=5, update_every=3)
    with pytest.warns(DeprecationWarning, match=r"compile\(\.\.\., update_every=N\)"):
        balancer = balancers.NashMTL(update_every=3)
    old = tiny_network()
    old.compile(optimizer=keras.optimizers.SGD(0.05), loss=LOSSES,
                balancer=balancer)
    x, y = tiny_data(n=16 * 5)
    old.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert old.update_schedule.every == 3
    assert max_weight_difference(new, old) == 0.0
    # Saved and loaded, it keeps the same schedule.
    old.save(str(tmp_path / "old_spelling.keras"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = keras.models.load_model(str(tmp_path / "old_spelling.keras"))
    assert loaded.update_schedule.every == 3


def _as_file_before_update_every(path, legacy_path, state_index):
    """Rewrites a `.keras` file as mtl_keras 0.2.0 wrote it: `update_every`
    in the balancer's config and the cache (cached weights, countdown) among
    the balancer's variables, at `state_index` (after those of
    `build_state`), no `update_schedule` layer."""
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    compile_config = config["compile_config"]
    every = compile_config.pop("update_every")
    compile_config["balancer"]["config"]["update_every"] = every
    files["config.json"] = json.dumps(config).encode()
    buffer = io.BytesIO(files["model.weights.h5"])
    with h5py.File(buffer, "r+") as weights:
        cache = [weights[f"update_schedule/vars/{i}"][()] for i in range(2)]
        del weights["update_schedule"]
        group = weights["balancer/vars"]
        own = [group[str(i)][()] for i in range(len(group))]
        for key in list(group):
            del group[key]
        legacy = own[:state_index] + cache + own[state_index:]
        for i, value in enumerate(legacy):
            group.create_dataset(str(i), data=value)
    files["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(legacy_path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


@pytest.mark.parametrize("name, state_index", [("mgda", 0), ("db_mtl", 1)])
def test_a_file_saved_before_update_every_was_a_wrapper_resumes(
        tmp_path, name, state_index):
    x, y = tiny_data(n=96)

    def fit(model, steps, start):
        batch = slice(16 * start, 16 * (start + steps))
        model.fit(x[batch], {k: v[batch] for k, v in y.items()}, batch_size=16,
                  epochs=1, shuffle=False, verbose=0)

    def compiled():
        model = tiny_network()
        model.compile(optimizer="adam", loss=LOSSES, balancer=name,
                      update_every=4)
        return model

    straight = compiled()
    fit(straight, 6, 0)
    first = compiled()
    fit(first, 2, 0)
    cache = [v.numpy() for v in first.update_schedule.variables]
    first.save(str(tmp_path / "new.keras"))
    _as_file_before_update_every(str(tmp_path / "new.keras"),
                                 str(tmp_path / "old.keras"), state_index)
    with pytest.warns(DeprecationWarning, match="update_every=N"):
        resumed = keras.models.load_model(str(tmp_path / "old.keras"))
    assert resumed.update_schedule.every == 4
    np.testing.assert_array_equal(resumed.update_schedule.cached_weights, cache[0])
    assert int(resumed.update_schedule.steps_to_refresh.numpy()) == 2
    assert 0 < cache[0].min() and cache[0].max() < 1  # not the initial ones
    fit(resumed, 4, 2)
    assert max_weight_difference(straight, resumed) == 0.0
