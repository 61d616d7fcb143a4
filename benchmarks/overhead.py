"""Step-time overhead of every balancer against a plain `keras.Model`.

For K = 2, 3 and 5 tasks, with and without XLA, each balancer's median
training-step time is divided by that of a plain `keras.Model` compiled with
`loss` + `loss_weights` on the same network, data and batch, measured in the
same run. Writes `benchmarks/results/overhead.md`.

Goals (issue #3): loss balancers ≤ 1.05×; gradient balancers
≤ 1 + 0.35·(K−1); `mode="rep"` (MGDA-UB) ≤ 1.10×.

Reference network: the shapes trunk of `mtl_keras.architectures.shapes_network`
(32x32 images, width 16) with K heads:

- K = 2: `cls` + `seg` (a global classification next to a dense prediction,
  the demo's headline pair);
- K = 3: `cls`, `count`, `seg` (the three shapes tasks);
- K = 5: those three plus two heads whose labels are derived from the
  segmentation map (`derived_labels`): `kinds`, which shape kinds are
  visible (3 sigmoids, binary cross-entropy), and `coverage`, the fraction
  of each image quadrant covered by shapes (4 sigmoids, MSE).

Timing: one fixed in-memory batch, repeated by `tf.data`; each model is
built, compiled and warmed up first, then timed with `model.fit` by a
callback around each `train_function` call (trace/compile time excluded).
The machine is shared, so measurements are interleaved: each round times the
plain baseline, a balancer, the baseline, the next balancer, ..., the
baseline, in a new random order each round; a segment is up to `--steps`
steps (a slow model fewer, about `Settings.segment_seconds`). A balancer's
ratio in a round is its median step time over the mean of the medians of
the two baseline segments around it, and the table shows the median of
these ratios over the rounds.

Profile rows (no goal) and the "what bounds it" section: the `engine only`
rows train with `JacobianOnly`, a gradient balancer that returns equal
weights, so they pay the gradient engine and no balancing math; the
`update without cond` row is the same on the `UnguardedApply` probe model.
The Jacobian is also timed alone (a loop of K `tape.gradient` calls against
pfor's vectorised `tape.jacobian`), and so is the own math of each method
that misses its goal, in a `tf.function`.

With XLA the default rows are a subset (`XLA_BALANCERS`): each model costs
a long XLA compile on two cores. `--xla-balancers all` times every balancer.

Usage (the settings of the committed results):

    nice -n 5 python benchmarks/overhead.py

`--quick` is a smoke run of a minute or two.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import os
import pathlib
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers, ops  # noqa: E402

import mtl_keras  # noqa: E402
from mtl_keras import architectures  # noqa: E402
from mtl_keras import balancers as balancers_lib  # noqa: E402
from mtl_keras.balancers.base import (  # noqa: E402
    GradientBalancer,
    GramianBalancer,
    JacobianBalancer,
    LossBalancer,
)
from mtl_keras.datasets import shapes  # noqa: E402
from mtl_keras.demo import SHAPES_LOSSES  # noqa: E402
from mtl_keras.engine import core as engine_core  # noqa: E402
from mtl_keras.engine import tensorflow as tf_engine  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "overhead.md"
NOTES_MARKER = "<!-- notes -->"

LOSS_GOAL = 1.05
REP_GOAL = 1.10
GRADIENT_GOAL_PER_EXTRA_TASK = 0.35

#: The tasks of the reference network for each K.
TASK_SETS = {
    2: ("cls", "seg"),
    3: ("cls", "count", "seg"),
    5: ("cls", "count", "coverage", "kinds", "seg"),
}
DERIVED_LOSSES = {"kinds": "binary_crossentropy", "coverage": "mse"}
LOSSES = {**SHAPES_LOSSES, **DERIVED_LOSSES}
#: Methods also timed with `jacobian="pfor"` (the loop is the default).
PFOR_METHODS = ("mgda", "upgrad")
PFOR_SUFFIX = ' (jacobian="pfor")'
#: The default rows with XLA: every model there costs a long XLA compile on
#: two cores, so one or two of each kind (`--xla-balancers all` for all).
XLA_BALANCERS = ("static", "uw", "mgda", "upgrad", "mgda_ub")
XLA_PFOR = ("mgda",)
PLAIN = "plain keras.Model"
#: Profile rows, see `JacobianOnly` and `UnguardedApply`.
ENGINE = "engine only, params"
ENGINE_REP = "engine only, rep"
ENGINE_UNGUARDED = "engine only, params, update without cond"


# ------------------------------------------------------------------ the data


def derived_labels(seg: np.ndarray) -> dict[str, np.ndarray]:
    """The two extra K = 5 targets, computed from segmentation maps.

    Args:
        seg: int `(N, S, S)` maps, 0 background and `1 + class` on shapes.

    Returns:
        `kinds`: float32 `(N, NUM_CLASSES)`, 1 where that kind is visible.
        `coverage`: float32 `(N, 4)`, the covered fraction of each quadrant
        (top-left, top-right, bottom-left, bottom-right).
    """
    kinds = np.stack(
        [(seg == 1 + kind).any(axis=(1, 2)) for kind in range(shapes.NUM_CLASSES)],
        axis=-1,
    )
    num, height, width = seg.shape
    covered = (seg > 0).astype("float32")
    quadrants = covered.reshape(num, 2, height // 2, 2, width // 2).mean(axis=(2, 4))
    return {"kinds": kinds.astype("float32"), "coverage": quadrants.reshape(num, 4)}


def benchmark_batch(tasks: Sequence[str], batch_size: int, image_size: int):
    """One batch `(images, {task: labels})` of the shapes data for `tasks`."""
    images, labels = shapes.load_numpy(
        "train", num_examples=batch_size, image_size=image_size, seed=0
    )
    labels = {**labels, **derived_labels(labels["seg"])}
    return np.asarray(images), {task: np.asarray(labels[task]) for task in tasks}


def repeated_dataset(batch) -> tf.data.Dataset:
    """The same batch forever: the input pipeline costs nothing."""
    return tf.data.Dataset.from_tensors(batch).repeat()


# ------------------------------------------------------------------ the models


def _derived_heads(shared) -> dict:
    x = layers.GlobalMaxPooling2D(name="kinds_pool")(shared)
    x = layers.Dense(64, activation="relu", name="kinds_dense")(x)
    kinds = layers.Dense(shapes.NUM_CLASSES, activation="sigmoid", name="kinds")(x)
    # Average each half of the feature map's side: a 2x2 map, one per quadrant.
    x = layers.AveragePooling2D(shared.shape[1] // 2, name="coverage_pool")(shared)
    x = layers.Conv2D(1, 1, activation="sigmoid", name="coverage_conv")(x)
    return {"kinds": kinds, "coverage": layers.Flatten(name="coverage")(x)}


def build_network(tasks: Sequence[str], image_size: int, width: int, seed: int = 0):
    """`(inputs, {task: output}, shared)` of the reference network for `tasks`."""
    keras.utils.set_random_seed(seed)
    shapes_tasks = [task for task in tasks if task in shapes.TASKS]
    base = architectures.shapes_network(
        image_size=image_size, tasks=shapes_tasks, width=width
    )
    shared = base.get_layer("trunk_conv3").output
    outputs = {task: base.get_layer(task).output for task in shapes_tasks}
    if set(tasks) - set(shapes_tasks):
        outputs.update(_derived_heads(shared))
    return base.inputs, {task: outputs[task] for task in tasks}, shared


class JacobianOnly(GramianBalancer):
    """The gradient engine with a solver that costs nothing: equal weights.

    Its update is the plain sum of the task gradients, so a model trained
    with it pays exactly the per-task Jacobian, the Gramian and their
    plumbing on top of a plain step, and no balancing math.
    """

    def compute_weights(self, task_losses, gramian):
        del gramian
        return ops.ones_like(task_losses)


class UnguardedTrainer(tf_engine.TensorFlowTrainer):
    """The TensorFlow trainer with an update not wrapped in `ops.cond`."""

    def apply_if_finite(self, finite, grads) -> None:
        grads = [None if g is None else ops.where(finite, g, ops.zeros_like(g))
                 for g in grads]
        self.model.optimizer.apply(grads, self.model.trainable_variables)


class UnguardedApply(mtl_keras.MultiTaskModel):
    """Probe: a `MultiTaskModel` whose update is not wrapped in `ops.cond`.

    The trainer's `apply_if_finite` skips a step with a non-finite task
    loss by running `optimizer.apply` inside `ops.cond`. This probe zeroes
    the gradients of such a step instead (what the trainer already does
    under `tf.distribute`), to measure what the conditional costs.
    """

    def _make_trainer(self):
        return UnguardedTrainer(self)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One timed configuration: a balancer and how its Jacobian is computed.

    `balancer` is a registry name, `None` for the plain `keras.Model`
    baseline, or `"engine"` for `JacobianOnly` (`mode` says which);
    `guarded=False` trains with the `UnguardedApply` probe.
    """

    label: str
    balancer: str | None
    jacobian: str = "loop"
    mode: str = "params"
    guarded: bool = True

    def make_balancer(self):
        if self.balancer == "engine":
            return JacobianOnly(mode=self.mode)
        return balancers_lib.get(self.balancer)


