"""Compare balancing methods on a benchmark: the logic behind `mtl-keras compare`.

`compare` trains every method (a balancer name, or `"dwa"` for the
`DynamicWeightAverage` callback) for each seed, plus one single-task model per
task (the same architecture built with `tasks=(task,)`), scores every model on
the test split, and returns a `CompareResult`: per-task headline metrics as
mean ± std over seeds, Δm% against the single-task means (Maninis et al., CVPR
2019; see `mtl_keras.metrics.delta_m`) and seconds per epoch.

Runs go seed by seed (every configuration with seed 0, then seed 1, ...), so a
comparison cut short still covers every method. Each finished run can be
appended to a JSON lines file (`log_path`) and skipped on `resume=True`.
A run killed before its line is complete is trained again.

Training data are held in memory as tensors and batched by gathering shuffled
indices (no per-step Python, one trace per run). `curves=True` also scores the
test split after every epoch and keeps the learning curves in each record;
MultiMNIST's `protocol="sener2018"` follows Sener & Koltun's reference code
(see `mtl_keras.datasets.multi_mnist`), with its learning-rate schedule.

Example:

```python
from mtl_keras import compare

result = compare.compare("shapes", ["ew", "pcgrad", "dwa"], seeds=2, epochs=4)
print(result.to_markdown())
result.plot("shapes.png")
```
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
import traceback
from collections.abc import Callable, Sequence

import keras
import numpy as np

from mtl_keras import architectures, balancers, metrics
from mtl_keras.callbacks import DynamicWeightAverage

#: The method name of the single-task baselines in records and tables.
SINGLE_TASK = "single-task"
#: The callback method (no balancer): Dynamic Weight Average.
DWA = "dwa"
#: Metrics shown in percent in tables and plots.
_PERCENT_METRICS = ("accuracy", "miou")
#: Size of the test split scored when `test_size` is None.
_DEFAULT_TEST_SIZE = {"shapes": 1024, "multi_mnist": 10_000}
_EVAL_BATCH = 1000
_MARKERS = "osD^vPX<>"


# --- Data -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BenchmarkData:
    """A benchmark: its arrays, tasks, model and how it is scored.

    Args:
        name: `"shapes"` or `"multi_mnist"`.
        tasks: the task names, in the model's (sorted) order.
        headline: `{task: (metric log name, higher is better)}`.
        train: `(images, {task: labels})` training arrays.
        test: `(images, {task: labels})` test arrays.
        build_model: `tasks -> MultiTaskModel`, the reference architecture.
        losses: `{task: loss}`.
        make_metrics: `tasks -> {task: [fresh metric objects]}`.
        protocol: the name of the data protocol (e.g. `"sener2018"`).
        lr_decay: `(every, factor)`: the learning rate is multiplied by
            `factor` at the start of every `every`-th epoch (the reference
            schedule of Sener & Koltun: `(10, 0.85)`); None: constant.
    """

    name: str
    tasks: tuple
    headline: dict
    train: tuple
    test: tuple
    build_model: Callable
    losses: dict
    make_metrics: Callable
    protocol: str = "default"
    lr_decay: tuple | None = None


def load_data(
    name: str,
    train_size: int | None = None,
    test_size: int | None = None,
    data_dir: str | os.PathLike | None = None,
    architecture: str = "hard",
    protocol: str | None = None,
) -> BenchmarkData:
    """Loads a benchmark by name. The data are drawn with seed 0 whatever the
    training seed, so every run sees the same examples.

    Args:
        name: `"shapes"` (cls accuracy, seg mIoU, count MAE; the shapes
            network of `mtl-keras demo`) or `"multi_mnist"` (left/right
            accuracy; the LeNet of Sener & Koltun).
        train_size: the first `train_size` training examples (default:
            4096 for shapes, all 50,000 for MultiMNIST).
        test_size: the first `test_size` test examples (default: the whole
            split, 1024 for shapes, 10,000 for MultiMNIST).
        data_dir: MultiMNIST only: the folder of the MNIST files (see
            `mtl_keras.datasets.multi_mnist`).
        architecture: how the heads share the trunk, one of
            `mtl_keras.architectures.ARCHITECTURES` ("hard", "mmoe", "mtan").
        protocol: MultiMNIST only: `"random_shift"` (the default: the
            module's random-shift data, Keras-default LeNet, constant learning
            rate) or `"sener2018"` (the data, network initialisation, dropout
            and learning-rate schedule of Sener & Koltun's reference code;
            60,000 training examples).
    """
    test_size = test_size or _DEFAULT_TEST_SIZE.get(name)
    if architecture not in architectures.ARCHITECTURES:
        raise ValueError(f"Unknown architecture {architecture!r}; expected one of "
                         f"{architectures.ARCHITECTURES}.")
    if name == "shapes":
        return _shapes_data(train_size, test_size, architecture)
    if name == "multi_mnist":
        return _multi_mnist_data(train_size, test_size, data_dir,
                                 protocol or "random_shift", architecture)
    raise ValueError(f"Unknown data {name!r}; expected 'shapes' or 'multi_mnist'.")


def _shapes_data(train_size, test_size, architecture="hard") -> BenchmarkData:
    from mtl_keras import demo
    from mtl_keras.datasets import shapes

    return BenchmarkData(
        name="shapes",
        tasks=tuple(sorted(shapes.TASKS)),
        headline=dict(demo.SHAPES_HEADLINE),
        train=shapes.load_numpy("train", train_size),
        test=shapes.load_numpy("test", test_size),
        build_model=lambda tasks: architectures.shapes_network(
            tasks=tasks, architecture=architecture),
        losses=dict(demo.SHAPES_LOSSES),
        make_metrics=demo.shapes_metrics,
    )


def _multi_mnist_data(train_size, test_size, data_dir, protocol,
                      architecture="hard") -> BenchmarkData:
    from mtl_keras.datasets import multi_mnist

    reference = protocol == "sener2018"

    def make_metrics(tasks):
        return {t: [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
                for t in tasks}

    loss = "sparse_categorical_crossentropy"
    return BenchmarkData(
        name="multi_mnist",
        tasks=tuple(sorted(multi_mnist.TASKS)),
        headline={task: ("accuracy", True) for task in multi_mnist.TASKS},
        train=multi_mnist.load_numpy("train", data_dir, num_examples=train_size,
                                     protocol=protocol),
        test=multi_mnist.load_numpy("test", data_dir, num_examples=test_size,
                                    protocol=protocol),
        build_model=lambda tasks: architectures.multi_mnist_lenet(
            tasks=tasks, architecture=architecture, reference=reference),
        losses={task: loss for task in multi_mnist.TASKS},
        make_metrics=make_metrics,
        protocol=protocol,
        lr_decay=(10, 0.85) if reference else None,
    )


# --- Methods ----------------------------------------------------------------------


def available_methods() -> list[str]:
    """Every method name `compare` accepts: the balancers and `"dwa"`."""
    return sorted([*balancers.available(), DWA])


def check_methods(methods: Sequence[str]) -> list[str]:
    """Returns the method names, raising before any training on an unknown one.

    Raises:
        ValueError: a name is neither `"dwa"` nor a registered balancer; the
            message lists the available names.
    """
    methods = [str(method).strip() for method in methods]
    known = {balancers.normalise_name(name) for name in available_methods()}
    unknown = [m for m in methods if balancers.normalise_name(m) not in known]
    if unknown or not methods:
        raise ValueError(
            f"Unknown method(s) {unknown or methods}. Available methods: "
            f"{', '.join(available_methods())}."
        )
    duplicated = sorted({m for m in methods if methods.count(m) > 1})
    if duplicated:
        raise ValueError(f"Method(s) {duplicated} given more than once.")
    if SINGLE_TASK in methods:
        raise ValueError(f"{SINGLE_TASK!r} is always run; do not list it.")
    return methods


def _balancer_and_callbacks(method: str):
    if method == SINGLE_TASK:
        return None, []
    if balancers.normalise_name(method) == DWA:
        return None, [DynamicWeightAverage()]
    return balancers.get(method), []


# --- One run ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One trained model: a method with one seed, scored on the test split.

    Args:
        method: the method name, or `SINGLE_TASK`.
        seed: the training seed.
        tasks: the tasks of this model (one for a single-task baseline).
        metrics: `{task: headline test metric}`; empty when the run failed.
        seconds_per_epoch: mean wall time of the training epochs.
        error: `"ExceptionType: message"` when training failed, else None.
        wall_seconds: the whole run: building, training and scoring.
        epoch_seconds: the training time of every epoch (the first one
            includes tracing the step function), without the per-epoch
            scoring on the test split.
        history: `{"<task>_accuracy" | "val_<task>_accuracy": [per epoch]}`,
            the headline metric on the training batches and on the test
            split after every epoch (learning curves); empty when not kept.
    """

    method: str
    seed: int
    tasks: tuple
    metrics: dict
    seconds_per_epoch: float
    error: str | None = None
    wall_seconds: float = float("nan")
    epoch_seconds: tuple = ()
    history: dict = dataclasses.field(default_factory=dict)

    def key(self) -> tuple:
        return (self.method, self.seed, tuple(self.tasks))

    def to_json(self, settings: dict) -> str:
        return json.dumps({**dataclasses.asdict(self), "settings": settings})

    @classmethod
    def from_json(cls, line: str) -> tuple[RunRecord, dict]:
        fields = json.loads(line)
        settings = fields.pop("settings", {})
        fields["tasks"] = tuple(fields["tasks"])
        fields["epoch_seconds"] = tuple(fields.get("epoch_seconds", ()))
        return cls(**fields), settings


