"""Every ```python block of README.md and docs/**/*.md runs.

Each document's blocks run in order in one namespace (a later block may use
what an earlier one built), in a fresh Python process with a temporary
working directory, so files the examples write stay out of the repository.
Quick mode shortens what the examples train: `epochs=N` becomes `epochs=1`
and `max_trials=N` becomes `max_trials=2`; nothing else is changed.

Shell blocks do not run, except the command lines that the Python blocks read
the output of: before a document's Python blocks, its
`mtl-keras demo ... --save FILE` lines (the quick start) and the
`mtl-keras export FILE ...` lines that export such a file run, in order,
through the command line's own `main`, as written; quick mode adds
`--epochs 1 --train-size 64 --validation-size 64` to the demo (which
otherwise trains for minutes).
"""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
CLI_LINE = re.compile(r"^mtl-keras ((?:demo|export) .*)$", re.MULTILINE)
QUICK_DEMO = ["--epochs", "1", "--train-size", "64", "--validation-size", "64"]
QUICK = (
    (re.compile(r"\bepochs=\d+"), "epochs=1"),
    (re.compile(r"\bmax_trials=\d+"), "max_trials=2"),
)

RUNNER = """
import json, sys, traceback
blocks, commands = json.load(open(sys.argv[1]))
if commands:
    import mtl_keras_cli
    for argv in commands:
        if mtl_keras_cli.main(argv) != 0:
            sys.exit(f"mtl-keras {' '.join(argv)} failed.")
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


def shell_steps(text: str) -> list[list[str]]:
    """The arguments of the `mtl-keras demo ... --save FILE` lines (in quick
    mode) and of the `mtl-keras export FILE ...` lines that export one of
    those files, in the order of the ```bash blocks."""
    shell = "\n".join(match.group(1) for match in SHELL.finditer(text))
    steps, saved = [], set()
    for argv in (shlex.split(line) for line in CLI_LINE.findall(shell)):
        if argv[0] == "demo" and "--save" in argv:
            saved.add(argv[argv.index("--save") + 1])
            steps.append(argv + QUICK_DEMO)
        elif argv[0] == "export" and argv[1] in saved:
            steps.append(argv)
    return steps


def documents() -> list[pathlib.Path]:
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
    return [p for p in paths if python_blocks(p.read_text())]


def test_quick_mode_changes_only_epochs_and_trials():
    text = "```python\nfit(x, epochs=20, max_trials=9, steps=5)\n```\n"
    assert python_blocks(text) == [(2, "fit(x, epochs=1, max_trials=2, steps=5)\n")]


def test_shell_steps_are_the_save_and_export_lines():
    text = (
        "```bash\nmtl-keras demo --save m.keras\n"
        "mtl-keras export m.keras out/ --postprocess cls=classify\n"
        "mtl-keras compare --balancers ew\n"
        "mtl-keras export other.keras y/\n```\n"
        "```text\nmtl-keras export ignored.keras x/\n```\n"
    )
    assert shell_steps(text) == [
        ["demo", "--save", "m.keras", *QUICK_DEMO],
        ["export", "m.keras", "out/", "--postprocess", "cls=classify"],
    ]


def test_the_quick_start_saves_exports_and_loads_what_it_exported():
    for path in (ROOT / "README.md", ROOT / "docs" / "guides" / "quickstart.md"):
        text = path.read_text()
        steps = shell_steps(text)
        assert steps[0] == ["demo", "--save", "model.keras", *QUICK_DEMO], path
        assert ["export", "model.keras", "export/"] in steps, path
        assert 'tf.saved_model.load("export")' in text, path


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(path, tmp_path):
    blocks = tmp_path / "blocks.json"
    text = path.read_text()
    blocks.write_text(json.dumps([python_blocks(text), shell_steps(text)]))
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(blocks), str(path.relative_to(ROOT))],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-6000:]
