"""Per-step time of the same multi-task methods in torchjd and in mtl_keras.

Times one training step (forward, the task gradients, the aggregation and the
optimizer step) of the MultiMNIST LeNet of `benchmarks/backends.py`
(`architectures.multi_mnist_lenet`: conv 10 5x5, max pool, conv 20 5x5,
spatial dropout, max pool, dense 50 shared; per task dense 50, dropout,
dense 10; cross-entropy; batch 256, K = 2) in PyTorch with torchjd's
`mtl_backward` + `jac_to_grad`, and in mtl_keras with `MultiTaskModel.fit` on
TensorFlow, for every method both libraries have, plus each library's plain
single-loss step. The PyTorch network is built from the same layer sizes
(`CONVS`, `TRUNK_DENSE`, `HEAD_DENSES`), and both sides check that their
parameter count equals `lenet_parameter_count`.

torch and torchjd are not dependencies of mtl_keras (and not in CI). Without
them the script says so and exits with status 0. Install them with:

    pip install torch "torchjd[full]"

(`[full]` brings quadprog/qpsolvers, the default dual-cone projector of
UPGrad and DualProj, and cvxpy/ecos for CAGrad and Nash-MTL; a method whose
torchjd extra is missing is skipped with torchjd's own message.)

Timing: one fixed random batch in memory (the same arrays for both
libraries, NHWC for TensorFlow and NCHW for PyTorch), SGD(0.01) in both,
each library's defaults for the methods (CAGrad with c = 0.4 in both).
Both libraries run on `--threads` threads (torch intra- and inter-op,
TensorFlow intra- and inter-op). Each model is built and warmed up first
(`--warmup` steps; mtl_keras traces its train function there), then the two
libraries are timed in alternating segments of `--steps` steps, `--rounds`
times, each followed by a segment of that library's plain step (for the
"× its plain" columns), and each cell is the median step time over all
timed steps. The
mtl_keras step is the `train_function` call of `fit` (a callback around it,
`overhead.StepTimer`), without XLA (`jit_compile` is off on a CPU).

`--engine autogram` times torchjd's other route instead: the Gramian of the
task losses over the trunk's parameters by `torchjd.autogram.Engine`
(`batch_dim=None`: the task losses are batch means), the method's
`...Weighting` on it, and one backward pass of the weighted losses (the
heads then get the weighted gradients, as in mtl_keras). Methods without a
public Gramian weighting in torchjd (Nash-MTL, GradDrop) are skipped there.

On a machine busy with other jobs, torch's OpenMP threads wait for each
other by spinning, and a step on 2 threads can take 10× its time on an idle
machine while TensorFlow's thread pool barely slows down: compare there with
`--threads 1`, or also with `OMP_WAIT_POLICY=PASSIVE` set (the report keeps
one section per thread count and wait policy).

Usage (the committed sections, from the repository root):

    nice -n 5 python benchmarks/vs_torchjd.py --threads 1 --steps 20 --rounds 3
    nice -n 5 python benchmarks/vs_torchjd.py --threads 1 --steps 20 --rounds 3 \
        --engine autogram
    nice -n 5 python benchmarks/vs_torchjd.py --threads 2 --steps 20 --rounds 3
    OMP_WAIT_POLICY=PASSIVE nice -n 5 python benchmarks/vs_torchjd.py \
        --threads 2 --steps 20 --rounds 3

Each writes its section (one per thread count, wait policy and engine) of
`benchmarks/results/vs_torchjd.md` (`--out` to change the file).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib.metadata
import importlib.util
import os
import pathlib
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "benchmarks"
DEFAULT_OUT = BENCHMARKS / "results" / "vs_torchjd.md"

REQUIREMENTS = ("torch", "torchjd")
INSTALL_HINT = 'pip install torch "torchjd[full]"'
GOAL = 2.0
AUTOJAC, AUTOGRAM = "autojac", "autogram"
NOTES_MARKER = "<!-- notes -->"
TORCHJD, MTL_KERAS = "torchjd", "mtl_keras"
LIBRARIES = (TORCHJD, MTL_KERAS)

#: The MultiMNIST LeNet (`architectures.multi_mnist_lenet`), layer by layer:
#: convolutions as (input channels, filters, kernel side), denses as
#: (inputs, units).
CONVS = ((1, 10, 5), (10, 20, 5))
TRUNK_DENSE = (320, 50)
HEAD_DENSES = ((50, 50), (50, 10))
TASKS = ("left", "right")
IMAGE_SHAPE = (28, 28, 1)
DROPOUT = 0.5
LEARNING_RATE = 0.01  # Keras' SGD default, what `backends.make` compiles with


def lenet_parameter_count(num_tasks: int) -> int:
    """Trainable parameters of the LeNet with `num_tasks` heads (weights and
    biases of every layer)."""
    convs = sum(channels * filters * side * side + filters
                for channels, filters, side in CONVS)
    trunk = convs + TRUNK_DENSE[0] * TRUNK_DENSE[1] + TRUNK_DENSE[1]
    head = sum(inputs * units + units for inputs, units in HEAD_DENSES)
    return trunk + num_tasks * head


@dataclasses.dataclass(frozen=True)
class Method:
    """One row: the same method in both libraries.

    `torchjd` is `(aggregator class name in torchjd.aggregation, kwargs)`,
    or `None` for the plain single-loss step; `keras` is the `balancer`
    argument of `backends.make`: a registry name or config, `"plain"` for a
    plain `keras.Model`, `"engine"` for the engine alone (`EqualWeights`).
    """

    key: str
    label: str
    torchjd: tuple[str, dict] | None
    keras: str | dict


PLAIN = Method("plain", "plain single-loss step", None, "plain")
METHODS = (
    PLAIN,
    Method("mean", "Mean / equal weights (mtl_keras `ew`: one backward)",
           ("Mean", {}), "ew"),
    Method("engine", "Sum of J's rows, no balancing math (mtl_keras engine only)",
           ("Sum", {}), "engine"),
    Method("upgrad", "UPGrad", ("UPGrad", {}), "upgrad"),
    Method("mgda", "MGDA", ("MGDA", {}), "mgda"),
    Method("pcgrad", "PCGrad", ("PCGrad", {}), "pcgrad"),
    Method("cagrad", "CAGrad (c = 0.4)", ("CAGrad", {"c": 0.4}),
           {"class_name": "cagrad", "config": {"c": 0.4}}),
    Method("nash_mtl", "Nash-MTL", ("NashMTL", {"n_tasks": len(TASKS)}), "nash_mtl"),
    Method("imtl_g", "IMTL-G", ("IMTLG", {}), "imtl_g"),
    Method("dualproj", "DualProj", ("DualProj", {}), "dualproj"),
    Method("aligned_mtl", "Aligned-MTL", ("AlignedMTL", {}), "aligned_mtl"),
    Method("graddrop", "GradDrop", ("GradDrop", {}), "graddrop"),
    Method("gradvac", "GradVac", ("GradVac", {}), "gradvac"),
)


def missing_requirements() -> list[str]:
    """The packages of `REQUIREMENTS` that cannot be imported."""
    return [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]


def set_threads(threads: int) -> None:
    """The same thread counts for both libraries, before either runs an op.

    torch goes first, with an optimizer built before TensorFlow is imported:
    the optimizer's lazy imports (torch._dynamo, triton in CUDA builds of
    torch) crashed the process (segmentation fault) when TensorFlow was
    already loaded (torch 2.14.1, TensorFlow 2.21).
    """
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LEARNING_RATE)
    import tensorflow as tf

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def helpers():
    """`(backends, overhead)`: the other benchmarks, for their model and
    timing helpers (imported late, after `set_threads`)."""
    for path in (str(REPO_ROOT), str(BENCHMARKS)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import backends
    import overhead

    return backends, overhead


# ------------------------------------------------------------------ the data


def random_batch(batch_size: int, seed: int = 0):
    """`(images NHWC float32, {task: int labels})`, as in `backends.py`."""
    rng = np.random.default_rng(seed)
    images = rng.random((batch_size, *IMAGE_SHAPE), dtype=np.float32)
    labels = {task: rng.integers(0, 10, batch_size).astype("int32")
              for task in TASKS}
    return images, labels


def torch_batch(batch):
    """The same arrays as torch tensors: images NCHW, labels int64."""
    import torch

    images, labels = batch
    return (torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
            {task: torch.from_numpy(labels[task].astype("int64")) for task in TASKS})


# ------------------------------------------------------------------ PyTorch


def torch_lenet():
    """`(trunk, {task: head})`: the LeNet in PyTorch, layer for layer."""
    from torch import nn

    (in1, filters1, side1), (in2, filters2, side2) = CONVS
    trunk = nn.Sequential(
        nn.Conv2d(in1, filters1, side1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(in2, filters2, side2), nn.Dropout2d(DROPOUT), nn.MaxPool2d(2),
        nn.ReLU(), nn.Flatten(), nn.Linear(*TRUNK_DENSE), nn.ReLU())
    heads = nn.ModuleDict({
        task: nn.Sequential(nn.Linear(*HEAD_DENSES[0]), nn.ReLU(),
                            nn.Dropout(DROPOUT), nn.Linear(*HEAD_DENSES[1]))
        for task in TASKS})
    return trunk, heads


class NotSupported(Exception):
    """torchjd cannot run this method with the chosen engine."""


def torchjd_aggregator(method: Method, engine: str = AUTOJAC):
    """The torchjd aggregator of `method` (`autojac`) or its Gramian
    weighting (`autogram`); `None` for the plain step. Raises torchjd's
    `ImportError` when its optional dependencies are missing."""
    if method.torchjd is None:
        return None
    from torchjd import aggregation

    name, kwargs = method.torchjd
    if engine == AUTOJAC:
        return getattr(aggregation, name)(**kwargs)
    weighting = getattr(aggregation, f"{name}Weighting", None)
    if weighting is None:
        raise NotSupported(f"torchjd {torchjd_version()} has no public Gramian "
                           f"weighting for {name}, so no autogram")
    return weighting(**kwargs)


def torch_step(method: Method, batch, engine: str = AUTOJAC,
               seed: int = 0) -> Callable[[], None]:
    """A function running one training step of `method` in PyTorch, its
    Jacobian by torchjd's `engine`."""
    import torch

    aggregator = torchjd_aggregator(method, engine)
    torch.manual_seed(seed)
    trunk, heads = torch_lenet()
    params = [*trunk.parameters(), *heads.parameters()]
    count = sum(param.numel() for param in params)
    if count != lenet_parameter_count(len(TASKS)):
        raise AssertionError(f"The torch LeNet has {count} parameters.")
    optimizer = torch.optim.SGD(params, lr=LEARNING_RATE)
    images, labels = torch_batch(batch)
    backward = (_plain_backward() if aggregator is None else
                _autojac_backward(aggregator, trunk) if engine == AUTOJAC else
                _autogram_backward(aggregator, trunk))

    def step():
        optimizer.zero_grad()
        features = trunk(images)
        backward(features, [heads[task](features) for task in TASKS], labels)
        optimizer.step()

    return step


