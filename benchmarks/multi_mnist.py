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
import math
import os
import pathlib
import shlex
import sys

import numpy as np

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
    parser.add_argument("--seed", type=int, default=None,
                        help="train only this seed of the stage's seeds (to "
                        "split a stage between processes, one per core: "
                        "give each its own seed)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated, or 'all': every registered "
                        "balancer (aliases of the same configuration once), "
                        "dwa and the VARIANTS (mgda-ub-loss+)")
    parser.add_argument("--stage", default="run",
                        choices=("run", "gate", "tune", "seeds", "report"),
                        help="run: train --methods; gate: exit 0 when the "
                        "fidelity gate is met by the logged runs, 1 when it "
                        "failed, 3 while a gate run is missing; "
                        "tune: KerasTuner search of static weights on a "
                        "validation split of the training data, then train "
                        "them; seeds: the seeded rows (single-task, ew, "
                        "tuned-static, mgda-ub, the two best of seed 0); "
                        "report: rewrite the report from the log")
    parser.add_argument("--gate-only", dest="stage", action="store_const",
                        const="gate", help=argparse.SUPPRESS)  # = --stage gate
    parser.add_argument("--tune-trials", type=int, default=8)
    parser.add_argument("--tune-epochs", type=int, default=30)
    parser.add_argument("--validation-size", type=int, default=10_000,
                        help="tune: the last examples of the training data, "
                        "held out from the search's training")
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


def measure_plain_step(throughput: dict, data, args, method: str) -> None:
    """Times a plain `keras.Model.fit` step of the first run's network on the
    same arrays (in this process, just before that run) into `throughput`."""
    from mtl_keras import compare

    tasks = data.tasks if method != compare.SINGLE_TASK else data.tasks[:1]
    step = plain_fit_step_seconds(data, args.batch_size, tasks)
    throughput.update(plain_step=step, load_before=load_line(),
                      plain_tasks=list(tasks))
    print(f"Plain keras.Model.fit step ({len(tasks)} head(s), same "
          f"arrays, batch {args.batch_size}): {1000 * step:.1f} ms; "
          f"{throughput['load_before']}", flush=True)


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


# --- The sener2018 protocol: stages and report ------------------------------------

TUNED_STATIC = "tuned-static"
#: Rows seeded 3 times whatever seed 0 gives (plus the two best methods).
SEEDED_FIXED = ("ew", TUNED_STATIC, "mgda-ub")


def _mgda_ub_as_trained_by_sener():
    from mtl_keras.balancers import MGDA

    return MGDA(mode="rep", normalization="loss+", rescale=False)


#: Configured variants of registered methods, trained by `--methods all`
#: after them: MGDA-UB as the reference repository's only parameter file
#: (`sample.json`, `"normalization_type": "loss+"`) and training script
#: (weights on the raw losses) run it.
VARIANTS = {"mgda-ub-loss+": _mgda_ub_as_trained_by_sener}
NUM_SEEDS = 3
NUM_BEST = 2

