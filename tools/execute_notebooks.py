"""Executes the notebooks in place so that the documentation shows their outputs.

The site (`mkdocs build`) renders `notebooks/*.ipynb` with the outputs saved in
the files; it does not run them, which would add minutes to every build. This
script runs each notebook top to bottom in a fresh kernel, from the
`notebooks/` folder (as the test suite's nbmake does), saves the outputs, and
stamps the notebook's metadata with a hash of its code cells. The test suite
(`tests/test_docs_site.py`) fails when a notebook's code no longer matches the
stamp, i.e. when someone edits a notebook and forgets to re-run this script.

Usage, from the repository root:

    python tools/execute_notebooks.py              # quick mode, all notebooks
    python tools/execute_notebooks.py --full       # MTL_KERAS_QUICK=0 (long)
    python tools/execute_notebooks.py notebooks/01_quickstart.ipynb
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import pathlib
import re
import sys

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
STAMP_KEY = "mtl_keras"
# TensorFlow's C++ start-up lines (oneDNN, CUDA probing) that it prints to
# stderr whatever the log level; they say nothing about the notebook.
_TF_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\).*"
    r"|[IWE]\d{4} [\d:.]+\s+\d+ [\w./]+:\d+\] .*)$")


def code_hash(notebook) -> str:
    """sha256 of the notebook's code cells, in order (outputs ignored)."""
    digest = hashlib.sha256()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.strip().encode("utf-8"))
            digest.update(b"\0")
    return digest.hexdigest()


def drop_tensorflow_noise(notebook) -> None:
    """Removes TensorFlow's C++ start-up lines from the stderr outputs."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                lines = output.text.splitlines(keepends=True)
                output.text = "".join(
                    line for line in lines if not _TF_NOISE.match(line.rstrip("\n")))
                if not output.text.strip():
                    continue
            kept.append(output)
        cell.outputs = kept


def execute(path: pathlib.Path, quick: bool, timeout: int) -> None:
    notebook = nbformat.read(path, as_version=4)
    os.environ["MTL_KERAS_QUICK"] = "1" if quick else "0"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The kernel imports mtl_keras from this checkout, not an installed copy.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    drop_tensorflow_noise(notebook)
    notebook.metadata[STAMP_KEY] = {
        "code_sha256": code_hash(notebook),
        "mode": "quick (MTL_KERAS_QUICK=1)" if quick else "full (MTL_KERAS_QUICK=0)",
        "executed": datetime.date.today().isoformat(),
    }
    nbformat.write(notebook, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=pathlib.Path)
    parser.add_argument("--full", action="store_true",
                        help="run with MTL_KERAS_QUICK=0 (full data and epochs)")
    parser.add_argument("--timeout", type=int, default=3600,
                        help="seconds allowed per cell")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in paths:
        print(f"executing {path} ...", flush=True)
        execute(path.resolve(), quick=not args.full, timeout=args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