def _task_losses(logits, labels) -> list:
    from torch.nn import functional

    return [functional.cross_entropy(task_logits, labels[task])
            for task, task_logits in zip(TASKS, logits)]


def _plain_backward():
    def backward(features, logits, labels):
        sum(_task_losses(logits, labels)).backward()

    return backward


def _autojac_backward(aggregator, trunk):
    """torchjd's MTL route: `mtl_backward`, then `jac_to_grad` on the trunk."""
    from torchjd.autojac import jac_to_grad, mtl_backward

    def backward(features, logits, labels):
        mtl_backward(_task_losses(logits, labels), features=features)
        jac_to_grad(trunk.parameters(), aggregator)

    return backward


def _autogram_backward(weighting, trunk):
    """torchjd's Gramian route: the Gramian of the task losses over the
    trunk's parameters by `autogram.Engine` (hooks set before the forward
    pass), then one backward pass of the weighted losses."""
    import torch
    from torchjd.autogram import Engine

    engine = Engine(trunk, batch_dim=None)

    def backward(features, logits, labels):
        task_losses = torch.stack(_task_losses(logits, labels))
        task_losses.backward(weighting(engine.compute_gramian(task_losses)))

    return backward


def torchjd_version() -> str:
    return importlib.metadata.version("torchjd")


