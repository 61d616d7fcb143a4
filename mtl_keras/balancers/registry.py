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


def available() -> list[str]:
    """The registered balancer class names, sorted.

    Every method name (aliases such as `"ew"`, presets such as `"mgda_ub"`,
    callback methods such as `"dwa"`) is in `mtl_keras.methods.names()`.
    """
    return sorted(_REGISTRY)


def registered() -> dict[str, type[Balancer]]:
    """The registered balancer classes by name (a copy).

    Example:

    ```python
    assert mtl_keras.balancers.registered()["upgrad"] is mtl_keras.balancers.UPGrad
    ```
    """
    return dict(_REGISTRY)


def normalise_name(name: str) -> str:
    """The registry spelling of a method name: `" Nash-MTL"` → `"nash_mtl"`.

    The one normaliser of method and balancer names.
    """
    return str(name).strip().lower().replace("-", "_")


def get(
    identifier: Balancer | str | dict | None, **kwargs: Any
) -> Balancer | None:
    """Returns a balancer from an instance, a registered name or a config.

    Args:
        identifier: A `Balancer` instance (returned as is), a method name
            such as `"pcgrad"`, `"nash-mtl"` or `"ew"` (any name of
            `mtl_keras.methods` with a balancer; dashes accepted), a dict
            `{"class_name": ..., "config": ...}` as produced by `serialize`,
            or `None` (no balancer).
        **kwargs: Constructor arguments for a balancer given by name, e.g.
            `get("cagrad", c=0.5)`.

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
            f"got {identifier!r}: configure the instance instead."
        )
    if identifier is None or isinstance(identifier, Balancer):
        return identifier
    if isinstance(identifier, str):
        from mtl_keras import methods  # the method registry reads this one

        return methods.balancer(identifier, **kwargs)
    if isinstance(identifier, dict):
        class_name = identifier.get("class_name", "")
        config = dict(identifier.get("config", {}))
        short = normalise_name(class_name)
        if short in _REGISTRY:
            return _REGISTRY[short].from_config(config)
        from mtl_keras import methods

        if short in methods.names(aliases=True):  # a preset such as "mgda_ub"
            return methods.balancer(short, **config)
        return keras.saving.deserialize_keras_object(identifier)
    raise TypeError(
        "A balancer must be a Balancer instance, a name or a config dict; "
        f"got {type(identifier).__name__}: {identifier!r}."
    )


def serialize(balancer: Balancer) -> dict:
    """The config dict that `get` turns back into an equal balancer."""
    return {"class_name": balancer.registered_name, "config": balancer.get_config()}