#: Every choice of the sener2018 protocol and where it comes from. Paths are in
#: github.com/isl-org/MultiObjectiveOptimization (commit bf5bbb3).
PROTOCOL_SOURCES = (
    ("Images", "left digit at canvas (0, 0), right digit at (6, 6) of a 36x36 "
     "canvas, overlap = pixel-wise max; resized to 28x28 by nearest neighbour "
     "(`scipy.misc.imresize(..., interp='nearest')`, PIL's pixel-centre rule, "
     "after scipy's byte rescaling to a maximum of 255)",
     "`multi_task/loaders/multi_mnist_loader.py` lines 231-237"),
    ("Pairs", "every image is a left digit once; its right digit is drawn "
     "uniformly from the same split (`np.random.permutation(n)[:1]`, itself "
     "included); labels are the two digits' classes",
     "`multi_mnist_loader.py` lines 207-210, 226-229"),
    ("Splits", "train: all 60,000 MNIST training images; test: the 10,000 MNIST "
     "test images, scored after every epoch (there is no validation split)",
     "`multi_task/datasets.py` lines 22-26; `train_multi_task.py` lines 200-218"),
    ("Normalisation", "x / 255, then (x - 0.1307) / 0.3081",
     "`multi_task/datasets.py` lines 12-14"),
    ("Network", "trunk: conv 10 5x5 -> max pool 2 -> ReLU -> conv 20 5x5 -> "
     "channel dropout 0.5 (one mask for the whole batch) -> max pool 2 -> ReLU "
     "-> dense 50 ReLU; per task: dense 50 ReLU -> dropout 0.5 -> dense 10 "
     "(log-)softmax. Dropout masks are not rescaled by 1/(1-p)",
     "`multi_task/models/multi_lenet.py` lines 6-46"),
    ("Initialisation", "PyTorch's defaults for `Conv2d`/`Linear`: weights and "
     "biases uniform in ±1/sqrt(fan_in)", "PyTorch `nn.Linear.reset_parameters`"),
    ("Loss", "cross-entropy per task (`nll_loss` of `log_softmax`), summed with "
     "the task scales", "`multi_task/losses.py` lines 4-8; "
     "`train_multi_task.py` lines 172-184"),
    ("Epochs", "100", "`train_multi_task.py` line 27"),
    ("Schedule", "learning rate × 0.85 at the start of epochs 10, 20, ..., 100 "
     "(1-based; `(epoch + 1) % 10 == 0`)", "`train_multi_task.py` lines 81-85"),
    ("Optimiser, learning rate, batch", "Adam, 5e-4, batch 256: the repository's "
     "only parameter file. It is written for CelebA, and the repository gives no "
     "MultiMNIST file, so these three values are our assumption",
     "`sample.json` lines 2-4; optimiser choices `train_multi_task.py` lines 59-64"),
    ("MGDA-UB", "task gradients over the trunk's 50-unit output, no gradient "
     "normalisation (`normalization=\"none\"`: the script calls it optional and "
     "'not included in the paper'; the CelebA `sample.json` sets `loss+`), "
     "min-norm weights applied to the raw task losses; the update pass reuses "
     "the gradient pass's dropout masks (ours: one forward pass for both)",
     "`train_multi_task.py` lines 113-182"),
    ("Reported accuracy", "test accuracy after the last (100th) epoch; the "
     "paper does not say which epoch it reports", "ours"),
)


def all_methods() -> list[str]:
    """Every method with a balancer once (`mtl_keras.methods`; static weights
    under their alias `ew`, the name the logged runs carry), then DWA, the
    callback method the published table covers."""
    from mtl_keras import methods

    names = [(m.aliases[0] if m.kind == "static" else m.name).replace("_", "-")
             for m in methods.all_methods() if m.balancer is not None]
    return sorted(names) + ["dwa"]


def read_log(path: pathlib.Path) -> list:
    from mtl_keras.compare import RunRecord

    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]  # whole lines only
    return [RunRecord.from_json(line)[0] for line in lines if line.strip()]


def seed_accuracy(records, method: str, seed: int = 0) -> dict:
    """`{task: accuracy %}` of a method's run(s) of one seed (single-task:
    both)."""
    found = {}
    for record in records:
        if record.method == method and record.seed == seed and record.error is None:
            found.update({t: 100 * v for t, v in record.metrics.items()})
    return found


def seed_delta_m(records, method: str, seed: int = 0) -> float | None:
    """Δm% of a method's run of one seed against the single-task runs of the
    same seed; None unless both have finished on every task."""
    from mtl_keras import scores

    references = seed_accuracy(records, "single-task", seed)
    ours = seed_accuracy(records, method, seed)
    if not ours or set(ours) != set(references):
        return None
    return scores.delta_m(ours, references, dict.fromkeys(references, True))


def paired_delta_m(records) -> dict:
    """`{method: {seed: Δm%}}` against the single-task runs of the same seed,
    for every method with finished runs on two or more such seeds."""
    seeds = sorted({r.seed for r in records})
    found = {}
    for method in method_order(records):
        per_seed = {seed: seed_delta_m(records, method, seed) for seed in seeds}
        per_seed = {seed: v for seed, v in per_seed.items() if v is not None}
        if len(per_seed) > 1:
            found[method] = per_seed
    return found