def time_torch(step: Callable[[], None], steps: int) -> tuple[list, list]:
    """`(wall, CPU)` seconds of each of `steps` calls of `step` (CPU: this
    process, all threads)."""
    wall, cpu = [], []
    for _ in range(steps):
        start = (time.perf_counter(), time.process_time())
        step()
        wall.append(time.perf_counter() - start[0])
        cpu.append(time.process_time() - start[1])
    return wall, cpu


# ------------------------------------------------------------------ mtl_keras


def keras_model(method: Method):
    """The mtl_keras model of `method`, compiled (`backends.make`)."""
    backends, _ = helpers()
    from mtl_keras import balancers

    balancer = method.keras
    if balancer not in ("plain", "engine"):
        balancer = balancers.get(balancer)
    return backends.make(balancer, "loop")


def trainable_count(model) -> int:
    return sum(int(np.prod(variable.shape)) for variable in model.trainable_variables)


def time_keras(model, dataset, steps: int) -> tuple[list, list]:
    """`(wall, CPU)` seconds of each of `steps` `train_function` calls of
    `fit`."""
    _, overhead = helpers()
    timer = overhead.time_steps(model, dataset, steps)
    return timer.durations, timer.cpu_durations


# ------------------------------------------------------------------ the run


def _per_library() -> dict[str, list[float]]:
    return {library: [] for library in LIBRARIES}