def goal_kind(balancer) -> str | None:
    """`"loss"`, `"gradient"` or `"rep"`; `None` for profile rows."""
    if isinstance(balancer, JacobianOnly):
        return None
    if isinstance(balancer, LossBalancer):
        return "loss"
    if isinstance(balancer, GradientBalancer):
        return "rep" if balancer.mode == "rep" else "gradient"
    raise TypeError(f"Not a balancer: {balancer!r}")


def goal(kind: str, num_tasks: int) -> float:
    """The issue's ceiling on the step-time ratio."""
    if kind == "loss":
        return LOSS_GOAL
    if kind == "rep":
        return REP_GOAL
    if kind == "gradient":
        return 1.0 + GRADIENT_GOAL_PER_EXTRA_TASK * (num_tasks - 1)
    raise ValueError(f"Unknown goal kind {kind!r}.")


def build_model(variant: Variant, tasks, image_size: int, width: int, xla: bool):
    """A fresh network compiled as `variant` says, same seed for all."""
    inputs, outputs, shared = build_network(tasks, image_size, width)
    optimizer = keras.optimizers.Adam(1e-3)
    losses = {task: LOSSES[task] for task in tasks}
    if variant.balancer is None:
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=optimizer, loss=losses,
                      loss_weights={task: 1.0 for task in tasks}, jit_compile=xla)
        return model
    model_class = mtl_keras.MultiTaskModel if variant.guarded else UnguardedApply
    model = model_class(inputs, outputs, shared=shared)
    model.compile(optimizer=optimizer, loss=losses, balancer=variant.make_balancer(),
                  jacobian=variant.jacobian, jit_compile=xla)
    return model


