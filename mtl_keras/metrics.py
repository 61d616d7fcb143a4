"""Deprecated alias of `mtl_keras.scores` (Δm% and the scale-free score).

The multi-task scores moved to `mtl_keras.scores`; this module re-exports
them so that `mtl_keras.metrics.delta_m` keeps working. Import from
`mtl_keras.scores` in new code.
"""

import warnings

from mtl_keras.scores import (
    DEFAULT_HIGHER_IS_BETTER,
    delta_m,
    geometric_mean_loss,
    metric_direction,
    metric_name,
)

warnings.warn("mtl_keras.metrics is deprecated: import mtl_keras.scores instead.",
              DeprecationWarning, stacklevel=2)

__all__ = ["DEFAULT_HIGHER_IS_BETTER", "delta_m", "geometric_mean_loss",
           "metric_direction", "metric_name"]