@dataclasses.dataclass
class Result:
    """The timed steps of one method: `{library: [seconds]}` of wall and
    of process CPU time, and the same of each library's plain step timed in
    the same rounds (`plain_wall_s`, `plain_cpu_s`, empty for the plain row
    itself); `skipped` says why there are none."""

    method: Method
    wall_s: dict[str, list[float]] = dataclasses.field(default_factory=_per_library)
    cpu_s: dict[str, list[float]] = dataclasses.field(default_factory=_per_library)
    plain_wall_s: dict[str, list[float]] = dataclasses.field(
        default_factory=_per_library)
    plain_cpu_s: dict[str, list[float]] = dataclasses.field(
        default_factory=_per_library)
    warmup_s: dict[str, float] = dataclasses.field(default_factory=dict)
    skipped: str = ""

    def ms(self, library: str, cpu: bool = False) -> float:
        """Median milliseconds per step of `library`."""
        return 1000 * statistics.median((self.cpu_s if cpu else self.wall_s)[library])

    def times_plain(self, library: str, cpu: bool = False) -> float:
        """The median step over the median plain step timed alongside it."""
        plain = (self.plain_cpu_s if cpu else self.plain_wall_s)[library]
        if not plain:
            return 1.0
        return self.ms(library, cpu) / (1000 * statistics.median(plain))


def _warm(library: str, build: Callable, run: Callable, result: Result):
    start = time.perf_counter()
    built = build()
    run(built)
    result.warmup_s[library] = time.perf_counter() - start
    return built


def build(method: Method, batch, dataset, settings: argparse.Namespace,
          result: Result) -> dict[str, Callable] | None:
    """Builds and warms up `method` in both libraries: `{library: function
    timing one segment}`, `None` (and `result.skipped`) if torchjd cannot."""
    try:
        step = _warm(TORCHJD, lambda: torch_step(method, batch, settings.engine),
                     lambda built: time_torch(built, settings.warmup), result)
    except NotSupported as error:
        result.skipped = str(error)
        return None
    except ImportError as error:  # a torchjd extra is missing
        result.skipped = f"torchjd: {error}"
        return None
    model = _warm(MTL_KERAS, lambda: keras_model(method),
                  lambda built: time_keras(built, dataset, settings.warmup), result)
    if trainable_count(model) != lenet_parameter_count(len(TASKS)):
        raise AssertionError(f"The Keras LeNet has {trainable_count(model)} "
                             "trainable parameters.")
    return {TORCHJD: lambda: time_torch(step, settings.steps),
            MTL_KERAS: lambda: time_keras(model, dataset, settings.steps)}


def time_rounds(result: Result, segments, plain_segments, rounds: int) -> None:
    """`rounds` rounds of one segment per library (and of each library's
    plain step, unless `plain_segments` is None), alternating the order."""
    for round_index in range(rounds):
        order = LIBRARIES if round_index % 2 == 0 else LIBRARIES[::-1]
        for library in order:
            wall, cpu = segments[library]()
            result.wall_s[library].extend(wall)
            result.cpu_s[library].extend(cpu)
            if plain_segments is not None:
                wall, cpu = plain_segments[library]()
                result.plain_wall_s[library].extend(wall)
                result.plain_cpu_s[library].extend(cpu)


