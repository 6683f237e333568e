"""Tests for `benchmarks._common`, the helpers the benchmark scripts share."""

import argparse
import datetime
import doctest
import hashlib
import json
import os
import platform

import pytest

from benchmarks import _common as common


# ---------------------------------------------------------------------------
# Machine facts.
# ---------------------------------------------------------------------------


def test_cpu_facts():
    facts = common.cpu_facts()
    assert list(facts) == ["cpu_model", "nproc", "cpus_available"]
    assert facts["nproc"] == os.cpu_count() >= 1
    assert isinstance(facts["cpu_model"], str) and facts["cpu_model"]
    if hasattr(os, "sched_getaffinity"):
        assert 1 <= facts["cpus_available"] <= facts["nproc"]
    else:
        assert facts["cpus_available"] is None


def test_cpu_model_falls_back_without_cpuinfo(monkeypatch):
    expected = platform.processor() or platform.machine()

    def no_file(*args, **kwargs):
        raise OSError("no /proc")

    monkeypatch.setattr(common, "open", no_file, raising=False)  # Shadows the builtin.
    assert common.cpu_model() == expected


def test_proc_kib(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n")
    assert common.proc_kib(status, "VmRSS") == 1024
    assert common.proc_kib(status, "VmHWM") == 2048
    assert common.proc_kib(status, "Vm") is None  # A prefix is not a field.
    assert common.proc_kib(tmp_path / "missing", "VmRSS") is None


def test_meminfo_gib(monkeypatch):
    calls = []

    def fake_proc_kib(path, field):
        calls.append((path, field))
        return 3 * 2**19 if field == "MemTotal" else None

    monkeypatch.setattr(common, "proc_kib", fake_proc_kib)
    assert common.meminfo_gib("MemTotal") == 1.5
    assert common.meminfo_gib("MemAvailable") is None
    assert calls == [("/proc/meminfo", "MemTotal"), ("/proc/meminfo", "MemAvailable")]


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="needs /proc/meminfo")
def test_meminfo_gib_reads_this_machine():
    total, available = common.meminfo_gib("MemTotal"), common.meminfo_gib("MemAvailable")
    assert 0 < available <= total


def test_load_average(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (1.234, 0.5, 0.126))
    assert common.load_average() == [1.23, 0.5, 0.13]
    assert common.load_average(ndigits=1) == [1.2, 0.5, 0.1]
    assert common.load_average(ndigits=None) == [1.234, 0.5, 0.126]

    def unavailable():
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert common.load_average() is None
    assert common.load_average(ndigits=None) is None


def test_env_vars(monkeypatch):
    monkeypatch.setenv("RIGL_TEST_B", "2")
    monkeypatch.setenv("RIGL_TEST_A", "")
    monkeypatch.delenv("RIGL_TEST_UNSET", raising=False)
    names = ("RIGL_TEST_B", "RIGL_TEST_UNSET", "RIGL_TEST_A")
    assert common.env_vars(names) == {"RIGL_TEST_B": "2", "RIGL_TEST_A": ""}
    assert list(common.env_vars(names)) == ["RIGL_TEST_B", "RIGL_TEST_A"]
    assert common.env_vars(()) == {}


# ---------------------------------------------------------------------------
# Report fields and files.
# ---------------------------------------------------------------------------


def test_utc_timestamp():
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    stamp = common.utc_timestamp()
    after = datetime.datetime.now(datetime.timezone.utc)
    assert stamp.endswith("+00:00")
    assert "." not in stamp  # Whole seconds.
    assert before <= datetime.datetime.fromisoformat(stamp) <= after


def test_command_line_quotes_arguments():
    assert common.command_line("benchmarks.overhead", []) == "python -m benchmarks.overhead"
    assert common.command_line(
        "benchmarks.export", ["--models", "lenet300_100", "--output", "/tmp/a b.json"]
    ) == "python -m benchmarks.export --models lenet300_100 --output '/tmp/a b.json'"


