"""The `mtl-keras` command: `demo`, `balancers`, `export`, `tune`, `compare`.

Each subcommand is a thin layer over the library: it parses arguments,
calls public functions, and prints what they return. This module sits
outside the `mtl_keras` package and imports it (and so TensorFlow) only
inside a subcommand, so `mtl-keras --help` and `--version` answer at once.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import re
import sys
import time


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def add_demo_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train the reference shapes model (cls + seg + count)",
        description=(
            "Trains the reference classification + segmentation + counting "
            "model on the built-in synthetic shapes data and prints a "
            "per-task table of final train/validation loss and metrics."
        ),
    )
    parser.add_argument("--balancer", default=None,
                        help="balancer name (default: none, static weights); "
                             "'dwa' uses the DynamicWeightAverage callback")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--logdir", default=None,
                        help="write TensorBoard logs to this folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--jit-compile", action="store_true",
                        help="compile the train step with XLA")
    parser.set_defaults(run=run_demo)


def run_demo(args) -> int:
    from mtl_keras import demo

    started = time.perf_counter()
    result = demo.train_shapes(
        balancer=args.balancer,
        epochs=args.epochs,
        logdir=args.logdir,
        seed=args.seed,
        train_size=args.train_size,
        batch_size=args.batch_size,
        jit_compile=args.jit_compile,
        verbose=1,
    )
    print()
    print(demo.format_table(result))
    print(f"\nTrained in {time.perf_counter() - started:.0f} s.")
    return 0


def _postprocess_argument(text: str) -> dict:
    from mtl_keras import export

    try:
        return export.parse_postprocess(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def add_export_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a .keras model as a SavedModel for serving",
        description=(
            "Loads a model saved with model.save('....keras') (safe mode on) "
            "and writes its inference graph as a SavedModel whose "
            "serving_default signature returns one output per task. Inspect "
            "it with `saved_model_cli show --dir OUT_DIR --all`."
        ),
    )
    parser.add_argument("model", help="the .keras file")
    parser.add_argument("out_dir", help="the SavedModel folder to write")
    parser.add_argument("--postprocess", type=_postprocess_argument, default={},
                        metavar="TASK=KIND[,...]",
                        help="extra serving outputs: 'classify' adds "
                             "<task>_class_id and <task>_probabilities, "
                             "'segment' adds <task>_class_map; "
                             "e.g. cls=classify,seg=segment")
    parser.set_defaults(run=run_export)


def run_export(args) -> int:
    from mtl_keras import export

    try:
        path = export.export_keras_file(args.model, args.out_dir,
                                        postprocess=args.postprocess)
    except ValueError as error:
        print(f"mtl-keras export: error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote the SavedModel of {args.model} to {path} "
          "(signature 'serving_default').")
    return 0


def add_tune_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="search task weights and balancers with KerasTuner (shapes data)",
        description=(
            "Searches task weights and, with --balancers, the balancer on the "
            "built-in shapes data (cls + seg + count) with a KerasTuner tuner, "
            "scored by the scale-free geometric mean of the validation task "
            "losses, and prints the trials table."
        ),
    )
    parser.add_argument("--tuner", default="random",
                        choices=["random", "grid", "bayesian", "hyperband"])
    parser.add_argument("--max-trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs per trial (Hyperband: the maximum)")
    parser.add_argument("--balancers", default=None,
                        help="comma-separated balancer names to choose from, "
                             "e.g. static,uw,dwa (default: no balancer)")
    parser.add_argument("--weights", default="log_uniform",
                        choices=["log_uniform", "simplex", "none"],
                        help="how the task weights are searched")
    parser.add_argument("--architectures", default=None,
                        help="comma-separated architectures to choose from "
                             "(hard, mmoe, mtan; default: hard)")
    parser.add_argument("--directory", default="mtl_tuning",
                        help="where KerasTuner keeps the trials")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over instead of resuming the search "
                             "saved in --directory")
    parser.add_argument("--logdir", default=None,
                        help="TensorBoard logs, one folder per trial")
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--validation-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run_tune)


def run_tune(args) -> int:
    from mtl_keras import tuning

    started = time.perf_counter()
    balancers = args.balancers.split(",") if args.balancers else None
    result = tuning.search_shapes(
        tuner=args.tuner,
        max_trials=args.max_trials,
        epochs=args.epochs,
        balancers=balancers,
        weights=None if args.weights == "none" else args.weights,
        directory=args.directory,
        train_size=args.train_size,
        validation_size=args.validation_size,
        seed=args.seed,
        overwrite=args.overwrite,
        logdir=args.logdir,
        verbose=2,
        architectures=args.architectures.split(",") if args.architectures else None,
    )
    print()
    print(result.summary())
    print(f"\nSearched in {time.perf_counter() - started:.0f} s.")
    return 0


def add_compare_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare balancers against single-task baselines (shapes, MultiMNIST)",
        description=(
            "Trains each method with every seed, plus one single-task model "
            "per task, and prints the test metrics (mean ± std over seeds), "
            "Δm% against the single-task models and seconds per epoch."
        ),
    )
    parser.add_argument("--data", default="shapes",
                        choices=["shapes", "multi_mnist"])
    parser.add_argument("--balancers", required=True,
                        help="comma-separated methods: balancer names or 'dwa', "
                             "e.g. ew,uw,dwa,mgda-ub,pcgrad")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=None,
                        help="training examples (default: 4096 for shapes, "
                             "50,000 for multi_mnist)")
    parser.add_argument("--test-size", type=int, default=None,
                        help="test examples (default: the whole test split)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="Adam's learning rate")
    parser.add_argument("--data-dir", default=None,
                        help="multi_mnist: folder of the MNIST files")
    parser.add_argument("--architecture", default="hard",
                        choices=["hard", "mmoe", "mtan"],
                        help="how the heads share the trunk: hard sharing, an "
                             "MMoE layer or MTAN attention masks")
    parser.add_argument("--out", default=None, help="write the table as Markdown")
    parser.add_argument("--plot", default=None, help="draw the comparison (PNG)")
    parser.add_argument("--log", default=None,
                        help="append each finished run to this JSON lines file")
    parser.add_argument("--resume", action="store_true",
                        help="skip the runs already in --log")
    parser.set_defaults(run=run_compare)


def run_compare(args) -> int:
    from mtl_keras import compare

    methods = [name for name in args.balancers.split(",") if name]
    try:
        compare.check_methods(methods)
    except ValueError as error:
        print(f"mtl-keras compare: error: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    result = compare.compare(
        args.data, methods, seeds=args.seeds, epochs=args.epochs,
        train_size=args.train_size, test_size=args.test_size,
        batch_size=args.batch_size, learning_rate=args.learning_rate,
        data_dir=args.data_dir, log_path=args.log, resume=args.resume,
        progress=lambda line: print(line, flush=True),
        architecture=args.architecture,
    )
    table = result.to_markdown()
    print()
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(table + "\n")
        print(f"Wrote {args.out}.")
    if args.plot:
        print(f"Wrote {result.plot(args.plot)}.")
    print(f"\nCompared in {time.perf_counter() - started:.0f} s.")
    return 0


def add_balancers_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "balancers",
        help="list the balancer names with their kind and cost",
        description=(
            "Lists every name `compile(balancer=...)` accepts (and the DWA "
            "callback), with its kind, its cost in backward passes per "
            "training step for K tasks, and a one-line description."
        ),
    )
    parser.set_defaults(run=run_balancers)


def run_balancers(args) -> int:
    del args
    from mtl_keras import balancers

    rows = [("name", "kind", "cost per step", "description")]
    for name in balancers.available():
        balancer = balancers.get(name)
        rows.append((name, balancer.kind, _cost(balancer),
                     _first_line(type(balancer).__doc__)))
    rows.append(("dwa", "callback", "1 backward",
                 "Dynamic Weight Average: mtl_keras.callbacks."
                 "DynamicWeightAverage (not a compile balancer)"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths))
              + "  " + row[3])
    return 0


def _cost(balancer) -> str:
    """Backward passes per training step, for K tasks."""
    if balancer.kind == "loss":
        if getattr(balancer, "needs_post_step_losses", False):
            return "1 backward + 1 forward"
        return "1 backward"
    if balancer.mode == "rep":
        return "1 backward + K through heads"
    return "K backward"


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc else ""


def version() -> str:
    """`mtl_keras.__version__`, read from its source without importing it."""
    spec = importlib.util.find_spec("mtl_keras")
    text = pathlib.Path(spec.origin).read_text(encoding="utf-8")
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtl-keras",
        description="Multi-task learning for Keras 3.",
    )
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {version()}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(subparsers)
    add_balancers_parser(subparsers)
    add_export_parser(subparsers)
    add_tune_parser(subparsers)
    add_compare_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_tensorflow()
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
