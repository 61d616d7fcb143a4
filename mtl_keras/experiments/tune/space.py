"""The search space of a tuning run: task weights and each method's own
hyperparameters, and the checks of what a search is given."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence

from mtl_keras import balancers as balancers_lib
from mtl_keras.experiments.method_parts import method_parts

#: The ways task weights can be searched.
WEIGHT_MODES = ("log_uniform", "simplex", None)

# Each method's own hyperparameters: {name: {constructor argument: declare}},
# where `declare(hp, hp_name)` declares it. A constructor that takes
# `learning_rate` (the learned weights' step size) gets it searched too.
_METHOD_SPACE: dict[str, dict[str, Callable]] = {
    "dwa": {"temperature": lambda hp, name: hp.Float(
        name, 0.5, 5.0, sampling="log", default=2.0)},
    "gradnorm": {"alpha": lambda hp, name: hp.Float(name, 0.1, 3.0, default=1.5)},
    "cagrad": {"c": lambda hp, name: hp.Float(name, 0.1, 0.9, default=0.4)},
    "uw": {"form": lambda hp, name: hp.Choice(
        name, ["standard", "kendall_keras", "positive"])},
    "famo": {"gamma": lambda hp, name: hp.Float(
        name, 1e-4, 1e-2, sampling="log", default=1e-3)},
}


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What a search varies besides the user's own hyperparameters.

    Args:
        weights: `"log_uniform"`, `"simplex"` or None (every weight 1); see
            `MultiTaskHyperModel`.
        weight_range: `(low, high)` of the weights (or ratios).
        weight_step: multiplicative step of the weight grid (`10` gives
            0.01, 0.1, 1, 10, 100); None: continuous.
        balancers: method names to choose from (balancers and `"dwa"`), or
            None to compile without a balancer.
    """

    weights: str | None = "log_uniform"
    weight_range: tuple[float, float] = (1e-2, 1e2)
    weight_step: float | None = None
    balancers: Sequence[str] | None = None

    def checked(self) -> SearchSpace:
        """This space with its values checked and the names normalised."""
        return dataclasses.replace(
            self, weights=_check_weight_mode(self.weights),
            weight_range=_check_weight_range(self.weight_range),
            balancers=_check_methods(self.balancers))


def simplex_weights(ratios: Sequence[float], tasks: Sequence[str]) -> dict[str, float]:
    """`w = K · r / Σ r`: positive ratios to task weights that sum to K.

    Example:

    ```python
    simplex_weights([4.0, 1.0], ["a", "b"])  # {"a": 1.6, "b": 0.4}
    ```
    """
    total = sum(ratios)
    return {t: len(tasks) * r / total for t, r in zip(tasks, ratios, strict=True)}


def balancer_space(name: str) -> dict[str, Callable]:
    """The searched constructor arguments of a method (a balancer or `"dwa"`).

    Returns `{argument: declare(hp, hp_name)}`; the argument names are
    checked against the constructor of the method's balancer or callback.

    Example:

    ```python
    sorted(balancer_space("gradnorm"))  # ["alpha", "learning_rate"]
    ```
    """
    space = dict(_METHOD_SPACE.get(name, {}))
    parts = method_parts(name)
    cls = type(parts.balancer if parts.balancer is not None else parts.callbacks[0])
    parameters = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(space) - set(parameters))
    if unknown:
        raise ValueError(
            f"The search space of balancer {name!r} names {unknown}, which "
            f"{cls.__name__} does not take (it takes {sorted(parameters)})."
        )
    if "learning_rate" in parameters and parts.balancer is not None:
        space["learning_rate"] = _learning_rate_space
    return space


def is_callback_method(name: str) -> bool:
    """Whether the method trains with callbacks and no balancer (DWA): its
    callbacks set the task weights, so they are not searched."""
    return method_parts(name).balancer is None


def grid_default(low: float, high: float, step: float | None) -> float:
    """1 (equal weights) if in range and on the grid; else the nearest."""
    if step is None:
        return 1.0 if low <= 1.0 <= high else math.sqrt(low * high)
    steps = round(math.log(1.0 / low) / math.log(step))
    top = math.floor(math.log(high / low) / math.log(step) + 1e-9)
    return low * step ** min(max(steps, 0), top)


def _learning_rate_space(hp, name):
    return hp.Float(name, 1e-3, 1e-1, sampling="log", default=0.025)


def _check_weight_mode(weights):
    if weights not in WEIGHT_MODES:
        raise ValueError(
            f"Unknown weights mode {weights!r}: use one of {WEIGHT_MODES}."
        )
    return weights


def _check_weight_range(weight_range) -> tuple[float, float]:
    low, high = (float(v) for v in weight_range)
    if not 0 < low < high:
        raise ValueError(
            f"weight_range must be (low, high) with 0 < low < high; got {weight_range}."
        )
    return low, high


def _check_methods(names) -> tuple[str, ...] | None:
    from mtl_keras.experiments.method_parts import method_names

    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    known = method_names()
    normalised = tuple(balancers_lib.normalise_name(n) for n in names)
    unknown = [n for n, short in zip(names, normalised, strict=True)
               if short not in known]
    if unknown:
        raise ValueError(
            f"Unknown balancer(s) {unknown} in balancers={list(names)}. Known: "
            f"{', '.join(known)}."
        )
    if not normalised:
        raise ValueError("`balancers` is empty: give at least one name, or None.")
    for name in normalised:
        balancer_space(name)
    return normalised
