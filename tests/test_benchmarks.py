"""Tests for `benchmarks/overhead.py` (the training-overhead benchmark).

The benchmark is run end to end with a tiny configuration (1 repetition, a
few steps) and its JSON report is checked field by field; the statistics are
checked on hand-made timings.
"""

import doctest
import json
import math
import pathlib

import keras
import pytest

import rigl_keras
from _helpers import by_layer  # tests/_helpers.py

import _helpers  # tests/_helpers.py

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_SCRIPT = _ROOT / "benchmarks" / "overhead.py"

overhead = _helpers.load_module("overhead_benchmark", _SCRIPT)

_TINY = [
    "--models", "lenet300_100,cnn",
    "--repeats", "1",
    "--steps", "4",
    "--epochs", "2",
    "--warmup_steps", "1",
    "--update_freq", "2",
    "--num_examples", "256",
    "--variants", "plain,static,rigl,rezero",
]


def _run(timings, num_params=10):
    """A `time_variant`-like dict from (fit, cpu, epoch seconds)."""
    fit, cpu, epochs = timings
    return {
        "fit_seconds": fit,
        "cpu_seconds": cpu,
        "epoch_seconds": list(epochs),
        "num_params": num_params,
    }


# ---------------------------------------------------------------------------
# End to end.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    output = tmp_path_factory.mktemp("overhead") / "overhead.json"
    returned = overhead.main(_TINY + ["--output", str(output)])
    return returned, json.loads(output.read_text(encoding="utf-8"))


def test_report_file_equals_returned_report(tiny_report):
    returned, written = tiny_report
    assert written == json.loads(json.dumps(returned))


def test_report_top_level_fields(tiny_report):
    _, report = tiny_report
    for key in ("benchmark", "command", "date", "config", "machine", "code",
                "targets", "passed", "results", "markdown"):
        assert key in report, key
    assert report["benchmark"] == "overhead"
    assert report["command"].startswith("python benchmarks/overhead.py ")
    assert "--update_freq 2" in report["command"]
    assert report["date"].endswith("+00:00")
    assert isinstance(report["passed"], bool)


def test_report_config_and_machine(tiny_report):
    _, report = tiny_report
    config = report["config"]
    assert config["models"] == ["lenet300_100", "cnn"]
    assert config["variants"] == ["plain", "static", "rigl", "rezero"]
    assert (config["repeats"], config["steps"], config["epochs"]) == (1, 4, 2)
    assert config["steps_per_epoch"] == 2
    assert config["update_freq"] == 2 and config["sparsity"] == 0.9
    assert config["jit_compile"] == "auto"
    machine = report["machine"]
    for key in ("cpu_model", "nproc", "memory_gib", "python", "tensorflow",
                "keras", "numpy", "env", "load_average_before"):
        assert key in machine, key
    assert machine["nproc"] >= 1
    assert isinstance(machine["env"], dict)
    assert "rigl_keras/layers.py" in report["code"]


@pytest.mark.parametrize("model", ["lenet300_100", "cnn"])
def test_report_results_per_model(tiny_report, model):
    _, report = tiny_report
    summary = report["results"][model]
    assert summary["num_params"] > 0
    assert list(summary["variants"]) == ["plain", "static", "rigl", "rezero"]
    for variant, data in summary["variants"].items():
        (rep,) = data["repetitions"]
        assert rep["fit_seconds"] > 0 and rep["cpu_seconds"] > 0
        assert len(rep["epoch_seconds"]) == 2
        assert sum(rep["epoch_seconds"]) <= rep["fit_seconds"]
        assert rep["fit_seconds"] <= rep["outer_seconds"]
        # One timed fit of 4 steps: fit ms/step is its wall time / 4.
        assert data["median_ms_per_step"]["fit"] == pytest.approx(
            1e3 * rep["fit_seconds"] / 4
        )
        assert set(data["median_ms_per_step"]) == {"fit", "steady", "cpu"}
        if variant == "plain":
            assert rep["sparsity"] == 0.0
        else:
            # 90% ERK (rezero: the same counts in fixed masks); the RigL
            # updates (steps 2 and 4) keep the count.
            assert rep["sparsity"] == pytest.approx(0.9, abs=0.01)
    plain_fit = summary["variants"]["plain"]["repetitions"][0]["fit_seconds"]
    for variant, max_ratio in (("static", 1.05), ("rigl", 1.10)):
        fit = summary["variants"][variant]["repetitions"][0]["fit_seconds"]
        ratio = summary["ratios"][variant]["fit"]["paired_median"]
        assert ratio == pytest.approx(fit / plain_fit)
        check = summary["targets"][variant]
        assert check["max_ratio"] == max_ratio
        assert check["pass"]["fit"] == (ratio <= max_ratio)
    assert "plain" not in summary["ratios"]


