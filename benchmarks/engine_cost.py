"""What the gradient engines cost, side by side: one table (issue #24).

Rows: a plain `keras.Model` with `loss_weights`; UPGrad on the loop engine
(`compile(jacobian="loop")`, K backward passes, J held as the per-task
gradients); UPGrad on the Gramian engine (`jacobian="gramian"`, J Jᵀ
accumulated from the shared layers' pieces, J never held; TensorFlow only);
MGDA-UB (`mode="rep"`, J over the shared representation). Nets:
`many_tasks.py`'s MLP (P ≈ 7.35M shared parameters, batch 64) with
K = 2, 8, 32 linear heads, and `keras.applications.MobileNetV2(weights=None)`
(or ResNet50) at 64×64 with K = 3 heads, batch 16; MSE on random targets,
SGD; TensorFlow and JAX.

Columns: `first fit s`, the wall time of the first one-batch `fit` call
(trace or compile, and one step); `step ms`, the median time of a training
step over `--steps` steps of a second `fit` (same train function);
`peak MB`, the rise of the process' peak RSS (`VmHWM`) from just before the
first `fit` to the end of the second; `over plain MB`, that minus plain's
(same backend, net and K), with its ratio to |J| = K×P float32. Ratios are
to plain's row of the same backend, net and K.

Peak RSS also holds what the step's tensors no longer need: XLA's compiler
memory (JAX compiles in the first call) and the pools of TensorFlow's CPU
allocators. The "Live memory" table counts tensors only: on JAX, the
temporary buffers XLA's buffer assignment plans for the compiled train step
(`memory_analysis()`, every JAX row); on TensorFlow, the peak of bytes in use
that its BFC CPU allocator reports over both `fit` calls, from extra rows
run with `TF_CPU_ALLOCATOR_USE_BFC=true TF_ENABLE_ONEDNN_OPTS=0` (the only
configuration in which TensorFlow counts CPU bytes; `--live-memory` adds
them for the MLP).

Each row runs in a fresh subprocess and appends one JSON line to the log;
rerunning the same command skips the rows already logged (a failed row is
retried), so a run cut short continues where it stopped. The Markdown table
is rendered from the log after every row.

    nice -n 5 python benchmarks/engine_cost.py --live-memory
    # The first-fit breakdown (static weights, UW, diagnostics off; --profile
    # adds cProfile rows), in its own log and results file:
    nice -n 5 python benchmarks/engine_cost.py --backends tensorflow,jax --tasks '' \\
        --backbones mobilenet_v2,resnet50 \\
        --backbone-rows plain,static,uw,loop_nodiag,loop \\
        --log benchmarks/results/engine_cost_first_fit_runs.jsonl \\
        --output benchmarks/results/engine_cost_first_fit.md \\
        --notes benchmarks/results/engine_cost_first_fit_notes.txt
    python benchmarks/engine_cost.py --render-only   # the table from the log
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import json
import math
import os
import platform
import pstats
import re
import shlex
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import many_tasks  # noqa: E402

ROOT = many_tasks.ROOT
RESULTS = os.path.join(ROOT, "benchmarks", "results")
LOG = os.path.join(RESULTS, "engine_cost_runs.jsonl")
OUTPUT = os.path.join(RESULTS, "engine_cost.md")
NOTES = os.path.join(RESULTS, "engine_cost_notes.txt")
TITLE = "Engine cost: plain Keras, the loop engine, the Gramian engine, rep mode"
DEFAULT_COMMAND = "nice -n 5 python benchmarks/engine_cost.py"

#: row name -> (label, method, compile keyword arguments).
ROWS = {
    "plain": ("plain keras.Model (loss_weights)", "plain", {}),
    "loop": ("UPGrad, loop engine", "upgrad", {"jacobian": "loop"}),
    "gramian": ("UPGrad, Gramian engine", "upgrad", {"jacobian": "gramian"}),
    "rep": ("MGDA-UB (rep mode)", "mgda_ub", {}),
    # The first-fit breakdown (issue #24, item 3).
    "static": ("static weights (MultiTaskModel)", "static", {}),
    "uw": ("UW (loss balancer)", "uw", {}),
    "loop_nodiag": (
        "UPGrad, loop, diagnostics='none'",
        "upgrad",
        {"jacobian": "loop", "diagnostics": "none"},
    ),
}
MAIN_ROWS = ("plain", "loop", "gramian", "rep")
BACKBONES = {"mobilenet_v2": "MobileNetV2", "resnet50": "ResNet50"}
BACKBONE_BATCH = 16


def tensorflow_only(backend: str, row: str) -> bool:
    """Whether `row` cannot run on `backend` (the Gramian engine is
    TensorFlow-only)."""
    return backend != "tensorflow" and ROWS[row][2].get("jacobian") == "gramian"


# ------------------------------------------------------------------ one row


def row_key(spec: dict) -> str:
    """What identifies a row in the log (the resume key)."""
    size = spec["width"] if spec["net"] == "mlp" else spec["image_size"]
    return (
        f"{spec['backend']}/{spec['net']}/{size}/K={spec['tasks']}/"
        f"{spec['row']}/batch={spec['batch']}/steps={spec['steps']}"
        + ("/profile" if spec.get("profile") else "")
        + ("/live" if spec.get("live") else "")
    )


def build(spec: dict):
    """The compiled model of a row, and P (shared parameters)."""
    import keras

    keras.utils.set_random_seed(0)
    if spec["net"] == "mlp":
        inputs, hidden = many_tasks.mlp_trunk(spec["width"])
    else:
        application = getattr(keras.applications, BACKBONES[spec["net"]])
        size = spec["image_size"]
        backbone = application(
            weights=None, include_top=False, pooling="avg", input_shape=(size, size, 3)
        )
        inputs, hidden = backbone.input, backbone.output
    _, method, kwargs = ROWS[spec["row"]]
    model = many_tasks.with_heads(method, inputs, hidden, spec["tasks"], **kwargs)
    heads = [model.get_layer(t) for t in model.output]
    params = _size(model.trainable_weights) - sum(
        _size(head.trainable_weights) for head in heads
    )
    return model, params


def _size(variables) -> int:
    return sum(math.prod(v.shape) for v in variables)


def _step_timer():
    """A callback recording the wall time of each `train_function` call."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.durations: list[float] = []
            self._start = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.durations.append(time.perf_counter() - self._start)

    return StepTimer()


