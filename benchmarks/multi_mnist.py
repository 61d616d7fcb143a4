"""MultiMNIST benchmark: every balancing method against the published figures.

Trains the single-task baselines and 13 multi-task methods on MultiMNIST
(Sener & Koltun, NeurIPS 2018) with 3 seeds each through `mtl_keras.compare`,
and writes `benchmarks/results/multi_mnist.md` (our table next to the published
left/right accuracies) and `benchmarks/results/multi_mnist.png`.

Every finished run is appended to `benchmarks/results/multi_mnist_runs.jsonl`
and the report is rewritten after each run (marked partial until all runs
are in), so an interrupted benchmark loses at most one run; `--resume` skips
the runs already in the JSON lines file. Text below the line
`<!-- notes -->` of an existing report is kept when it is rewritten.

The MNIST files are read from `../shared/data/mnist` (relative to the repository
root) unless `$MTL_KERAS_MNIST_DIR` names another folder; without them the
benchmark is skipped with a message.

Usage (the settings of the committed results):

    python benchmarks/multi_mnist.py --epochs 4 --train-size 10000 \
        --batch-size 256 --learning-rate 0.003 --seeds 3 --resume
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import shlex
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
NOTES_MARKER = "<!-- notes -->"

METHODS = ("ew", "uw", "dwa", "gradnorm", "mgda-ub", "pcgrad", "cagrad", "imtl-g",
           "nash-mtl", "upgrad", "aligned-mtl", "rlw", "famo")

#: Sener & Koltun (2018), Table 1: MultiMNIST left/right test accuracy (%),
#: mean of 3 runs.
PUBLISHED = {
    "single-task": (97.23, 95.90),
    "ew": (96.46, 94.99),
    "uw": (96.47, 95.29),
    "gradnorm": (96.27, 94.84),
    "mgda-ub": (97.26, 95.90),
}
GOAL_POINTS = 0.5


def mnist_dir() -> pathlib.Path:
    from_env = os.environ.get("MTL_KERAS_MNIST_DIR")
    if from_env:
        return pathlib.Path(from_env).expanduser()
    return REPO_ROOT.parent / "shared" / "data" / "mnist"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=("random_shift", "sener2018"),
                        default="random_shift",
                        help="sener2018: Sener & Koltun's data, network "
                        "initialisation, dropout and schedule (see "
                        "mtl_keras.datasets.multi_mnist)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=None,
                        help="default: 10,000 (random_shift), 60,000 (sener2018)")
    parser.add_argument("--test-size", type=int, default=None,
                        help="default: the whole test split (10,000)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--resume", action="store_true",
                        help="skip the runs already in --log")
    parser.add_argument("--curves", action="store_true",
                        help="score the test split after every epoch and keep "
                        "the learning curves (always on for sener2018)")
    parser.add_argument("--log", type=pathlib.Path, default=None,
                        help="default: results/multi_mnist[_sener2018]_runs.jsonl")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--plot", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    stem = "multi_mnist" + ("_sener2018" if args.protocol == "sener2018" else "")
    args.log = args.log or RESULTS / f"{stem}_runs.jsonl"
    args.out = args.out or RESULTS / f"{stem}.md"
    args.plot = args.plot or RESULTS / f"{stem}.png"
    args.curves = args.curves or args.protocol == "sener2018"
    if args.train_size is None and args.protocol == "random_shift":
        args.train_size = 10_000
    return args


def plain_fit_step_seconds(data, batch_size: int, tasks: tuple,
                           steps: int = 60) -> float:
    """Seconds per step of a plain `keras.Model.fit` on the same arrays.

    The same LeNet wrapped as a plain `keras.Model` (no balancer, no task
    weights), Adam, arrays passed straight to `fit`; one warm-up epoch of
    `steps` steps traces the step function, the second is timed.
    """
    import time

    import keras

    model = data.build_model(tasks)
    plain = keras.Model(model.inputs, model.outputs)
    count = steps * batch_size
    images, labels = data.train
    if len(tasks) == 1:  # one output: plain arrays
        losses, labels = data.losses[tasks[0]], labels[tasks[0]][:count]
    else:
        losses = [data.losses[task] for task in tasks]
        labels = [labels[task][:count] for task in tasks]
    plain.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses)
    plain.fit(images[:count], labels, batch_size=batch_size, epochs=1, verbose=0)
    started = time.perf_counter()
    plain.fit(images[:count], labels, batch_size=batch_size, epochs=1, verbose=0)
    return (time.perf_counter() - started) / steps


def load_line() -> str:
    """The machine load, as `uptime` reports it."""
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def published_table(result) -> str:
    """Our mean left/right accuracy next to Sener & Koltun's."""
    lines = ["| method | ours left | ours right | published left | "
             "published right | gap left | gap right |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    rows = {row.method: row for row in result.summaries()}
    for method, (left, right) in PUBLISHED.items():
        row = rows.get(method)
        ours = None
        if row is not None and row.num_seeds:
            ours = (100 * row.mean["left"], 100 * row.mean["right"])
        if ours is None:
            cells = ["–", "–", f"{left:.2f}", f"{right:.2f}", "–", "–"]
        else:
            cells = [f"{ours[0]:.2f}", f"{ours[1]:.2f}", f"{left:.2f}",
                     f"{right:.2f}", f"{ours[0] - left:+.2f}",
                     f"{ours[1] - right:+.2f}"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(result) -> str:
    """The issue's goals, checked on the (mean) test accuracies."""
    single_left, single_right = PUBLISHED["single-task"]
    rows = [row for row in result.summaries() if row.num_seeds]
    accuracy = {row.method: (100 * row.mean["left"], 100 * row.mean["right"])
                for row in rows}

    def within(method):
        left, right = accuracy[method]
        return (left >= single_left - GOAL_POINTS
                and right >= single_right - GOAL_POINTS)

    methods = [row for row in rows if row.method != "single-task"]
    lines = []
    if "mgda-ub" in accuracy:
        left, right = accuracy["mgda-ub"]
        lines.append(
            f"- MGDA-UB within {GOAL_POINTS} points of the published single-task "
            f"accuracies ({single_left}/{single_right}): "
            f"{'**met**' if within('mgda-ub') else '**not met**'} "
            f"({left:.2f}/{right:.2f})."
        )
    if methods:
        best = max(methods, key=lambda row: row.mean["left"] + row.mean["right"])
        left, right = accuracy[best.method]
        lines.append(
            f"- Best method (highest mean of left and right accuracy: "
            f"{best.method}, {left:.2f}/{right:.2f}) within {GOAL_POINTS} "
            f"points of them: {'**met**' if within(best.method) else '**not met**'}."
        )
        best_dm = min(methods, key=lambda row: row.delta_m)
        met = best_dm.delta_m <= 0
        lines.append(
            f"- A method with Δm% ≤ 0 against our single-task baselines: "
            f"{'**met**' if met else '**not met**'} (lowest: {best_dm.method}, "
            f"{best_dm.delta_m:+.2f})."
        )
    return "\n".join(lines)


def write_report(result, args, command: str, planned: int) -> None:
    finished = len(result.records)
    partial = finished < planned
    run_seconds = sum(r.wall_seconds for r in result.records)
    settings = result.settings
    notes = ""
    if args.out.exists():
        text = args.out.read_text(encoding="utf-8")
        if NOTES_MARKER in text:
            notes = text.split(NOTES_MARKER, 1)[1]
    status = (f"**PARTIAL: {finished} of {planned} runs finished.**"
              if partial else f"All {planned} runs finished.")
    report = f"""# MultiMNIST: balancing methods against Sener & Koltun (2018)

{status} Updated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.

Command (from the repository root):

```
{command}
```

Settings: {settings['train_size']:,} training examples (the first of the 50,000
of the `train` split), scored on {settings['test_size']:,} test examples,
{settings['epochs']} epochs, batch {settings['batch_size']},
{settings['optimizer']}, no learning-rate decay, seeds {result.seeds()}.
Architecture: `multi_mnist_lenet` (the LeNet of Sener & Koltun); single-task
baselines are the same network built with one task. Wall time: {run_seconds / 60:.1f}
min, the sum over the {finished} runs (one after the other; building, training and
scoring each). Machine: 2 CPU cores shared with other jobs, so seconds per epoch
are only indicative.

## Results (test split, mean ± std over seeds)

{result.to_markdown()}

± is the standard deviation over seeds (population, ddof 0). Δm% (Maninis et al.
2019) is computed from the mean accuracies against our own single-task means; lower
is better.

![left vs right accuracy](multi_mnist.png)

## Against the published figures (left/right accuracy %)

{published_table(result)}

## Goals of the issue

{goals(result)}

{NOTES_MARKER}{notes}"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.rstrip() + "\n", encoding="utf-8")
    if any(r.error is None for r in result.records):
        result.plot(args.plot)


def check_throughput(record, throughput, data, args) -> None:
    """Prints (and saves next to the log) the first run's epoch time against
    steps x the plain `fit` step time measured in the same process."""
    import json
    import math

    steps = math.ceil(len(data.train[0]) / args.batch_size)
    if record.tasks != data.tasks:  # a single-task run: one head fewer
        note = f"first run: {record.method} ({','.join(record.tasks)})"
    else:
        note = f"first run: {record.method}"
    expected = steps * throughput["plain_step"]
    ratio = record.seconds_per_epoch / expected
    throughput.update(
        checked=True, steps=steps, epoch_seconds=record.seconds_per_epoch,
        first_epoch_seconds=record.epoch_seconds[0] if record.epoch_seconds
        else None, ratio=ratio, run=note, load_after=load_line(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="minutes"))
    print(f"Throughput ({note}): {record.seconds_per_epoch:.2f} s/epoch (median "
          f"after the first) vs {steps} steps x {1000 * throughput['plain_step']:.1f}"
          f" ms = {expected:.2f} s: {ratio:.2f}x (goal <= 1.2x); "
          f"{throughput['load_after']}", flush=True)
    path = args.log.with_name(args.log.stem + "_throughput.json")
    path.write_text(json.dumps(throughput, indent=1) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    args = parse_args(argv)
    data_dir = mnist_dir()
    if not (data_dir / "train-images-idx3-ubyte.gz").is_file():
        print(f"Skipping the MultiMNIST benchmark: no MNIST files in {data_dir} "
              "(set MTL_KERAS_MNIST_DIR to a folder holding the four official "
              "files).")
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # This checkout's package, not another installed copy.
    sys.path.insert(0, str(REPO_ROOT))
    from mtl_keras import compare

    methods = [m for m in args.methods.split(",") if m]
    command = "python benchmarks/multi_mnist.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    data = compare.load_data("multi_mnist", args.train_size, args.test_size,
                             data_dir, protocol=args.protocol)
    planned = args.seeds * (len(data.tasks) + len(methods))
    throughput = {}

    def report(result):
        if throughput and "checked" not in throughput and result.records:
            check_throughput(result.records[-1], throughput, data, args)
        write_report(result, args, command, planned)

    def measure(method, seed):
        if not throughput:
            tasks = data.tasks if method != compare.SINGLE_TASK else data.tasks[:1]
            step = plain_fit_step_seconds(data, args.batch_size, tasks)
            throughput.update(plain_step=step, load_before=load_line(),
                              plain_tasks=list(tasks))
            print(f"Plain keras.Model.fit step ({len(tasks)} head(s), same "
                  f"arrays, batch {args.batch_size}): {1000 * step:.1f} ms; "
                  f"{throughput['load_before']}", flush=True)

    result = compare.compare(
        data, methods, seeds=args.seeds, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate,
        log_path=args.log, resume=args.resume,
        progress=lambda line: print(line, flush=True), on_record=report,
        curves=args.curves, before_run=measure,
    )
    report(result)
    print()
    print(result.to_markdown())
    print(f"\nWrote {args.out} and {args.plot}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
