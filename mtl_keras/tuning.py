"""KerasTuner search over task weights and balancers, scored on all tasks.

`MultiTaskHyperModel` wraps a user function `build_model(hp)` that returns
an uncompiled `MultiTaskModel` and adds to its search space:

- the task weights (`weights="log_uniform"`, `"simplex"` or `None`);
- the method, chosen by name among `balancers`, with each method's own
  hyperparameters (DWA temperature, GradNorm α, CAGrad c, UW form, FAMO γ,
  the learning rate of learned weights where the class takes one).

Every trial is scored by the combined validation objective of
`mtl_keras.callbacks.MultiTaskScore` (Δm% against single-task references, or
the scale-free geometric mean of the task losses), so any KerasTuner tuner
ranks trials on all tasks at once. `search` runs the whole thing and returns
a `SearchResult`; `tune` does it on the parts `mtl_keras.compare.compare`
takes (a `build_model(tasks)`, data, losses, metrics), Δm% against
single-task models it trains first.

This module is the public face of `mtl_keras.experiments.tune`.

Example:

```python
result = mtl_keras.tuning.tune(["uw", "upgrad"], build_model=build,
                               train=train_ds, validation=val_ds,
                               losses=losses, metrics=metrics, max_trials=8)
```
"""

from __future__ import annotations

from mtl_keras.experiments.tune.hypermodel import MultiTaskHyperModel
from mtl_keras.experiments.tune.options import CompileOptions, FitOptions, TunerOptions
from mtl_keras.experiments.tune.search import TUNERS, search
from mtl_keras.experiments.tune.search_result import SearchResult
from mtl_keras.experiments.tune.space import (
    WEIGHT_MODES,
    SearchSpace,
    balancer_space,
    simplex_weights,
)
from mtl_keras.experiments.tune.tune import (
    search_shapes,
    shapes_builder,
    single_task_references,
    tune,
)

__all__ = [
    "TUNERS", "WEIGHT_MODES", "CompileOptions", "FitOptions", "MultiTaskHyperModel",
    "SearchResult", "SearchSpace", "TunerOptions", "balancer_space", "search",
    "search_shapes", "shapes_builder", "simplex_weights", "single_task_references",
    "tune",
]