def paired_table(records) -> str:
    """Δm% per seed against that seed's single-task runs, and each method's
    paired difference to tuned static weights and to equal weights (the
    mean ± std over the seeds both have; negative: the method is better)."""
    found = paired_delta_m(records)
    if not found:
        return "No method has two seeds yet."
    seeds = sorted({s for per_seed in found.values() for s in per_seed})
    lines = ["| method | " + " | ".join(f"Δm% seed {s}" for s in seeds)
             + " | mean ± std | − tuned-static | − ew |",
             "|---|" + "---:|" * (len(seeds) + 3)]
    for method, per_seed in found.items():
        cells = [f"{per_seed[s]:+.2f}" if s in per_seed else "–" for s in seeds]
        cells.append(_mean_std(list(per_seed.values())))
        for other in (TUNED_STATIC, "ew"):
            common = [s for s in per_seed if s in found.get(other, {})]
            cells.append("–" if method == other or len(common) < 2 else _mean_std(
                [per_seed[s] - found[other][s] for s in common]))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_std(values) -> str:
    """`mean ± std` (population std, as the results table) with signs."""
    return f"{np.mean(values):+.2f} ± {np.std(values):.2f}"


def gate_lines(records) -> tuple[bool | None, list[str]]:
    """Whether seed 0 of single-task and ew are within GOAL_POINTS of the
    published accuracies (None while a run is missing), and one line per row."""
    verdicts, lines = [], []
    for method in ("single-task", "ew"):
        ours = seed_accuracy(records, method)
        published = dict(zip(("left", "right"), PUBLISHED[method], strict=True))
        cells = []
        for task in ("left", "right"):
            if task not in ours:
                cells.append(f"{task} pending (published {published[task]:.2f})")
                verdicts.append(None)
                continue
            gap = ours[task] - published[task]
            ok = abs(gap) <= GOAL_POINTS
            verdicts.append(ok)
            cells.append(f"{task} {ours[task]:.2f} (published {published[task]:.2f}, "
                         f"{gap:+.2f}: {'within' if ok else 'NOT within'} "
                         f"{GOAL_POINTS})")
        lines.append(f"- {method}: " + "; ".join(cells) + ".")
    if False in verdicts:
        return False, lines
    return (None if None in verdicts else True), lines


def tuned_path(args) -> pathlib.Path:
    return args.log.with_name(args.log.stem.replace("_runs", "") + "_tuned.json")


def tune_static(data, args) -> dict:
    """KerasTuner (Bayesian) search of the two static weights on a validation
    split carved from the end of the training data; resumes a saved search.

    Returns the saved summary: weights, the trials and their budget in runs.
    """
    import json

    from mtl_keras import compare, tuning
    from mtl_keras.datasets.multi_mnist import in_memory_batches

    path = tuned_path(args)
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    count = args.validation_size
    images, labels = data.train
    train = in_memory_batches(images[:-count],
                              {t: v[:-count] for t, v in labels.items()},
                              args.batch_size, seed=0)
    validation = in_memory_batches(images[-count:],
                                   {t: v[-count:] for t, v in labels.items()},
                                   1000, shuffle=False)
    # Δm% against fixed normalisers (the published single-task accuracies):
    # a weighted mean of the two validation accuracies; no test data is used.
    references = {task: {"accuracy": value / 100} for task, value in
                  zip(("left", "right"), PUBLISHED["single-task"], strict=True)}
    result = tuning.search(
        lambda hp: data.build_model(data.tasks), train, validation,
        losses=data.losses, metrics=lambda: data.make_metrics(data.tasks),
        references=references, tuner="bayesian", max_trials=args.tune_trials,
        epochs=args.tune_epochs, directory=str(REPO_ROOT / "build"),
        project_name=f"{args.log.stem}_tuning", seed=0, weights="simplex",
        learning_rate=args.learning_rate, verbose=0,
        callbacks=compare.learning_rate_callbacks(data, args.learning_rate))
    summary = {
        "weights": {t: float(w) for t, w in result.best_task_weights.items()},
        "objective": result.objective, "best_score": float(result.best_score),
        "trials": len(result.trials), "epochs_per_trial": args.tune_epochs,
        "training_examples": len(images) - count, "validation_examples": count,
        "budget_runs": len(result.trials) * args.tune_epochs / args.epochs,
        "summary": result.summary(),
    }
    path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def best_methods(records, exclude, count: int) -> list[str]:
    """The `count` methods of lowest seed-0 Δm% against seed-0 single-task."""
    others = {r.method for r in records} - {"single-task", *exclude}
    scores = {method: seed_delta_m(records, method) for method in others}
    ranked = sorted((score, method) for method, score in scores.items()
                    if score is not None)
    return [method for _, method in ranked[:count]]


