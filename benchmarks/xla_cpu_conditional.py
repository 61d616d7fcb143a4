"""Why `update_every > 1` is slow on JAX's CPU backend: convolution gradients
inside a conditional.

`update_every=N` puts the K backward passes of a refresh step inside a
`lax.cond` (the other steps skip them). On XLA:CPU that made a JAX step of
the MultiMNIST LeNet 5-8x slower than with N = 1
(`benchmarks/results/backends.md`). This script isolates the cause with
JAX alone: the gradient of two convolutions (the LeNet's trunk shape),
compiled once as it is and once inside a `lax.cond` whose branch is taken,
and prints each one's time per call and the dimension orders
(`dim_labels`) of the compiled convolutions. In the plain program XLA
rewrites the weight-gradient convolutions to the canonical
`b01f_01io->b01f`; inside the branch they keep other orders (for instance
`f01b_i01o->01bf`) and the branch is several times slower.

    JAX_PLATFORMS=cpu python benchmarks/xla_cpu_conditional.py
"""

from __future__ import annotations

import argparse
import re
import time


def conv_gradient_programs(batch: int):
    """`(args, {name: jitted function})`: the plain and in-`cond` gradient
    (`args`: parameters, images, the predicate)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    key = jax.random.PRNGKey(0)
    images = jax.random.normal(key, (batch, 28, 28, 1))
    params = (jax.random.normal(key, (5, 5, 1, 10)) * 0.1,
              jax.random.normal(key, (5, 5, 10, 20)) * 0.1)
    numbers = ("NHWC", "HWIO", "NHWC")

    def loss(params, images):
        hidden = jax.nn.relu(lax.conv_general_dilated(
            images, params[0], (1, 1), "VALID", dimension_numbers=numbers))
        out = lax.conv_general_dilated(hidden, params[1], (1, 1), "VALID",
                                       dimension_numbers=numbers)
        return jnp.mean(out ** 2)

    gradient = jax.grad(loss)

    def in_conditional(params, images, refresh):
        return lax.cond(refresh, lambda p: gradient(p, images),
                        lambda p: jax.tree.map(jnp.zeros_like, p), params)

    def plain(params, images, refresh):
        del refresh
        return gradient(params, images)

    # The branch is taken, but the predicate is an argument: a constant
    # would let XLA remove the conditional.
    return (params, images, jnp.bool_(True)), {
        "plain": jax.jit(plain), "inside lax.cond": jax.jit(in_conditional)}


def time_per_call(function, args, repeats: int) -> float:
    import jax

    jax.block_until_ready(function(*args))  # compile
    started = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(function(*args))
    return (time.perf_counter() - started) / repeats


def conv_dim_labels(function, args) -> list[str]:
    """The `dim_labels` of every convolution in the compiled program."""
    text = function.lower(*args).compile().as_text()
    return sorted(set(re.findall(r"convolution\(.*?dim_labels=([\w>-]+)", text)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    import jax

    inputs, programs = conv_gradient_programs(args.batch)
    print(f"# jax {jax.__version__} | {jax.devices()[0].platform} | "
          f"batch {args.batch}, {args.repeats} calls")
    print("| program | ms/call | convolution dim_labels |\n|---|---|---|")
    times = {}
    for name, function in programs.items():
        times[name] = time_per_call(function, inputs, args.repeats)
        labels = ", ".join(conv_dim_labels(function, inputs))
        print(f"| {name} | {1000 * times[name]:.1f} | {labels} |")
    print(f"inside lax.cond / plain: "
          f"{times['inside lax.cond'] / times['plain']:.2f}x")


if __name__ == "__main__":
    main()
