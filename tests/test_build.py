"""Checks that the Bazel BUILD file lists exactly the files on disk.

BUILD is maintained by hand: when you add or remove a module under
`rigl_keras/` or a `tests/test_*.py` file, update BUILD to match. The
failure messages below name the missing and extra entries.
"""

import ast
import pathlib

import pytest

_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
_BUILD = _REPO_ROOT / "BUILD"
_LIBRARY = "rigl_keras"


def _rules(kind):
    """Returns the keyword arguments of every top-level `kind(...)` call.

    BUILD files are Starlark, whose syntax for these rules is a subset of
    Python, so the Python parser reads them.

    Args:
        kind: Rule name, e.g. `"py_library"`.

    Returns:
        A list of dicts mapping attribute names to literal values.
    """
    tree = ast.parse(_BUILD.read_text(encoding="utf-8"), filename=str(_BUILD))
    rules = []
    for node in tree.body:
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
            continue
        call = node.value
        if not (isinstance(call.func, ast.Name) and call.func.id == kind):
            continue
        attrs = {}
        for keyword in call.keywords:
            try:
                attrs[keyword.arg] = ast.literal_eval(keyword.value)
            except ValueError:
                pytest.fail(
                    f"BUILD: {kind} attribute `{keyword.arg}` must be a "
                    "literal (list every file explicitly, no glob()); line "
                    f"{keyword.value.lineno}."
                )
        rules.append(attrs)
    return rules


def _diff_message(what, expected, actual):
    """Formats the missing/extra entries between two sets of paths."""
    missing = sorted(expected - actual)
    extra = sorted(actual - expected)
    lines = [f"BUILD is out of date: {what}."]
    if missing:
        lines.append("Missing from BUILD (add them): " + ", ".join(missing))
    if extra:
        lines.append(
            "Listed in BUILD but not on disk (remove them): "
            + ", ".join(extra)
        )
    return "\n".join(lines)


def _library_files():
    return {
        path.relative_to(_REPO_ROOT).as_posix()
        for path in (_REPO_ROOT / _LIBRARY).rglob("*.py")
        if "__pycache__" not in path.parts
    }


def _test_files():
    return {
        path.relative_to(_REPO_ROOT).as_posix()
        for path in (_REPO_ROOT / "tests").glob("test_*.py")
    }


def test_py_library_lists_every_module():
    libraries = _rules("py_library")
    assert len(libraries) == 1, (
        f"BUILD must contain exactly one py_library; found {len(libraries)}."
    )
    library = libraries[0]
    assert library.get("name") == _LIBRARY
    srcs = library.get("srcs", [])
    duplicates = sorted({s for s in srcs if srcs.count(s) > 1})
    assert not duplicates, f"BUILD: duplicate py_library srcs: {duplicates}"
    expected = _library_files()
    assert set(srcs) == expected, _diff_message(
        f"py_library(name = {_LIBRARY!r}) srcs vs {_LIBRARY}/**/*.py",
        expected,
        set(srcs),
    )


def test_one_py_test_per_test_file():
    tests = _rules("py_test")
    by_src = {}
    for rule in tests:
        name = rule.get("name")
        srcs = rule.get("srcs", [])
        assert len(srcs) == 1, (
            f"BUILD: py_test {name!r} must have exactly one src; got {srcs}."
        )
        src = srcs[0]
        assert src not in by_src, f"BUILD: two py_test rules for {src}."
        by_src[src] = rule
        assert name == pathlib.PurePosixPath(src).stem, (
            f"BUILD: py_test for {src} must be named "
            f"{pathlib.PurePosixPath(src).stem!r}; got {name!r}."
        )
        assert f":{_LIBRARY}" in rule.get("deps", []), (
            f"BUILD: py_test {name!r} must depend on ':{_LIBRARY}'."
        )
    expected = _test_files()
    assert set(by_src) == expected, _diff_message(
        "py_test rules vs tests/test_*.py", expected, set(by_src)
    )
