"""The search space of a tuning run: task weights and each method's own
hyperparameters, and the checks of what a search is given."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence

from mtl_keras import methods

#: The ways task weights can be searched.
WEIGHT_MODES = ("log_uniform", "simplex", None)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What a search varies besides the user's own hyperparameters.

    Args:
        weights: `"log_uniform"`, `"simplex"` or None (every weight 1); see
            `MultiTaskHyperModel`.
        weight_range: `(low, high)` of the weights (or ratios).
        weight_step: multiplicative step of the weight grid (`10` gives
            0.01, 0.1, 1, 10, 100); None: continuous.
        balancers: method names to choose from (`mtl_keras.methods`:
            balancers and callback methods such as `"dwa"`), or None to
            compile without a balancer.
    """

    weights: str | None = "log_uniform"
    weight_range: tuple[float, float] = (1e-2, 1e2)
    weight_step: float | None = None
    balancers: Sequence[str] | None = None

    def checked(self) -> SearchSpace:
        """This space with its values checked and the names normalised."""
        return dataclasses.replace(
            self,
            weights=_check_weight_mode(self.weights),
            weight_range=_check_weight_range(self.weight_range),
            balancers=_check_methods(self.balancers),
        )


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

    Returns `{argument: declare(hp, hp_name)}`: the method's own
    `hyperparameters` (`mtl_keras.methods`), checked against the constructor
    of its balancer or callback, plus `learning_rate` for a balancer that
    learns its weights with one.

    Example:

    ```python
    sorted(balancer_space("gradnorm"))  # ["alpha", "learning_rate"]
    ```
    """
    method = methods.get(name)
    space = dict(method.hyperparameters)
    cls = method.factory
    parameters = inspect.signature(cls).parameters
    unknown = sorted(set(space) - set(parameters))
    if unknown:
        raise ValueError(
            f"The search space of method {name!r} names {unknown}, which "
            f"{cls.__name__} does not take (it takes {sorted(parameters)})."
        )
    if "learning_rate" in parameters and method.balancer is not None:
        space["learning_rate"] = _learning_rate_space
    return space


def is_callback_method(name: str) -> bool:
    """Whether the method trains with callbacks and no balancer (DWA): its
    callbacks set the task weights, so they are not searched."""
    return methods.get(name).kind == "callback"


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
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("`balancers` is empty: give at least one name, or None.")
    checked = tuple(methods.normalise(name) for name in names)
    for name in checked:
        needs = methods.get(name).required  # unknown names raise here
        if needs:
            raise ValueError(
                f"Method {name!r} needs {', '.join(needs)}, which a search does "
                "not choose: leave it out of `balancers`."
            )
        balancer_space(name)
    return checked
