"""The public surface of `rigl_keras`, pinned: a change here is an API change."""

import importlib

import pytest

import rigl_keras

_TOP_LEVEL = [
    "CustomLoop",
    "GradualPruningCallback",
    "MaskCallback",
    "MaskedConv2D",
    "MaskedDense",
    "RigLCallback",
    "SparsifiableLayer",
    "SparsifyReport",
    "SparsityReport",
    "distributions",
    "export_saved_model",
    "export_tflite",
    "flops",
    "get_masks",
    "masked_layers",
    "masked_weights",
    "optimizer_state",
    "schedules",
    "sparsify",
    "sparsity_distribution",
    "sparsity_report",
    "strip_masks",
    "structures",
    "unsparsify",
    "updaters",
]


def test_top_level_all_is_pinned():
    assert rigl_keras.__all__ == _TOP_LEVEL


@pytest.mark.parametrize("name", _TOP_LEVEL)
def test_every_public_name_resolves_to_its_definition(name):
    value = getattr(rigl_keras, name)
    if hasattr(value, "__file__"):  # A submodule.
        assert value is importlib.import_module(f"rigl_keras.{name}")
    else:
        assert value.__name__ == name
        assert value.__module__.startswith("rigl_keras.")
    assert name in dir(rigl_keras)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'RigLCalback'"):
        rigl_keras.RigLCalback  # pylint: disable=pointless-statement


@pytest.mark.parametrize("module", [
    "callbacks", "custom_loop", "distributions", "engine", "export", "flops",
    "layers", "masking", "optimizer_state", "pruning", "recording", "report",
    "rigl_engine", "schedules", "sparse_twins", "sparsify", "structures", "updaters",
])
def test_submodule_all_names_exist(module):
    mod = importlib.import_module(f"rigl_keras.{module}")
    assert mod.__all__, module
    for name in mod.__all__:
        assert hasattr(mod, name), f"rigl_keras.{module}.{name}"


def test_argument_check_examples():
    import doctest  # pylint: disable=import-outside-toplevel

    from rigl_keras import _checks  # pylint: disable=import-outside-toplevel

    result = doctest.testmod(_checks)
    assert result.attempted > 0 and result.failed == 0


def test_the_library_does_not_import_the_experiments():
    # The CLI, the paper's models and the TFDS input pipelines live in
    # rigl_keras.experiments: `import rigl_keras` and the public names must
    # load neither that package nor tensorflow_datasets.
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel

    from _helpers import REPO_ROOT, python_env  # pylint: disable=import-outside-toplevel

    code = ("import sys, rigl_keras\n"
            "for name in rigl_keras.__all__: getattr(rigl_keras, name)\n"
            "print(sorted(m for m in sys.modules if m == 'tensorflow_datasets' "
            "or m.startswith('tensorflow_datasets.') "
            "or m.startswith('rigl_keras.experiments')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=python_env(), cwd=str(REPO_ROOT), timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def _imported_modules(path):
    """The modules a Python file imports, absolute names (`from . import x` too)."""
    import ast  # pylint: disable=import-outside-toplevel

    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "rigl_keras" if node.level else ""
            base = ".".join(filter(None, [base, node.module or ""]))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_no_core_module_imports_absl_tfds_or_the_experiments():
    # TensorFlow itself imports absl, so the run-time check above cannot see
    # an absl import of the library; the sources can.
    from _helpers import REPO_ROOT  # pylint: disable=import-outside-toplevel

    core = sorted((REPO_ROOT / "rigl_keras").glob("*.py"))
    assert len(core) > 10, core
    offending = {
        path.name: sorted(
            name for name in _imported_modules(path)
            if name.split(".")[0] in ("absl", "tensorflow_datasets")
            or name.startswith("rigl_keras.experiments"))
        for path in core}
    assert not {name: found for name, found in offending.items() if found}
