"""Compare balancing methods: the logic behind `mtl-keras compare`.

`compare` trains every method (a name of `mtl_keras.methods`: a balancer,
or a callback method such as `"dwa"`) for each seed, plus one single-task model
per task (the same network built with one task), scores every model on the
test data, and returns a `CompareResult`: per-task headline metrics as mean ±
std over seeds, Δm% against the single-task means (Maninis et al., CVPR
2019; see `mtl_keras.scores.delta_m`) and seconds per epoch.

It runs on a built-in suite (`"shapes"`, `"multi_mnist"`; see
`mtl_keras.suites`) or on your own model and data: a `build_model(tasks)`,
`tf.data` or arrays, losses and metrics. Each finished run can be appended
to a JSON lines file (`log_path`) and skipped on `resume=True`; a run
killed before its line is complete is trained again.

This module is the public face of `mtl_keras.experiments` (the runs,
results, table, plot and log live there) and `mtl_keras.suites`.

Example:

```python
from mtl_keras import compare

result = compare.compare(["ew", "pcgrad", "dwa"], "shapes", seeds=2, epochs=4)
print(result.to_markdown())
result.plot("shapes.png")
```
"""

from __future__ import annotations

from mtl_keras import suites
from mtl_keras.experiments.compare import (
    available_methods,
    check_methods,
    compare,
)
from mtl_keras.experiments.method_parts import method_parts
from mtl_keras.experiments.plot import matplotlib_colors
from mtl_keras.experiments.record import SINGLE_TASK, RunRecord, steady_seconds
from mtl_keras.experiments.result import CompareResult
from mtl_keras.experiments.run import learning_rate_callbacks, train_run
from mtl_keras.experiments.run_log import resumed as _resumed  # noqa: F401 - older tests
from mtl_keras.experiments.summary import MethodSummary
from mtl_keras.suites import Suite

#: The former name of `mtl_keras.suites.Suite`.
BenchmarkData = Suite


#: A built-in suite by name: `mtl_keras.suites.load` (see there), e.g.
#: `load_data("shapes", train_size=256, test_size=64)`.
load_data = suites.load


__all__ = [
    "SINGLE_TASK",
    "BenchmarkData",
    "CompareResult",
    "MethodSummary",
    "RunRecord",
    "Suite",
    "available_methods",
    "check_methods",
    "compare",
    "learning_rate_callbacks",
    "load_data",
    "matplotlib_colors",
    "method_parts",
    "steady_seconds",
    "train_run",
]
