"""The README's quick start runs as written, on the real MNIST from TFDS, and
the README quotes every stored benchmark report as measured."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tfds_dir():
    default = ROOT.parent / "shared" / "tfds"
    return pathlib.Path(os.environ.get("TFDS_DATA_DIR", default))


def _quick_start_code():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README has no python block under '## Quick start'"
    return match.group(1)


def test_quick_start_runs_as_written():
    data_dir = _tfds_dir()
    if not (data_dir / "mnist").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"MNIST in TFDS format is missing from {data_dir}")
        pytest.skip(f"MNIST in TFDS format not found in {data_dir}")
    env = dict(os.environ, TFDS_DATA_DIR=str(data_dir), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", _quick_start_code()],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", result.stdout).group(1))
    assert accuracy > 0.95, result.stdout[-2000:]
    assert "sparsity" in result.stdout and "drop_fraction" in result.stdout


def _stored_reports():
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(report, dict) and "command" in report:
            yield path.name, report


@pytest.mark.parametrize("name, report", list(_stored_reports()))
def test_readme_quotes_each_stored_benchmark_as_measured(name, report):
    """Every stored benchmark report is quoted in the README: its command,
    and each row of its results table verbatim (no stale or retyped
    numbers)."""
    readme = (ROOT / "README.md").read_text()
    assert report["command"] in readme, name
    rows = [
        line for line in report.get("markdown", "").splitlines()
        if line.startswith("| ") and not line.startswith("| model")
    ]
    missing = [row for row in rows if row not in readme]
    assert not missing, (name, missing)


def test_stored_benchmark_reports_are_found():
    names = [name for name, _ in _stored_reports()]
    assert "overhead.json" in names and "overhead_rezero.json" in names