def planned_runs(records) -> int:
    """Runs of the whole programme: gate, every method, tuned static, seeds."""
    return (2 + len(all_methods()) + len(VARIANTS) + 1
            + (NUM_SEEDS - 1) * (2 + len(SEEDED_FIXED) + NUM_BEST))


def method_order(records) -> list[str]:
    order = [m for m in ["ew", TUNED_STATIC, "mgda-ub", *VARIANTS, *all_methods()]
             if any(r.method == m for r in records)]
    return list(dict.fromkeys(order))


def curves_plot(records, path: pathlib.Path) -> None:
    """Train (dashed) and test (solid) accuracy per epoch of every seed-0 run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from mtl_keras.compare import matplotlib_colors

    runs = [r for r in records if r.seed == 0 and r.history]
    methods = list(dict.fromkeys(r.method for r in runs))
    colors = dict(zip(methods, matplotlib_colors(len(methods)), strict=True))
    figure = Figure(figsize=(12, 5), dpi=110)
    FigureCanvasAgg(figure)
    for index, task in enumerate(("left", "right")):
        axes = figure.add_subplot(1, 2, index + 1)
        plotted = [100.0]
        for record in runs:
            if f"val_{task}_accuracy" not in record.history:
                continue
            for prefix, style in (("", "--"), ("val_", "-")):
                values = 100 * np.asarray(record.history[f"{prefix}{task}_accuracy"])
                label = record.method if prefix else None
                axes.plot(np.arange(1, len(values) + 1), values, style,
                          color=colors[record.method], label=label, linewidth=1)
                plotted += list(values)
        axes.axhline(PUBLISHED["single-task"][index], color="gray", linewidth=0.8,
                     linestyle=":")
        # Zoom on the converged part; the first epochs fall below the frame.
        axes.set_ylim(min(90.0, float(np.percentile(plotted, 5))) - 1, 100)
        axes.set_xlabel("epoch")
        axes.set_ylabel(f"{task} accuracy (%)")
        axes.set_title(f"{task}: test (solid), train batches (dashed)")
        axes.grid(alpha=0.3)
    figure.axes[0].legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path)


def results_table(result, records) -> str:
    """Our accuracies (mean ± std over seeds), published figures beside them,
    Δm% against our single-task, seconds per epoch."""
    lines = ["| method | seeds | left (%) | right (%) | published left | "
             "published right | Δm% ↓ | s/epoch | first epoch (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result.summaries():
        if not row.num_seeds:
            continue
        published = PUBLISHED.get(row.method)
        first = [r.epoch_seconds[0] for r in records
                 if r.method == row.method and r.epoch_seconds]
        cells = [row.method, str(row.num_seeds)]
        for task in ("left", "right"):
            spread = (f" ± {100 * row.std[task]:.2f}" if row.num_seeds > 1 else "")
            cells.append("–" if math.isnan(row.mean[task])
                         else f"{100 * row.mean[task]:.2f}{spread}")
        cells += ([f"{v:.2f}" for v in published] if published else ["–", "–"])
        cells += ["–" if math.isnan(row.delta_m) else f"{row.delta_m:+.2f}",
                  f"{row.seconds_per_epoch:.1f}",
                  f"{np.mean(first):.1f}" if first else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def throughput_text(args) -> str:
    import json

    path = args.log.with_name(args.log.stem + "_throughput.json")
    if not path.exists():
        return "Not measured yet (printed by the first run of a fresh log)."
    info = json.loads(path.read_text(encoding="utf-8"))
    return (
        f"{info['run']}: {info['epoch_seconds']:.2f} s per epoch (median of the "
        f"epochs after the first; the first, with tracing: "
        f"{info['first_epoch_seconds']:.2f} s) against {info['steps']} steps × "
        f"{1000 * info['plain_step']:.1f} ms (a plain `keras.Model.fit` step of "
        f"the same {len(info['plain_tasks'])}-head network on the same arrays, "
        f"measured in the same process just before) = "
        f"{info['steps'] * info['plain_step']:.2f} s: **{info['ratio']:.2f}×** "
        f"(goal ≤ 1.2×). Load before: {info['load_before']}; after the run: "
        f"{info['load_after']} ({info['date']}).")


def shown_path(path: pathlib.Path) -> str:
    """A path relative to the repository root when it is inside it."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def write_sener2018_report(args) -> None:
    import json
    import platform

    from mtl_keras import compare
    from mtl_keras.datasets import multi_mnist

    records = read_log(args.log)
    tasks = tuple(sorted(multi_mnist.TASKS))
    settings = {}
    if args.log.exists() and records:
        settings = compare.RunRecord.from_json(
            args.log.read_text(encoding="utf-8").splitlines()[0])[1]
    result = compare.CompareResult(
        "multi_mnist", tasks, {t: ("accuracy", True) for t in tasks},
        method_order(records), records, settings)
    planned = planned_runs(records)
    finished = len(records)
    status = (f"**PARTIAL: {finished} of {planned} planned runs finished.**"
              if finished < planned else f"All {planned} runs finished.")
    gate_met, gate = gate_lines(records)
    gate_word = {True: "**met**", False: "**NOT met**",
                 None: "pending"}[gate_met]
    tuned = ""
    if tuned_path(args).exists():
        info = json.loads(tuned_path(args).read_text(encoding="utf-8"))
        weights = ", ".join(f"{t} {w:.3f}" for t, w in info["weights"].items())
        tuned = (f"Tuned static weights: {weights}, from a Bayesian KerasTuner "
                 f"search of {info['trials']} trials × {info['epochs_per_trial']} "
                 f"epochs on {info['training_examples']:,} training examples, "
                 f"scored on the other {info['validation_examples']:,} (carved from "
                 f"the training data; objective {info['objective']} against the "
                 f"published single-task accuracies as fixed normalisers). Budget: "
                 f"{info['budget_runs']:.1f} training runs of 100 epochs, on top "
                 f"of the run itself.")
    hours = sum(r.wall_seconds for r in records) / 3600
    protocol = "\n".join(f"| {what} | {choice} | {source} |"
                         for what, choice, source in PROTOCOL_SOURCES)
    notes = ""
    if args.out.exists():
        text = args.out.read_text(encoding="utf-8")
        if NOTES_MARKER in text:
            notes = text.split(NOTES_MARKER, 1)[1]
    curves = args.plot.with_name(args.plot.stem + "_curves.png")
    if any(r.history for r in records):
        curves_plot(records, curves)
    if any(r.error is None for r in records):
        result.plot(args.plot)
    report = f"""# MultiMNIST at convergence: the sener2018 protocol

{status} Updated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC;
{load_line()} at that time, on {os.cpu_count()} CPU cores shared with other jobs
({platform.processor() or platform.machine()}), each run pinned to one core with one
TensorFlow thread. Wall time so far: {hours:.2f} h, the sum over the {finished} runs.

Commands (from the repository root; every stage resumes run by run from
`{shown_path(args.log)}`):

```bash
setsid nohup taskset -c 1 bash benchmarks/multi_mnist_sener2018.sh \\
    > benchmarks/results/multi_mnist_sener2018_run.log 2>&1 &
# which runs, with --protocol sener2018 --epochs 100 --batch-size 256
# --learning-rate 0.0005 --resume:
#   --methods ew --seeds 1   (the fidelity gate), then --stage gate, then
#   --methods all --seeds 1, --stage tune --seeds 1, --stage seeds
#   (this table's seeds 1 and 2: --stage seeds --seed 1 and --seed 2, two
#   processes, one per core);
# if the gate fails, the same with --learning-rate 0.001 and its own files
# (multi_mnist_sener2018_lr0.001*). This file alone:
python benchmarks/multi_mnist.py --protocol sener2018 --epochs 100 \\
    --batch-size 256 --learning-rate {args.learning_rate:g} --resume --stage report \\
    --log {shown_path(args.log)} --out {shown_path(args.out)} \\
    --plot {shown_path(args.plot)}
```

## Fidelity gate: {gate_word}

Seed 0, test accuracy after 100 epochs, against Sener & Koltun (2018), Table 1:

{chr(10).join(gate)}

Other methods run only once the gate is met.

## Results (test split; mean ± std over seeds where there are several)

{results_table(result, records)}

Δm% (Maninis et al. 2019) against our own single-task means, lower is better.
s/epoch: median training time of an epoch after the first (which traces the
step function), without the per-epoch test scoring; "first epoch" includes the
tracing. {tuned}

### Seeds, paired

Δm% of each seeded method against the single-task runs of the same seed, and
the difference to tuned static weights and to equal weights seed by seed
(mean ± std over the seeds; below zero the method is ahead):

{paired_table(records)}

![learning curves]({curves.name})

![left vs right accuracy]({args.plot.name})

## Throughput

{throughput_text(args)}

## The protocol, choice by choice

Sources are files of github.com/isl-org/MultiObjectiveOptimization (commit
bf5bbb3, the authors' reference implementation) unless marked otherwise.

| what | choice | source |
|---|---|---|
{protocol}

{NOTES_MARKER}{notes}"""
    args.out.write_text(report.rstrip() + "\n", encoding="utf-8")


