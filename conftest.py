"""Repository-wide pytest setup.

`python -m pytest` also executes the notebooks under `notebooks/` (nbmake,
see `[tool.pytest.ini_options]` in pyproject.toml), each in a fresh Jupyter
kernel that inherits this process's environment. `MTL_KERAS_QUICK=1` makes
them shrink their data, epochs and trials to a smoke test of about a minute.
To run them in full, set `MTL_KERAS_QUICK=0` and raise the per-cell limit:
`MTL_KERAS_QUICK=0 python -m pytest notebooks --nbmake-timeout=3600`.
"""

import os

from hypothesis import settings

os.environ.setdefault("MTL_KERAS_QUICK", "1")

# CI runs the same hypothesis examples every time, so a red run reproduces;
# locally each run explores new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")
