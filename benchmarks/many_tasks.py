"""Cost of gradient balancing as the number of tasks K grows (TensorFlow).

An MLP trunk of about 7.4M parameters (512→2048→2048→1024, Dense relu) with
one linear Dense(1) head per task, MSE on random regression targets, batch
64. For each K and method it measures:

- `trace s`: wall time of the first `train_on_batch` (trace + compile + one
  step);
- `ms/step`: wall time of a `fit` over `--steps` batches, divided by steps;
- `peak MB`: the process' peak resident memory from the first step to the
  end of that `fit`, minus its resident memory just before the first step
  (Linux `VmHWM`, reset through `/proc/self/clear_refs`); `over plain MB`:
  that minus plain's, the extra memory of the engine, and its ratio to the
  size of J (K×P float32) in params mode;
- `log keys`: the number of entries in the fit history.

Each row runs in a fresh subprocess (so memory and trace times do not leak
between rows) unless `--in-process`. Ratios are to the plain `keras.Model`
(compiled with one loss per output) measured in the same run. The "engine"
row is `benchmarks/backends.py`'s `EqualWeights` (J, its Gramian and the
plumbing, no balancing math).

    nice -n 5 python benchmarks/many_tasks.py --tasks 2,8,32
    nice -n 5 python benchmarks/many_tasks.py --tasks 8,32 --methods mgda,upgrad \
        --jacobian loop,gramian
    python benchmarks/many_tasks.py --tasks 2,9 --width 32 --steps 2 --in-process
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("plain", "engine", "mgda", "upgrad", "mgda_ub")
#: Goals of issue #13: trace ≤ 3× plain; peak ≤ 1.5× J (params), ≤ 100 MB (rep).
TRACE_GOAL = 3.0
PARAMS_MEMORY_GOAL = 1.5
REP_MEMORY_GOAL_MB = 100.0
BATCH = 64
INPUT_DIM = 512


def trunk_sizes(width: int) -> tuple[int, int, int]:
    """The trunk's layer widths: (width, width, width // 2)."""
    return (width, width, width // 2)


def shared_parameter_count(width: int, input_dim: int = INPUT_DIM) -> int:
    """P, the trunk's parameter count (weights and biases)."""
    count, previous = 0, input_dim
    for units in trunk_sizes(width):
        count += previous * units + units
        previous = units
    return count


def jacobian_megabytes(num_tasks: int, width: int) -> float:
    """The size of J (K×P float32) in MB (10⁶ bytes)."""
    return num_tasks * shared_parameter_count(width) * 4 / 1e6


def _memory_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM to the current VmRSS
        return True
    except OSError:
        return False


def mlp_trunk(width: int):
    """The MLP trunk: `(inputs, shared representation)`."""
    import keras

    inputs = keras.Input((INPUT_DIM,), name="x")
    hidden = inputs
    for i, units in enumerate(trunk_sizes(width)):
        hidden = keras.layers.Dense(units, activation="relu", name=f"trunk_{i}")(hidden)
    return inputs, hidden


def with_heads(
    method: str,
    inputs,
    hidden,
    num_tasks: int,
    jacobian: str = "loop",
    **compile_kwargs,
):
    """`num_tasks` linear Dense(1) heads (MSE) on `hidden`, compiled: a
    plain `keras.Model` with `loss_weights` (`method="plain"`), or a
    `MultiTaskModel` with the balancer `method` (a method name, or
    `"engine"`: `backends.EqualWeights`) and `jacobian` (its engine, see
    `MultiTaskModel.compile`; `compile_kwargs` go there too)."""
    import keras

    import mtl_keras

    tasks = [f"task_{k:02d}" for k in range(num_tasks)]
    outputs = {t: keras.layers.Dense(1, name=t)(hidden) for t in tasks}
    if method == "plain":
        model = keras.Model(inputs, outputs)
        model.compile(
            "sgd", loss={t: "mse" for t in tasks}, loss_weights={t: 1.0 for t in tasks}
        )
        return model
    if method == "engine":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from backends import EqualWeights

        balancer = EqualWeights()
    else:
        balancer = method
    model = mtl_keras.MultiTaskModel(inputs, outputs, shared=hidden)
    model.compile(
        "sgd", loss="mse", balancer=balancer, jacobian=jacobian, **compile_kwargs
    )
    return model


def build(method: str, num_tasks: int, width: int, jacobian: str = "loop"):
    """The model of one row, compiled (`jacobian`: the engine of a gradient
    balancer, see `MultiTaskModel.compile`)."""
    import keras

    keras.utils.set_random_seed(0)
    inputs, hidden = mlp_trunk(width)
    return with_heads(method, inputs, hidden, num_tasks, jacobian)


def measure(
    method: str, num_tasks: int, width: int, steps: int, jacobian: str = "loop"
) -> dict:
    """One row: trace time, per-step time, peak extra memory, log keys."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = steps * BATCH
    x = rng.normal(size=(rows, INPUT_DIM)).astype("float32")
    model = build(method, num_tasks, width, jacobian)
    y = {t: rng.normal(size=(rows, 1)).astype("float32") for t in model.output}
    first_x, first_y = x[:BATCH], {t: v[:BATCH] for t, v in y.items()}
    # Memory is counted from here: trace, compile and training, as a user
    # sees it (memory freed after warm-up stays mapped, so a later baseline
    # would hide it).
    exact_peak = _reset_peak()
    before_kb = _memory_kb("VmRSS")
    start = time.perf_counter()
    model.train_on_batch(first_x, first_y)
    trace_s = time.perf_counter() - start
    # The steady fit below builds its own train function for `fit`: warm it.
    model.fit(first_x, first_y, batch_size=BATCH, epochs=1, verbose=0)
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    step_ms = (time.perf_counter() - start) / steps * 1000
    peak_kb = _memory_kb("VmHWM")
    return {
        "method": method,
        "tasks": num_tasks,
        "jacobian": jacobian,
        "trace_s": trace_s,
        "step_ms": step_ms,
        "peak_mb": (peak_kb - before_kb) * 1024 / 1e6,
        "exact_peak": exact_peak,
        "log_keys": len(history.history),
        "log_names": sorted(history.history),
    }


def _run_row(method, num_tasks, width, steps, in_process, jacobian="loop") -> dict:
    if in_process:
        return measure(method, num_tasks, width, steps, jacobian)
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--row",
        f"{method}:{num_tasks}:{jacobian}",
        "--width",
        str(width),
        "--steps",
        str(steps),
    ]
    path = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"row {method} K={num_tasks} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def extra_memory_cell(row: dict, plain: dict, width: int) -> str:
    """Peak memory over plain's: MB, and × size(J) in params mode."""
    if row["method"] == "plain":
        return "-"
    extra = row["peak_mb"] - plain["peak_mb"]
    if row["method"] == "mgda_ub":
        return f"{extra:.0f} (rep)"
    return f"{extra:.0f} ({extra / jacobian_megabytes(row['tasks'], width):.2f}× J)"


def table_row(row: dict, plain: dict, width: int) -> str:
    """One markdown line; ratios are to `plain` (same K, same run)."""
    label = row["method"]
    jacobian = row.get("jacobian", "loop")
    if jacobian != "loop" and row["method"] not in ("plain", "mgda_ub"):
        label = f"{label} ({row['jacobian']})"
    return (
        f"| {row['tasks']} | {label} | {row['trace_s']:.1f} | "
        f"{row['trace_s'] / plain['trace_s']:.2f} | {row['step_ms']:.0f} | "
        f"{row['step_ms'] / plain['step_ms']:.2f} | {row['peak_mb']:.0f} | "
        f"{extra_memory_cell(row, plain, width)} | {row['log_keys']} |"
    )


def header(width: int, steps: int) -> list[str]:
    """The table's preamble: machine, load, date, configuration."""
    import keras

    now = datetime.datetime.now(datetime.timezone.utc)
    return [
        f"# {keras.backend.backend()} | {now:%Y-%m-%d %H:%M} UTC | "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores | "
        f"load {os.getloadavg()[0]:.1f} | P = {shared_parameter_count(width):,} "
        f"shared parameters, batch {BATCH}, {steps} steps",
        "",
        "| K | method | trace s | × plain | ms/step | × plain | peak MB "
        "| over plain MB | log keys |",
        "|---|---|---|---|---|---|---|---|---|",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="2,8,32", help="comma-separated K values")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--width", type=int, default=2048, help="trunk width (2048: P ≈ 7.35M)"
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--jacobian",
        default="loop",
        help="comma-separated engines of the gradient balancers "
        "(loop, pfor, gramian): one row per method and engine",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="one process for all rows (fast; memory less exact)",
    )
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.row:
        method, num_tasks, *jacobian = args.row.split(":")
        print(
            json.dumps(
                measure(method, int(num_tasks), args.width, args.steps, *jacobian)
            )
        )
        return 0
    methods = [m for m in args.methods.split(",") if m != "plain"]
    for line in header(args.width, args.steps):
        print(line, flush=True)
    for num_tasks in (int(k) for k in args.tasks.split(",")):
        plain = _run_row("plain", num_tasks, args.width, args.steps, args.in_process)
        print(table_row(plain, plain, args.width), flush=True)
        for method in methods:
            engines = ["loop"] if method == "mgda_ub" else args.jacobian.split(",")
            for jacobian in engines:
                row = _run_row(
                    method, num_tasks, args.width, args.steps, args.in_process, jacobian
                )
                print(table_row(row, plain, args.width), flush=True)
    print(
        f"\nJ (K×P float32) is {jacobian_megabytes(1, args.width):.1f} MB per task. "
        f"Goals: trace ≤ {TRACE_GOAL:g}× plain; peak ≤ {PARAMS_MEMORY_GOAL:g}× J "
        f"(params), ≤ {REP_MEMORY_GOAL_MB:g} MB (rep)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