class _EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()
        self._trained = None

    def on_test_begin(self, logs=None):
        # Validation runs inside the epoch: stop the clock at its start.
        if self._trained is None:
            self._trained = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end = self._trained if self._trained is not None else time.perf_counter()
        self.seconds.append(end - self._started)


def steady_seconds(epoch_seconds: Sequence[float]) -> float:
    """Median epoch time without the first epoch (which traces the step
    function), or the only epoch's time."""
    times = list(epoch_seconds)
    if len(times) > 1:
        times = times[1:]
    return float(np.median(times)) if times else float("nan")


def _subset(arrays: tuple, tasks: tuple) -> tuple:
    images, labels = arrays
    return images, {task: labels[task] for task in tasks}


def train_run(
    data: BenchmarkData,
    method: str,
    seed: int,
    epochs: int,
    tasks: tuple | None = None,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    loss_weights: dict | None = None,
    curves: bool = False,
    make_balancer: Callable[[], balancers.Balancer] | None = None,
) -> RunRecord:
    """Trains one model and scores it on the test split.

    The optimiser is Adam(`learning_rate`), decayed by `data.lr_decay`; the
    seed sets the initial weights, the shuffling order and the balancer's
    random draws (`keras.utils.set_random_seed`). The training arrays are
    held in memory as tensors and batched by `tf.gather` on shuffled indices
    (`mtl_keras.datasets.multi_mnist.in_memory_batches`): no per-step Python
    and one trace of the step function. An exception raised while building,
    training or scoring is returned in `RunRecord.error` with the
    traceback's last line, so one failing method does not stop a comparison.

    Args:
        data: the benchmark (`load_data`).
        method: a balancer name, `"dwa"`, `SINGLE_TASK`, or any name when
            `loss_weights` is given (static weights, no balancer).
        seed: training seed.
        epochs: training epochs.
        tasks: the tasks to train (default: all of `data.tasks`).
        batch_size: training batch size.
        learning_rate: Adam's (initial) learning rate.
        loss_weights: `{task: weight}` static task weights with no balancer.
        curves: also score the test split after every epoch and keep the
            per-epoch training and test metrics in `RunRecord.history`.
        make_balancer: builds the balancer to train with instead of the one
            `method` names (`method` is then only the record's name).
    """
    tasks = tuple(tasks or data.tasks)
    timer = _EpochTimer()
    started = time.perf_counter()
    history = {}
    try:
        scores, history = _fit_and_score(
            data, method, seed, epochs, tasks, batch_size, learning_rate, timer,
            loss_weights, curves, make_balancer)
        error = None
    except Exception as exception:  # noqa: BLE001 - recorded in the result
        error = traceback.format_exception_only(
            type(exception), exception)[-1].strip()
        scores = {}
    return RunRecord(method, seed, tasks, scores, steady_seconds(timer.seconds),
                     error, time.perf_counter() - started,
                     tuple(round(t, 3) for t in timer.seconds), history)


