"""The README: short, its code runs as written, its numbers are the stored ones.

* Every Python block runs as written in a fresh interpreter; the quick
  start, on the real MNIST from TFDS, reaches its accuracy.
* Its set-up commands are the two that CI (`.ci/run`) runs.
* Its results table is the headline table of the stored accuracy report,
  row for row, with the command that made it and its plot; its deployment
  table is rows of the stored export report, with its command. The other
  stored reports are on the docs pages (`tests/test_docs.py`).
* It stays at most 200 lines, and its relative links resolve.
"""

import json
import pathlib
import re
import shlex

import pytest

import _helpers  # tests/_helpers.py

ROOT = _helpers.REPO_ROOT
README = ROOT / "README.md"
MAX_LINES = 200
CI_COMMANDS = ['pip install -e ".[test]"', "python -m pytest"]


def _readme():
    return README.read_text(encoding="utf-8")


def _section(title):
    parts = _readme().split(f"\n## {title}\n", 1)
    assert len(parts) == 2, f"README has no '## {title}' section"
    return parts[1].split("\n## ", 1)[0]


def _blocks(text, language):
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def _quick_start_code():
    blocks = _blocks(_section("Quick start"), "python")
    assert blocks, "README has no python block under '## Quick start'"
    return blocks[0]


def _other_blocks():
    """`(id, code)` of every Python block but the quick start's."""
    quick_start = _quick_start_code()
    blocks = [b for b in _blocks(_readme(), "python") if b != quick_start]
    return [(f"block{i}", code) for i, code in enumerate(blocks)]


def _run(code):
    return _helpers.run_python(
        ["-c", code], cwd=ROOT, timeout=1800,
        env=_helpers.python_env(TF_CPP_MIN_LOG_LEVEL="2"),
    )


