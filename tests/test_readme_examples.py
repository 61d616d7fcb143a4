"""Every ```python block of README.md and docs/**/*.md runs.

Each document's blocks run in order in one namespace (a later block may use
what an earlier one built), in a fresh Python process with a temporary
working directory, so files the examples write stay out of the repository.
Quick mode shortens what the examples train: `epochs=N` becomes `epochs=1`
and `max_trials=N` becomes `max_trials=2`; nothing else is changed.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
QUICK = ((re.compile(r"\bepochs=\d+"), "epochs=1"),
         (re.compile(r"\bmax_trials=\d+"), "max_trials=2"))

RUNNER = """
import json, sys, traceback
blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for line, code in blocks:
    try:
        exec(compile(code, f"{sys.argv[2]}:{line}", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"The block at {sys.argv[2]}:{line} failed.")
"""


def python_blocks(text: str) -> list[tuple[int, str]]:
    """`(line number, code)` of every ```python block, in quick mode."""
    blocks = []
    for match in BLOCK.finditer(text):
        code = match.group(1)
        for pattern, replacement in QUICK:
            code = pattern.sub(replacement, code)
        blocks.append((text.count("\n", 0, match.start()) + 2, code))
    return blocks


def documents() -> list[pathlib.Path]:
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
    return [p for p in paths if python_blocks(p.read_text())]


def test_quick_mode_changes_only_epochs_and_trials():
    text = "```python\nfit(x, epochs=20, max_trials=9, steps=5)\n```\n"
    assert python_blocks(text) == [(2, "fit(x, epochs=1, max_trials=2, steps=5)\n")]


@pytest.mark.parametrize(
    "path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(path, tmp_path):
    blocks = tmp_path / "blocks.json"
    blocks.write_text(json.dumps(python_blocks(path.read_text())))
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(blocks), str(path.relative_to(ROOT))],
        cwd=workdir, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-6000:]