def learning_rate_callbacks(data: BenchmarkData, learning_rate: float) -> list:
    """The callbacks that apply `data.lr_decay` to an initial learning rate."""
    if data.lr_decay is None:
        return []
    every, factor = data.lr_decay

    def schedule(epoch, current=None):
        # The reference decays at the start of epochs every-1, 2*every-1, ...
        return learning_rate * factor ** ((epoch + 1) // every)

    return [keras.callbacks.LearningRateScheduler(schedule)]


def _fit_and_score(data, method, seed, epochs, tasks, batch_size, learning_rate,
                   timer, loss_weights=None, curves=False,
                   make_balancer=None) -> tuple:
    from mtl_keras.datasets.multi_mnist import in_memory_batches

    keras.utils.set_random_seed(seed)
    if loss_weights is not None:
        balancer, callbacks = None, []
    elif make_balancer is not None:
        balancer, callbacks = make_balancer(), []
    else:
        balancer, callbacks = _balancer_and_callbacks(method)
    model = data.build_model(tasks)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss={task: data.losses[task] for task in tasks},
        loss_weights=(None if loss_weights is None
                      else {task: float(loss_weights[task]) for task in tasks}),
        metrics=data.make_metrics(tasks),
        balancer=balancer,
    )
    images, labels = _subset(data.train, tasks)
    train = in_memory_batches(images, labels, batch_size, shuffle=True, seed=seed)
    test_images, test_labels = _subset(data.test, tasks)
    test = in_memory_batches(test_images, test_labels, _EVAL_BATCH, shuffle=False)
    fitted = model.fit(
        train, epochs=epochs, verbose=0,
        validation_data=test if curves else None, shuffle=False,
        callbacks=[*callbacks, *learning_rate_callbacks(data, learning_rate),
                   timer])
    logs = model.evaluate(test, verbose=0, return_dict=True)
    scores = {task: float(_headline_log(logs, task, data.headline[task][0], tasks))
              for task in tasks}
    history = {}
    if curves:
        for task in tasks:
            metric = data.headline[task][0]
            for prefix in ("", "val_"):
                key = _history_key(fitted.history, prefix, task, metric, tasks)
                history[f"{prefix}{task}_{metric}"] = [
                    round(float(v), 5) for v in fitted.history[key]]
    return scores, history