def test_quick_start_runs_as_written():
    data_dir = _helpers.require_real_mnist()
    result = _helpers.run_python(
        ["-c", _quick_start_code()], cwd=ROOT, timeout=900,
        env=_helpers.python_env(TFDS_DATA_DIR=data_dir, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", result.stdout).group(1))
    assert accuracy > 0.95, result.stdout[-2000:]
    assert "sparsity" in result.stdout and "drop_fraction" in result.stdout


# Training MobileNetV2, even for a few steps, takes minutes on 2 cores.
_SLOW = ("MobileNetV2",)


@pytest.mark.parametrize(
    "code",
    [
        pytest.param(code, id=name,
                     marks=[pytest.mark.slow] if any(s in code for s in _SLOW) else [])
        for name, code in _other_blocks()
    ],
)
def test_code_block_runs_as_written(code):
    if "keras_hub" in code:
        pytest.importorskip("keras_hub")
    result = _run(code)
    assert result.returncode == 0, result.stderr[-4000:]


def test_readme_has_the_two_integration_lines_at_the_top():
    top = _readme().split("\n## ", 1)[0]
    code = _blocks(top, "python")
    assert code and "rigl_keras.sparsify(model)" in code[0]
    assert "rigl_keras.RigLCallback(" in code[0]


def test_set_up_commands_are_the_ones_ci_runs():
    blocks = [b.strip().splitlines() for b in _blocks(_section("Install"), "bash")]
    assert CI_COMMANDS in blocks, blocks
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    for command in CI_COMMANDS:
        assert any(line.strip().startswith(command) for line in ci), command


def _benchmark_run(command):
    """`(module, arguments)` of a benchmark command, either form.

    The stored reports record `python benchmarks/NAME.py ...`, newer ones
    `python -m benchmarks.NAME ...`: the same script with the same flags.
    """
    argv = shlex.split(command)
    assert argv[0] == "python", command
    if argv[1] == "-m":
        return argv[2], argv[3:]
    assert argv[1].startswith("benchmarks/") and argv[1].endswith(".py"), command
    return argv[1][:-len(".py")].replace("/", "."), argv[2:]


def _quotes_the_stored_command(section, report):
    """Whether `section` quotes `Made by `CMD`` with the report's run."""
    quoted = re.findall(r"Made by `([^`]+)`", section)
    return any(_benchmark_run(q) == _benchmark_run(report["command"]) for q in quoted)


def test_benchmark_run_reads_both_command_forms():
    assert _benchmark_run("python benchmarks/export.py --steps 3") == (
        "benchmarks.export", ["--steps", "3"])
    assert _benchmark_run("python -m benchmarks.export --steps 3") == (
        "benchmarks.export", ["--steps", "3"])
    assert _benchmark_run("python -m benchmarks.export") != _benchmark_run(
        "python benchmarks/export.py --steps 3")


def _table_rows(text):
    return [line for line in text.splitlines() if line.startswith("| ")]


def test_results_table_is_the_stored_headline_table():
    results = _section("Results")
    rows = _table_rows(results)
    stored_md = (ROOT / "benchmarks" / "results" / "accuracy.md").read_text(
        encoding="utf-8")
    assert len(rows) >= 3, "README has no results table"
    assert any(row.startswith("| RigL |") for row in rows), rows
    missing = [row for row in rows if row not in stored_md.splitlines()]
    assert not missing, ("README rows not in benchmarks/results/accuracy.md "
                         "(rerun the benchmark rather than edit numbers)", missing)
    report = json.loads(
        (ROOT / "benchmarks" / "results" / "accuracy.json").read_text(encoding="utf-8"))
    assert _quotes_the_stored_command(results, report), report["command"]
    assert "(benchmarks/results/accuracy.png)" in results


def test_deployment_table_is_rows_of_the_stored_export_report():
    section = _section("Faster inference")
    rows = _table_rows(section)
    stored_md = (ROOT / "benchmarks" / "results" / "export.md").read_text(encoding="utf-8")
    assert len(rows) >= 4, "README has no deployment table"
    missing = [row for row in rows if row not in stored_md.splitlines()]
    assert not missing, ("README rows not in benchmarks/results/export.md "
                         "(rerun the benchmark rather than edit numbers)", missing)
    assert any(row.startswith("| block4x1 90% | float32 |") for row in rows), rows
    report = json.loads(
        (ROOT / "benchmarks" / "results" / "export.json").read_text(encoding="utf-8"))
    assert _quotes_the_stored_command(section, report), report["command"]


def test_readme_quotes_no_other_stored_table():
    """The other stored tables live on the docs pages, not in the README."""
    results = pathlib.Path(ROOT / "benchmarks" / "results")
    headline = set(_table_rows(_section("Results"))) | set(
        _table_rows(_section("Faster inference")))
    stored = set()
    for path in results.glob("*.json"):
        report = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(report, dict):
            stored |= set(_table_rows(report.get("markdown") or report.get("table") or ""))
    for path in results.glob("*.md"):
        stored |= set(_table_rows(path.read_text(encoding="utf-8")))
    quoted = sorted((stored - headline) & set(_readme().splitlines()))
    assert not quoted, quoted


def test_readme_is_short():
    lines = _readme().splitlines()
    assert len(lines) <= MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_LINES}): move detail "
        "to docs/ and history to CHANGELOG.md")


def _slug(heading):
    """The anchor mkdocs and GitHub give a heading (toc's default slugify)."""
    text = re.sub(r"[^\w\s-]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def test_relative_links_resolve():
    links = re.findall(r"\]\(([^)\s]+)\)", _readme())
    relative = [l for l in links if not re.match(r"[a-z]+:", l)]
    assert relative, "README links nothing"
    for link in relative:
        path, _, anchor = link.partition("#")
        target = ROOT / path if path else README
        assert target.exists(), link
        if anchor and target.suffix == ".md":
            headings = re.findall(r"^#+ (.*)$", target.read_text(encoding="utf-8"), re.M)
            assert anchor in {_slug(h) for h in headings}, link
