"""Name registry: `get(identifier)` works like `keras.optimizers.get`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from mtl_keras.balancers.base import Balancer

_REGISTRY: dict[str, type[Balancer]] = {}


def register(name: str) -> Callable[[type[Balancer]], type[Balancer]]:
    """Class decorator: registers a balancer under a snake_case `name` and
    as a Keras serialisable object of package `mtl_keras`."""

    def decorator(cls):
        if name in _REGISTRY:
            raise ValueError(f"Balancer name {name!r} is registered twice.")
        cls = keras.saving.register_keras_serializable(package="mtl_keras")(cls)
        cls.registered_name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


# Short names for common presets: name -> (registered name, constructor kwargs).
_ALIASES: dict[str, tuple[str, dict]] = {
    "ew": ("static", {}),
    "equal": ("static", {}),
    "mgda_ub": ("mgda", {"mode": "rep"}),
}


#: Methods that are epoch-level callbacks, not balancers: what to write.
CALLBACK_METHODS = {
    "dwa": (
        "DWA (Dynamic Weight Average) is an epoch-level callback, not a "
        "balancer: train with `model.fit(..., callbacks=["
        "mtl_keras.callbacks.DynamicWeightAverage()])` and compile with "
        "`balancer=None` (or any balancer; DWA sets the task weights it sees)."
    ),
}


def available() -> list[str]:
    """The registered balancer names and aliases, sorted."""
    return sorted([*_REGISTRY, *_ALIASES])


def normalise_name(name: str) -> str:
    """The registry spelling of a method name: `" Nash-MTL"` → `"nash_mtl"`.

    The one normaliser used by the registry, tuning and `compare`.
    """
    return str(name).strip().lower().replace("-", "_")


def get(
    identifier: Balancer | str | dict | None, **kwargs: Any
) -> Balancer | None:
    """Returns a balancer from an instance, a registered name or a config.

    Args:
        identifier: A `Balancer` instance (returned as is), a registered name
            such as `"pcgrad"` or `"nash-mtl"` (dashes are accepted), a dict
            `{"class_name": ..., "config": ...}` as produced by `serialize`,
            or `None` (no balancer).
        **kwargs: Constructor arguments for a balancer given by name, e.g.
            `get("mgda", update_every=8)`.

    Example:

    ```python
    balancer = mtl_keras.balancers.get("cagrad")
    balancer = mtl_keras.balancers.get({"class_name": "cagrad",
                                         "config": {"c": 0.5}})
    ```
    """
    if kwargs and not isinstance(identifier, str):
        raise ValueError(
            f"Constructor arguments {sorted(kwargs)} need a balancer name; "
            f"got {identifier!r}: configure the instance instead.")
    if identifier is None or isinstance(identifier, Balancer):
        return identifier
    if isinstance(identifier, str):
        name = normalise_name(identifier)
        if name in _ALIASES:
            target, alias_kwargs = _ALIASES[name]
            return _REGISTRY[target](**{**alias_kwargs, **kwargs})
        if name in CALLBACK_METHODS:
            raise ValueError(CALLBACK_METHODS[name])
        if name not in _REGISTRY:
            raise ValueError(
                f"Unknown balancer {identifier!r}. Available balancers: "
                f"{', '.join(available())}."
            )
        return _REGISTRY[name](**kwargs)
    if isinstance(identifier, dict):
        class_name = identifier.get("class_name", "")
        config = dict(identifier.get("config", {}))
        short = normalise_name(class_name)
        if short in _ALIASES:
            short, alias_config = _ALIASES[short]
            config = {**alias_config, **config}
        if short in _REGISTRY:
            return _REGISTRY[short].from_config(config)
        return keras.saving.deserialize_keras_object(identifier)
    raise TypeError(
        "A balancer must be a Balancer instance, a name or a config dict; "
        f"got {type(identifier).__name__}: {identifier!r}."
    )


def serialize(balancer: Balancer) -> dict:
    """The config dict that `get` turns back into an equal balancer."""
    return {"class_name": balancer.registered_name, "config": balancer.get_config()}
