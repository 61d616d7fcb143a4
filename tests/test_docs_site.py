"""The documentation site builds with `mkdocs build --strict` and has its pages.

Strict mode turns every warning into an error: a broken link between pages, a
`::: mtl_keras.x` reference to something that does not exist, or a page left
out of the navigation fails this test. The API reference is one page per
module, so the checks below read each package's `__all__` (statically, as
mkdocstrings does) and expect every public name on its page.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

# One worker runs this module: its module-scoped fixture is built once.
pytestmark = pytest.mark.xdist_group("test_docs_site")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
GUIDES = ["quickstart", "your_data", "balancers", "architectures", "tensorboard",
          "tuning", "serving", "distributed", "gramian_engine"]
BENCHMARKS = ["multi_mnist", "mmoe_synthetic", "overhead", "vs_torchjd"]
RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.md"))
_DOCS_TOOLS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python",
               "mkdocs_jupyter")
_missing_tools = [name for name in _DOCS_TOOLS
                  if importlib.util.find_spec(name) is None]


def _public_names(init_file: str) -> list[str]:
    tree = ast.parse((ROOT / init_file).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                getattr(target, "id", None) == "__all__" for target in node.targets):
            return [element.value for element in node.value.elts]
    raise AssertionError(f"{init_file} has no __all__")


def _documented_packages() -> dict[str, list[str]]:
    """Reference page -> the packages it renders whole (`::: mtl_keras.x`
    where `x` is a package with `__all__`, without `members: false`)."""
    pages: dict[str, list[str]] = {}
    for page in sorted((ROOT / "docs" / "reference").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"^::: (mtl_keras[\w.]*)\n((?:    .*\n)*)", text,
                                 re.MULTILINE):
            init_file = match.group(1).replace(".", "/") + "/__init__.py"
            if ((ROOT / init_file).is_file() and "members: false" not in match.group(2)
                    and "__all__" in (ROOT / init_file).read_text(encoding="utf-8")):
                pages.setdefault(page.stem, []).append(init_file)
    return pages


REFERENCE = _documented_packages()


def _package_version() -> str:
    text = (ROOT / "mtl_keras" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.MULTILINE).group(1)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    if _missing_tools:
        pytest.skip(f"documentation tools not installed ({', '.join(_missing_tools)}): "
                    'pip install -e ".[docs]"')
    site_dir = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
         str(site_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, (
        "mkdocs build --strict failed:\n"
        f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return site_dir


def _page(site: pathlib.Path, path: str) -> str:
    page = site / path / "index.html"
    assert page.is_file(), f"the site has no page {path}/"
    return page.read_text(encoding="utf-8")


def test_site_has_every_page(site):
    pages = sorted(p.parent.relative_to(site).as_posix()
                   for p in site.rglob("index.html"))
    markdown = [p.relative_to(ROOT / "docs").with_suffix("").as_posix()
                for p in (ROOT / "docs").rglob("*.md")]
    expected = ([("." if page == "index" else page) for page in markdown]
                + [f"guides/{g}" for g in GUIDES]
                + [f"benchmarks/{b}" for b in BENCHMARKS]
                + [f"benchmarks/results/{r.stem}" for r in RESULTS]
                + [f"notebooks/{p.stem}" for p in NOTEBOOKS])
    missing = sorted(set(expected) - set(pages))
    assert not missing, f"pages missing from the site: {missing}"
    # home, 7 guides, the notebooks page and 4 notebooks, 11 reference pages,
    # the changelog: 25 when this test was written.
    assert len(pages) >= 25, pages


def test_every_results_table_is_linked_from_a_benchmark_page(site):
    linked = set()
    for page in BENCHMARKS:
        html = _page(site, f"benchmarks/{page}")
        linked |= set(re.findall(r'href="\.\./results/([\w.]+)/"', html))
    tables = {r.stem for r in RESULTS}
    assert linked == tables, (
        "the tables of benchmarks/results/ and those the docs/benchmarks/ pages "
        f"link differ: {sorted(linked ^ tables)}")
    for results in RESULTS:
        html = _page(site, f"benchmarks/results/{results.stem}")
        for image in re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", results.read_text()):
            assert (site / "benchmarks" / "results" / image).is_file(), image
            assert f'src="../{image}"' in html, image


def test_title_carries_the_package_version(site):
    version = _package_version()
    assert f"mtl_keras {version}" in _page(site, ".")
    assert f"## [{version}]" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("page", sorted(REFERENCE))
def test_reference_documents_every_public_name(site, page):
    html = _page(site, f"reference/{page}")
    for init_file in REFERENCE[page]:
        package = init_file.removesuffix("/__init__.py").replace("/", ".")
        undocumented = [name for name in _public_names(init_file)
                        if f'id="{package}.{name}"' not in html]
        assert not undocumented, (
            f"reference/{page}: no entry for {undocumented} (a docstring missing?)")


def test_model_page_shows_shared_optional_and_no_compat_mixin(site):
    html = _page(site, "reference/model")
    assert "DistributedBuildFix" not in html and "_compat" not in html
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    match = re.search(r"shared (\S+ )?Optional, keyword only", text)
    assert match, "no `shared` argument documented as optional"
    entry = text[match.start():]
    assert entry[:entry.index("**kwargs")].rstrip().endswith("None")


def test_methods_page_documents_the_registry(site):
    html = _page(site, "reference/methods")
    names = _public_names("mtl_keras/methods.py")
    undocumented = [n for n in names if f'id="mtl_keras.methods.{n}"' not in html]
    assert not undocumented, undocumented


def test_notebook_pages_show_their_figures(site):
    for notebook in NOTEBOOKS:
        html = _page(site, f"notebooks/{notebook.stem}")
        assert "data:image/png;base64" in html, (
            f"the page of {notebook.name} shows no figure: were its outputs saved?")


def _code_hash(notebook) -> str:
    spec = importlib.util.spec_from_file_location(
        "execute_notebooks", ROOT / "tools" / "execute_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.code_hash(notebook)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_saved_notebook_outputs_match_the_code(path):
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    stamp = notebook.metadata.get("mtl_keras", {})
    fix = f"re-run `python tools/execute_notebooks.py {path.relative_to(ROOT)}`"
    assert stamp.get("code_sha256") == _code_hash(notebook), (
        f"{path.name}: its code changed since its outputs were saved; {fix}")
    unexecuted = [i for i, cell in enumerate(notebook.cells)
                  if cell.cell_type == "code" and cell.source.strip()
                  and cell.get("execution_count") is None]
    assert not unexecuted, f"{path.name}: cells {unexecuted} have no outputs; {fix}"
