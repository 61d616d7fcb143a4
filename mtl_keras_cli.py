"""The `mtl-keras` command: `demo`, `methods`, `export`, `tune`, `compare`.

Each subcommand is a thin layer over the library: it parses arguments,
calls public functions, and prints what they return. This module sits
outside the `mtl_keras` package and imports it (and so TensorFlow) only
inside a subcommand, so `mtl-keras --help` and `--version` answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import pathlib
import re
import sys
import tempfile
import time
import warnings

#: `mtl-keras compare --plot` needs this extra (setup.cfg).
PLOT_EXTRA = "plot"


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default in `--help`."""


@contextlib.contextmanager
def _quiet_native_startup():
    """Hides TensorFlow's C++ start-up lines (oneDNN, cudart, cuInit, CPU
    features) while the library loads: they are written to file descriptor
    2 before TF_CPP_MIN_LOG_LEVEL applies. A user who set
    TF_CPP_MIN_LOG_LEVEL sees everything; a failed import shows them all."""
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        yield
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class _Once(logging.Filter):
    """Lets each distinct log message through once."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def _load_library() -> None:
    """Imports the library (and its backend) quietly, and has each warning
    printed once at most (unless the user chose with -W/PYTHONWARNINGS)."""
    if not sys.warnoptions:
        warnings.filterwarnings("once", append=True)  # after the ignores
    with _quiet_native_startup():
        import keras

        import mtl_keras  # noqa: F401

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()  # cuInit and the like, now
    logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _Once) for f in logger.filters):
        logger.addFilter(_Once())


def add_demo_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        formatter_class=_Formatter,
        help="train the reference shapes model (cls + seg + count)",
        description=(
            "Trains the reference classification + segmentation + counting "
            "model on the built-in synthetic shapes data and prints a "
            "per-task table of final train/validation loss and metrics."
        ),
    )
    parser.add_argument(
        "--balancer",
        default=None,
        help="a method name (`mtl-keras methods`: a balancer, or "
        "a callback method such as dwa); none: static "
        "weights",
    )
    parser.add_argument("--epochs", type=int, default=8, help="training epochs")
    parser.add_argument(
        "--logdir", default=None, help="write TensorBoard logs to this folder"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the data, the weights and the balancer",
    )
    parser.add_argument("--train-size", type=int, default=4096, help="training images")
    parser.add_argument(
        "--validation-size", type=int, default=1024, help="validation images"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="batch size")
    parser.add_argument(
        "--jit-compile",
        action="store_const",
        const=True,
        default="auto",
        help="compile the train step with XLA; without it Keras' 'auto' (XLA "
        "on JAX, and on TensorFlow with a GPU)",
    )
    parser.add_argument(
        "--save",
        default=None,
        metavar="MODEL.keras",
        help="save the trained model to this .keras file (then "
        "`mtl-keras export MODEL.keras OUT_DIR`)",
    )
    parser.set_defaults(run=run_demo)


def run_demo(args) -> int:
    if args.save is not None and not args.save.endswith(".keras"):
        print(
            f"mtl-keras demo: error: --save needs a .keras file name, got "
            f"{args.save!r}.",
            file=sys.stderr,
        )
        return 2
    from mtl_keras import demo, methods

    if args.balancer is not None:
        try:
            methods.get(args.balancer).parts()  # a method that needs arguments fails
        except ValueError as error:
            print(f"mtl-keras demo: error: {error}", file=sys.stderr)
            return 2
    started = time.perf_counter()
    result = demo.train_shapes(
        balancer=args.balancer,
        epochs=args.epochs,
        logdir=args.logdir,
        seed=args.seed,
        train_size=args.train_size,
        validation_size=args.validation_size,
        batch_size=args.batch_size,
        jit_compile=args.jit_compile,
        verbose=1,
    )
    print()
    print(demo.format_table(result))
    print(f"\nTrained in {time.perf_counter() - started:.0f} s.")
    if args.save is not None:
        result.model.save(args.save)
        print(
            f"Saved the model to {args.save} (export it for serving with "
            f"`mtl-keras export {args.save} OUT_DIR`)."
        )
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
        formatter_class=_Formatter,
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
    parser.add_argument(
        "--postprocess",
        type=_postprocess_argument,
        default={},
        metavar="TASK=KIND[,...]",
        help="extra serving outputs: 'classify' adds "
        "<task>_class_id (and <task>_probabilities when "
        "the head outputs logits), 'segment' adds "
        "<task>_class_map; e.g. cls=classify,seg=segment",
    )
    parser.set_defaults(run=run_export)


def run_export(args) -> int:
    from mtl_keras import export

    try:
        path = export.export_keras_file(
            args.model, args.out_dir, postprocess=args.postprocess
        )
    except ValueError as error:
        print(f"mtl-keras export: error: {error}", file=sys.stderr)
        return 2
    print(
        f"Wrote the SavedModel of {args.model} to {path} (signature 'serving_default')."
    )
    return 0


def add_tune_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "tune",
        formatter_class=_Formatter,
        help="search task weights and balancers with KerasTuner (shapes data)",
        description=(
            "Searches task weights and, with --balancers, the balancer on the "
            "built-in shapes data (cls + seg + count) with a KerasTuner tuner, "
            "scored by the scale-free geometric mean of the validation task "
            "losses, and prints the trials table."
        ),
    )
    parser.add_argument(
        "--tuner",
        default="random",
        help="the KerasTuner tuner: random, grid, bayesian or hyperband",
    )
    parser.add_argument("--max-trials", type=int, default=4, help="trials to run")
    parser.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="epochs per trial (Hyperband: the maximum)",
    )
    parser.add_argument(
        "--balancers",
        default=None,
        help="comma-separated method names to choose from "
        "(`mtl-keras methods`), e.g. static,uw,dwa; none: "
        "no balancer",
    )
    parser.add_argument(
        "--weights",
        default="log_uniform",
        help="how the task weights are searched: log_uniform, simplex or none",
    )
    parser.add_argument(
        "--architectures",
        default=None,
        help="comma-separated architectures to choose from "
        "(hard, mmoe, mtan); none: hard sharing",
    )
    parser.add_argument(
        "--directory", default="mtl_tuning", help="where KerasTuner keeps the trials"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over instead of resuming the search saved in --directory",
    )
    parser.add_argument(
        "--logdir", default=None, help="TensorBoard logs, one folder per trial"
    )
    parser.add_argument("--train-size", type=int, default=512, help="training images")
    parser.add_argument(
        "--validation-size",
        type=int,
        default=256,
        help="validation images (the trials' score)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the tuner and every trial"
    )
    parser.set_defaults(run=run_tune)


def run_tune(args) -> int:
    from mtl_keras import tuning

    started = time.perf_counter()
    balancers = args.balancers.split(",") if args.balancers else None
    weights = None if args.weights == "none" else args.weights
    try:  # the search's own checks, before anything trains
        tuning.SearchSpace(weights=weights, balancers=balancers).checked()
        if args.tuner not in tuning.TUNERS:
            raise ValueError(
                f"Unknown tuner {args.tuner!r}: use one of {', '.join(tuning.TUNERS)}."
            )
    except ValueError as error:
        print(f"mtl-keras tune: error: {error}", file=sys.stderr)
        return 2
    result = tuning.search_shapes(
        tuner=args.tuner,
        max_trials=args.max_trials,
        epochs=args.epochs,
        balancers=balancers,
        weights=weights,
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
        formatter_class=_Formatter,
        help="compare balancers against single-task baselines (shapes, MultiMNIST)",
        description=(
            "Trains each method with every seed, plus one single-task model "
            "per task, and prints the test metrics (mean ± std over seeds), "
            "Δm% against the single-task models and seconds per epoch."
        ),
    )
    parser.add_argument(
        "--data", default="shapes", help="a built-in suite: shapes or multi_mnist"
    )
    parser.add_argument(
        "--balancers",
        required=True,
        help="comma-separated method names (`mtl-keras "
        "methods`), e.g. ew,uw,dwa,mgda-ub,pcgrad",
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="seeds per method (0, 1, ...)"
    )
    parser.add_argument(
        "--epochs", type=int, default=8, help="training epochs of every run"
    )
    parser.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="training examples; none: 4096 for shapes, 50,000 for multi_mnist",
    )
    parser.add_argument(
        "--test-size",
        type=int,
        default=None,
        help="test examples; none: the whole test split",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="batch size")
    parser.add_argument(
        "--learning-rate", type=float, default=1e-3, help="Adam's learning rate"
    )
    parser.add_argument(
        "--data-dir", default=None, help="multi_mnist: folder of the MNIST files"
    )
    parser.add_argument(
        "--architecture",
        default="hard",
        help="how the heads share the trunk: hard (hard "
        "sharing), mmoe (an MMoE layer) or mtan (MTAN "
        "attention masks)",
    )
    parser.add_argument("--out", default=None, help="write the table as Markdown")
    parser.add_argument(
        "--plot",
        default=None,
        help="draw the comparison (PNG; needs matplotlib: pip "
        f"install '.[{PLOT_EXTRA}]')",
    )
    parser.add_argument(
        "--log", default=None, help="append each finished run to this JSON lines file"
    )
    parser.add_argument(
        "--resume", action="store_true", help="skip the runs already in --log"
    )
    parser.set_defaults(run=run_compare)


def run_compare(args) -> int:
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print(
            "mtl-keras compare: error: --plot needs matplotlib, which is not "
            f"installed: pip install matplotlib, or install this package "
            f"with its '{PLOT_EXTRA}' extra (pip install '.[{PLOT_EXTRA}]' "
            "from a clone). Nothing was trained.",
            file=sys.stderr,
        )
        return 2
    from mtl_keras import architectures, compare, suites

    methods = [name for name in args.balancers.split(",") if name]
    try:
        compare.check_methods(methods)
        if args.data not in suites.SUITES:
            raise ValueError(
                f"Unknown data {args.data!r}; the built-in suites "
                f"are {', '.join(suites.SUITES)}."
            )
        if args.architecture not in architectures.ARCHITECTURES:
            raise ValueError(
                f"Unknown architecture {args.architecture!r}; expected one of "
                f"{', '.join(architectures.ARCHITECTURES)}."
            )
    except ValueError as error:
        print(f"mtl-keras compare: error: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    result = compare.compare(
        args.data,
        methods,
        seeds=args.seeds,
        epochs=args.epochs,
        train_size=args.train_size,
        test_size=args.test_size,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        data_dir=args.data_dir,
        log_path=args.log,
        resume=args.resume,
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


def add_methods_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "methods",
        aliases=["balancers"],
        formatter_class=_Formatter,
        help="list the task-balancing methods (one row each)",
        description=(
            "Lists every method (mtl_keras.methods): its name and aliases, its "
            "kind (static, loss, gradient or callback), its cost in backward "
            "passes per training step for K tasks, and what it does. Give a "
            "name or an alias to compile(balancer=...), `mtl-keras compare "
            "--balancers` or `mtl-keras demo --balancer`."
        ),
    )
    parser.set_defaults(run=run_methods)


def run_methods(args) -> int:
    del args
    from mtl_keras import methods

    rows = [("name", "aliases", "kind", "cost per step", "description")]
    for method in methods.all_methods():
        rows.append(
            (
                method.name,
                ",".join(method.aliases) or "-",
                method.kind,
                method.cost,
                method.description,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths))
            + "  "
            + row[4]
        )
    return 0


def version() -> str:
    """`mtl_keras.__version__`, read from its source without importing it."""
    spec = importlib.util.find_spec("mtl_keras")
    text = pathlib.Path(spec.origin).read_text(encoding="utf-8")
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtl-keras",
        description="Multi-task learning for Keras 3.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(subparsers)
    add_methods_parser(subparsers)
    add_export_parser(subparsers)
    add_tune_parser(subparsers)
    add_compare_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _load_library()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
