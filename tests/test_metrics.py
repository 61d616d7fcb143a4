"""Δm%, the scale-free score, and the `MultiTaskScore` callback."""

import math

import keras
import numpy as np
import pytest
from _tiny import LOSSES, tiny_data, tiny_network
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_keras.callbacks import MultiTaskScore
from mtl_keras.scores import delta_m, geometric_mean_loss, metric_direction

# ------------------------------------------------------------------ delta_m


def test_delta_m_one_metric_per_task_higher_is_better():
    # cls: (0.93 − 0.90)/0.90 = +1/30 better → −1/30; seg: (0.57 − 0.60)/0.60
    # = −0.05 worse → +0.05. Mean × 100 = (−1/30 + 0.05)/2 × 100 = 0.8333.
    value = delta_m({"cls": {"accuracy": 0.93}, "seg": {"miou": 0.57}},
                    {"cls": {"accuracy": 0.90}, "seg": {"miou": 0.60}},
                    {"accuracy": True, "miou": True})
    assert value == pytest.approx((-1 / 30 + 0.05) / 2 * 100)


def test_delta_m_mixed_directions():
    # depth rmse 0.55 vs 0.50: +10 % worse (lower is better) → +10.
    # cls 0.93 vs 0.90 better → −3.333. Mean 3.333.
    value = delta_m({"cls": {"accuracy": 0.93}, "depth": {"rmse": 0.55}},
                    {"cls": {"accuracy": 0.90}, "depth": {"rmse": 0.50}},
                    {"accuracy": True, "rmse": False})
    assert value == pytest.approx((-100 / 30 + 10) / 2)


def test_delta_m_averages_within_a_task_first():
    # seg: miou 0.66 vs 0.60 → −10; pixel error 0.2 vs 0.25 (lower better)
    # → −20; seg mean −15. depth abs_err 0.6 vs 0.5 → +20. Tasks: (−15+20)/2.
    value = delta_m(
        {"seg": {"miou": 0.66, "pix_err": 0.2}, "depth": {"abs_err": 0.6}},
        {"seg": {"miou": 0.60, "pix_err": 0.25}, "depth": {"abs_err": 0.5}},
        {"miou": True, "pix_err": False, "abs_err": False},
    )
    assert value == pytest.approx(2.5)
    # A flat mean over the three metrics would give (−10 − 20 + 20)/3 instead.
    assert value != pytest.approx(-10 / 3)


def test_delta_m_scalar_form_with_directions_by_task():
    value = delta_m({"left": 0.95, "right": 0.30}, {"left": 0.97, "right": 0.25},
                    {"left": True, "right": False})
    # left: −(0.95 − 0.97)/0.97; right: (0.30 − 0.25)/0.25.
    expected = (0.02 / 0.97 + 0.2) / 2 * 100
    assert value == pytest.approx(expected)


def test_delta_m_uses_known_keras_metric_directions():
    value = delta_m({"a": {"accuracy": 0.8}, "b": {"mae": 1.5}},
                    {"a": {"accuracy": 1.0}, "b": {"mae": 1.0}})
    assert value == pytest.approx((20 + 50) / 2)


def test_delta_m_per_task_direction_dict_overrides_metric_name():
    # "score" is higher-better in task a, lower-better in task b.
    value = delta_m({"a": {"score": 2.0}, "b": {"score": 2.0}},
                    {"a": {"score": 1.0}, "b": {"score": 1.0}},
                    {"a": {"score": True}, "b": {"score": False}})
    assert value == pytest.approx((-100 + 100) / 2)


positive = st.floats(0.01, 100.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=50, deadline=None)
@given(refs=st.lists(positive, min_size=1, max_size=4),
       factors=st.lists(st.floats(0.1, 10.0), min_size=4, max_size=4),
       scale=st.floats(0.01, 100.0))
