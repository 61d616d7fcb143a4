"""TaskBoard: TensorBoard logs plus a per-task custom-scalars layout.

The end-to-end tests train the tiny model with the callback, start the real
`tensorboard` server on 127.0.0.1 and read what a user would see through its
HTTP API; the others read the event files with `EventAccumulator`.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import hypothesis.strategies as st
import keras
import numpy as np
import pytest
from _tiny import LOSSES, tiny_data, tiny_network
from hypothesis import assume, given, settings
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalar_metadata
from tensorboard.util import tensor_util

import mtl_keras
from mtl_keras.callbacks import TaskBoard
from mtl_keras.callbacks.task_board import group_log_keys, task_layout

# One worker runs this module: its module-scoped fixture is built once.
pytestmark = pytest.mark.xdist_group("test_task_board")

EPOCHS = 3
METRICS = {"a": ["accuracy"], "b": ["mae"]}
SERVER_TIMEOUT_S = 90


# --------------------------------------------------------------- helpers


def _train(logdir, balancer=None, epochs=EPOCHS, batch_size=32, **board_kwargs):
    x, y = tiny_data(64)
    model = tiny_network()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=LOSSES,
                  metrics=METRICS, balancer=balancer)
    history = model.fit(x, y, validation_data=(x, y), epochs=epochs,
                        batch_size=batch_size, verbose=0,
                        callbacks=[TaskBoard(str(logdir), **board_kwargs)])
    return history.history


def _events(run_dir) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    return events


def _scalar_steps(events, tag) -> dict[int, float]:
    return {e.step: float(tensor_util.make_ndarray(e.tensor_proto))
            for e in events.Tensors(tag)}


def _written_layouts(run_dir) -> list:
    events = _events(run_dir)
    layouts = []
    for event in events.Tensors(custom_scalar_metadata.CONFIG_SUMMARY_TAG):
        layout = layout_pb2.Layout()
        layout.ParseFromString(event.tensor_proto.string_val[0])
        layouts.append(layout)
    return layouts


def _titles(layout) -> list[str]:
    return [category.title for category in layout.category]


def _tags(layout, title) -> list[list[str]]:
    category = next(c for c in layout.category if c.title == title)
    return [list(chart.multiline.tag) for chart in category.chart]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tensorboard_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", "tensorboard.main"]


class _Server:
    """A running `tensorboard` process and its HTTP API."""

    def __init__(self, port, process, log_path):
        self.url = f"http://127.0.0.1:{port}"
        self.process = process
        self.log_path = log_path

    def get(self, route, **params):
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{route}{query}", timeout=10) as reply:
            return json.load(reply)

    def wait_for(self, route, ready):
        """Polls `route` until `ready(answer)`, for at most SERVER_TIMEOUT_S."""
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"tensorboard exited with code {self.process.returncode}:\n"
                    + self.log_path.read_text()[-2000:])
            try:
                answer = self.get(route)
            except OSError:  # not listening yet
                answer = None
            if answer is not None and ready(answer):
                return answer
            time.sleep(0.5)
        raise TimeoutError(
            f"tensorboard did not serve {route} in {SERVER_TIMEOUT_S} s:\n"
            + self.log_path.read_text()[-2000:])


# ------------------------------------------------ end to end, real server

CONFIGS = ["uw", "pcgrad"]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """Trains one run per config under one logdir and serves it."""
    root = tmp_path_factory.mktemp("taskboard")
    histories = {}
    for balancer in CONFIGS:
        if balancer not in mtl_keras.balancers.available():
            continue
        histories[balancer] = _train(root / balancer, balancer=balancer)
    runs = {f"{b}/{split}" for b in histories for split in ("train", "validation")}
    port = _free_port()
    server_log = tmp_path_factory.mktemp("tensorboard_log") / "stderr.txt"
    with open(server_log, "w") as log:
        process = subprocess.Popen(
            [*_tensorboard_command(), "--logdir", str(root), "--host", "127.0.0.1",
             "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        server = _Server(port, process, server_log)
        server.wait_for("/data/plugin/scalars/tags", lambda tags: runs <= set(tags))
        server.wait_for("/data/plugin/custom_scalars/layout", bool)
        yield root, histories, server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("balancer", CONFIGS)
def test_server_shows_task_losses_and_weights_per_epoch(board, balancer):
    _, histories, server = board
    if balancer not in histories:
        pytest.skip(f"balancer {balancer!r} is not registered")
    history = histories[balancer]
    tags = server.get("/data/plugin/scalars/tags")
    for split, prefix in (("train", ""), ("validation", "val_")):
        run = f"{balancer}/{split}"
        for key in ("a_loss", "b_loss", "a_weight", "b_weight", "a_accuracy",
                    "b_mae"):
            assert f"epoch_{key}" in tags[run]
            points = server.get("/data/plugin/scalars/scalars", run=run,
                                tag=f"epoch_{key}")
            assert [step for _, step, _ in points] == list(range(EPOCHS))
            np.testing.assert_allclose([value for _, _, value in points],
                                       history[prefix + key], rtol=1e-6)


def test_server_layout_charts_match_the_logged_tags(board):
    _, histories, server = board
    layout = server.get("/data/plugin/custom_scalars/layout")
    titles = [category["title"] for category in layout["category"]]
    expected = ["Task losses", "Task weights", "Task metrics"]
    if "pcgrad" in histories:
        expected += ["Gradient norms", "Gradient cosines"]
    assert titles == expected
    charts = {c["title"]: c["chart"] for c in layout["category"]}
    assert [chart["title"] for chart in charts["Task losses"]] == ["a", "b"]
    # Every regex of every chart draws EPOCHS points, and a task loss chart
    # draws them from the training and the validation run.
    for balancer in histories:
        for title, chart_list in charts.items():
            gradient_chart = title.startswith("Gradient")
            if gradient_chart and balancer != "pcgrad":
                continue
            for chart in chart_list:
                for regex in chart["multiline"]["tag"]:
                    splits = ["train"] if gradient_chart else ["train", "validation"]
                    for split in splits:
                        answer = server.get("/data/plugin/custom_scalars/scalars",
                                            run=f"{balancer}/{split}", tag=regex)
                        assert answer["regex_valid"]
                        (points,) = answer["tag_to_events"].values()
                        assert len(points) == EPOCHS, (balancer, split, regex)


def test_gradient_groups_only_with_a_gradient_balancer(board):
    root, histories, _ = board
    uw_layout, = _written_layouts(root / "uw" / "train")
    assert _titles(uw_layout) == ["Task losses", "Task weights", "Task metrics"]
    if "pcgrad" not in histories:
        pytest.skip("balancer 'pcgrad' is not registered")
    pcgrad_layout, = _written_layouts(root / "pcgrad" / "train")
    assert _tags(pcgrad_layout, "Gradient norms") == [
        ["^epoch_grad_norm_a$", "^epoch_grad_norm_b$"]]
    assert _tags(pcgrad_layout, "Gradient cosines") == [["^epoch_grad_cos_a/b$"]]
    events = _events(root / "pcgrad" / "train")
    for key in ("grad_norm_a", "grad_norm_b", "grad_cos_a/b"):
        steps = _scalar_steps(events, f"epoch_{key}")
        assert sorted(steps) == list(range(EPOCHS))
        np.testing.assert_allclose([steps[e] for e in range(EPOCHS)],
                                   histories["pcgrad"][key], rtol=1e-6)


# ------------------------------------------------- event files, no server


def test_update_freq_writes_batch_level_task_tags(tmp_path):
    # 64 examples in batches of 16: 4 steps an epoch, 12 in all.
    history = _train(tmp_path, epochs=3, batch_size=16, update_freq=3)
    events = _events(tmp_path / "train")
    for key in ("a_loss", "b_loss", "a_weight", "b_weight", "a_accuracy"):
        assert sorted(_scalar_steps(events, f"batch_{key}")) == [3, 6, 9, 12]
        # Epoch summaries too, though epochs end on steps 4 and 8.
        epoch_values = _scalar_steps(events, f"epoch_{key}")
        assert sorted(epoch_values) == [0, 1, 2]
        np.testing.assert_allclose([epoch_values[e] for e in range(3)],
                                   history[key], rtol=1e-6)
    layout, = _written_layouts(tmp_path / "train")
    assert _titles(layout) == [
        "Task losses", "Task weights", "Task metrics",
        "Task losses (batches)", "Task weights (batches)", "Task metrics (batches)",
    ]
    assert _tags(layout, "Task losses (batches)") == [["^batch_a_loss$"],
                                                      ["^batch_b_loss$"]]
    assert all(c.closed == c.title.endswith("(batches)") for c in layout.category)


def test_layout_is_written_once(tmp_path):
    x, y = tiny_data(32)
    model = tiny_network()
    model.compile(optimizer="adam", loss=LOSSES)
    board = TaskBoard(str(tmp_path))
    model.fit(x, y, epochs=2, verbose=0, callbacks=[board])
    model.fit(x, y, epochs=2, verbose=0, callbacks=[board])
    assert len(_written_layouts(tmp_path / "train")) == 1
    assert not (tmp_path / "validation").exists()


def test_plain_keras_model_uses_its_output_names(tmp_path):
    x, y = tiny_data(32)
    model = tiny_network(cls=keras.Model)
    model.compile(optimizer="adam", loss=LOSSES, metrics=METRICS)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[TaskBoard(str(tmp_path))])
    layout, = _written_layouts(tmp_path / "train")
    assert _titles(layout) == ["Task losses", "Task metrics"]
    assert _tags(layout, "Task losses") == [["^epoch_a_loss$"], ["^epoch_b_loss$"]]
    assert sorted(_scalar_steps(_events(tmp_path / "train"), "epoch_a_loss")) == [0, 1]


def test_single_output_model_is_refused(tmp_path):
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(loss="mse")
    with pytest.raises(ValueError, match="several named outputs"):
        model.fit(np.zeros((4, 2)), np.zeros((4, 1)), verbose=0,
                  callbacks=[TaskBoard(str(tmp_path))])


def test_config_round_trip():
    board = TaskBoard("logs/x", update_freq=5, histogram_freq=2)
    clone = TaskBoard.from_config(board.get_config())
    assert (clone.log_dir, clone.update_freq, clone.histogram_freq) == ("logs/x", 5, 2)


# ------------------------------------------------------ the layout itself


def test_keys_are_grouped_by_task_hand_case():
    keys = ["loss", "a_loss", "a_b_loss", "a_weight", "a_b_weight", "a_accuracy",
            "a_b_mae", "grad_norm_a", "grad_norm_a_b", "grad_cos_a/a_b",
            "learning_rate", "skipped_steps"]
    assert group_log_keys(["a", "a_b"], keys) == {
        "losses": {"a": "a_loss", "a_b": "a_b_loss"},
        "weights": {"a": "a_weight", "a_b": "a_b_weight"},
        "metrics": {"a": ["a_accuracy"], "a_b": ["a_b_mae"]},
        "grad_norms": ["grad_norm_a", "grad_norm_a_b"],
        "grad_cosines": ["grad_cos_a/a_b"],
    }


def test_layout_without_weights_or_gradients_has_only_loss_charts():
    layout = task_layout(["seg", "cls"], ["loss", "seg_loss", "cls_loss"])
    assert _titles(layout) == ["Task losses"]
    # Charts follow the task order given, not the log order.
    assert _tags(layout, "Task losses") == [["^epoch_seg_loss$"], ["^epoch_cls_loss$"]]


task_name = st.from_regex(r"[a-z][a-z0-9_.\-]{0,6}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(task_name, min_size=2, max_size=4, unique=True),
       st.lists(st.sampled_from(["accuracy", "mae", "top_5", "iou"]),
                max_size=2, unique=True))
def test_every_task_chart_matches_exactly_its_own_tag(tasks, metric_names):
    suffixes = ["loss", "weight", *metric_names]
    # Tasks `a` and `a_top` with a metric `top_5` of `a` both log `a_top_5`:
    # ambiguous by construction, not generated.
    assume(not any(
        f"{t}_{suffix}".startswith(f"{u}_")
        for t in tasks for u in tasks if len(u) > len(t) for suffix in suffixes
    ))
    keys = ["loss"]
    for task in tasks:
        keys += [f"{task}_loss", f"{task}_weight"]
        keys += [f"{task}_{metric}" for metric in metric_names]
    layout = task_layout(tasks, keys, batch_level=True)
    charts = {(c.title, chart.title): list(chart.multiline.tag)
              for c in layout.category for chart in c.chart}
    all_tags = [f"{p}_{k}" for p in ("epoch", "batch") for k in keys]
    for task in tasks:
        for prefix, suffix in (("epoch", ""), ("batch", " (batches)")):
            (loss_regex,) = charts[("Task losses" + suffix, task)]
            matched = [t for t in all_tags if re.match(loss_regex, t)]
            assert matched == [f"{prefix}_{task}_loss"]
            for metric in metric_names:
                (regex,) = charts[("Task metrics" + suffix, f"{task}: {metric}")]
                assert [t for t in all_tags if re.match(regex, t)] == [
                    f"{prefix}_{task}_{metric}"]
    weight_regexes = charts[("Task weights", "weights")]
    assert [[t for t in all_tags if re.match(r, t)] for r in weight_regexes] == [
        [f"epoch_{task}_weight"] for task in tasks]


def test_demo_logdir_writes_the_task_layout(tmp_path):
    from mtl_keras import demo

    demo.train_shapes(epochs=1, logdir=str(tmp_path), train_size=64,
                      validation_size=64, batch_size=32, tasks=("cls", "seg"),
                      verbose=0)
    layouts = _written_layouts(tmp_path / "train")
    assert len(layouts) == 1
    assert {"Task losses", "Task weights"} <= set(_titles(layouts[0]))
    assert _tags(layouts[0], "Task losses") == [
        ["^epoch_cls_loss$"], ["^epoch_seg_loss$"]]