def variants_for(balancer_names: Sequence[str], pfor: Sequence[str],
                 profile: bool) -> list[Variant]:
    """The timed rows, baseline first: balancers, pfor twins, profile rows
    (the engine rows that the balancers' kinds call for)."""
    rows = [Variant(PLAIN, None)]
    rows += [Variant(name, name) for name in balancer_names]
    rows += [Variant(f"{name}{PFOR_SUFFIX}", name, jacobian="pfor")
             for name in pfor]
    if not profile:
        return rows
    kinds = {goal_kind(balancers_lib.get(name)) for name in [*balancer_names, *pfor]}
    if "gradient" in kinds:
        rows += [Variant(ENGINE, "engine"),
                 Variant(ENGINE_UNGUARDED, "engine", guarded=False)]
    if "rep" in kinds:
        rows.append(Variant(ENGINE_REP, "engine", mode="rep"))
    return rows


def default_balancers() -> list[str]:
    """Every method with a balancer (`mtl_keras.methods`), loss ones first."""
    from mtl_keras import methods

    names = [m.name for m in methods.all_methods() if m.balancer is not None]
    kinds = {name: goal_kind(balancers_lib.get(name)) for name in names}
    order = {"loss": 0, "gradient": 1, "rep": 2}
    return sorted(names, key=lambda name: (order[kinds[name]], name != "static", name))


# ------------------------------------------------------------------ timing


class StepTimer(keras.callbacks.Callback):
    """Records each `train_function` call of `fit`: its wall time, and the
    CPU time of this process during it (all threads), which other jobs on
    the machine disturb less."""

    def __init__(self):
        super().__init__()
        self.durations: list[float] = []
        self.cpu_durations: list[float] = []
        self._start = (0.0, 0.0)

    def on_train_batch_begin(self, batch, logs=None):
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, batch, logs=None):
        self.durations.append(time.perf_counter() - self._start[0])
        self.cpu_durations.append(time.process_time() - self._start[1])


def time_steps(model, dataset, steps: int) -> StepTimer:
    """Times `steps` training steps (the model already warm)."""
    timer = StepTimer()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False,
              callbacks=[timer])
    return timer


def median_ms(function: Callable, args, calls: int) -> float:
    """Median milliseconds of `calls` calls of a warmed-up function."""
    function(*args)
    function(*args)
    durations = []
    for _ in range(calls):
        start = time.perf_counter()
        keras.tree.map_structure(np.asarray, function(*args))
        durations.append(time.perf_counter() - start)
    return 1000 * statistics.median(durations)


# ------------------------------------------------------------------ settings


@dataclasses.dataclass
class Settings:
    """What to measure. `xla_balancers` / `xla_pfor` are the rows of the XLA
    settings (by default a subset, see `XLA_BALANCERS`)."""

    tasks: tuple[int, ...] = (2, 3, 5)
    balancers: tuple[str, ...] = ()
    pfor: tuple[str, ...] = PFOR_METHODS
    xla: tuple[bool, ...] = (False, True)
    xla_balancers: tuple[str, ...] = ()
    xla_pfor: tuple[str, ...] = ()
    steps: int = 5
    min_steps: int = 2
    #: Fewer steps (not under `min_steps`) for slow models: about this many
    #: seconds per timed segment.
    segment_seconds: float = 1.5
    rounds: int = 4
    batch_size: int = 64
    image_size: int = 32
    width: int = 16
    profile: bool = True
    seed: int = 0

    def rows(self, xla: bool) -> list[Variant]:
        if xla:
            return variants_for(self.xla_balancers, self.xla_pfor, self.profile)
        return variants_for(self.balancers, self.pfor, self.profile)

    def steps_for(self, seconds_per_step: float) -> int:
        fitting = int(self.segment_seconds / max(seconds_per_step, 1e-6))
        return max(min(self.steps, self.min_steps), min(self.steps, fitting))


@dataclasses.dataclass
class SettingResult:
    """The measurements of one (XLA, K) setting."""

    xla: bool
    num_tasks: int
    baseline_ms: list[float] = dataclasses.field(default_factory=list)
    ratios: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    #: The same ratios of process CPU time.
    cpu_ratios: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    goal_kinds: dict[str, str | None] = dataclasses.field(default_factory=dict)
    #: Build + trace/compile + two warm-up steps, seconds.
    warmup_s: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Timed steps per round, per model (the baseline included).
    steps: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Jacobian alone: {"forward", "gradient", "loop", "pfor"} -> ms.
    jacobian_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Solver alone, per profiled method -> ms.
    solver_ms: dict[str, float] = dataclasses.field(default_factory=dict)

    def ratio(self, label: str) -> float:
        return statistics.median(self.ratios[label])

    def met(self, label: str) -> bool | None:
        kind = self.goal_kinds[label]
        if kind is None:
            return None
        return self.ratio(label) <= goal(kind, self.num_tasks)

    def misses(self) -> list[str]:
        return [label for label in self.ratios if self.met(label) is False]


