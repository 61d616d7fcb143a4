"""MkDocs hooks: the package version in the site title, the notebooks and
the benchmark results.

- `on_config` reads `__version__` from `mtl_keras/__init__.py` as text (no
  import: building the site must not need TensorFlow) and puts it in the site
  name and in `config.extra.version`.
- `on_files` adds `notebooks/*.ipynb` from the repository root to the site, at
  `notebooks/<name>/`, before mkdocs-jupyter turns them into pages, and the
  committed benchmark results (`benchmarks/results/*.md` and their plots) at
  `benchmarks/results/`, as pages outside the navigation that the pages of
  `docs/benchmarks/` link to (`results/<name>.md`).
"""

from __future__ import annotations

import pathlib
import re

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, InclusionLevel

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ("benchmarks/results/*.md", "benchmarks/results/*.png")
_VERSION = re.compile(r'^__version__\s*=\s*["\']([^"\']+)["\']', re.MULTILINE)


def package_version() -> str:
    text = (ROOT / "mtl_keras" / "__init__.py").read_text(encoding="utf-8")
    match = _VERSION.search(text)
    if match is None:
        raise ValueError("mtl_keras/__init__.py defines no __version__ = '...'.")
    return match.group(1)


def on_config(config):
    version = package_version()
    config.site_name = f"mtl_keras {version}"
    config.extra["version"] = version
    return config


@event_priority(100)  # before mkdocs-jupyter wraps the notebooks
def on_files(files, config):
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files.append(File(f"notebooks/{path.name}", src_dir=str(ROOT),
                          dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    for pattern in RESULTS:
        for path in sorted(ROOT.glob(pattern)):
            files.append(File(path.relative_to(ROOT).as_posix(), src_dir=str(ROOT),
                              dest_dir=config.site_dir,
                              use_directory_urls=config.use_directory_urls,
                              inclusion=InclusionLevel.NOT_IN_NAV))
    return files