def measure(spec: dict) -> dict:
    """Runs one row (in this process) and returns its JSON record."""
    import keras
    import numpy as np

    model, params = build(spec)
    rng = np.random.default_rng(0)
    batch, steps = spec["batch"], spec["steps"]
    shape = (
        (many_tasks.INPUT_DIM,)
        if spec["net"] == "mlp"
        else (spec["image_size"], spec["image_size"], 3)
    )
    x = rng.normal(size=(batch * steps, *shape)).astype("float32")
    y = {t: rng.normal(size=(batch * steps, 1)).astype("float32") for t in model.output}
    exact_peak = many_tasks._reset_peak()
    before_kb = many_tasks._memory_kb("VmRSS")
    live_before = _allocator_reset() if spec.get("live") else None
    profiler = cProfile.Profile() if spec.get("profile") else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    model.fit(
        x[:batch],
        {t: v[:batch] for t, v in y.items()},
        batch_size=batch,
        epochs=1,
        verbose=0,
    )
    if profiler:
        profiler.disable()
    first_fit_s = time.perf_counter() - start
    timer = _step_timer()
    model.fit(
        x,
        y,
        batch_size=batch,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[timer],
    )
    peak_kb = many_tasks._memory_kb("VmHWM")
    if spec.get("live"):
        live_mb = (_allocator_peak() - live_before) / 1e6
    elif keras.backend.backend() == "jax":
        data = (x[:batch], {t: v[:batch] for t, v in y.items()})
        live_mb = step_temporaries(model, data) / 1e6
    else:
        live_mb = None
    versions = {"keras": keras.__version__}
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    else:
        import jax

        versions["jax"] = jax.__version__
    return {
        **spec,
        "key": row_key(spec),
        "params": params,
        "jacobian_mb": spec["tasks"] * params * 4 / 1e6,
        "first_fit_s": first_fit_s,
        "step_ms": statistics.median(timer.durations) * 1000,
        "peak_mb": (peak_kb - before_kb) * 1024 / 1e6,
        "exact_peak": exact_peak,
        "live_mb": live_mb,
        "versions": versions,
        **({"profile_top": _top_functions(profiler)} if profiler else {}),
    }