def _build_and_warm_up(variant, tasks, settings, xla, dataset, result, log):
    start = time.perf_counter()
    model = build_model(variant, tasks, settings.image_size, settings.width, xla)
    warm_up = time_steps(model, dataset, 2).durations
    result.warmup_s[variant.label] = time.perf_counter() - start
    result.steps[variant.label] = settings.steps_for(warm_up[-1])
    if variant.balancer is not None:
        result.goal_kinds[variant.label] = goal_kind(model.balancer)
        result.ratios[variant.label] = []
        result.cpu_ratios[variant.label] = []
    log(f"  built {variant.label}: {result.warmup_s[variant.label]:.1f} s, "
        f"{1000 * warm_up[-1]:.0f} ms/step, {result.steps[variant.label]} steps")
    return model


def measure_setting(settings: Settings, xla: bool, num_tasks: int,
                    log: Callable[[str], None]) -> SettingResult:
    """Builds, warms up and times every variant of one setting, interleaved."""
    tasks = TASK_SETS[num_tasks]
    batch = benchmark_batch(tasks, settings.batch_size, settings.image_size)
    dataset = repeated_dataset(batch)
    result = SettingResult(xla, num_tasks)
    models = {
        variant.label: _build_and_warm_up(variant, tasks, settings, xla, dataset,
                                          result, log)
        for variant in settings.rows(xla)
    }

    def median_step(label):
        timer = time_steps(models[label], dataset, result.steps[label])
        return (statistics.median(timer.durations),
                statistics.median(timer.cpu_durations))

    rng = np.random.default_rng(settings.seed)
    methods = [label for label in models if label != PLAIN]
    for round_index in range(settings.rounds):
        # Baseline, method, baseline, method, ..., baseline: each method is
        # bracketed by two baseline segments a few seconds apart, so a slow
        # spell of the shared machine hits both sides of its ratio. The
        # order changes every round.
        before = median_step(PLAIN)
        baselines = [before[0]]
        for index in rng.permutation(len(methods)):
            label = methods[index]
            wall, cpu = median_step(label)
            after = median_step(PLAIN)
            result.ratios[label].append(2 * wall / (before[0] + after[0]))
            result.cpu_ratios[label].append(2 * cpu / (before[1] + after[1]))
            baselines.append(after[0])
            before = after
        result.baseline_ms.append(1000 * statistics.median(baselines))
        log(f"  round {round_index + 1}/{settings.rounds}: baseline "
            f"{result.baseline_ms[-1]:.1f} ms/step; ratio (CPU ratio): " + ", ".join(
                f"{label} {result.ratios[label][-1]:.2f} "
                f"({result.cpu_ratios[label][-1]:.2f})" for label in methods))
    models.clear()
    keras.backend.clear_session()
    gc.collect()
    if settings.profile:
        profile_setting(settings, result, batch, log)
    return result


# ------------------------------------------------------------------ profiling


#: The `jacobian_times` entries, in table order, and what each one computes.
ALONE = {
    "forward": "forward (task losses)",
    "gradient": "+ 1 gradient, all variables",
    "loop": "+ J, loop",
    "pfor": "+ J, pfor",
    "loop_heads": "+ J, loop, + head pass",
    "loop_all": "+ J over shared and head variables, loop",
}


def jacobian_times(tasks, batch, settings: Settings, xla: bool) -> dict[str, float]:
    """Milliseconds per call, in a `tf.function`, of the pieces in `ALONE`.

    `gradient` is a plain step's backward pass (no optimizer); `loop` and
    `pfor` compute the K×P task Jacobian over the shared variables;
    `loop_heads` adds the separate backward pass over the head variables
    that the `MultiTaskModel` gradient step makes; `loop_all` instead asks
    each of the K gradient calls for the head variables too, which gives
    the heads' gradients without that extra pass.
    """
    inputs, outputs, shared = build_network(tasks, settings.image_size,
                                            settings.width)
    model = mtl_keras.MultiTaskModel(inputs, outputs, shared=shared)
    model.compile(loss={task: LOSSES[task] for task in tasks})
    images = tf.constant(batch[0])
    labels = {task: tf.constant(value) for task, value in batch[1].items()}

    def task_losses(x, y):
        return model.compute_task_losses(y, model(x, training=True))

    def one_gradient(x, y):
        with tf.GradientTape() as tape:
            total = ops.sum(task_losses(x, y))
        return engine_core.flatten(tape.gradient(total, model.trainable_variables))

    def jacobian(method, heads):
        def compute(x, y):
            with tf.GradientTape(persistent=True) as tape:
                losses = task_losses(x, y)
            targets = list(model.shared_variables)
            if heads == "in_loop":
                targets += model.head_variables
            result = tf_engine.task_jacobian(tape, losses, targets, method)
            if heads == "pass":
                head_grads = tape.gradient(losses, model.head_variables,
                                           output_gradients=ops.ones_like(losses))
                return result, engine_core.flatten(head_grads)
            return result
        return compute

    timed = {"forward": task_losses, "gradient": one_gradient,
             "loop": jacobian("loop", None), "pfor": jacobian("pfor", None),
             "loop_heads": jacobian("loop", "pass"),
             "loop_all": jacobian("loop", "in_loop")}
    calls = max(settings.steps, 5)
    return {
        name: median_ms(tf.function(function, jit_compile=xla, autograph=False),
                        (images, labels), calls)
        for name, function in timed.items()
    }