def test_delta_m_properties(refs, factors, scale):
    references = {f"t{i}": {"loss": r} for i, r in enumerate(refs)}
    values = {f"t{i}": {"loss": r * f} for i, (r, f) in enumerate(
        zip(refs, factors, strict=False))}
    # Matching the references gives 0.
    assert delta_m(references, references) == pytest.approx(0.0, abs=1e-9)
    # Scale-free: rescaling a metric and its reference changes nothing.
    scaled_values = {t: {"loss": v["loss"] * scale} for t, v in values.items()}
    scaled_refs = {t: {"loss": v["loss"] * scale} for t, v in references.items()}
    assert delta_m(scaled_values, scaled_refs) == pytest.approx(
        delta_m(values, references), rel=1e-6, abs=1e-6)
    # Lower-is-better losses: Δm is the mean relative change, in percent.
    expected = 100 * np.mean([f - 1 for f in factors[: len(refs)]])
    assert delta_m(values, references) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # Flipping the direction flips the sign.
    assert delta_m(values, references, True) == pytest.approx(
        -delta_m(values, references, False), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("metrics, references, message", [
    ({"a": {"acc": 0.9}, "b": {"acc": 0.8}}, {"a": {"acc": 0.9}},
     r"No single-task reference for task\(s\) \['b'\]"),
    ({"a": {"acc": 0.9, "mae": 1.0}}, {"a": {"acc": 0.9}},
     r"No single-task reference for metric\(s\) \['mae'\] of task 'a'"),
    ({"a": {"acc": 0.9}}, {"a": {"acc": 0.9}, "b": {"acc": 0.5}},
     r"no value for task\(s\) \['b'\]"),
    ({"a": {"acc": 0.9}}, {"a": {"acc": 0.0}},
     "reference value of metric 'acc'.* is 0"),
    ({"a": {"mystery": 0.9}}, {"a": {"mystery": 1.0}}, "Unknown direction"),
    ({}, {"a": {"acc": 0.9}}, "non-empty dict"),
])
def test_delta_m_refuses_bad_input(metrics, references, message):
    with pytest.raises(ValueError, match=message):
        delta_m(metrics, references, {"acc": True})


def test_metric_direction_lookup_order():
    assert metric_direction("t", "accuracy") is True
    assert metric_direction("t", "accuracy", {"accuracy": False}) is False
    assert metric_direction("t", "accuracy", {"t": {"accuracy": False}}) is False
    assert metric_direction("t", "mae", {"t": True}) is True
    assert metric_direction("t", "whatever", False) is False


# ------------------------------------------------------- geometric mean loss


def test_geometric_mean_loss_hand_values():
    assert geometric_mean_loss({"a": 0.5, "b": 2.0}) == pytest.approx(1.0)
    assert geometric_mean_loss({"a": 1.0, "b": 8.0, "c": 27.0}) == pytest.approx(6.0)
    assert geometric_mean_loss({"a": 0.0, "b": 3.0}) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        geometric_mean_loss({"a": -1.0, "b": 2.0})


@settings(max_examples=50, deadline=None)
@given(run_a=st.lists(positive, min_size=3, max_size=3),
       run_b=st.lists(positive, min_size=3, max_size=3),
       scale=st.floats(1e-3, 1e3))
def test_geometric_mean_loss_ranking_is_scale_free(run_a, run_b, scale):
    def score(losses, factor):
        return geometric_mean_loss({"x": losses[0] * factor, "y": losses[1],
                                    "z": losses[2]})

    ratio = score(run_a, 1.0) / score(run_b, 1.0)
    assert score(run_a, scale) / score(run_b, scale) == pytest.approx(ratio, rel=1e-9)


# ------------------------------------------------------------ the callback

REFERENCES = {"a": {"accuracy": 0.5}, "b": {"mae": 1.0}}


def _fit(callbacks, epochs=2, validation=True):
    model = tiny_network()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=LOSSES,
                  metrics={"a": ["accuracy"], "b": ["mae"]}, run_eagerly=True)
    x, y = tiny_data(64)
    validation_data = tiny_data(32, seed=2) if validation else None
    return model.fit(x, y, validation_data=validation_data, epochs=epochs,
                     batch_size=32, callbacks=callbacks, verbose=0).history


class _Recorder(keras.callbacks.Callback):
    def __init__(self, key):
        super().__init__()
        self.key, self.seen = key, []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(logs.get(self.key))


def test_callback_writes_delta_m_from_the_logged_metrics():
    recorder = _Recorder("val_delta_m")
    history = _fit([MultiTaskScore(REFERENCES), recorder])
    for epoch in range(2):
        by_hand = ((-(history["val_a_accuracy"][epoch] - 0.5) / 0.5)
                   + (history["val_b_mae"][epoch] - 1.0) / 1.0) / 2 * 100
        assert history["val_delta_m"][epoch] == pytest.approx(by_hand, rel=1e-6)
    # A callback after it in the list reads the value.
    assert recorder.seen == pytest.approx(history["val_delta_m"])


def test_callback_before_it_in_the_list_does_not_see_the_score():
    recorder = _Recorder("val_delta_m")
    _fit([recorder, MultiTaskScore(REFERENCES)], epochs=1)
    assert recorder.seen == [None]


def test_callback_scale_free_score_and_training_prefix():
    history = _fit([MultiTaskScore(), MultiTaskScore(prefix="")])
    for epoch in range(2):
        val = math.sqrt(history["val_a_loss"][epoch] * history["val_b_loss"][epoch])
        train = math.sqrt(history["a_loss"][epoch] * history["b_loss"][epoch])
        assert history["val_geometric_mean_loss"][epoch] == pytest.approx(val, rel=1e-6)
        assert history["geometric_mean_loss"][epoch] == pytest.approx(train, rel=1e-6)


def test_callback_drives_early_stopping():
    # With a huge min_delta no epoch counts as an improvement on the first,
    # so EarlyStopping stops as early as it can (after the second epoch); had
    # it not found `val_delta_m` in the logs, it would let all 4 epochs run.
    stopper = keras.callbacks.EarlyStopping("val_delta_m", patience=0, mode="min",
                                            min_delta=1e9)
    history = _fit([MultiTaskScore(REFERENCES), stopper], epochs=4)
    assert len(history["loss"]) == 2


class _Batches(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.count = 0

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1


def test_callback_refuses_a_task_without_reference_before_training():
    batches = _Batches()
    with pytest.raises(ValueError, match=r"without a reference \['b'\]"):
        _fit([MultiTaskScore({"a": {"accuracy": 0.5}}), batches])
    assert batches.count == 0


def test_callback_refuses_bad_references_at_construction():
    with pytest.raises(ValueError, match="must be finite and non-zero"):
        MultiTaskScore({"a": {"accuracy": 0.0}, "b": {"mae": 1.0}})
    with pytest.raises(ValueError, match="Unknown direction"):
        MultiTaskScore({"a": {"mystery": 1.0}, "b": {"mae": 1.0}})
    with pytest.raises(ValueError, match="naming the logged metric"):
        MultiTaskScore({"a": 0.5, "b": 1.0})


def test_callback_without_validation_data_says_so():
    with pytest.raises(ValueError, match="Pass `validation_data` to fit"):
        _fit([MultiTaskScore()], epochs=1, validation=False)


def test_callback_config_round_trip():
    score = MultiTaskScore(REFERENCES, {"accuracy": True}, prefix="")
    clone = MultiTaskScore(**score.get_config())
    assert clone.get_config() == score.get_config()
    assert clone.name == "delta_m"