def stage_plan(args, records) -> tuple[list[str], list[int]]:
    """The methods and seeds a `run`, `tune` or `seeds` stage trains."""
    if args.stage == "run":
        methods = ([*all_methods(), *VARIANTS] if args.methods == "all"
                   else [m for m in args.methods.split(",") if m])
        seeds = list(range(args.seeds))
    elif args.stage == "tune":
        methods, seeds = [TUNED_STATIC], [0]
    else:  # seeds
        best = best_methods(records, SEEDED_FIXED, NUM_BEST)
        print(f"Two best methods of seed 0 (by Δm%): {best}", flush=True)
        methods, seeds = [*SEEDED_FIXED, *best], list(range(NUM_SEEDS))
    return methods, (seeds if args.seed is None else [args.seed])


def run_sener2018(args, data, command: str) -> int:
    """The stages of the sener2018 programme (see `--stage`)."""
    from mtl_keras import compare

    def report(result=None):
        write_sener2018_report(args)

    throughput = {}

    def measure(method, seed):
        if not throughput and not args.log.with_name(
                args.log.stem + "_throughput.json").exists():
            measure_plain_step(throughput, data, args, method)

    def on_record(result):
        if throughput and "checked" not in throughput:
            check_throughput(result.records[-1], throughput, data, args)
        report()

    records = read_log(args.log)
    loss_weights = {}
    if args.stage == "tune" or (args.stage == "seeds"):
        loss_weights = {TUNED_STATIC: tune_static(data, args)["weights"]}
    methods, seeds = stage_plan(args, records)
    compare.compare(
        data, methods, seeds=seeds, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate,
        log_path=args.log, resume=args.resume,
        progress=lambda line: print(line, flush=True), on_record=on_record,
        curves=True, before_run=measure, method_loss_weights=loss_weights,
        method_balancers=VARIANTS)
    report()
    print(f"Wrote {args.out}.")
    return 0


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

    command = "python benchmarks/multi_mnist.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    if args.protocol == "sener2018":
        if args.stage == "gate":
            met, lines = gate_lines(read_log(args.log))
            print("\n".join(["Fidelity gate:", *lines]))
            return {True: 0, False: 1, None: 3}[met]
        if args.stage == "report":
            write_sener2018_report(args)
            print(f"Wrote {args.out}.")
            return 0
        data = compare.load_data("multi_mnist", args.train_size, args.test_size,
                                 data_dir, protocol=args.protocol)
        return run_sener2018(args, data, command)
    methods = [m for m in args.methods.split(",") if m]
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
            measure_plain_step(throughput, data, args, method)

    result = compare.compare(
        data, methods, seeds=args.seeds, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate,
        log_path=args.log, resume=args.resume,
        progress=lambda line: print(line, flush=True), on_record=report,
        curves=args.curves, before_run=measure, method_balancers=VARIANTS,
    )
    report(result)
    print()
    print(result.to_markdown())
    print(f"\nWrote {args.out} and {args.plot}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