def run(methods: Sequence[Method], settings: argparse.Namespace,
        log: Callable[[str], None]) -> list[Result]:
    """Times every method (the first one is `PLAIN`), a method and the
    plain steps in the same rounds."""
    _, overhead = helpers()
    batch = random_batch(settings.batch)
    dataset = overhead.repeated_dataset(batch)
    results, plain_segments = [], None
    for method in methods:
        result = Result(method)
        segments = build(method, batch, dataset, settings, result)
        if segments is None:
            log(f"{method.label}: skipped ({result.skipped})")
        else:
            time_rounds(result, segments, plain_segments, settings.rounds)
            log(f"{method.label}: " + ", ".join(
                f"{library} {result.ms(library):.1f} ms (warm-up "
                f"{result.warmup_s[library]:.1f} s)" for library in LIBRARIES))
        if method is PLAIN:
            plain_segments = segments
        results.append(result)
        del segments
        gc.collect()  # the last method's models, before the next are timed
    return results


# ------------------------------------------------------------------ the report


def _speed_up(result: Result, cpu: bool) -> str:
    ratio = result.ms(TORCHJD, cpu) / result.ms(MTL_KERAS, cpu)
    mark = "" if result.method is PLAIN else (" ✓" if ratio >= GOAL else " ✗")
    return f"{ratio:.2f}×{mark}"


def table(results: Sequence[Result], cpu: bool = False) -> str:
    """The markdown table of median wall (or process CPU) ms per step:
    each library, the speed-up, and each library's ratio to its own plain
    step timed in the same rounds."""
    unit = "CPU ms/step" if cpu else "ms/step"
    lines = [f"| method | torchjd {unit} | mtl_keras {unit} | speed-up (torchjd / "
             "ours) | torchjd × its plain | mtl_keras × its plain |",
             "|---|---|---|---|---|---|"]
    for result in results:
        if result.skipped:
            lines.append(f"| {result.method.label} | skipped | | | | |")
            continue
        own = " | ".join(f"{result.times_plain(library, cpu):.2f}"
                         for library in LIBRARIES)
        lines.append(f"| {result.method.label} | {result.ms(TORCHJD, cpu):.1f} | "
                     f"{result.ms(MTL_KERAS, cpu):.1f} | {_speed_up(result, cpu)} | "
                     f"{own} |")
    return "\n".join(lines)


def versions() -> str:
    """The versions `overhead.machine_info` leaves out."""
    import torch

    return (f"torch {torch.__version__}, torchjd {torchjd_version()}, NumPy "
            f"{np.__version__}")


def header() -> str:
    """The top of the report: what is compared, common to every section."""
    return f"""# Per-step time: torchjd vs mtl_keras

`benchmarks/vs_torchjd.py` times one training step of the same network and
methods in PyTorch + torchjd (`mtl_backward`, then `jac_to_grad` over the
trunk's parameters) and in mtl_keras (`MultiTaskModel.fit` on TensorFlow,
`jacobian="loop"`, no XLA). torch and torchjd are not dependencies of
mtl_keras; install them with `{INSTALL_HINT}` to run it. Sections marked
"autogram" time torchjd's Gramian route instead (`autogram.Engine` on the
trunk, the method's weighting, one weighted backward pass).

The MultiMNIST LeNet (shared trunk of {lenet_parameter_count(0):,} parameters,
two heads, {lenet_parameter_count(len(TASKS)):,} in all; cross-entropy per
task), a batch of random images in memory (the same arrays for both
libraries), SGD(0.01), each library's own defaults for every method (CAGrad:
c = 0.4 in both). Speed-up = torchjd's time / mtl_keras' time; ✓ meets the
goal of ≥ {GOAL:.0f}× (issue #13), ✗ misses it. "× its plain" is each
library's time over its own plain single-loss step, timed in the same rounds
(a segment of the method, then one of the plain step, per library).

One section per thread count (and `OMP_WAIT_POLICY`, when set); each run
replaces its own section.
"""


