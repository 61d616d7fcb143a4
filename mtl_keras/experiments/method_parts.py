"""Method names → what trains them: the one place the experiments read it.

A method is a registered balancer (`mtl_keras.balancers`) or `"dwa"`, the
`DynamicWeightAverage` callback with static weights. `compare` and `tune`
ask only `method_names` and `method_parts`; when the method registry
(`mtl_keras.methods`) lands, these two functions read it instead.
"""

from __future__ import annotations

import dataclasses

import keras

from mtl_keras import balancers
from mtl_keras.callbacks import DynamicWeightAverage

#: Methods trained by callbacks rather than a balancer: name → callback class.
_CALLBACK_METHODS = {"dwa": DynamicWeightAverage}


@dataclasses.dataclass(frozen=True)
class MethodParts:
    """What `compile` and `fit` need to train a method.

    Args:
        balancer: the balancer for `compile(balancer=...)`, or None.
        callbacks: the callbacks to put first in `fit(callbacks=...)`.
    """

    balancer: balancers.Balancer | None
    callbacks: tuple[keras.callbacks.Callback, ...] = ()


def method_names() -> list[str]:
    """Every method name the experiments accept (aliases included), sorted.

    Example:

    ```python
    assert "dwa" in method_names() and "upgrad" in method_names()
    ```
    """
    return sorted([*balancers.available(), *_CALLBACK_METHODS])


def method_parts(name: str, config: dict | None = None) -> MethodParts:
    """The balancer and callbacks of the method `name`.

    Args:
        name: a method name (dashes and case are accepted).
        config: constructor arguments of the balancer or callback (e.g. a
            searched `{"temperature": 3.0}` for DWA); None: the defaults.

    Example:

    ```python
    parts = method_parts("dwa")  # no balancer, a DynamicWeightAverage callback
    ```
    """
    key = balancers.normalise_name(name)
    if key in _CALLBACK_METHODS:
        return MethodParts(None, (_CALLBACK_METHODS[key](**(config or {})),))
    if not config:
        return MethodParts(balancers.get(key))
    return MethodParts(balancers.get({"class_name": key, "config": config}))
