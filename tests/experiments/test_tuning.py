"""KerasTuner search over task weights and balancers (`mtl_keras.tuning`)."""

import glob
import os

import keras
import keras_tuner as kt
import numpy as np
import pytest
import tensorflow as tf
from _tiny import LOSSES, tiny_data, tiny_network
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorboard.plugins.hparams import plugin_data_pb2

from mtl_keras import balancers as balancers_lib
from mtl_keras import cli, tuning
from mtl_keras.callbacks.dynamic_weight_average import dwa_weights
from mtl_keras.model import MultiTaskModel

# One worker runs this module: its module-scoped fixture is built once.
pytestmark = pytest.mark.xdist_group("test_tuning")

METRICS = {"a": ["accuracy"], "b": ["mae"]}
REFERENCES = {"a": {"accuracy": 0.5}, "b": {"mae": 1.0}}


class FitCounter(keras.callbacks.Callback):
    """Counts `fit` calls. KerasTuner deep-copies callbacks per trial, so the
    count lives on the class."""

    fits = 0

    def on_train_begin(self, logs=None):
        FitCounter.fits += 1


def _search(directory, **overrides):
    kwargs = dict(
        build_model=lambda hp: tiny_network(),
        train_data=tiny_data(64),
        validation_data=tiny_data(32, seed=2),
        losses=LOSSES, metrics=METRICS, references=REFERENCES,
        tuner="random", max_trials=2, epochs=1, directory=str(directory),
        project_name="search", seed=1, verbose=0,
        compile_kwargs={"run_eagerly": True}, fit_kwargs={"batch_size": 32},
    )
    kwargs.update(overrides)
    return tuning.search(**kwargs)


def _trial_values(result):
    return [{k: v for k, v in row.items() if k not in ("score", "status")}
            for row in result.trials]


@pytest.fixture(scope="module")
def random_result(tmp_path_factory):
    root = tmp_path_factory.mktemp("random")
    return _search(root, epochs=2, balancers=["static", "uw", "dwa"],
                   weights="simplex", logdir=str(root / "logs"))


# ------------------------------------------------------------ the searches


def test_random_search_scores_every_trial_with_delta_m(random_result):
    assert random_result.objective == "val_delta_m"
    assert len(random_result.trials) == 2
    assert all(row["status"] == "COMPLETED" for row in random_result.trials)
    scores = [row["score"] for row in random_result.trials]
    assert random_result.best_score == pytest.approx(min(scores))
    assert random_result.best_balancer in ("static", "uw", "dwa")


def test_objective_is_delta_m_of_the_logged_metrics(random_result):
    oracle = random_result.tuner.oracle
    for trial in oracle.trials.values():
        def logged(name, trial=trial):
            return trial.metrics.get_history(name)[-1].value[0]

        by_hand = ((-(logged("val_a_accuracy") - 0.5) / 0.5)
                   + (logged("val_b_mae") - 1.0) / 1.0) / 2 * 100
        assert logged("val_delta_m") == pytest.approx(by_hand, rel=1e-6)
        assert trial.score == pytest.approx(by_hand, rel=1e-6)


def test_best_task_weights_follow_the_simplex_hyperparameters(random_result):
    values = random_result.best_hyperparameters
    weights = random_result.best_task_weights
    if values["balancer"] == "dwa":
        assert weights is None
    else:
        assert sum(weights.values()) == pytest.approx(2.0)
        assert weights["a"] / weights["b"] == pytest.approx(values["weight_ratio_a"])


def test_each_trial_logs_to_its_own_folder_with_hparams(random_result):
    logdir = os.path.join(random_result.tuner.directory, "logs")
    for row in random_result.trials:
        run = os.path.join(logdir, row["trial"], "execution0")
        hparams = {}
        for path in glob.glob(os.path.join(run, "events.out.tfevents.*")):
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    if value.tag == "_hparams_/session_start_info":
                        data = plugin_data_pb2.HParamsPluginData.FromString(
                            value.metadata.plugin_data.content)
                        hparams = dict(data.session_start_info.hparams)
        assert hparams["balancer"].string_value == row["balancer"]
        tags = set()
        for path in glob.glob(os.path.join(run, "validation", "events.out.*")):
            for event in tf.compat.v1.train.summary_iterator(path):
                tags |= {value.tag for value in event.summary.value}
        assert "epoch_delta_m" in tags


def test_summary_lists_trials_best_first(random_result):
    text = str(random_result)
    assert text == random_result.summary()
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("trial"))
    assert lines[header].split()[:4] == ["trial", "score", "status", "balancer"]
    best = min(random_result.trials, key=lambda row: row["score"])
    assert lines[header + 2].split()[0] == best["trial"]
    assert f"Best score: {random_result.best_score:.4g}" in text