def section(results, settings, command: str, loads: tuple[str, str],
            wall_s: float) -> str:
    """The report's part for one run (one thread count)."""
    _, overhead = helpers()
    skipped = "".join(f"\n- {r.method.label}: {r.skipped}" for r in results
                      if r.skipped)
    wait_policy = os.environ.get("OMP_WAIT_POLICY")
    plural = "" if settings.threads == 1 else "s"
    title = f"{settings.threads} thread{plural} per library"
    if wait_policy:
        title += f", torch with OMP_WAIT_POLICY={wait_policy}"
    if settings.engine == AUTOGRAM:
        title += ", torchjd's autogram engine"
    wait_policy = f" OMP_WAIT_POLICY={wait_policy}." if wait_policy else ""
    return f"""## {title}

Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by
(from the repository root):

```bash
{command}
```

Machine: {overhead.machine_info()}; {versions()}. Shared with other jobs:
load average (1, 5, 15 min) {loads[0]} at the start, {loads[1]} at the end.
torch intra- and inter-op threads and TensorFlow intra- and inter-op
threads: {settings.threads}.{wait_policy} Batch {settings.batch}. Each cell is
the median of {settings.rounds} × {settings.steps} timed steps per library, in
alternating segments, after {settings.warmup} warm-up steps. Wall time
{wall_s / 60:.1f} min.
{skipped}

{table(results)}

Process CPU time per step (all threads of the process; other jobs on the
machine disturb it less, but it counts threads that spin while waiting):

{table(results, cpu=True)}
""".rstrip()


def section_key(threads: int, wait_policy: str | None = None,
                engine: str = AUTOJAC) -> str:
    """What a section is for: the thread count, torch's OpenMP wait policy
    where `OMP_WAIT_POLICY` sets one, torchjd's engine if not autojac."""
    key = f"threads={threads}"
    if wait_policy:
        key += f" OMP_WAIT_POLICY={wait_policy}"
    return key + (f" engine={engine}" if engine != AUTOJAC else "")


def merge_report(existing: str, key: str, new_section: str) -> str:
    """The report with `new_section` under `key` (see `section_key`), the
    other sections and the notes (after `NOTES_MARKER`) of `existing` kept."""
    sections = {
        match.group(1): match.group(2).strip()
        for match in re.finditer(r"<!-- section (.+?) -->(.*?)<!-- end section \1 -->",
                                 existing, re.S)}
    sections[key] = new_section
    notes = existing.split(NOTES_MARKER, 1)[1] if NOTES_MARKER in existing else "\n"
    body = "\n\n".join(
        f"<!-- section {name} -->\n{sections[name]}\n<!-- end section {name} -->"
        for name in sorted(sections))
    return f"{header()}\n{body}\n\n{NOTES_MARKER}{notes}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2,
                        help="threads of both libraries (default 2)")
    parser.add_argument("--steps", type=int, default=20,
                        help="timed steps per segment (default 20)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating segments per library (default 2)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps after building (default 3)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--engine", choices=(AUTOJAC, AUTOGRAM), default=AUTOJAC,
                        help="torchjd's route: `mtl_backward` + `jac_to_grad` "
                             "(autojac, default) or the Gramian of "
                             "`autogram.Engine` + one weighted backward")
    parser.add_argument("--methods", nargs="+", choices=[m.key for m in METHODS],
                        help="rows besides the plain step (default: all)")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT,
                        help="the markdown report to write")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = missing_requirements()
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        print(f"vs_torchjd: skipped, {' and '.join(missing)} {verb} not installed "
              f"(not dependencies of mtl_keras). To run this comparison: "
              f"{INSTALL_HINT}")
        return 0
    set_threads(args.threads)
    methods = [PLAIN, *[m for m in METHODS
                        if m is not PLAIN and (args.methods is None
                                               or m.key in args.methods)]]
    start = time.perf_counter()
    load_before = ", ".join(f"{value:.2f}" for value in os.getloadavg())

    def log(line):
        print(f"{time.perf_counter() - start:6.0f}s {line}", flush=True)

    results = run(methods, args, log)
    load_after = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    command = "python benchmarks/vs_torchjd.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    new_section = section(results, args, command.strip(),
                          (load_before, load_after), time.perf_counter() - start)
    existing = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    key = section_key(args.threads, os.environ.get("OMP_WAIT_POLICY"), args.engine)
    args.out.write_text(merge_report(existing, key, new_section), encoding="utf-8")
    print(f"\n{table(results)}\n\nWrote {args.out}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
