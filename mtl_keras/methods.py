"""The method registry: one row per way of balancing tasks.

A method is what you name to train with a balancing strategy: a balancer
for `compile(balancer=...)` (static weights, loss balancers, gradient
balancers), an epoch- or batch-level callback for `fit(callbacks=...)`
(DWA, DTP, LBTW, schedules), or a preset of one (`mgda_ub` is MGDA over the
shared representation). Every registered balancer class
(`mtl_keras.balancers.register`) is a method under its registered name;
the rows below add aliases, presets, callbacks and the hyperparameters a
search varies. `compile`, `compare`, `tune`, `demo` and the `mtl-keras`
command all read this registry.

Example:

```python
from mtl_keras import methods

method = methods.get("EW")            # aliases, case and dashes accepted
assert method.name == "static"
parts = methods.get("dwa").parts()    # no balancer, a DWA callback
model.compile(optimizer="adam", loss=losses, balancer=parts.balancer)
model.fit(x, y, epochs=5, callbacks=list(parts.callbacks))
```
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, cast

import keras

from mtl_keras import balancers as balancers_lib
from mtl_keras import callbacks as callbacks_lib
from mtl_keras.balancers.base import Balancer

Kind = Literal["static", "loss", "gradient", "callback"]
"""What a method is: `"static"`, `"loss"`, `"gradient"` or `"callback"`."""
KINDS: tuple[str, ...] = ("static", "loss", "gradient", "callback")
"""The values of `Kind`, in that order."""


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class MethodParts:
    """What `compile` and `fit` need to train a method.

    Args:
        balancer: the balancer for `compile(balancer=...)`, or None (static
            weights, which a callback method then sets).
        callbacks: the callbacks to put first in `fit(callbacks=...)`.

    Example:

    ```python
    parts = mtl_keras.methods.get("upgrad").parts()
    model.compile(optimizer="adam", loss=losses, balancer=parts.balancer)
    model.fit(x, y, callbacks=list(parts.callbacks))
    ```
    """

    balancer: Balancer | None
    callbacks: tuple[keras.callbacks.Callback, ...] = ()


@dataclasses.dataclass(frozen=True)
class Method:
    """One task-balancing method: its names, what it is and how to build it.

    Args:
        name: the canonical name (snake_case), e.g. `"upgrad"`.
        kind: `"static"` (fixed task weights), `"loss"` (a loss balancer),
            `"gradient"` (a gradient balancer) or `"callback"` (a callback
            that sets the task weights during `fit`, over static weighting).
        description: one line saying what the method does.
        aliases: other accepted names, e.g. `("ew", "equal")`.
        balancer: the balancer factory (a `Balancer` class), or None.
        callback: the callback factory (a `keras.callbacks.Callback`
            class), or None.
        preset: constructor arguments this method fixes (MGDA-UB:
            `{"mode": "rep"}`); a config given to `parts` overrides them.
        hyperparameters: what a search varies: `{argument: declare}` with
            `declare(hp, hp_name)` a KerasTuner declaration.
        example: for a method whose constructor needs arguments (DTP's
            `kpis`), `example(tasks)` returns a working config for a model
            whose tasks log `<task>_accuracy`.

    Example:

    ```python
    method = mtl_keras.methods.get("mgda-ub")
    print(method.kind, method.description)
    parts = method.parts({"update_every": 4})
    ```
    """

    name: str
    kind: Kind
    description: str
    aliases: tuple[str, ...] = ()
    balancer: type[Balancer] | None = None
    callback: type[keras.callbacks.Callback] | None = None
    preset: Mapping[str, Any] = dataclasses.field(default_factory=_empty)
    hyperparameters: Mapping[str, Callable] = dataclasses.field(default_factory=_empty)
    example: Callable[[Sequence[str]], dict] | None = None

    @property
    def factory(self) -> type:
        """The class the method builds: its callback's, else its balancer's."""
        factory = self.callback if self.callback is not None else self.balancer
        assert factory is not None, f"method {self.name!r} builds nothing"
        return factory

    @property
    def required(self) -> tuple[str, ...]:
        """Constructor arguments without a default, which `parts` needs."""
        parameters = inspect.signature(self.factory).parameters
        return tuple(
            name
            for name, p in parameters.items()
            if p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            and name not in self.preset
        )

    @property
    def cost(self) -> str:
        """Backward passes per training step, for K tasks."""
        if self.kind == "gradient":
            if self.preset.get("mode") == "rep":
                return "1 backward + K through heads"
            return "K backward"
        if getattr(self.balancer, "needs_post_step_losses", False):
            return "1 backward + 1 forward"
        return "1 backward"

    def parts(self, config: Mapping[str, Any] | None = None) -> MethodParts:
        """The balancer and callbacks that train this method.

        Args:
            config: constructor arguments of the balancer or callback (e.g.
                a searched `{"temperature": 3.0}` for DWA); None: defaults.

        Raises:
            ValueError: a required argument is missing (the message names it
                and shows a working call).

        Example:

        ```python
        parts = mtl_keras.methods.get("dtp").parts({"kpis": "val_{task}_accuracy"})
        model.fit(x, y, validation_data=(x_val, y_val),
                  callbacks=list(parts.callbacks))
        ```
        """
        config = {**self.preset, **dict(config or {})}
        missing = [name for name in self.required if name not in config]
        if missing:
            raise ValueError(
                f"Method {self.name!r} needs {', '.join(missing)}: e.g. "
                f"mtl_keras.methods.get({self.name!r}).parts("
                f"{self.example(['a', 'b']) if self.example else {}!r}) "
                f"(see {self.factory.__name__})."
            )
        if self.callback is not None:
            return MethodParts(None, (self.callback(**config),))
        return MethodParts(self.factory(**config))

    def names(self) -> tuple[str, ...]:
        """The canonical name and the aliases."""
        return (self.name, *self.aliases)

    def __hash__(self) -> int:  # the mappings are not hashable; the name is
        return hash((self.name, self.kind))


def _float(low, high, default, sampling="linear"):
    def declare(hp, name):
        return hp.Float(name, low, high, sampling=sampling, default=default)

    return declare


def _from_class(cls: type[Balancer], **fields: Any) -> Method:
    """The row of a registered balancer class: its registered name, kind and
    the first line of its docstring, plus `fields`."""
    for key in ("preset", "hyperparameters"):
        if key in fields:
            fields[key] = MappingProxyType(dict(fields[key]))
    first_line = (cls.__doc__ or cls.registered_name).strip().splitlines()[0]
    kind = cast(Kind, cls.kind)
    return Method(cls.registered_name, kind, first_line, balancer=cls, **fields)


# The rows that say more than a registered balancer class does by itself:
# aliases, presets, hyperparameters, and the callback methods.
_ROWS = (
    Method(
        "static",
        "static",
        "Fixed task weights (1 each unless loss_weights says otherwise): the "
        "weighted sum of the task losses, one backward pass.",
        aliases=("ew", "equal"),
        balancer=balancers_lib.Static,
    ),
    Method(
        "mgda_ub",
        "gradient",
        "MGDA-UB: MGDA's min-norm weights from the gradients of the shared "
        "representation (an upper bound), not of the shared parameters.",
        balancer=balancers_lib.MGDA,
        preset=MappingProxyType({"mode": "rep"}),
    ),
    _from_class(
        balancers_lib.UncertaintyWeighting,
        hyperparameters={
            "form": lambda hp, name: hp.Choice(
                name, ["standard", "kendall_keras", "positive"]
            )
        },
    ),
    _from_class(
        balancers_lib.GradNorm, hyperparameters={"alpha": _float(0.1, 3.0, 1.5)}
    ),
    _from_class(balancers_lib.CAGrad, hyperparameters={"c": _float(0.1, 0.9, 0.4)}),
    _from_class(
        balancers_lib.FAMO, hyperparameters={"gamma": _float(1e-4, 1e-2, 1e-3, "log")}
    ),
    Method(
        "dwa",
        "callback",
        "Dynamic Weight Average: each epoch, task weights from how fast each "
        "task loss fell (a callback over static weighting).",
        callback=callbacks_lib.DynamicWeightAverage,
        hyperparameters=MappingProxyType({"temperature": _float(0.5, 5.0, 2.0, "log")}),
    ),
    Method(
        "dtp",
        "callback",
        "Dynamic Task Prioritization: each epoch, focal-loss weights that favour "
        "the tasks with the worst KPI (a callback; needs kpis=).",
        callback=callbacks_lib.DynamicTaskPrioritization,
        example=lambda tasks: {"kpis": "{task}_accuracy"},
    ),
    Method(
        "lbtw",
        "callback",
        "Loss-Balanced Task Weighting: each step, weights from each task loss "
        "relative to its first loss (a callback).",
        callback=callbacks_lib.LossBalancedTaskWeighting,
        hyperparameters=MappingProxyType({"alpha": _float(0.1, 1.0, 0.5)}),
    ),
    Method(
        "schedule",
        "callback",
        "Task weights that follow a schedule per task (constant, piecewise, "
        "linear or cosine; a callback; needs schedules=).",
        aliases=("task_weight_schedule",),
        callback=callbacks_lib.TaskWeightSchedule,
        example=lambda tasks: {
            "schedules": {
                tasks[0]: {
                    "type": "linear",
                    "initial": 0.0,
                    "final": 1.0,
                    "duration": 2,
                }
            }
        },
    ),
)


def normalise(name: str) -> str:
    """The registry spelling of a method name: `" Nash-MTL"` → `"nash_mtl"`.

    Example:

    ```python
    assert normalise("MGDA-UB") == "mgda_ub"
    ```
    """
    return balancers_lib.normalise_name(name)


def all_methods() -> tuple[Method, ...]:
    """Every method, sorted by name: the rows above and one per registered
    balancer class (its kind and the first line of its docstring).

    Example:

    ```python
    for method in all_methods():
        print(method.name, method.kind, method.description)
    ```
    """
    rows = {row.name: row for row in _ROWS}
    for name, cls in balancers_lib.registered().items():
        if name not in rows:
            rows[name] = _from_class(cls)
    return tuple(rows[name] for name in sorted(rows))


def names(aliases: bool = False) -> list[str]:
    """The canonical method names, sorted (with `aliases=True`, every
    accepted name).

    Example:

    ```python
    assert "dwa" in names() and "ew" in names(aliases=True)
    ```
    """
    if not aliases:
        return [method.name for method in all_methods()]
    return sorted(name for method in all_methods() for name in method.names())


def get(name: str | Method) -> Method:
    """The method called `name` (an alias, any case, dashes or underscores).

    Args:
        name: a method name such as `"upgrad"`, `"MGDA-UB"`, `"ew"`, or a
            `Method` (returned as is).

    Raises:
        ValueError: an unknown name; the message gives the closest name and
            every valid one.

    Example:

    ```python
    assert get("Nash-MTL").name == "nash_mtl"
    ```
    """
    if isinstance(name, Method):
        return name
    key = normalise(name)
    for method in all_methods():
        if key in method.names():
            return method
    valid = names(aliases=True)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"Unknown method {name!r}.{hint} Valid names: {', '.join(valid)} "
        "(`mtl-keras methods` describes each)."
    )


def balancer(name: str, **kwargs: Any) -> Balancer:
    """The balancer of method `name`, for `compile(balancer=...)`.

    Args:
        name: a method name (aliases accepted).
        **kwargs: constructor arguments, e.g. `update_every=8`.

    Raises:
        ValueError: an unknown name, or a callback method (the message says
            how to train it).

    Example:

    ```python
    model.compile(optimizer="adam", loss=losses,
                  balancer=mtl_keras.methods.balancer("mgda-ub"))
    ```
    """
    method = get(name)
    if method.balancer is None or method.callback is not None:
        raise ValueError(
            f"{name!r} is a callback method, not a balancer ({method.description}) "
            "Compile with balancer=None (or any balancer) and pass "
            f"model.fit(..., callbacks=[mtl_keras.callbacks."
            f"{method.factory.__name__}(...)]), or use "
            f"mtl_keras.methods.get({method.name!r}).parts(...)."
        )
    balancer = method.parts(kwargs).balancer
    assert balancer is not None
    return balancer


__all__ = [
    "KINDS",
    "Kind",
    "Method",
    "MethodParts",
    "all_methods",
    "balancer",
    "get",
    "names",
    "normalise",
]
