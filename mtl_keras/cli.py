"""The `mtl-keras` command: `demo`, and the other jobs as they land.

Each subcommand is a thin layer over the library: it parses arguments,
calls public functions, and prints what they return.
"""

from __future__ import annotations

import argparse
import os
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtl-keras",
        description="Multi-task learning for Keras 3.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(subparsers)
    return parser


def main(argv=None) -> int:
    _quiet_tensorflow()
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
