"""Method names → what trains them, for the experiments: a thin view of the
method registry (`mtl_keras.methods`).

`compare` and `tune` ask only `method_names` and `method_parts`.
"""

from __future__ import annotations

from mtl_keras import methods
from mtl_keras.methods import MethodParts

__all__ = ["MethodParts", "method_names", "method_parts"]


def method_names() -> list[str]:
    """Every method name the experiments accept (aliases included), sorted.

    Example:

    ```python
    assert "dwa" in method_names() and "upgrad" in method_names()
    ```
    """
    return methods.names(aliases=True)


def method_parts(name: str, config: dict | None = None) -> MethodParts:
    """The balancer and callbacks of the method `name`.

    Args:
        name: a method name (aliases, dashes and case are accepted).
        config: constructor arguments of the balancer or callback (e.g. a
            searched `{"temperature": 3.0}` for DWA); None: the defaults.

    Example:

    ```python
    parts = method_parts("dwa")  # no balancer, a DynamicWeightAverage callback
    ```
    """
    return methods.get(name).parts(config)