def _history_key(history: dict, prefix: str, task: str, metric: str,
                 tasks: tuple) -> str:
    """The key of a task's metric in `fit` history (one-output models drop the
    task prefix)."""
    key = f"{prefix}{task}_{metric}"
    if len(tasks) == 1 and key not in history:
        return f"{prefix}{metric}"
    return key


def _headline_log(logs: dict, task: str, metric: str, tasks: tuple) -> float:
    """A task's metric in `evaluate` logs; a one-output model drops the prefix."""
    if len(tasks) == 1 and f"{task}_{metric}" not in logs:
        return logs[metric]
    return logs[f"{task}_{metric}"]


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


# --- Results ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MethodSummary:
    """One table row: a method's test metrics over seeds.

    `mean`/`std` are `{task: value}` (population std over seeds, 0 for one
    seed); `delta_m` is Δm% of the means against the single-task means (0
    for the single-task row); `errors` lists failed runs.
    """

    method: str
    mean: dict
    std: dict
    num_seeds: int
    delta_m: float
    seconds_per_epoch: float
    errors: tuple


@dataclasses.dataclass
class CompareResult:
    """The runs of a comparison, and their table and plot.

    Args:
        data_name: the benchmark name.
        tasks: the task names.
        headline: `{task: (metric, higher is better)}`.
        methods: the compared methods, in order (without `SINGLE_TASK`).
        records: every finished `RunRecord`.
        settings: how the runs were trained (epochs, sizes, optimiser, ...).
    """

    data_name: str
    tasks: tuple
    headline: dict
    methods: list
    records: list
    settings: dict

    def single_task_means(self) -> dict:
        """`{task: mean headline metric}` of the single-task baselines."""
        means = {}
        for task in self.tasks:
            values = [r.metrics[task] for r in self._ok(SINGLE_TASK)
                      if task in r.metrics]
            means[task] = float(np.mean(values)) if values else float("nan")
        return means

    def summaries(self) -> list[MethodSummary]:
        """The table rows: the single-task baselines, then each method."""
        references = self.single_task_means()
        rows = [self._summary(SINGLE_TASK, references)]
        rows += [self._summary(method, references) for method in self.methods]
        return rows

    def _ok(self, method: str) -> list[RunRecord]:
        return [r for r in self.records if r.method == method and r.error is None]

    def _summary(self, method: str, references: dict) -> MethodSummary:
        runs = self._ok(method)
        mean, std = {}, {}
        for task in self.tasks:
            values = [r.metrics[task] for r in runs if task in r.metrics]
            mean[task] = float(np.mean(values)) if values else float("nan")
            std[task] = float(np.std(values)) if values else float("nan")
        seeds = {r.seed for r in runs}
        errors = tuple(f"seed {r.seed}: {r.error}" for r in self.records
                       if r.method == method and r.error is not None)
        return MethodSummary(
            method=method,
            mean=mean,
            std=std,
            num_seeds=len(seeds),
            delta_m=self._delta_m(mean, references),
            seconds_per_epoch=_mean([r.seconds_per_epoch for r in runs]),
            errors=errors,
        )

    def _delta_m(self, mean: dict, references: dict) -> float:
        values = list(mean.values()) + list(references.values())
        if any(math.isnan(v) for v in values):
            return float("nan")
        directions = {task: higher for task, (_, higher) in self.headline.items()}
        return metrics.delta_m(mean, references, higher_is_better=directions)

    def metric_label(self, task: str) -> str:
        metric = self.headline[task][0]
        unit = " (%)" if metric in _PERCENT_METRICS else ""
        return f"{task} {metric}{unit}"

    def display_value(self, task: str, value: float) -> float:
        """A metric as shown: accuracy and mIoU in percent."""
        percent = self.headline[task][0] in _PERCENT_METRICS
        return 100.0 * value if percent else value

    def to_markdown(self) -> str:
        """The results table in Markdown: one row per method."""
        header = ["method", *(self.metric_label(t) for t in self.tasks),
                  "Δm% ↓", "s/epoch", "seeds"]
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for row in self.summaries():
            lines.append("| " + " | ".join(self._row_cells(row)) + " |")
        failures = [(row.method, e) for row in self.summaries() for e in row.errors]
        if failures:
            lines.append("")
            lines.append("Failed runs:")
            lines += [f"- {method}, {error}" for method, error in failures]
        return "\n".join(lines)

    def _row_cells(self, row: MethodSummary) -> list[str]:
        cells = [row.method]
        for task in self.tasks:
            digits = 2 if self.headline[task][0] in _PERCENT_METRICS else 4
            mean = self.display_value(task, row.mean[task])
            std = self.display_value(task, row.std[task])
            cells.append("–" if math.isnan(mean)
                         else f"{mean:.{digits}f} ± {std:.{digits}f}")
        cells.append("–" if math.isnan(row.delta_m) else f"{row.delta_m:+.2f}")
        cells.append("–" if math.isnan(row.seconds_per_epoch)
                     else f"{row.seconds_per_epoch:.1f}")
        cells.append(str(row.num_seeds) + (" (failed)" if row.errors else ""))
        return cells

    def plot(self, path: str | os.PathLike) -> pathlib.Path:
        """Draws the comparison to a PNG file.

        Two tasks: one metric against the other, a point per method with
        error bars (std over seeds), the single-task means as dashed lines.
        More tasks: a bar chart of Δm% per method.
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as error:
            raise ImportError(
                "Plotting needs matplotlib: pip install 'mtl_keras[plot]'."
            ) from error

        figure = Figure(figsize=(7, 5.5), dpi=120)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        rows = [row for row in self.summaries()
                if not any(math.isnan(v) for v in row.mean.values())]
        if len(self.tasks) == 2:
            self._scatter(axes, rows)
        else:
            self._bars(axes, rows)
        axes.set_title(f"{self.data_name}: {self.settings.get('epochs', '?')} "
                       f"epochs, {len(self.seeds())} seed(s)")
        figure.tight_layout()
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
        return path

    def _scatter(self, axes, rows) -> None:
        first, second = self.tasks
        colors = matplotlib_colors(len(rows))
        for index, row in enumerate(rows):
            x = self.display_value(first, row.mean[first])
            y = self.display_value(second, row.mean[second])
            if row.method == SINGLE_TASK:
                axes.axvline(x, linestyle="--", color="gray", linewidth=1)
                axes.axhline(y, linestyle="--", color="gray", linewidth=1,
                             label="single-task")
                continue
            axes.errorbar(x, y, xerr=self.display_value(first, row.std[first]),
                          yerr=self.display_value(second, row.std[second]),
                          fmt=_MARKERS[index % len(_MARKERS)], color=colors[index],
                          capsize=3, elinewidth=0.8, alpha=0.8)
            axes.annotate(row.method, (x, y), textcoords="offset points",
                          xytext=(4, 4), fontsize=8)
        axes.margins(0.1)  # room for the labels of the outermost points
        axes.set_xlabel(self.metric_label(first))
        axes.set_ylabel(self.metric_label(second))
        if any(row.method == SINGLE_TASK for row in rows):
            axes.legend(loc="best")

    def _bars(self, axes, rows) -> None:
        rows = [row for row in rows if row.method != SINGLE_TASK]
        names = [row.method for row in rows]
        axes.bar(names, [row.delta_m for row in rows])
        axes.axhline(0.0, color="gray", linestyle="--", linewidth=1)
        axes.set_ylabel("Δm% vs single-task (lower is better)")
        axes.tick_params(axis="x", rotation=45)

    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.records})


def matplotlib_colors(count: int) -> list:
    """`count` distinct colours (matplotlib's tab20 when tab10 runs out)."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(index % palette.N) for index in range(count)]


# --- The comparison ---------------------------------------------------------------


def compare(
    data: str | BenchmarkData,
    methods: Sequence[str],
    seeds: int | Sequence[int] = 3,
    epochs: int = 10,
    train_size: int | None = None,
    test_size: int | None = None,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    data_dir: str | os.PathLike | None = None,
    log_path: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Callable[[str], None] | None = print,
    on_record: Callable[[CompareResult], None] | None = None,
    architecture: str = "hard",
    protocol: str | None = None,
    curves: bool = False,
    method_loss_weights: dict | None = None,
    method_balancers: dict[str, Callable[[], balancers.Balancer]] | None = None,
    extra_settings: dict | None = None,
    before_run: Callable[[str, int], None] | None = None,
) -> CompareResult:
    """Trains every method and the single-task baselines, seed by seed.

    Args:
        data: `"shapes"`, `"multi_mnist"`, or a `BenchmarkData`.
        methods: balancer names (`mtl_keras.balancers.available()`) or
            `"dwa"`; checked before anything trains.
        seeds: a number of seeds (0, 1, ...) or the seeds themselves.
        epochs: training epochs of every run.
        train_size, test_size, data_dir: see `load_data`.
        batch_size: training batch size.
        learning_rate: Adam's learning rate.
        log_path: a JSON lines file; each finished run is appended to it.
        resume: skip the runs already in `log_path` (trained with the same
            settings; other settings raise).
        progress: called with one line per finished run; None for silence.
        on_record: called with the result so far after every finished run
            (e.g. to rewrite a partial report).
        architecture: how the heads share the trunk when `data` is a name
            (see `load_data`); every method and baseline uses it.
        protocol: MultiMNIST's data protocol (see `load_data`).
        curves: keep per-epoch training and test metrics in each record.
        method_loss_weights: `{method: {task: weight}}`: methods trained with
            these static weights and no balancer (e.g. tuned weights); their
            names need not be registered.
        method_balancers: `{method: function returning a balancer}`: methods
            trained with the balancer the function builds (e.g. a registered
            method with other arguments); their names need not be registered.
        extra_settings: more entries of the settings every logged run must
            share to be resumed.
        before_run: called with `(method, seed)` before each run is trained.

    Returns:
        A `CompareResult`.
    """
    method_loss_weights = dict(method_loss_weights or {})
    method_balancers = dict(method_balancers or {})
    check_methods([m for m in methods if m not in method_loss_weights
                   and m not in method_balancers] or ["ew"])
    methods = [str(m).strip() for m in methods]
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if isinstance(data, str):
        data = load_data(data, train_size, test_size, data_dir, architecture,
                         protocol)
    settings = {
        "data": data.name, "epochs": int(epochs), "batch_size": int(batch_size),
        "train_size": len(data.train[0]), "test_size": len(data.test[0]),
        "optimizer": f"Adam(learning_rate={learning_rate})",
    }
    if architecture != "hard":  # logs of hard sharing stay resumable
        settings["architecture"] = architecture
    if data.protocol != "default" and data.protocol != "random_shift":
        settings["protocol"] = data.protocol
    if data.lr_decay is not None:
        settings["lr_decay"] = list(data.lr_decay)
    settings.update(extra_settings or {})
    records = _resumed(log_path, settings) if resume else []
    result = CompareResult(data.name, data.tasks, data.headline, methods,
                           records, settings)
    plan = _plan(data.tasks, methods, seeds)
    done = {record.key() for record in records}
    for index, (method, seed, tasks) in enumerate(plan, start=1):
        if (method, seed, tasks) in done:
            continue
        if before_run is not None:
            before_run(method, seed)
        record = train_run(data, method, seed, epochs, tasks, batch_size,
                           learning_rate, method_loss_weights.get(method), curves,
                           method_balancers.get(method))
        records.append(record)
        if log_path is not None:
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(record.to_json(settings) + "\n")
        if progress is not None:
            progress(f"[{index}/{len(plan)}] " + _describe(record, result))
        if on_record is not None:
            on_record(result)
    return result


def _plan(tasks, methods, seeds) -> list[tuple]:
    """`(method, seed, tasks)` of every run, seed by seed."""
    plan = []
    for seed in seeds:
        plan += [(SINGLE_TASK, seed, (task,)) for task in tasks]
        plan += [(method, seed, tuple(tasks)) for method in methods]
    return plan


def _resumed(log_path, settings: dict) -> list[RunRecord]:
    if log_path is None or not pathlib.Path(log_path).exists():
        return []
    log_path = pathlib.Path(log_path)
    text = log_path.read_text()
    if text and not text.endswith("\n"):
        # A run killed while writing its line: drop the partial line, so that
        # the run is trained again and the next line starts on its own.
        text = text[: text.rfind("\n") + 1]
        log_path.write_text(text)
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        record, logged = RunRecord.from_json(line)
        if logged != settings:
            raise ValueError(
                f"{log_path}, line {number}: run trained with {logged}, not the "
                f"current settings {settings}. Resume with the same settings, "
                "or write to another file."
            )
        records.append(record)
    return records


def _describe(record: RunRecord, result: CompareResult) -> str:
    what = f"{record.method} ({','.join(record.tasks)}), seed {record.seed}"
    if record.error is not None:
        return f"{what}: FAILED {record.error}"
    scores = ", ".join(
        f"{task} {result.headline[task][0]} "
        f"{result.display_value(task, value):.4g}"
        for task, value in record.metrics.items()
    )
    return f"{what}: {record.seconds_per_epoch:.1f} s/epoch, test {scores}"
