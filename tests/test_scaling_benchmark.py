"""Tests of `benchmarks.scaling`: a tiny end-to-end run and its helpers.

The end-to-end run starts four worker processes (two kernel sizes, one and
two logical CPU devices) with tiny settings; it checks the report's shape
and the invariants the benchmark relies on (exact non-zero counts after the
update, 90% sparsity under MirroredStrategy), not the timings.
"""

import doctest
import json
import math
import os
import shlex

import pytest

from benchmarks import scaling

_TINY = [
    "--sizes", "1000,4000",
    "--repeats", "2",
    "--min_seconds", "0",
    "--devices", "1,2",
    "--steps_per_epoch", "4",
    "--epochs", "2",
    "--update_freq", "2",
]


# Runs the scaling benchmark end to end (over a minute): its tests are slow.
@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    output = tmp_path_factory.mktemp("scaling") / "scaling.json"
    returned = scaling.main(_TINY + ["--output", str(output)])
    return returned, json.loads(output.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_report_file_equals_returned_report(tiny_report):
    returned, written = tiny_report
    assert written == json.loads(json.dumps(returned))


@pytest.mark.slow
def test_report_command_reproduces_the_config(tiny_report):
    _, report = tiny_report
    argv = shlex.split(report["command"])
    assert argv[:3] == ["python", "-m", "benchmarks.scaling"]
    parsed = scaling.parse_args(argv[3:])
    config = report["config"]
    assert config["sizes"] == sorted(parsed.sizes) == [1000, 4000]
    for name in ("repeats", "min_seconds", "devices", "steps_per_epoch", "epochs",
                 "update_freq", "seed"):
        assert getattr(parsed, name) == config[name], name
    assert (config["sparsity"], config["drop_fraction"]) == (0.9, 0.3)


@pytest.mark.slow
def test_report_machine_is_this_machine(tiny_report):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    _, report = tiny_report
    machine = report["machine"]
    assert machine["nproc"] == os.cpu_count()
    assert machine["tensorflow"] == tf.__version__
    assert len(machine["load_average_before"]) == len(machine["load_average_after"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("index,size", [(0, 1000), (1, 4000)])
def test_update_rows(tiny_report, index, size):
    _, report = tiny_report
    row = report["update"][index]
    assert row["size"] == size
    assert row["shape"] == [size // 1000, 1000]
    # 90% sparsity: exactly 10% active before and after (the update keeps
    # the count). The first full call drops n = floor(0.3 * nnz) and grows
    # n (a dropped connection may be regrown: then it is neither), so the
    # changed positions are as many grown as dropped, at most 2n.
    assert row["nnz_before"] == row["nnz_after"] == size // 10
    n = math.floor(0.3 * (size // 10))
    assert 0 < row["changed"][0] <= 2 * n
    assert row["changed"][0] % 2 == 0
    assert len(row["update_seconds"]) >= 2 and len(row["full_seconds"]) >= 2
    assert row["median_full_seconds"] > 0 and row["median_update_seconds"] > 0
    assert len(row["full_cpu_seconds"]) == len(row["full_seconds"])
    assert row["median_full_cpu_seconds"] > 0
    assert list(row["components_cpu_seconds"]) == [
        "sample_top_k", "prefilter", "subset_top_k", "full_top_k", "elementwise"]
    assert row["peak_rss_mib"] >= row["baseline_rss_mib"] > 0
    assert row["extra_peak_mib"] == pytest.approx(
        row["peak_rss_mib"] - row["baseline_rss_mib"]
    )
    assert row["extra_bytes_per_param"] == pytest.approx(
        row["extra_peak_mib"] * 2**20 / size
    )


@pytest.mark.slow
def test_slopes_match_the_medians(tiny_report):
    _, report = tiny_report
    rows = report["update"]
    for kind in ("full", "update", "full_cpu", "update_cpu"):
        t0, t1 = (r[f"median_{kind}_seconds"] for r in rows)
        expected = math.log(t1 / t0) / math.log(4000 / 1000)
        slopes = report["slopes"][kind]
        assert slopes["all"] == pytest.approx(expected)
        assert slopes["largest_two"] == pytest.approx(expected)


@pytest.mark.slow
@pytest.mark.parametrize("index,devices", [(0, 1), (1, 2)])
def test_mirrored_rows(tiny_report, index, devices):
    _, report = tiny_report
    row = report["mirrored"][index]
    assert row["devices"] == row["replicas"] == devices
    # LeNet-300-100: 784*300 + 300 + 300*100 + 100 + 100*10 + 10.
    assert row["trainable_params"] == 266_610
    assert row["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert row["zeros_match_targets"] is True
    # Warm-up: one update (at step 2). Timed fits of 8 steps: updates at
    # every second step, 4 per fit, 2 fits.
    assert len(row["first_update_seconds"]) == 1
    assert len(row["update_seconds"]) == 8
    # Per fit 4 steps without an update, the first left out.
    assert len(row["step_seconds"]) == 2 * 3
    assert row["median_step_seconds"] > 0


@pytest.mark.slow
def test_markdown_lists_every_row(tiny_report):
    _, report = tiny_report
    table = report["markdown"]
    assert "| 1e+03 |" in table and "| 4e+03 |" in table
    assert "Log-log slope" in table
    assert "| 1 | 1 |" in table and "| 2 | 2 |" in table
    assert "| parameters | sample_top_k CPU ms | prefilter CPU ms |" in table


# ---------------------------------------------------------------------------
# Helpers on hand-made inputs.
# ---------------------------------------------------------------------------


def test_doctests():
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    for function in (scaling.kernel_shape, scaling.loglog_slope):
        for test in finder.find(function, function.__name__, globs=vars(scaling)):
            runner.run(test)
    assert runner.failures == 0 and runner.tries == 3


def test_loglog_slope_hand_computed():
    # t = c * N^1.5 exactly.
    sizes = [1e5, 1e6, 1e7, 1e8]
    assert scaling.loglog_slope(sizes, [3e-3 * (s / 1e5) ** 1.5 for s in sizes]) == (
        pytest.approx(1.5)
    )
    # Least squares through (0, 0), (1, 1), (2, 3) in log10 units: slope 1.5.
    assert scaling.loglog_slope([1, 10, 100], [1, 10, 1000]) == pytest.approx(1.5)
    assert scaling.loglog_slope([1e5], [1.0]) is None


def test_kernel_shape_rejects_bad_sizes():
    assert scaling.kernel_shape(10**8) == (100_000, 1000)
    for size in (0, 1500, -1000):
        with pytest.raises(ValueError, match="size"):
            scaling.kernel_shape(size)


def test_markdown_table_hand_made_rows():
    update = [
        {"size": 10**5, "median_update_seconds": 0.004, "median_full_seconds": 0.005,
         "median_full_cpu_seconds": 0.003, "extra_peak_mib": 10.0,
         "extra_bytes_per_param": 104.8576},
        {"size": 10**8, "skipped": "2.0 GiB available, ~6.0 GiB needed"},
    ]
    mirrored = [
        {"devices": 2, "replicas": 2, "median_step_seconds": 0.0123,
         "median_update_seconds": 0.0456, "first_update_seconds": [1.5],
         "sparsity": 0.9},
    ]
    slopes = {"full": {"all": 1.04, "largest_two": None},
              "full_cpu": {"all": 1.2, "largest_two": 0.98}}
    table = scaling.markdown_table(update, slopes, mirrored)
    assert "| 1e+05 | 4.0 | 5.0 | 3.0 | 30.0 | 10 | 105 |" in table
    assert "| 1e+08 | skipped: 2.0 GiB available, ~6.0 GiB needed |" in table
    assert "wall 1.04 over all sizes, n/a over the two largest" in table
    assert "CPU 1.20 and 0.98." in table
    assert "| 2 | 2 | 12.30 | 45.6 | 1500 | 0.9000 |" in table
    assert "permutation CPU ms" not in table  # no row has components
    update[0]["components_cpu_seconds"] = {"permutation": 0.001, "top_k": 0.002}
    table = scaling.markdown_table(update, slopes, mirrored)
    assert "| parameters | permutation CPU ms | top_k CPU ms |" in table
    assert "| 1e+05 | 1.0 | 2.0 | 30.0 |" in table


@pytest.mark.parametrize(
    "argv",
    [
        ["--sizes", "1500"],
        ["--sizes", "1000,1000"],
        ["--sizes", "0"],
        ["--devices", "0"],
        ["--repeats", "0"],
        ["--steps_per_epoch", "1"],
    ],
)
def test_parse_args_rejects_bad_values(argv):
    with pytest.raises(SystemExit):
        scaling.parse_args(argv)


def test_parse_args_defaults():
    config = scaling.parse_args([])
    assert config.sizes == [10**5, 10**6, 10**7, 10**8]
    assert config.devices == [1, 2]
    assert config.repeats == 5
    assert config.output.endswith("benchmarks/results/scaling.json")
    assert scaling.parse_args(["--sizes", "1e5,1e6"]).sizes == [10**5, 10**6]
