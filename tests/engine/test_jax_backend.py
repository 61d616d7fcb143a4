"""The backend-neutral behaviour on JAX, checked in one subprocess.

Keras picks its backend at import, so the JAX checks (`_jax_checks.py`) run
in a child process with `KERAS_BACKEND=jax`; this module (on TensorFlow)
also trains and saves the `.keras` file the child continues, and continues
the child's file in turn. Skipped when JAX is not installed.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import mtl_keras

# One worker runs this module: its module-scoped fixture is built once.
pytestmark = [pytest.mark.xdist_group("test_jax_backend"),
              pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                                 reason="JAX not installed (pip install 'jax[cpu]')")]

HERE = pathlib.Path(__file__).parents[1]  # tests/: the worker scripts
sys.path.insert(0, str(HERE))
import _jax_checks as checks  # noqa: E402  (the same models and data)

STATEFUL = "gradvac"  # EMA targets and a random stream


@pytest.fixture(scope="module")
def jax_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jax")
    tf_file, jax_file = folder / "tf.keras", folder / "jax.keras"
    model = checks.build()
    model.compile(keras.optimizers.Adam(1e-2), loss=checks.LOSSES, balancer=STATEFUL)
    x, y = checks.data()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    model.save(tf_file)
    initial_file = folder / "initial.npz"
    initial_weights = checks.build(seed=3).get_weights()
    np.savez(initial_file, *initial_weights)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = folder / "results.json"
    completed = subprocess.run(
        [sys.executable, str(HERE / "_jax_checks.py"), str(out), str(tf_file),
         str(jax_file), str(initial_file)],
        env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(out.read_text())
    errors = {k: v for k, v in results.items() if isinstance(v, str)
              and v.startswith("error")}
    assert not errors, errors
    return {"results": results, "tf_model": model, "jax_file": jax_file,
            "initial_weights": initial_weights,
            "tf_state": [np.asarray(v) for v in model.balancer.non_trainable_variables]}


def test_runs_on_jax(jax_results):
    assert jax_results["results"]["check_backend"] == "jax"
    assert "jax" in mtl_keras.SUPPORTED_BACKENDS


def test_fixed_weights_train_exactly_like_keras_loss_weights(jax_results):
    assert jax_results["results"]["check_fixed_weights_equal_loss_weights"] < 1e-5


def test_update_every_trains_as_on_tensorflow(jax_results):
    on_jax = jax_results["results"]["check_update_every"]
    on_tensorflow = checks.train_update_every()
    for got, want in zip(on_jax, on_tensorflow):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_every_balancer_trains_on_jax_with_the_same_logs(jax_results):
    trained = jax_results["results"]["check_every_balancer_trains"]
    assert sorted(trained) == mtl_keras.balancers.available()
    for name, result in trained.items():
        first, last, keys = result
        assert np.isfinite([first, last]).all(), name
        assert last < first, (name, first, last)
        assert {"loss", "a_loss", "b_loss", "a_weight", "b_weight",
                "skipped_steps"} <= set(keys), (name, keys)
        balancer = mtl_keras.balancers.get(name)
        if isinstance(balancer, mtl_keras.balancers.GradientBalancer):
            assert {"grad_norm/a", "grad_norm/b"} <= set(keys), (name, keys)


def test_famo_measures_the_update_on_the_steps_own_forward_pass(jax_results):
    # See tests/engine/test_engine.py: logits still, one batch-norm update per step.
    assert jax_results["results"]["check_famo_post_step"] == [0.0, 0.0]


def test_vmap_and_loop_jacobians_agree(jax_results):
    assert jax_results["results"]["check_jacobian_methods_agree"] < 1e-5
    # Its Gramian from the per-task rows, few tasks and many, against NumPy.
    assert jax_results["results"]["check_gramian_of_rows"] < 1e-6


def test_loop_engine_holds_at_most_the_jacobian_on_jax(jax_results):
    # XLA's planned temporaries beyond plain Keras's, in |J|: with inner
    # products it interleaves the K backward passes and never holds J whole
    # (0.19 measured); column chunks hold J and about one chunk (1.12
    # measured; whole-value stacks held 1.50 on a trunk of width 512).
    ratios = jax_results["results"]["check_loop_engine_memory"]
    assert ratios["3"] < 0.5
    assert ratios["20"] < 1.25


@pytest.mark.parametrize("check", ["check_nonfinite_step_is_skipped",
                                   "check_nonfinite_rep_step_is_skipped"])
def test_nonfinite_step_is_skipped_on_jax(jax_results, check):
    skipped, unchanged, flags = jax_results["results"][check]
    assert skipped == 1.0 and unchanged
    # Row 0 has no label for task b (-1): only task a saw the NaN.
    assert flags == [1.0, 0.0]


def test_keras_file_moves_tf_to_jax_and_back(jax_results):
    continued = jax_results["results"]["check_continue_tf_file"]
    # JAX loaded the balancer state TF saved, and the optimizer's step count.
    for saved, loaded in zip(jax_results["tf_state"], continued["state"]):
        np.testing.assert_array_equal(saved, np.asarray(loaded, saved.dtype))
    assert continued["iterations"] == 2 * 2 + 2
    model = keras.saving.load_model(jax_results["jax_file"])
    for got, want in zip(model.get_weights(), continued["weights_after"]):
        np.testing.assert_array_equal(got, np.asarray(want, got.dtype))
    x, y = checks.data()
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][-1])
    assert int(model.optimizer.iterations.numpy()) == 8


def test_evaluation_and_masked_metrics_on_jax(jax_results):
    keys, val_loss, by_hand, unchanged = jax_results["results"][
        "check_evaluation_and_masked_metrics"]
    assert {"val_loss", "val_a_loss", "val_b_loss", "b_accuracy",
            "val_b_accuracy", "balanced_loss"} <= set(keys)
    assert "val_balanced_loss" not in keys and "val_grad_norm/a" not in keys
    np.testing.assert_allclose(val_loss, by_hand, rtol=1e-5)
    assert unchanged


def test_two_devices_train_like_one(tmp_path):
    """`keras.distribution.DataParallel` over two (faked) CPU devices gives
    the one-device update: the engine sees the global batch."""
    out = tmp_path / "dp.json"
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    completed = subprocess.run(
        [sys.executable, str(HERE / "_jax_checks.py"), str(out), "--data-parallel"],
        env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    gaps = json.loads(out.read_text())
    assert gaps.pop("devices") == 2
    # Float32 sums in another order: same weights to ~1e-5 after 4 steps.
    assert max(gaps.values()) < 1e-4, gaps


def test_dynamic_weight_average_on_jax(jax_results):
    a_weight, b_weight = jax_results["results"]["check_dynamic_weight_average"]
    np.testing.assert_allclose(a_weight[:2] + b_weight[:2], [1.0] * 4)
    # From the third epoch on, DWA's weights move and still sum to K = 2.
    np.testing.assert_allclose(np.add(a_weight, b_weight), 2.0, rtol=1e-5)
    assert a_weight[2:] != [1.0, 1.0]


def test_rep_mode_with_fixed_weights_equals_params_mode_on_jax(jax_results):
    # J over the representation pulled back through the trunk (and the L2
    # regularizer's own gradient) == Σ w_k ∇θ L_k over the parameters.
    assert jax_results["results"]["check_rep_mode_equals_params_mode"] < 1e-5
    # Named inputs, two shared tensors, a head that reads an input directly.
    assert jax_results["results"]["check_rep_mode_two_representations"] < 1e-5


def test_rep_mode_updates_batch_norm_statistics_on_jax(jax_results):
    # A BatchNormalization trunk: its statistics are those of the batch.
    gap, moved = jax_results["results"]["check_rep_mode_with_batch_norm"]
    assert gap < 1e-5 and moved


def test_mgda_ub_trains_on_jax_like_on_tensorflow(jax_results):
    jax_weights, jax_task_weights = jax_results["results"][
        "check_rep_mode_matches_tf"]
    tf_weights, tf_task_weights = checks.train_mgda_ub(
        jax_results["initial_weights"])
    # MGDA-UB chose non-trivial weights (neither one task nor equal), the
    # same on both backends ...
    assert 0.01 < tf_task_weights[0] < 0.99 and abs(tf_task_weights[0] - 0.5) > 0.1
    np.testing.assert_allclose(jax_task_weights, tf_task_weights, atol=1e-5)
    # ... and the four steps moved every trainable variable (the first
    # weights of `get_weights`) the same way.
    assert len(tf_weights) == 6
    for got, want, start in zip(jax_weights, tf_weights,
                                jax_results["initial_weights"]):
        want = np.asarray(want)
        assert not np.array_equal(want, start)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_custom_loop_over_the_representation_on_jax(jax_results):
    before, after, gap_to_hand, error = jax_results["results"][
        "check_custom_loop_over_representation"]
    assert after < 0.5 * before  # the docstring's loop lowers the loss
    assert gap_to_hand < 1e-5  # == MGDA on J over the representation, by hand
    assert "pass `representation=`" in error


def test_saved_model_export_on_jax(jax_results):
    keys, gap, same_class_ids = jax_results["results"]["check_saved_model_export"]
    assert keys == ["a", "b", "b_class_id", "b_probabilities"]
    assert gap < 1e-5 and same_class_ids


def test_log_keys_are_keras_model_s_on_jax(jax_results):
    ours, theirs, extras = jax_results["results"]["check_log_keys_of_named_metrics"]
    assert extras == ["a_weight", "b_weight", "skipped_steps"]
    assert set(ours) == set(theirs) | set(extras)
    assert {"a_hit", "b_hit", "val_a_hit", "val_b_hit"} <= set(ours)


def test_retry_after_failed_fit_on_jax(jax_results):
    error, traced_error, unchanged, loss = jax_results["results"][
        "check_retry_after_failed_fit"]
    assert "unknown ['bb'], missing ['b']" in error
    assert "bb" in traced_error
    assert unchanged  # the failed fit left the model's values in place
    assert np.isfinite(loss)


def test_task_board_on_jax(jax_results):
    train_tags, categories, validation_tags, steps = jax_results["results"][
        "check_task_board"]
    assert {"epoch_a_loss", "epoch_b_weight", "epoch_grad_norm/a",
            "epoch_grad_cos/a/b", "custom_scalars__config__"} <= set(train_tags)
    assert categories == ["Task losses", "Task weights", "Gradient norms",
                          "Gradient cosines"]
    assert {"epoch_a_loss", "epoch_b_loss"} <= set(validation_tags)
    assert steps == [0, 1]


def test_tfds_builder_feeds_fit_on_jax(jax_results):
    first, last = jax_results["results"]["check_tfds_builder_trains"]
    assert np.isfinite([first, last]).all() and last < 0.5 * first