def test_report_markdown_lists_every_variant(tiny_report):
    _, report = tiny_report
    lines = report["markdown"].splitlines()
    assert lines[0].startswith("| model | variant | fit ms/step")
    rows = [line for line in lines[2:] if line.startswith("|")]
    assert len(rows) == 8
    assert rows[0].startswith("| lenet300_100 | plain |")
    assert rows[6].startswith("| cnn | rigl |")
    assert "<= 1.10:" in rows[6]
    # No target for the alternative design: an empty last cell.
    assert rows[7].startswith("| cnn | rezero |") and rows[7].endswith("|  |")


# ---------------------------------------------------------------------------
# Statistics on hand-made timings.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["per_step_seconds", "FixedMaskConstraint"])
def test_docstring_examples(name):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(getattr(overhead, name), name, globs=vars(overhead)):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


def test_per_step_seconds_single_epoch_has_no_steady():
    row = overhead.per_step_seconds(_run((2.0, 1.0, [2.0])), 10)
    assert row == {"fit": 0.2, "steady": None, "cpu": 0.1}


def test_summarize_hand_computed():
    # 2 epochs of 10 steps. Paired fit ratios of static: 1.2/1.0 and
    # 1.8/2.0 -> median 1.05; rigl: 1.5, 1.25 -> median 1.375.
    runs = {
        "plain": [_run((1.0, 2.0, [0.5, 0.4])), _run((2.0, 4.0, [1.0, 0.8]))],
        "static": [_run((1.2, 2.0, [0.6, 0.4])), _run((1.8, 4.0, [0.9, 0.8]))],
        "rigl": [_run((1.5, 3.0, [0.9, 0.4])), _run((2.5, 4.0, [1.0, 1.6]))],
    }
    summary = overhead.summarize(runs, steps_per_epoch=10)
    plain = summary["variants"]["plain"]["median_ms_per_step"]
    # fit: (1.0 / 20 + 2.0 / 20) / 2 s; steady: (0.4 / 10 + 0.8 / 10) / 2 s.
    assert plain["fit"] == pytest.approx(75.0)
    assert plain["steady"] == pytest.approx(60.0)
    assert plain["cpu"] == pytest.approx(150.0)
    # Fit time beyond 20 steady steps: median(1.0 - 20 * 0.04, 2.0 - 20 * 0.08).
    assert summary["variants"]["plain"]["median_setup_seconds"] == pytest.approx(0.3)
    static = summary["ratios"]["static"]["fit"]
    assert static["paired"] == pytest.approx([1.2, 0.9])
    assert static["paired_median"] == pytest.approx(1.05)
    assert static["ratio_of_medians"] == pytest.approx(1.5 / 1.5)
    rigl = summary["ratios"]["rigl"]
    assert rigl["fit"]["paired_median"] == pytest.approx(1.375)
    assert rigl["steady"]["paired"] == pytest.approx([1.0, 2.0])
    assert rigl["cpu"]["paired_median"] == pytest.approx((1.5 + 1.0) / 2)
    assert summary["targets"]["rigl"]["pass"] == {
        "fit": False, "steady": False, "cpu": False,
    }
    assert summary["targets"]["static"]["pass"]["steady"] is True  # 1.0, 1.0
    assert summary["num_params"] == 10


def test_summarize_custom_targets_and_markdown_verdicts():
    runs = {
        "plain": [_run((1.0, 1.0, [0.5, 0.5]))],
        "static": [_run((1.04, 1.0, [0.5, 0.5]))],
        "rigl": [_run((1.2, 1.0, [0.5, 0.5]))],
    }
    summary = overhead.summarize(runs, 10, targets={"static": 1.05, "rigl": 1.25})
    assert summary["targets"]["static"]["pass"]["fit"] is True
    assert summary["targets"]["rigl"]["pass"]["fit"] is True
    strict = overhead.summarize(runs, 10, targets={"static": 1.03, "rigl": 1.1})
    table = overhead.markdown_table({"m": strict})
    assert "| m | static |" in table and "<= 1.03: FAIL" in table
    assert "<= 1.10: FAIL" in table
    # rigl: 1.2 s / 20 steps, 0.5 s / 10 steps, 1.0 s / 20 steps; set-up
    # 1.2 - 20 * 0.05 = 0.2 s.
    assert "| m | rigl | 60.00 | 50.00 | 50.00 | 1.20 | 1.00 | 1.00 | 0.20 |" in table
    assert math.isclose(strict["ratios"]["rigl"]["fit"]["paired_median"], 1.2)
    low, high = strict["ratios"]["rigl"]["fit"]["paired_median_ci95"]
    assert low <= strict["ratios"]["rigl"]["fit"]["paired_median"] <= high


@pytest.mark.parametrize(
    "argv",
    [
        ["--models", "resnet"],
        ["--models", "cnn,cnn"],
        ["--variants", "plain,dense"],
        ["--repeats", "0"],
        ["--steps", "1", "--epochs", "2"],
        ["--sparsity", "1.0"],
        ["--jit_compile", "yes"],
    ],
)
def test_parse_args_rejects_bad_values(argv):
    with pytest.raises(SystemExit):
        overhead.parse_args(argv)


