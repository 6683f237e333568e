"""The documentation site: it builds strict, and says what the code and the
stored results say.

* `mkdocs build --strict` succeeds, so no page has a broken link or anchor,
  no API reference names a missing object and griffe parses every
  docstring it renders.
* Every top-level name and public submodule of `rigl_keras` is in the API
  reference; every flag of the command line is on its page.
* Every stored benchmark report is quoted on a page, from the stored file.
"""

import html
import importlib
import json
import os
import pathlib
import re

import pytest

import rigl_keras
import _helpers  # tests/_helpers.py

ROOT = _helpers.REPO_ROOT
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"
_MARKER = "<!-- stored-report: results/{name} -->"


def _require(module):
    """Imports `module`; skips without it, except in CI (the test extra has it)."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built with `mkdocs build --strict`, as a folder."""
    _require("mkdocs")
    _require("mkdocstrings_handlers.python")
    site_dir = tmp_path_factory.mktemp("site")
    result = _helpers.run_python(
        ["-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return site_dir


def _page(site, name):
    return (site / name / "index.html").read_text(encoding="utf-8")


def _stored_reports():
    for path in sorted(RESULTS.glob("*.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(report, dict) and "command" in report:
            yield path.name, report


def test_site_builds_strict_with_the_api_reference(site):
    training = _page(site, "api/training")
    for anchor in ("rigl_keras.callbacks.RigLCallback",
                   "rigl_keras.callbacks.GradualPruningCallback",
                   "rigl_keras.custom_loop.CustomLoop"):
        assert f'id="{anchor}"' in training, anchor
    structures = _page(site, "api/structures")
    assert 'id="rigl_keras.structures.Block"' in structures
    assert 'id="rigl_keras.structures.NM"' in structures
    # Doctests render as code, not as block quotes and links.
    assert "<blockquote>" not in training
    assert "&gt;&gt;&gt; model = keras.Sequential" in training


def test_every_public_name_is_in_the_api_reference():
    index = (DOCS / "api" / "index.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`rigl_keras\.(\w+)`", index))
    assert set(rigl_keras.__all__) <= documented, sorted(
        set(rigl_keras.__all__) - documented)


def test_every_stored_report_is_quoted_from_its_file(site):
    """A report is included by a marker, or is a markdown page linked to."""
    text = "\n".join(path.read_text(encoding="utf-8") for path in DOCS.glob("*.md"))
    benchmarks = _page(site, "benchmarks")
    for name, report in _stored_reports():
        page = pathlib.Path(name).with_suffix(".md").name
        if f"](results/{page})" in text:
            assert (site / "results" / page[:-3] / "index.html").is_file(), page
            continue
        assert _MARKER.format(name=name) in text, (
            f"{name}: no page includes it ({_MARKER.format(name=name)}) or "
            f"links to results/{page}")
        assert html.escape(report["command"], quote=False) in benchmarks, name
        table = report.get("markdown") or report.get("table")
        lines = table.splitlines()
        rule = next(i for i, line in enumerate(lines) if re.fullmatch(r"\|[\s:|-]+\|", line))
        first_row = [cell.strip() for cell in lines[rule + 1].strip("|").split("|")]
        for cell in first_row:
            cell_html = re.escape(html.escape(cell, quote=False))
            assert re.search(f"<td[^>]*>{cell_html}</td>", benchmarks), (name, cell)


def test_cli_page_lists_every_flag():
    result = _helpers.run_python(["-m", "rigl_keras.experiments.train", "--help"], cwd=ROOT,
                                 timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    flags = set(re.findall(r"^  --(?:\[no\])?(\w+)", result.stdout, re.M))
    assert {"sparsity", "block_shape", "n_m"} <= flags, flags
    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    missing = sorted(flag for flag in flags if f"`--{flag}`" not in page)
    assert not missing, missing


def test_doctests_are_fenced_and_other_text_kept():
    _require("griffe")
    fences = _helpers.load_module("griffe_doctest", DOCS / "griffe_doctest.py")
    text = "\n".join([
        "Example:", "", ">>> f([1])", "['a']", "", "Text [x][y].",
        "```python", ">>> inside_a_fence", "```",
    ])
    assert fences.fence_doctests(text).split("\n") == [
        "Example:", "", "```pycon", ">>> f([1])", "['a']", "```", "",
        "Text [x][y].", "```python", ">>> inside_a_fence", "```",
    ]


def test_a_marker_for_a_missing_report_fails_the_build(tmp_path):
    hooks = _helpers.load_module("docs_hooks", DOCS / "hooks.py")
    with pytest.raises(ValueError, match="results/nosuch.json does not exist"):
        hooks.stored_report(tmp_path, "results/nosuch.json")