def _allocator_reset() -> int:
    """Resets TensorFlow's CPU allocator peak; the bytes in use now."""
    import tensorflow as tf

    tf.config.experimental.reset_memory_stats("CPU:0")
    current = tf.config.experimental.get_memory_info("CPU:0")["current"]
    if not current:
        raise RuntimeError(
            "TensorFlow counts no CPU bytes: a live row needs "
            "TF_CPU_ALLOCATOR_USE_BFC=true and TF_ENABLE_ONEDNN_OPTS=0"
        )
    return current


def _allocator_peak() -> int:
    import tensorflow as tf

    return tf.config.experimental.get_memory_info("CPU:0")["peak"]


def step_temporaries(model, data) -> int:
    """Bytes of the temporary buffers XLA plans for `model`'s compiled
    train step on `data` (JAX): what one step holds beyond its inputs and
    outputs (the variables' values, the batch, the new values)."""
    import jax

    state = tuple(
        [v.value for v in variables]
        for variables in (
            model.trainable_variables,
            model.non_trainable_variables,
            model.optimizer.variables,
            model.metrics_variables,
        )
    )
    compiled = jax.jit(model.train_step).lower(state, data).compile()
    return compiled.memory_analysis().temp_size_in_bytes


#: The environment of a TensorFlow row with `"live": True`.
LIVE_ENV = {"TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_ENABLE_ONEDNN_OPTS": "0"}

SPEC_KEYS = ("backend", "net", "tasks", "row", "width", "image_size", "batch",
             "steps", "skip", "profile", "live")  # fmt: skip
#: Where the profile of a first `fit` looks (paths inside the packages).
PROFILED = (
    "mtl_keras/",
    "keras/src/trainers/",
    "keras/src/backend/",
    "keras/src/metrics/",
    "keras/src/optimizers/",
    "keras/src/losses/",
)


def _top_functions(profiler, count: int = 30) -> list:
    """The `count` functions of mtl_keras and Keras' trainer, backend,
    metrics, optimizers and losses with the most cumulative time in the
    profile: `[seconds, calls, "package/path:function"]` (cumulative times
    of nested functions overlap)."""
    entries = []
    for (path, _, function), (_, calls, _, cumulative, _) in pstats.Stats(
        profiler
    ).stats.items():
        path = path.replace(os.sep, "/")
        for package in PROFILED:
            if package in path:
                where = path[path.index(package.split("/")[0]) :]
                entries.append([round(cumulative, 3), calls, f"{where}:{function}"])
                break
    return sorted(entries, reverse=True)[:count]


