"""Per-step time of gradient balancers on the current Keras backend.

Times `fit` on the MultiMNIST LeNet (random images, batch 256, K = 2) for a
plain `keras.Model`, the engine alone (a gradient balancer returning equal
weights: K backward passes, no balancing math) and a few methods, with both
ways of computing J (`jacobian="loop"`, `"pfor"`: `jax.vmap` over the VJP on
JAX, pfor on TensorFlow). Ratios are to the plain model measured in the same
run. `--update-every 1,8` adds the amortised rows of `update_every=N`;
`--jit-compile` compiles every step with XLA. "first step" is the wall time
of the first one-batch `fit` (tracing, plus XLA compilation with
`--jit-compile`); "ms/step" the median over `--rounds` epochs of the mean
`train_function` time (steps 8 apart cover whole `update_every` cycles).
Pick the backend with `KERAS_BACKEND`:

    KERAS_BACKEND=jax python benchmarks/backends.py --steps 20
    KERAS_BACKEND=tensorflow python benchmarks/backends.py --steps 20 \
        --jacobians loop --update-every 1,8
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import keras
import numpy as np
from keras import ops

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mtl_keras  # noqa: E402
from mtl_keras import architectures  # noqa: E402


class EqualWeights(mtl_keras.balancers.GramianBalancer):
    """The engine alone: J, its Gramian and the plumbing, weights all 1."""

    def compute_weights(self, task_losses, gramian):
        return ops.ones_like(task_losses)


def make(method, jacobian="loop", update_every=1, jit_compile=False):
    keras.utils.set_random_seed(0)
    model = architectures.multi_mnist_lenet()
    if method == "plain":
        model = keras.Model(model.input, model.output)
        model.compile("sgd", loss="sparse_categorical_crossentropy",
                      jit_compile=jit_compile)
        return model
    if method == "engine":
        balancer = EqualWeights()
    elif isinstance(method, str):
        balancer = mtl_keras.balancers.get(method)
    else:  # a configured instance
        balancer = method
    model.compile("sgd", loss="sparse_categorical_crossentropy",
                  balancer=balancer, jacobian=jacobian, jit_compile=jit_compile,
                  update_every=update_every)
    return model


class _StepClock(keras.callbacks.Callback):
    """The wall time of every `train_function` call of `fit`."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def time_fit(model, x, y, steps, batch, rounds=3):
    """`(first one-batch fit in s, ms per step)`: the median over `rounds`
    of the mean step time of `steps` steps (a mean, so that `update_every`
    rows are amortised over their refresh cycles)."""
    start = time.perf_counter()
    model.fit(x[:batch], {k: v[:batch] for k, v in y.items()}, batch_size=batch,
              epochs=1, verbose=0)
    first = time.perf_counter() - start
    means = []
    for _ in range(rounds):
        clock = _StepClock()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False,
                  callbacks=[clock])
        means.append(1000 * float(np.mean(clock.seconds[:steps])))
    return first, float(np.median(means))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--methods", default="engine,upgrad,mgda,pcgrad,cagrad")
    parser.add_argument("--jacobians", default="loop,pfor")
    parser.add_argument("--update-every", default="1",
                        help="comma-separated N of update_every=N")
    parser.add_argument("--jit-compile", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = args.steps * args.batch
    x = rng.random((rows, 28, 28, 1), dtype=np.float32)
    y = {t: rng.integers(0, 10, rows).astype("int32") for t in ("left", "right")}
    print(f"# {keras.backend.backend()} | {datetime.date.today()} | "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores | "
          f"load {os.getloadavg()[0]:.1f} | batch {args.batch}, {args.steps} steps"
          f" | jit_compile={args.jit_compile}")
    print("| method | jacobian | update_every | first step s | × plain | "
          "ms/step | × plain |")
    print("|---|---|---|---|---|---|---|")
    first_plain, plain = time_fit(make("plain", jit_compile=args.jit_compile),
                                  x, y, args.steps, args.batch, args.rounds)
    print(f"| plain keras.Model | - | - | {first_plain:.1f} | 1.00 | {plain:.1f} "
          "| 1.00 |", flush=True)
    for method in args.methods.split(","):
        for jacobian in args.jacobians.split(","):
            for every in (int(n) for n in args.update_every.split(",")):
                model = make(method, jacobian, every, args.jit_compile)
                first, ms = time_fit(model, x, y, args.steps, args.batch,
                                     args.rounds)
                print(f"| {method} | {jacobian} | {every} | {first:.1f} | "
                      f"{first / first_plain:.2f} | {ms:.1f} | {ms / plain:.2f} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