def solver_time(name: str, num_tasks: int, num_params: int, xla: bool,
                calls: int) -> float:
    """Milliseconds of one call of a balancer's own math, in a `tf.function`
    (a random Gramian, or Jacobian for `JacobianBalancer`s)."""
    balancer = balancers_lib.get(name)
    balancer.build_for_tasks([f"t{k}" for k in range(num_tasks)])
    rng = np.random.default_rng(0)
    task_losses = tf.constant(rng.uniform(0.5, 2.0, num_tasks), "float32")
    if isinstance(balancer, LossBalancer):
        function = tf.function(balancer.balance, jit_compile=xla, autograph=False)
        return median_ms(function, (task_losses,), calls)
    jacobian = tf.constant(rng.normal(size=(num_tasks, num_params)), "float32")
    if isinstance(balancer, JacobianBalancer):
        balancer.build_for_jacobian(num_params)
        function = tf.function(balancer.direction, jit_compile=xla, autograph=False)
        return median_ms(function, (task_losses, jacobian), calls)
    gramian = tf.matmul(jacobian, jacobian, transpose_b=True)
    function = tf.function(balancer.balance, jit_compile=xla, autograph=False)
    return median_ms(function, (task_losses, gramian), calls)


def profile_setting(settings: Settings, result: SettingResult, batch,
                    log: Callable[[str], None]) -> None:
    """Times the Jacobian alone and the solver of every method that missed."""
    tasks = TASK_SETS[result.num_tasks]
    result.jacobian_ms = jacobian_times(tasks, batch, settings, result.xla)
    log("  alone: " + ", ".join(f"{name} {ms:.1f} ms"
                                for name, ms in result.jacobian_ms.items()))
    num_params = shared_parameter_count(tasks, settings)
    calls = max(settings.steps, 5)
    for label in result.misses():
        name = label.removesuffix(PFOR_SUFFIX)
        if name in balancers_lib.available() and name not in result.solver_ms:
            result.solver_ms[name] = solver_time(name, result.num_tasks, num_params,
                                                 result.xla, calls)
            log(f"  solver {name}: {result.solver_ms[name]:.2f} ms")
    keras.backend.clear_session()
    gc.collect()


def shared_parameter_count(tasks, settings: Settings) -> int:
    """P: the number of trunk parameters (the columns of J)."""
    inputs, outputs, shared = build_network(tasks, settings.image_size,
                                            settings.width)
    model = mtl_keras.MultiTaskModel(inputs, outputs, shared=shared)
    return sum(int(np.prod(v.shape)) for v in model.shared_variables)


# ------------------------------------------------------------------ running


def run(settings: Settings, log: Callable[[str], None] = print,
        on_result: Callable[[list[SettingResult]], None] | None = None,
        ) -> list[SettingResult]:
    """Measures every (XLA, K) setting, XLA off first."""
    results = []
    for xla in settings.xla:
        for num_tasks in settings.tasks:
            log(f"[XLA {'on' if xla else 'off'}, K={num_tasks}]")
            results.append(measure_setting(settings, xla, num_tasks, log))
            if on_result is not None:
                on_result(results)
    return results


def profile_pieces(settings: Settings, log: Callable[[str], None] = print,
                   ) -> list[SettingResult]:
    """Only the step's pieces alone (`jacobian_times`), every (XLA, K)."""
    results = []
    for xla in settings.xla:
        for num_tasks in settings.tasks:
            tasks = TASK_SETS[num_tasks]
            batch = benchmark_batch(tasks, settings.batch_size, settings.image_size)
            result = SettingResult(xla, num_tasks)
            result.jacobian_ms = jacobian_times(tasks, batch, settings, xla)
            log(f"[XLA {'on' if xla else 'off'}, K={num_tasks}] " + ", ".join(
                f"{name} {ms:.1f} ms" for name, ms in result.jacobian_ms.items()))
            results.append(result)
            keras.backend.clear_session()
    return results


# ------------------------------------------------------------------ the report


def _xla_name(xla: bool) -> str:
    return "with XLA (`jit_compile=True`)" if xla else "without XLA"


def _goal_text(kind: str | None) -> str:
    if kind is None:
        return "profile"
    if kind == "gradient":
        return f"≤ 1 + {GRADIENT_GOAL_PER_EXTRA_TASK}·(K−1)"
    return f"≤ {goal(kind, 1):.2f}"


def _cell(result: SettingResult | None, label: str) -> str:
    if result is None or label not in result.ratios:
        return "–"
    text = f"{result.ratio(label):.2f}"
    met = result.met(label)
    if met is not None:
        text += " ✓" if met else " ✗"
    values = result.ratios[label]
    small = [f"{min(values):.2f}–{max(values):.2f}"] if len(values) > 1 else []
    if result.cpu_ratios.get(label):
        small.append(f"CPU {statistics.median(result.cpu_ratios[label]):.2f}")
    if small:
        text += f" <sub>{' · '.join(small)}</sub>"
    return text