def _uptime() -> str:
    try:
        return subprocess.run(
            ["uptime"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def run_row(spec: dict, timeout: float, in_process: bool = False) -> dict:
    """Runs one row in a fresh subprocess (its backend by `KERAS_BACKEND`),
    or in this process (`in_process`: the backend must be this process')."""
    started = datetime.datetime.now(datetime.timezone.utc)
    uptime_start = _uptime()
    if in_process and not spec.get("live"):  # live: TF's allocator env first
        import keras

        if keras.backend.backend() != spec["backend"]:
            raise ValueError(
                f"this process runs {keras.backend.backend()}, not {spec['backend']}"
            )
        record = measure(spec)
    else:
        record = _in_subprocess(spec, timeout)
    record.update(
        started=f"{started:%Y-%m-%d %H:%M:%S}",
        uptime_start=uptime_start,
        uptime_end=_uptime(),
        wall_s=(datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(),
    )
    return record


def _in_subprocess(spec: dict, timeout: float) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--row", json.dumps(spec)]
    path = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "KERAS_BACKEND": spec["backend"],
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **(LIVE_ENV if spec.get("live") else {}),
    }
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {
            **spec,
            "key": row_key(spec),
            "error": f"timed out after {timeout:.0f} s",
        }
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (
            [
                line
                for line in done.stderr.strip().splitlines()
                if re.match(r"[\w.]+(Error|Exception)\b", line)
            ][-1:]
            or done.stderr.strip().splitlines()[-1:]
            or ["no output"]
        )
        return {
            **spec,
            "key": row_key(spec),
            "error": f"exit {done.returncode}: {tail[0][:200]}",
        }
    return json.loads(lines[-1])


# ------------------------------------------------------------------ the plan


def plan(args: argparse.Namespace) -> list[dict]:
    """The rows of a command, in running order (backend, net, K, row)."""
    specs = []
    for backend in args.backends.split(","):
        nets = [("mlp", k, args.rows) for k in _ints(args.tasks)]
        nets += [
            (net, k, args.backbone_rows)
            for net in _names(args.backbones)
            for k in _ints(args.backbone_tasks)
        ]
        for net, num_tasks, rows in nets:
            for row in _names(rows):
                if row not in ROWS:
                    raise SystemExit(f"unknown row {row!r}; one of {sorted(ROWS)}")
                mlp = net == "mlp"
                specs.append(
                    {
                        "backend": backend,
                        "net": net,
                        "tasks": num_tasks,
                        "row": row,
                        "width": args.width if mlp else None,
                        "image_size": None if mlp else args.image_size,
                        "batch": many_tasks.BATCH if mlp else BACKBONE_BATCH,
                        "steps": args.steps,
                        # Rendered as "TensorFlow only", never run.
                        "skip": tensorflow_only(backend, row),
                        "profile": args.profile,
                    }
                )
                if args.live_memory and backend == "tensorflow" and mlp:
                    specs.append({**specs[-1], "live": True})
    return specs


def _ints(text: str) -> list[int]:
    return [int(k) for k in _names(text)]


def _names(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def read_log(path: str) -> tuple[dict, list[dict]]:
    """The log's rows by key (the last record of each key wins; one with an
    error only if no record of the key succeeded) and its run records."""
    rows, runs = {}, []
    if not os.path.exists(path):
        return rows, runs
    with open(path) as log:
        for line in log:
            if not line.strip():
                continue
            record = json.loads(line)
            if record.get("kind") == "run":
                runs.append(record)
            elif "error" not in record or "error" in rows.get(record["key"], record):
                rows[record["key"]] = record
    return rows, runs


def append(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as log:
        log.write(json.dumps(record) + "\n")


# ------------------------------------------------------------------ the table


def _net_label(spec: dict) -> str:
    profiled = " (cProfile)" if spec.get("profile") else ""
    if spec["net"] == "mlp":
        return f"MLP w={spec['width']}{profiled}"
    return f"{BACKBONES[spec['net']]} {spec['image_size']}²{profiled}"


def table(specs: list[dict], rows: dict, row_names=MAIN_ROWS) -> list[str]:
    """One Markdown table of `specs` (rows `row_names` only) from the log."""
    lines = [
        "| backend | net | K | \\|J\\| MB | row | first fit s | × plain "
        "| step ms | × plain | peak MB | over plain MB | × \\|J\\| |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    specs = [s for s in specs if not s.get("live")]
    groups = []
    for spec in specs:
        if _group(spec) not in groups:
            groups.append(_group(spec))
    for group in groups:
        members = {s["row"]: s for s in specs if _group(s) == group}
        names = [r for r in row_names if r in members]
        if not names:
            continue
        plain = rows.get(row_key(members["plain"])) if "plain" in members else None
        for name in names:
            spec = members.get(name)
            record = rows.get(row_key(spec)) if spec else None
            lines.append(_line(group, name, spec, record, plain))
    return lines


def live_table(specs: list[dict], rows: dict) -> list[str]:
    """The live-memory table: every row that measured it (JAX rows, and
    TensorFlow's `live` rows), over plain's of the same kind."""
    measured = []
    for spec in specs:
        record = rows.get(row_key(spec), {})
        if record.get("live_mb") is not None:
            measured.append((spec, record))
    lines = [
        "| backend | net | K | \\|J\\| MB | row | live MB | over plain MB "
        "| × \\|J\\| | counted by |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for spec, record in measured:
        plain = next(
            (r for s, r in measured
             if _group(s) == _group(spec) and s["row"] == "plain"
             and bool(s.get("live")) == bool(spec.get("live"))),
            None,
        )  # fmt: skip
        over = ratio = "-"
        if plain is not None and spec["row"] != "plain":
            extra = record["live_mb"] - plain["live_mb"]
            over, ratio = f"{extra:.0f}", f"{extra / record['jacobian_mb']:.2f}"
        how = "XLA buffer assignment" if spec["backend"] == "jax" else "BFC allocator"
        lines.append(
            f"| {spec['backend']} | {_net_label(spec)} | {spec['tasks']} | "
            f"{record['jacobian_mb']:.0f} | {ROWS[spec['row']][0]} | "
            f"{record['live_mb']:.0f} | {over} | {ratio} | {how} |"
        )
    return lines if measured else []


def _group(spec: dict) -> tuple:
    """The rows that share a plain row: same backend, net, K, settings."""
    return tuple(
        spec[k]
        for k in (
            "backend",
            "net",
            "tasks",
            "width",
            "image_size",
            "batch",
            "steps",
            "profile",
        )
    )


def _line(group, name, spec, record, plain) -> str:
    backend, _, num_tasks = group[:3]
    label = ROWS[name][0]
    net_label = _net_label(spec)
    if spec["skip"]:  # the Gramian engine off TensorFlow
        return (
            f"| {backend} | {net_label} | {num_tasks} | | {label} | "
            "TensorFlow only | | | | | | |"
        )
    if record is None or "error" in record:
        why = record["error"].replace("|", "/") if record else "not run yet (PARTIAL)"
        return (
            f"| {backend} | {net_label} | {num_tasks} | | {label} | {why} | | | | | | |"
        )
    good_plain = plain is not None and "error" not in plain
    first_ratio = (
        f"{record['first_fit_s'] / plain['first_fit_s']:.2f}" if good_plain else ""
    )
    step_ratio = f"{record['step_ms'] / plain['step_ms']:.2f}" if good_plain else ""
    if name == "plain" or not good_plain:
        over, over_ratio = "-", "-"
    else:
        extra = record["peak_mb"] - plain["peak_mb"]
        over, over_ratio = f"{extra:.0f}", f"{extra / record['jacobian_mb']:.2f}"
    return (
        f"| {backend} | {net_label} | {num_tasks} | {record['jacobian_mb']:.0f} "
        f"| {label} | {record['first_fit_s']:.1f} | {first_ratio} | "
        f"{record['step_ms']:.0f} | {step_ratio} | {record['peak_mb']:.0f} | "
        f"{over} | {over_ratio} |"
    )


def machine() -> str:
    memory = ""
    try:
        with open("/proc/meminfo") as info:
            kb = int(info.readline().split()[1])
        memory = f", {kb / 1e6:.0f} GB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})"
        f"{memory}, CPU only (no GPU)"
    )


def render(
    specs: list[dict],
    rows: dict,
    command: str,
    notes: str | None = None,
    log_name: str = os.path.basename(LOG),
    title: str = TITLE,
) -> str:
    """The results file: provenance, the table, what is missing (the rows
    of `specs` not in `rows`); the rows of other commands in the log
    follow in the table."""
    runnable = [s for s in specs if not s["skip"]]
    planned = {row_key(s) for s in specs}
    specs = specs + [
        {k: record[k] for k in SPEC_KEYS if k in record}
        for key, record in rows.items()
        if key not in planned and "error" not in record
    ]
    done = [
        rows[row_key(s)]
        for s in runnable
        if row_key(s) in rows and "error" not in rows[row_key(s)]
    ]
    failed = [s for s in runnable if "error" in rows.get(row_key(s), {})]
    missing = len(runnable) - len(done) - len(failed)
    lines = [f"# {title}", ""]
    if failed:
        lines += [
            f"**{len(failed)} row(s) failed** (the error is in the row); rerunning "
            "the command below retries them.",
            "",
        ]
    if missing:
        lines += [
            f"**PARTIAL: {len(done)} of {len(runnable)} rows.** Complete it with "
            "(the rows already in the log are skipped):",
            "",
            "```bash",
            command,
            "```",
            "",
        ]
    else:
        lines += [
            "Command (each row in a fresh subprocess; rerunning it skips the "
            f"rows already in `{log_name}`):",
            "",
            "```bash",
            command,
            "```",
            "",
        ]
    if done:
        first = min(done, key=lambda r: r["started"])
        last = max(done, key=lambda r: r["started"])
        versions = {}
        for record in done:
            versions.update(record.get("versions", {}))
        lines += [
            f"Machine: {machine()}. Versions: "
            + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
            + ".",
            f"Rows run {first['started']} to {last['started']} UTC "
            f"({len({r.get('run') for r in done})} invocation(s) of the script).",
            f"Load at the start: `{first['uptime_start']}`; at the end: "
            f"`{last['uptime_end']}`.",
            "",
        ]
    lines += [
        "`first fit s`: the first one-batch `fit` call (trace or compile, and one "
        "step). `step ms`: median step of the next `fit`. `peak MB`: rise of the "
        "process' peak RSS over both calls; `over plain MB`: minus plain's (same "
        "backend, net, K), and its ratio to |J| = K×P×4 bytes (P: the trunk's "
        "parameters; rep mode's J is over the representation, far smaller). "
        "UPGrad balances the loop and Gramian rows; the Gramian engine is "
        "TensorFlow-only. "
        f"Steps per row: {specs[0]['steps'] if specs else '-'}, on a shared machine: "
        "read ratios, not milliseconds.",
        "",
    ]
    lines += table(specs, rows)
    live = live_table(specs, rows)
    if live:
        lines += [
            "",
            "## Live memory",
            "",
            "What the step's tensors hold at their peak, without the compiler's "
            "memory and the allocators' pools that peak RSS also counts: JAX, the "
            "temporary buffers XLA plans for the compiled train step; TensorFlow, "
            "the peak bytes in use of its BFC CPU allocator over both `fit` calls "
            "(rows run with `TF_CPU_ALLOCATOR_USE_BFC=true TF_ENABLE_ONEDNN_OPTS=0`, "
            "their times not shown). `over plain MB`: minus plain's, counted the "
            "same way.",
            "",
            *live,
        ]
    extra = [
        r for r in ROWS if r not in MAIN_ROWS and any(s["row"] == r for s in specs)
    ]
    if extra:
        lines += [
            "",
            "## First `fit` call: breakdown",
            "",
            *table(specs, rows, ("plain", *extra, "loop")),
        ]
    for spec in specs:
        record = rows.get(row_key(spec), {})
        if "profile_top" in record:
            lines += [
                "",
                f"### Profile of the first `fit`: {record['key']}",
                "",
                f"First fit under cProfile: {record['first_fit_s']:.1f} s.",
                "",
                "| cumulative s | calls | function |",
                "|---|---|---|",
            ]
            lines += [
                f"| {sec:.2f} | {calls} | `{where}` |"
                for sec, calls, where in record["profile_top"][:15]
            ]
    if notes and os.path.exists(notes):
        with open(notes) as text:
            lines += ["", text.read().rstrip()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument("--tasks", default="2,8,32", help="K values of the MLP")
    parser.add_argument(
        "--rows",
        default=",".join(MAIN_ROWS),
        help=f"rows of the MLP, of {sorted(ROWS)}",
    )
    parser.add_argument(
        "--width", type=int, default=2048, help="MLP trunk width (2048: P ≈ 7.35M)"
    )
    parser.add_argument(
        "--backbones",
        default="mobilenet_v2,resnet50",
        help=f"comma-separated, of {sorted(BACKBONES)} ('' for none)",
    )
    parser.add_argument("--backbone-tasks", default="3")
    parser.add_argument("--backbone-rows", default=",".join(MAIN_ROWS))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--log", default=LOG, help="the JSON-lines log")
    parser.add_argument("--output", default=OUTPUT, help="the Markdown table")
    parser.add_argument(
        "--notes",
        default=NOTES,
        help="a Markdown file appended to the table, if it exists",
    )
    parser.add_argument(
        "--row-timeout",
        type=float,
        default=900.0,
        help="seconds before a row's subprocess is stopped",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="start no row after this many minutes",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile each row's first fit (cProfile: slower, its own rows)",
    )
    parser.add_argument(
        "--live-memory",
        action="store_true",
        help="add TensorFlow MLP rows run with its BFC CPU allocator, for "
        "the live-memory table (JAX rows always measure it)",
    )
    parser.add_argument("--title", default=TITLE, help="the results file's title")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the rows of this process' backend here (fast, for "
        "tests; memory and first-fit times not comparable)",
    )
    parser.add_argument("--row", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.row:
        print(json.dumps(measure(json.loads(args.row))))
        return 0
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join([DEFAULT_COMMAND, *map(shlex.quote, _shown(argv))])
    specs = plan(args)
    started = time.monotonic()
    if not args.render_only:
        run_id = f"{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S}"
        append(
            args.log,
            {"kind": "run", "run": run_id, "command": command, "uptime": _uptime()},
        )
        for spec in specs:
            rows, _ = read_log(args.log)
            if (
                spec["skip"]
                or row_key(spec) in rows
                and "error" not in rows[row_key(spec)]
            ):
                continue
            if (
                args.max_minutes is not None
                and time.monotonic() - started > args.max_minutes * 60
            ):
                print("time budget spent: stopping (rerun to resume)", flush=True)
                break
            record = {**run_row(spec, args.row_timeout, args.in_process), "run": run_id}
            append(args.log, record)
            print(
                record["key"],
                record.get("error", f"{record.get('first_fit_s', 0):.1f} s"),
                flush=True,
            )
            _write(args, specs, command)
    text = _write(args, specs, command)
    print(text)
    return 0


def _shown(argv: list[str]) -> list[str]:
    """`argv` without what does not change the rows (`--render-only`,
    `--max-minutes N`): the command that runs or completes the table."""
    shown, skip = [], False
    for arg in argv:
        if skip or arg == "--render-only" or arg.startswith("--max-minutes="):
            skip = False
            continue
        if arg == "--max-minutes":
            skip = True
            continue
        shown.append(arg)
    return shown


def _write(args, specs, command) -> str:
    rows, _ = read_log(args.log)
    text = render(
        specs, rows, command, args.notes, os.path.basename(args.log), args.title
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as output:
        output.write(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