def test_parse_args_defaults():
    config = overhead.parse_args([])
    assert config.models == ["lenet300_100", "cnn"]
    assert config.variants == ["plain", "static", "rigl"]
    assert (config.repeats, config.batch_size, config.update_freq) == (7, 128, 100)
    assert config.num_examples == 128 * 200
    assert config.output.endswith("benchmarks/results/overhead.json")
    assert config.jit_compile == "auto"
    assert overhead.parse_args(["--jit_compile", "true"]).jit_compile is True


def test_variants_use_the_intended_layers_and_callbacks():
    for variant in ("plain", "plain_sync"):
        model = overhead.build_model("cnn", variant)
        assert not rigl_keras.masked_layers(model)
        assert sum(isinstance(l, keras.layers.Conv2D) for l in model.layers) == 2
    for variant in ("static", "rigl"):
        model = overhead.build_model("lenet300_100", variant)
        assert [l.name for l in rigl_keras.masked_layers(model)] == ["fc1", "fc2", "fc3"]
    assert overhead._callbacks("plain", 0.9, 100, 0) == []
    (sync,) = overhead._callbacks("plain_sync", 0.9, 100, 0)
    assert type(sync).on_train_batch_end is not keras.callbacks.Callback.on_train_batch_end
    (static,) = overhead._callbacks("static", 0.9, 100, 0)
    (rigl,) = overhead._callbacks("rigl", 0.9, 100, 0)
    assert static.update_freq is None and rigl.update_freq == 100
    assert static.sparsity == rigl.sparsity == 0.9
    with pytest.raises(ValueError, match="variant"):
        overhead.build_model("cnn", "dense")
    with pytest.raises(ValueError, match="name"):
        overhead.build_model("resnet", "plain")


def test_rezero_variant_keeps_the_static_zero_counts_through_training():
    model = overhead._compiled_model("lenet300_100", "rezero", 0.05, seed=0, sparsity=0.9)
    assert not rigl_keras.masked_layers(model)
    assert overhead._callbacks("rezero", 0.9, 100, 0) == []
    masked = overhead._compiled_model("lenet300_100", "static", 0.05, seed=0)
    shapes = {l.name: tuple(l.kernel.shape) for l in rigl_keras.masked_layers(masked)}
    expected = rigl_keras.distributions.layer_zero_counts(
        shapes, by_layer(rigl_keras.sparsity_distribution(masked, 0.9, "erk"))
    )
    dataset = overhead.make_dataset("lenet300_100", 256, 64, seed=0)
    model.fit(dataset, epochs=1, steps_per_epoch=3, verbose=0)
    for name, zeros in expected.items():
        layer = model.get_layer(name)
        mask = layer.kernel.constraint.mask.numpy()
        assert int((mask == 0).sum()) == zeros, name
        kernel = layer.kernel.numpy()
        # Trained: active weights moved, inactive ones are back at exactly 0.
        assert not (kernel[mask == 0] != 0).any(), name
        assert (kernel[mask == 1] != 0).all(), name


def _stored_report(fits):
    """A minimal stored report: one model, `{variant: [fit seconds]}`."""
    return {
        "config": {"steps_per_epoch": 10},
        "results": {"m": {"variants": {
            variant: {"repetitions": [_run((f, f, [f / 2, f / 2])) for f in values]}
            for variant, values in fits.items()
        }}},
    }


def test_compare_variants_pairs_repetitions():
    report = _stored_report({"static": [1.0, 2.0, 1.0], "rezero": [1.1, 2.0, 1.3]})
    pairs = overhead.compare_variants(report)["m"]
    assert set(pairs) == {"static/rezero", "rezero/static"}
    # Paired per repetition: 1.1, 1.0, 1.3 -> median 1.1.
    assert pairs["rezero/static"]["paired_median"] == pytest.approx(1.1)
    low, high = pairs["rezero/static"]["paired_median_ci95"]
    assert 1.0 <= low <= 1.1 <= high <= 1.3
    steady = overhead.compare_variants(report, kind="steady")["m"]
    assert steady["rezero/static"]["paired_median"] == pytest.approx(1.1)
    with pytest.raises(ValueError, match="kind"):
        overhead.compare_variants(report, kind="wall")


def test_compare_variants_rejects_a_missing_kind():
    report = _stored_report({"static": [1.0], "rezero": [1.1]})
    for variant in report["results"]["m"]["variants"].values():
        variant["repetitions"][0]["epoch_seconds"] = [1.0]
    with pytest.raises(ValueError, match="steady"):
        overhead.compare_variants(report, kind="steady")


def test_compare_flag_reads_a_stored_report_without_timing(tmp_path, capsys, monkeypatch):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(_stored_report({"plain": [1.0, 1.0], "static": [1.05, 1.05]})))
    monkeypatch.setattr(overhead, "run", lambda config: pytest.fail("timed a fit"))
    comparisons = overhead.main(["--compare", str(path)])
    assert comparisons["m"]["static/plain"]["paired_median"] == pytest.approx(1.05)
    assert "m static/plain: 1.0500 [1.0500, 1.0500]" in capsys.readouterr().out