def test_file_digest_follows_the_content(tmp_path):
    path = tmp_path / "module.py"
    path.write_text("x = 1\n")
    first = common.file_digest(path)
    assert first == hashlib.sha256(b"x = 1\n").hexdigest()[:12]
    assert common.file_digest(str(path)) == first
    path.write_text("x = 2\n")
    second = common.file_digest(path)
    assert len(second) == 12 and second != first
    path.write_text("x = 1\n")
    assert common.file_digest(path) == first


def test_file_digests_keys_are_relative_to_root(tmp_path):
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    inside = [root / "pkg" / "b.py", root / "pkg" / "a.py"]
    for i, path in enumerate(inside):
        path.write_text(f"value = {i}\n")
    outside = tmp_path / "other.py"
    outside.write_text("other = True\n")
    digests = common.file_digests(inside + [outside], root)
    assert list(digests) == ["pkg/b.py", "pkg/a.py", str(outside.resolve())]
    assert digests["pkg/a.py"] == common.file_digest(root / "pkg" / "a.py")
    (root / "pkg" / "a.py").write_text("value = 'changed'\n")
    changed = common.file_digests(inside, root)
    assert changed["pkg/a.py"] != digests["pkg/a.py"]
    assert changed["pkg/b.py"] == digests["pkg/b.py"]


def test_write_json(tmp_path):
    report = {"b": [1, 2.5], "a": {"z": None, "y": "text"}}
    path = common.write_json(str(tmp_path / "new" / "dir" / "report.json"), report)
    assert path == tmp_path / "new" / "dir" / "report.json"
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(report, indent=2) + "\n"
    assert json.loads(text) == report
    common.write_json(path, report, indent=1, sort_keys=True)
    assert path.read_text(encoding="utf-8") == json.dumps(report, indent=1, sort_keys=True) + "\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]  # No .tmp left.


def test_write_json_leaves_the_old_file_on_failure(tmp_path):
    path = common.write_json(tmp_path / "report.json", {"ok": True})
    with pytest.raises(TypeError):
        common.write_json(path, {"bad": object()})
    assert json.loads(path.read_text(encoding="utf-8")) == {"ok": True}


# ---------------------------------------------------------------------------
# Command line and statistics.
# ---------------------------------------------------------------------------


def test_positive_int():
    assert common.positive_int("1") == 1
    assert common.positive_int("42") == 42
    with pytest.raises(argparse.ArgumentTypeError, match="must be >= 1, got 0"):
        common.positive_int("0")
    with pytest.raises(ValueError):
        common.positive_int("two")


def test_positive_int_as_argparse_type(capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=common.positive_int, default=3)
    assert parser.parse_args(["--repeats", "5"]).repeats == 5
    with pytest.raises(SystemExit):
        parser.parse_args(["--repeats", "-1"])
    assert "must be >= 1, got -1" in capsys.readouterr().err


def test_median():
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert common.median([4, 1, 3, 2]) == 2.5
    assert common.median([]) is None
    assert common.median(()) is None


def test_bootstrap_median_interval_brackets_the_median():
    values = [0.97, 1.01, 1.03, 1.04, 1.05, 1.05, 1.06, 1.08, 1.10]
    low, high = common.bootstrap_median_interval(values)
    assert min(values) <= low <= common.median(values) <= high <= max(values)
    assert low < high
    # Fixed seed: the same values give the same interval.
    assert common.bootstrap_median_interval(values) == [low, high]
    # A wider coverage never gives a narrower interval.
    wide = common.bootstrap_median_interval(values, confidence=0.99)
    assert wide[0] <= low and high <= wide[1]
    # More repetitions of the same spread narrow it.
    narrow = common.bootstrap_median_interval(values * 9)
    assert narrow[1] - narrow[0] < high - low
    assert common.bootstrap_median_interval([2.0]) == [2.0, 2.0]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"values": []}, "values"), ({"values": [1.0], "confidence": 1.0}, "confidence"),
     ({"values": [1.0], "confidence": 0.0}, "confidence"),
     ({"values": [1.0], "resamples": 0}, "resamples")],
)
def test_bootstrap_median_interval_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        common.bootstrap_median_interval(**kwargs)


def test_doctests():
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    tests = finder.find(common)
    assert any(test.examples for test in tests)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