@pytest.mark.parametrize("tuner, balancers", [
    ("bayesian", ["static", "uw", "dwa"]),
    ("hyperband", ["cagrad", "upgrad"]),  # gradient balancers
])
def test_other_tuners_run_trials_and_write_the_objective(tmp_path, tuner, balancers):
    # Graph mode: the gradient balancers' in-graph solvers are slow eagerly.
    result = _search(tmp_path, tuner=tuner, epochs=2, references=None,
                     weights="log_uniform", balancers=balancers, compile_kwargs={})
    completed = [r for r in result.trials if r["status"] == "COMPLETED"]
    assert len(completed) >= 2
    for trial in result.tuner.oracle.trials.values():
        losses = [trial.metrics.get_history(f"val_{t}_loss")[-1].value[0]
                  for t in ("a", "b")]
        logged = trial.metrics.get_history("val_geometric_mean_loss")[-1].value[0]
        assert logged == pytest.approx(np.sqrt(losses[0] * losses[1]), rel=1e-6)


def _build_with_width(hp):
    units = hp.Choice("units", [4, 8])
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,), name="x")
    shared = keras.layers.Dense(units, activation="tanh")(inputs)
    outputs = {"a": keras.layers.Dense(3, activation="softmax", name="a")(shared),
               "b": keras.layers.Dense(1, name="b")(shared)}
    return MultiTaskModel(inputs, outputs, shared=shared)


def test_grid_search_visits_exactly_the_grid(tmp_path):
    result = _search(tmp_path, tuner="grid", build_model=_build_with_width,
                     max_trials=None, weights=None, balancers=["static", "rlw"],
                     references=None)
    visited = [(row["units"], row["balancer"]) for row in result.trials]
    assert sorted(visited) == sorted(
        [(4, "static"), (4, "rlw"), (8, "static"), (8, "rlw")])
    assert all(row["status"] == "COMPLETED" for row in result.trials)


def test_grid_weights_use_a_multiplicative_step(tmp_path):
    hypermodel = tuning.MultiTaskHyperModel(
        lambda hp: tiny_network(), LOSSES, weight_range=(0.1, 10.0), weight_step=10.0)
    hp = kt.HyperParameters()
    hypermodel.build(hp)
    assert sorted(hp.space[0].values) == pytest.approx([0.1, 1.0, 10.0])
    assert hp.values == {"weight_a": 1.0, "weight_b": 1.0}


def test_resumed_search_continues_from_its_oracle(tmp_path):
    first = _search(tmp_path, max_trials=1, weights="log_uniform")
    FitCounter.fits = 0
    resumed = _search(tmp_path, max_trials=2, weights="log_uniform",
                      callbacks=[FitCounter()], overwrite=False)
    assert FitCounter.fits == 1
    assert len(resumed.trials) == 2
    assert resumed.trials[0] == first.trials[0]


def test_a_seed_makes_the_trial_sequence_reproducible(tmp_path):
    settings = dict(max_trials=2, references=None, weights="log_uniform",
                    balancers=["static", "uw", "rlw"])
    first = _search(tmp_path / "a", seed=5, **settings)
    again = _search(tmp_path / "b", seed=5, **settings)
    other = _search(tmp_path / "c", seed=6, **settings)
    assert _trial_values(first) == _trial_values(again)
    assert _trial_values(first) != _trial_values(other)


# -------------------------------------------------- bad input, no training


@pytest.mark.parametrize("overrides, message", [
    ({"objective": "val_foo"}, "No callback logs the objective 'val_foo'"),
    ({"objective": kt.Objective("val_a_acc", "max")}, "No callback logs"),
    ({"objective": "val_a_weight"}, "Cannot tell whether .* minimised or maximised"),
    ({"references": {"a": {"accuracy": 0.5}}}, r"without a reference \['b'\]"),
    ({"references": {"a": {"accuracy": 0.5}, "b": {"rmse": 1.0}}},
     r"references\['b'\] scores \['rmse'\]"),
    ({"balancers": ["static", "nope"]}, r"Unknown balancer\(s\) \['nope'\]"),
    ({"weights": "uniform"}, "Unknown weights mode 'uniform'"),
    ({"tuner": "annealing"}, "Unknown tuner 'annealing'"),
])
def test_bad_input_fails_before_any_training(tmp_path, overrides, message):
    FitCounter.fits = 0
    with pytest.raises(ValueError, match=message):
        _search(tmp_path, callbacks=[FitCounter()], **overrides)
    assert FitCounter.fits == 0
    assert not os.path.exists(tmp_path / "search")