def ratio_table(results: Sequence[SettingResult], xla: bool) -> str:
    """One XLA setting: a row per balancer, a column per K."""
    by_k = {r.num_tasks: r for r in results if r.xla == xla}
    ks = sorted(by_k)
    labels = list(dict.fromkeys(label for r in by_k.values() for label in r.ratios))
    kinds = {label: r.goal_kinds[label] for r in by_k.values()
             for label in r.goal_kinds}
    lines = [
        "| balancer | goal | " + " | ".join(f"K={k}" for k in ks) + " |",
        "|---|---|" + "---:|" * len(ks),
        f"| *{PLAIN} (ms/step)* | | " + " | ".join(
            f"{statistics.median(by_k[k].baseline_ms):.1f}" for k in ks) + " |",
    ]
    for label in labels:
        name = f"*{label}*" if kinds[label] is None else label
        lines.append(f"| {name} | {_goal_text(kinds[label])} | "
                     + " | ".join(_cell(by_k[k], label) for k in ks) + " |")
    return "\n".join(lines)


def pfor_pairs(results: Sequence[SettingResult]) -> list[tuple]:
    """`(result, loop label, pfor label)` for each pfor row with a loop twin."""
    return [(r, label.removesuffix(PFOR_SUFFIX), label)
            for r in results for label in r.ratios
            if label.endswith(PFOR_SUFFIX)
            and label.removesuffix(PFOR_SUFFIX) in r.ratios]


def jacobian_section(results: Sequence[SettingResult]) -> str:
    """Loop vs pfor: the Jacobian alone and whole training steps."""
    profiled = [r for r in results if r.jacobian_ms]
    pairs = pfor_pairs(results)
    if not profiled and not pairs:
        return "Not measured in this run (`--no-profile` and no `--pfor` methods)."
    parts = []
    if profiled:
        lines = ["| XLA | K | " + " | ".join(ALONE.values()) + " | pfor / loop |",
                 "|---|---:|" + "---:|" * (len(ALONE) + 1)]
        for r in profiled:
            ms = r.jacobian_ms
            lines.append(
                f"| {'on' if r.xla else 'off'} | {r.num_tasks} | "
                + " | ".join(f"{ms[name]:.1f}" for name in ALONE)
                + f" | {ms['pfor'] / ms['loop']:.2f} |")
        parts.append(
            "The pieces of a step alone, ms per call in a `tf.function` "
            "(median; `+` means after the forward pass): one gradient of the "
            "summed loss over all variables is what a plain step "
            "differentiates; J is the K×P task Jacobian over the shared "
            "variables; the gradient step of `MultiTaskModel` computes J, then "
            "one more backward pass for the head variables (`+ head pass`); "
            "asking each of the K gradient calls for the head variables too "
            "gives those without the extra pass (last column).\n\n"
            + "\n".join(lines))
    if pairs:
        lines = ["| XLA | K | method | loop | pfor | pfor / loop |",
                 "|---|---:|---|---:|---:|---:|"]
        for r, loop_label, pfor_label in pairs:
            loop, pfor = r.ratio(loop_label), r.ratio(pfor_label)
            lines.append(f"| {'on' if r.xla else 'off'} | {r.num_tasks} | "
                         f"{loop_label} | {loop:.2f} | {pfor:.2f} | "
                         f"{pfor / loop:.2f} |")
        parts.append("Whole training steps (ratio to the plain model):\n\n"
                     + "\n".join(lines))
    parts.append(jacobian_verdict(profiled, pairs))
    return "\n\n".join(parts)


def jacobian_verdict(profiled, pairs) -> str:
    """Counts where the loop beat pfor, in the Jacobian alone and in steps."""
    alone = [r.jacobian_ms["pfor"] / r.jacobian_ms["loop"] for r in profiled]
    steps = [r.ratio(pfor_label) / r.ratio(loop_label)
             for r, loop_label, pfor_label in pairs]
    sentences = []
    for what, quotients, unit in (("Jacobian alone", alone, "settings"),
                                  ("Training steps", steps, "comparisons")):
        if quotients:
            sentences.append(
                f"{what}: the loop was faster in {sum(q > 1 for q in quotients)} "
                f"of {len(quotients)} {unit} (pfor/loop median "
                f"{statistics.median(quotients):.2f}, range {min(quotients):.2f}–"
                f"{max(quotients):.2f}).")
    return "**Measured:** " + " ".join(sentences)


def bound_sentence(label: str, result: SettingResult) -> str:
    """What a missed goal is made of, from this setting's measurements."""
    kind = result.goal_kinds[label]
    ratio = result.ratio(label)
    base_ms = statistics.median(result.baseline_ms)
    head = (f"- **{label}**, XLA {'on' if result.xla else 'off'}, K={result.num_tasks}:"
            f" {ratio:.2f}× (goal {goal(kind, result.num_tasks):.2f}).")
    name = label.removesuffix(PFOR_SUFFIX)
    solver = result.solver_ms.get(name)
    solver_text = ("" if solver is None else
                   f" Its own math alone takes {solver:.2f} ms per call "
                   f"({100 * solver / base_ms:.0f}% of a plain step).")
    if kind == "loss":
        return head + _loss_bound(label, result, solver_text)
    engine = ENGINE_REP if kind == "rep" else ENGINE
    if engine not in result.ratios:
        return head + solver_text + " (No engine-only row: run with profiling.)"
    engine_ratio = result.ratio(engine)
    jacobian_part, solver_part = engine_ratio - 1, ratio - engine_ratio
    bound = ("Bounded by the gradient engine" if jacobian_part >= solver_part
             else "Bounded by the balancer's own math")
    text = (f" {bound}: the same step with equal weights ({engine}) costs "
            f"{engine_ratio:.2f}×, the method adds {solver_part:+.2f}.")
    if label.endswith(PFOR_SUFFIX) and name in result.ratios:
        text += f" With the default loop Jacobian it costs {result.ratio(name):.2f}×."
    if kind == "gradient" and ENGINE_UNGUARDED in result.ratios:
        text += (" The engine without the `ops.cond` around the optimizer update "
                 f"(probe row) costs {result.ratio(ENGINE_UNGUARDED):.2f}×.")
    ms = result.jacobian_ms
    if kind == "gradient" and ms:
        method = "pfor" if label.endswith(PFOR_SUFFIX) else "loop"
        text += (f" Alone, forward + J ({method}) takes {ms[method]:.1f} ms against "
                 f"{ms['gradient']:.1f} ms for forward + one gradient.")
    return head + text + solver_text


