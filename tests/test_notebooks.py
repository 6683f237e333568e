"""Tests of the notebooks in `notebooks/`.

* Every notebook is valid nbformat, committed without outputs, starts with
  the Colab-only install cell, has exactly one code cell tagged
  `parameters`, and has an "Open in Colab" badge in README.md.
* Every notebook runs top to bottom in a fresh Jupyter kernel (nbclient)
  on the real MNIST in TFDS format, with small sizes: the test inserts a
  cell after the `parameters` cell (as papermill does) that overrides them,
  so a run is a fraction of an epoch. Any error in any cell fails the test,
  and so do the checks the notebooks make themselves (`assert`s on
  sparsity, exported outputs, FLOPs ordering, file sizes). The plots must
  render (PNG outputs are counted).

MNIST is read from `TFDS_DATA_DIR`, by default `../shared/tfds` beside the
repository. Without it the execution tests are skipped, or fail when the `CI`
environment variable is set (CI must run them).
"""

import json
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
COLAB_URL = (
    "https://colab.research.google.com/github/rigl-keras/rigl_keras/blob/main/"
    "notebooks/{name}.ipynb"
)
INSTALL_URL = "git+https://github.com/rigl-keras/rigl_keras"

# Small sizes for each notebook, and the least number of PNG plots it shows.
SMALL_PARAMETERS = {
    "quickstart": {
        "EPOCHS": 2,
        "STEPS_PER_EPOCH": 10,
        "UPDATE_FREQ": 5,
        "TEST_SPLIT": "test[:1000]",
        "DOWNLOAD": False,
    },
    "compare_methods": {
        "TOTAL_STEPS": 20,
        "UPDATE_FREQ": 5,
        "TEST_SPLIT": "test[:1000]",
        "DOWNLOAD": False,
    },
    "export_serving": {
        "EPOCHS": 1,
        "STEPS_PER_EPOCH": 10,
        "UPDATE_FREQ": 5,
        "TEST_SPLIT": "test[:1000]",
        "ACCURACY_EXAMPLES": 200,
        "LATENCY_RUNS": 100,
        "DOWNLOAD": False,
    },
}
MIN_PLOTS = {"quickstart": 3, "compare_methods": 3, "export_serving": 0}
NOTEBOOKS = sorted(SMALL_PARAMETERS)
KERNEL_TIMEOUT_SECONDS = 600


def _in_ci():
    return bool(os.environ.get("CI"))


def _missing(message):
    """Skips the test, or fails it in CI, where everything must run."""
    if _in_ci():
        pytest.fail(message + " (CI is set: the notebook tests must run)")
    pytest.skip(message)


def _nbformat():
    try:
        import nbformat  # pylint: disable=g-import-not-at-top
    except ImportError:
        _missing('nbformat is not installed: pip install -e ".[test]"')
    return nbformat


def _read(name):
    return _nbformat().read(str(NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)


def _source(cell):
    source = cell.source
    return "".join(source) if isinstance(source, list) else source


def _parameters_index(nb):
    indices = [
        i for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", [])
    ]
    assert len(indices) == 1, f"expected one cell tagged 'parameters', found {indices}"
    return indices[0]


def test_every_notebook_is_tested():
    on_disk = sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))
    assert on_disk == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_valid_and_stripped(name):
    nbformat = _nbformat()
    nb = _read(name)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {cell.id} of {name} has outputs"
            assert cell.execution_count is None, f"cell {cell.id} of {name} was executed"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_layout(name):
    nb = _read(name)
    # A title with the badge, then the install cell, guarded for Colab.
    assert nb.cells[0].cell_type == "markdown"
    assert COLAB_URL.format(name=name) in _source(nb.cells[0])
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    source = _source(first_code)
    assert 'if "google.colab" in sys.modules:' in source
    assert INSTALL_URL in source
    # The parameter cell: plain assignments, including every small override.
    cell = nb.cells[_parameters_index(nb)]
    assigned = set(re.findall(r"^([A-Z_]+) = ", _source(cell), flags=re.MULTILINE))
    assert set(SMALL_PARAMETERS[name]) <= assigned, assigned


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_readme_has_colab_badge(name):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Notebooks", 1)[1].split("\n## ", 1)[0]
    assert f"(notebooks/{name}.ipynb)" in section
    assert COLAB_URL.format(name=name) in section
    assert "colab-badge.svg" in section


def _data_dir():
    data_dir = pathlib.Path(
        os.environ.get("TFDS_DATA_DIR") or ROOT.parent / "shared" / "tfds"
    ).resolve()
    if not (data_dir / "mnist").is_dir():
        _missing(f"MNIST in TFDS format not found in {data_dir}; set TFDS_DATA_DIR")
    return data_dir


def _injected_cell(nbformat, name):
    lines = ["# Parameters injected by tests/test_notebooks.py: small sizes."]
    lines += [f"{key} = {value!r}" for key, value in SMALL_PARAMETERS[name].items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines))
    cell.id = "injected-parameters"
    cell.metadata["tags"] = ["injected-parameters"]
    return cell


def _pngs(nb):
    return sum(
        1
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    )


# The quick start runs in the default suite; the other notebooks (about a
# minute and a half together) in the slow one.
_RUNS = [name if name == "quickstart" else pytest.param(name, marks=pytest.mark.slow)
         for name in NOTEBOOKS]


@pytest.mark.parametrize("name", _RUNS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    nbformat = _nbformat()
    try:
        import nbclient  # pylint: disable=g-import-not-at-top
    except ImportError:
        _missing('nbclient is not installed: pip install -e ".[test]"')
    data_dir = _data_dir()
    nb = _read(name)
    nb.cells.insert(_parameters_index(nb) + 1, _injected_cell(nbformat, name))
    # The kernel inherits this environment; it imports this checkout's
    # rigl_keras, not another one an editable install may point to.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    client = nbclient.NotebookClient(
        nb,
        timeout=KERNEL_TIMEOUT_SECONDS,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    finally:
        # Keep the executed notebook for inspection after a failure.
        nbformat.write(nb, str(tmp_path / f"{name}.executed.ipynb"))
    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors, json.dumps(errors, indent=1)[:2000]
    assert _pngs(nb) >= MIN_PLOTS[name]