def test_objective_may_name_any_logged_value(tmp_path):
    result = _search(tmp_path, max_trials=1, objective="val_a_accuracy")
    assert result.objective == "val_a_accuracy"
    assert result.direction == result.tuner.oracle.objective.direction == "max"
    assert "(higher is better)" in result.summary()
    assert result.best_score == pytest.approx(
        result.tuner.oracle.get_best_trials(1)[0].metrics.get_history(
            "val_a_accuracy")[-1].value[0])


# ------------------------------------------------- the hypermodel by parts


def _build_with(hypermodel, **values):
    """Builds once to declare the space, then with the given values."""
    hp = kt.HyperParameters()
    hypermodel.build(hp)
    hp.values.update(values)
    hp.ensure_active_values()  # as the oracles do: defaults for new actives
    return hp, hypermodel.build(hp)


def test_weight_modes_set_the_model_task_weights():
    log_uniform = tuning.MultiTaskHyperModel(lambda hp: tiny_network(), LOSSES)
    _, model = _build_with(log_uniform, weight_a=0.3, weight_b=20.0)
    assert model.get_task_weights() == pytest.approx({"a": 0.3, "b": 20.0})

    simplex = tuning.MultiTaskHyperModel(lambda hp: tiny_network(), LOSSES,
                                         weights="simplex")
    hp, model = _build_with(simplex, weight_ratio_a=4.0)
    assert [h.name for h in hp.space] == ["weight_ratio_a"]
    assert model.get_task_weights() == pytest.approx({"a": 1.6, "b": 0.4})

    fixed = tuning.MultiTaskHyperModel(lambda hp: tiny_network(), LOSSES,
                                       weights=None)
    hp, model = _build_with(fixed)
    assert hp.space == []
    assert model.get_task_weights() == {"a": 1.0, "b": 1.0}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(1e-2, 1e2), min_size=1, max_size=5))
def test_simplex_weights_sum_to_k_and_keep_the_ratios(ratios):
    tasks = [f"t{i}" for i in range(len(ratios) + 1)]
    weights = tuning.simplex_weights([*ratios, 1.0], tasks)
    assert sum(weights.values()) == pytest.approx(len(tasks))
    for task, ratio in zip(tasks, ratios, strict=False):
        assert weights[task] / weights[tasks[-1]] == pytest.approx(ratio)


def test_balancer_hyperparameters_reach_the_balancer():
    hypermodel = tuning.MultiTaskHyperModel(
        lambda hp: tiny_network(), LOSSES, balancers=["static", "uw", "dwa", "cagrad"])
    hp, model = _build_with(hypermodel, balancer="uw", uw_form="positive")
    assert {"balancer", "uw_form", "dwa_temperature", "cagrad_c"} <= {
        h.name for h in hp.space}
    assert model.balancer.form == "positive"
    _, model = _build_with(hypermodel, balancer="cagrad", cagrad_c=0.7)
    assert isinstance(model.balancer, balancers_lib.CAGrad)
    assert model.balancer.c == pytest.approx(0.7)
    _, model = _build_with(hypermodel, balancer="dwa")
    assert model.balancer is None


def test_gradnorm_alpha_and_learning_rate_are_searched():
    hypermodel = tuning.MultiTaskHyperModel(
        lambda hp: tiny_network(), LOSSES, balancers=["gradnorm"], weights=None)
    hp, model = _build_with(hypermodel, gradnorm_alpha=0.5,
                            gradnorm_learning_rate=0.01)
    assert {h.name for h in hp.space} == {
        "balancer", "gradnorm_alpha", "gradnorm_learning_rate"}
    assert model.balancer.alpha == pytest.approx(0.5)
    assert model.balancer.learning_rate == pytest.approx(0.01)


def test_dwa_trains_with_the_searched_temperature():
    hypermodel = tuning.MultiTaskHyperModel(
        lambda hp: tiny_network(), LOSSES, balancers=["dwa", "static"],
        compile_kwargs={"run_eagerly": True})
    hp, model = _build_with(hypermodel, balancer="dwa", dwa_temperature=0.5)
    assert "weight_a" not in hp.values or not hp.is_active("weight_a")
    x, y = tiny_data(64)
    history = hypermodel.fit(hp, model, x, y, validation_data=tiny_data(32, seed=2),
                             epochs=3, batch_size=32, verbose=0).history
    losses = np.array([history["a_loss"][:2], history["b_loss"][:2]]).T
    expected = dwa_weights(losses[1], losses[0], temperature=0.5)
    assert [history["a_weight"][2], history["b_weight"][2]] == pytest.approx(
        expected, rel=1e-5)
    assert not np.allclose(expected, dwa_weights(losses[1], losses[0], 2.0))
    assert "val_geometric_mean_loss" in history