def _loss_bound(label: str, result: SettingResult, solver_text: str) -> str:
    static = result.ratio("static") if "static" in result.ratios else None
    text = ""
    if static is not None and label != "static":
        text += (f" `static` (no balancing math) costs {static:.2f}× on the same "
                 f"step; the method adds {result.ratio(label) - static:+.2f}.")
    if label == "static" or (static is not None and static > LOSS_GOAL):
        text += (" Bounded by the MultiTaskModel loss step itself (masked "
                 "per-task losses, per-task loss and weight trackers, the "
                 "finite-loss check and the `cond` around the update).")
    balancer = balancers_lib.get(label)
    if getattr(balancer, "needs_post_step_losses", False) and result.jacobian_ms:
        forward = result.jacobian_ms["forward"]
        base_ms = statistics.median(result.baseline_ms)
        text += (f" It recomputes the losses after the update, one more forward "
                 f"pass: {forward:.1f} ms alone, {100 * forward / base_ms:.0f}% of "
                 "a plain step.")
    return text + solver_text


def bounds_section(results: Sequence[SettingResult]) -> str:
    lines = [bound_sentence(label, r) for r in results for label in r.misses()]
    return "\n".join(lines) if lines else "Every method met its goal."


def machine_info() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo
                     if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (f"{os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, Keras {keras.__version__}")


def _steps_range(results: Sequence[SettingResult]) -> str:
    counts = [n for r in results for n in r.steps.values()]
    return f"{min(counts)}–{max(counts)}" if counts else "–"


def _warmup_range(results: Sequence[SettingResult]) -> str:
    parts = []
    for xla in (False, True):
        seconds = [s for r in results if r.xla == xla for s in r.warmup_s.values()]
        if seconds:
            parts.append(f"{min(seconds):.0f}–{max(seconds):.0f} s per model "
                         f"{'with' if xla else 'without'} XLA")
    return ", ".join(parts) if parts else "–"


def _xla_rows_note(settings: Settings) -> str:
    if True not in settings.xla or set(settings.xla_balancers) == set(
            settings.balancers):
        return ""
    return (f"\n\nWith XLA only {', '.join(settings.xla_balancers)} (and pfor: "
            f"{', '.join(settings.xla_pfor) or 'none'}) are timed: each model "
            "costs a long XLA compile on this machine (`--xla-balancers all` "
            "times every balancer).")


def format_report(results: Sequence[SettingResult], settings: Settings, command: str,
                  wall_s: float, planned: int, load: str, notes: str = "") -> str:
    status = ("" if len(results) >= planned else
              f"**PARTIAL: {len(results)} of {planned} settings measured.** ")
    size = settings.image_size
    xla_tables = "\n\n".join(
        f"## Step time ratio, {_xla_name(xla)}\n\n{ratio_table(results, xla)}"
        for xla in settings.xla if any(r.xla == xla for r in results))
    return f"""# Training-step overhead of the balancers

{status}Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC
by (from the repository root):

```
{command}
```

Machine: {machine_info()}; shared with other jobs (load average {load}).
Wall time {wall_s / 60:.1f} min.

Each cell is the median over {settings.rounds} rounds of (the method's median
step time / the mean of the plain `keras.Model` + `loss_weights` median step
times measured just before and just after it), after a warm-up; small print:
lowest–highest round, then the same median ratio of process CPU time (all
threads), which the other jobs on the machine disturb less. Timed steps per
segment: {_steps_range(results)} (up to {settings.steps}; slower models fewer,
about {settings.segment_seconds:.1f} s).
✓ meets the goal, ✗ misses it. Goals: loss balancers ≤ {LOSS_GOAL}×, gradient
balancers ≤ 1 + 0.35·(K−1) (1.35, 1.70, 2.40 for K = 2, 3, 5), `mode="rep"`
(mgda_ub) ≤ {REP_GOAL}×. Rows in italics are profile rows (no goal):
`{ENGINE}` and `{ENGINE_REP}` train with a gradient balancer that returns
equal weights, so they pay the gradient engine and no balancing math;
`{ENGINE_UNGUARDED}` is the
same with `TensorFlowTrainer.apply_if_finite` overridden to apply zeroed gradients
instead of running `optimizer.apply` inside `ops.cond` (a probe, see
`UnguardedApply`).{_xla_rows_note(settings)}

Building, tracing/compiling and two warm-up steps took {_warmup_range(results)}.

Reference network: the `shapes_network` trunk ({size}x{size} images,
width {settings.width}), Adam(1e-3), batch {settings.batch_size} of the
shapes data; tasks K=2 `cls`, `seg`; K=3 `cls`, `count`, `seg`; K=5 adds `kinds`
(which shape kinds are visible, 3 sigmoids) and `coverage` (covered fraction of
each quadrant, 4 sigmoids), both derived from the segmentation labels (see the
docstring of `benchmarks/overhead.py`). Default `jacobian="loop"` unless the
row says pfor.

{xla_tables}

## Computing J: loop or pfor

{jacobian_section(results)}

## What bounds the methods that miss their goal

{bounds_section(results)}

{NOTES_MARKER}{notes}""".rstrip() + "\n"