def test_model_with_other_tasks_is_refused():
    hypermodel = tuning.MultiTaskHyperModel(lambda hp: tiny_network(),
                                            {"a": "mse", "c": "mse"})
    with pytest.raises(ValueError, match="tasks"):
        hypermodel.build(kt.HyperParameters())


def test_objective_is_delta_m_with_references_else_scale_free():
    with_refs = tuning.MultiTaskHyperModel(lambda hp: tiny_network(), LOSSES,
                                           metrics=METRICS, references=REFERENCES)
    without = tuning.MultiTaskHyperModel(lambda hp: tiny_network(), LOSSES,
                                         metrics=METRICS)
    assert (with_refs.objective.name, with_refs.objective.direction) == (
        "val_delta_m", "min")
    assert (without.objective.name, without.objective.direction) == (
        "val_geometric_mean_loss", "min")


# -------------------------------------------------------------------- CLI


def test_cli_tune_passes_its_arguments(monkeypatch, capsys, tmp_path):
    seen = {}

    def fake_search_shapes(**kwargs):
        seen.update(kwargs)
        return tuning.SearchResult("val_geometric_mean_loss", 1.5, {"balancer": "uw"},
                                   {"cls": 1.0}, "uw",
                                   [{"trial": "0", "status": "COMPLETED",
                                     "score": 1.5, "balancer": "uw"}])

    monkeypatch.setattr(tuning, "search_shapes", fake_search_shapes)
    code = cli.main(["tune", "--tuner", "grid", "--max-trials", "3", "--epochs", "1",
                     "--balancers", "static,uw,dwa", "--weights", "none",
                     "--directory", str(tmp_path)])
    assert code == 0
    assert seen["tuner"] == "grid" and seen["max_trials"] == 3
    assert seen["balancers"] == ["static", "uw", "dwa"] and seen["weights"] is None
    assert "Best balancer: uw" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_tune_on_shapes(capsys, tmp_path):
    code = cli.main(["tune", "--max-trials", "2", "--epochs", "1",
                     "--train-size", "64", "--validation-size", "64",
                     "--balancers", "static,uw", "--directory", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "val_geometric_mean_loss" in out and "Best task weights" in out


# ------------------------------------------- tune on your own model and data


def _build_tasks(tasks):
    """`build_model(tasks)`: the tiny network's trunk, one head per task."""
    inputs = keras.Input((8,), name="x")
    shared = keras.layers.Dense(16, activation="tanh", name="trunk")(inputs)
    heads = {"a": lambda: keras.layers.Dense(3, activation="softmax", name="a"),
             "b": lambda: keras.layers.Dense(1, name="b")}
    return MultiTaskModel(inputs, {t: heads[t]()(shared) for t in tasks})


def test_tune_on_your_own_parts_scores_delta_m_against_single_task_models(tmp_path):
    train = tf.data.Dataset.from_tensor_slices(tiny_data(64)).batch(32)
    validation = tiny_data(32, seed=2)  # arrays are accepted too
    result = tuning.tune(
        ["uw", "dwa"], build_model=_build_tasks, train=train,
        validation=validation, losses=LOSSES,
        metrics={"a": ["accuracy"], "b": [keras.metrics.MeanAbsoluteError()]},
        epochs=1, max_trials=2, directory=str(tmp_path), verbose=0)
    assert result.objective == "val_delta_m"
    # The headlines: accuracy (up) and mean_absolute_error (down), each
    # referenced by its single-task model's validation value.
    assert set(result.references) == {"a", "b"}
    assert set(result.references["a"]) == {"accuracy"}
    assert set(result.references["b"]) == {"mean_absolute_error"}
    assert 0 < result.references["a"]["accuracy"] <= 1
    assert result.best_balancer in ("uw", "dwa")
    assert np.isfinite(result.best_score)


def test_tune_with_given_references_trains_no_single_task_model(tmp_path,
                                                               monkeypatch):
    from mtl_keras.experiments.tune import tune as tune_module

    def no_single_task(*args, **kwargs):
        raise AssertionError("a single-task model was trained")

    monkeypatch.setattr(tune_module, "train_run", no_single_task)
    result = tuning.tune(
        ["cagrad"], build_model=_build_tasks, train=tiny_data(64),
        validation=tiny_data(32, seed=2), losses=LOSSES, metrics=METRICS,
        references=REFERENCES, epochs=1, max_trials=1, directory=str(tmp_path),
        verbose=0, batch_size=32)
    assert result.references == REFERENCES
    assert result.best_balancer == "cagrad"
    # The searched argument, ready for the final model.
    assert set(result.best_method_config) == {"c"}
    assert 0.1 <= result.best_method_config["c"] <= 0.9