# ------------------------------------------------------------------ the command


QUICK = {"tasks": [2], "balancers": ["static", "mgda", "mgda_ub"],
         "pfor": ["mgda"], "xla": "off", "steps": 5, "rounds": 2}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", choices=sorted(TASK_SETS),
                        help="numbers of tasks K (default: 2 3 5)")
    parser.add_argument("--balancers", nargs="+",
                        help="registry names (default: every registered balancer)")
    parser.add_argument("--pfor", nargs="*",
                        help='methods also timed with jacobian="pfor" '
                             f"(default: {' '.join(PFOR_METHODS)})")
    parser.add_argument("--xla", choices=("both", "on", "off"))
    parser.add_argument("--xla-balancers", nargs="+",
                        help="the rows with XLA; `all` for every registered "
                             "balancer (default: --balancers if given, else "
                             f"{' '.join(XLA_BALANCERS)})")
    parser.add_argument("--xla-pfor", nargs="*",
                        help="pfor rows with XLA (default: --pfor if given, else "
                             f"{' '.join(XLA_PFOR)})")
    parser.add_argument("--steps", type=int,
                        help=f"most timed steps per model per round (default "
                             f"{Settings.steps}; slow models get fewer, about "
                             f"{Settings.segment_seconds:.0f} s, at least "
                             f"{Settings.min_steps})")
    parser.add_argument("--rounds", type=int,
                        help=f"interleaved rounds (default {Settings.rounds})")
    parser.add_argument("--batch-size", type=int, default=Settings.batch_size)
    parser.add_argument("--image-size", type=int, default=Settings.image_size)
    parser.add_argument("--width", type=int, default=Settings.width)
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the profile rows and the solo timings")
    parser.add_argument("--profile-only", action="store_true",
                        help="only time the step's pieces alone (the Jacobian "
                             "table) and print it; writes no report")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: K=2, three balancers, no XLA, 2x5 steps")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else {
        "tasks": sorted(TASK_SETS), "pfor": list(PFOR_METHODS), "xla": "both",
        "steps": Settings.steps, "rounds": Settings.rounds}
    if args.xla_balancers is None and args.balancers is None:
        args.xla_balancers = list(XLA_BALANCERS)
    if args.xla_pfor is None and args.pfor is None:
        args.xla_pfor = list(XLA_PFOR)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def _check_names(names: Sequence[str]) -> tuple[str, ...]:
    for name in names:
        balancers_lib.get(name)  # an unknown name fails here, listing the known
    return tuple(names)


def settings_from_args(args: argparse.Namespace) -> Settings:
    balancer_names = args.balancers or default_balancers()
    xla_names = args.xla_balancers or balancer_names
    if list(xla_names) == ["all"]:
        xla_names = default_balancers()
    xla_pfor = args.pfor if args.xla_pfor is None else args.xla_pfor
    xla = {"both": (False, True), "on": (True,), "off": (False,)}[args.xla]
    return Settings(
        tasks=tuple(args.tasks), balancers=_check_names(balancer_names),
        pfor=_check_names(args.pfor), xla=xla,
        xla_balancers=_check_names(xla_names), xla_pfor=_check_names(xla_pfor),
        steps=args.steps, min_steps=min(Settings.min_steps, args.steps),
        rounds=args.rounds, batch_size=args.batch_size,
        image_size=args.image_size, width=args.width,
        profile=not args.no_profile)


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = settings_from_args(args)
    command = "python benchmarks/overhead.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    notes = ""
    if args.out.exists():
        text = args.out.read_text(encoding="utf-8")
        if NOTES_MARKER in text:
            notes = text.split(NOTES_MARKER, 1)[1]
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    planned = len(settings.xla) * len(settings.tasks)
    start = time.perf_counter()

    def write(results):
        now = ", ".join(f"{value:.1f}" for value in os.getloadavg())
        report = format_report(results, settings, command.strip(),
                               time.perf_counter() - start, planned,
                               f"{load} at the start, {now} at the end", notes)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")

    def log(line):
        print(f"{time.perf_counter() - start:7.0f}s {line}", flush=True)

    if args.profile_only:
        print(jacobian_section(profile_pieces(settings, log)))
        return 0
    results = run(settings, log=log, on_result=write)
    for xla in settings.xla:
        print(f"\n{_xla_name(xla)}\n{ratio_table(results, xla)}")
    print(f"\nWrote {args.out} in {(time.perf_counter() - start) / 60:.1f} min.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
