"""Tests for `benchmarks.overhead` (the training-overhead benchmark).

The benchmark is run end to end with tiny configurations (1 repetition, a
few steps): the masked-layer models, and `rigl_keras.sparsify` on
LeNet-300-100, MobileNetV2 and the small transformer. Its JSON report is
checked field by field; the statistics are checked on hand-made timings and
the memory census on hand-made variables and a small sparsified model
whose extra bytes are counted by hand from the public API.
"""

import doctest
import json
import math
import os
import pathlib
import platform
import shlex
import statistics

import keras
import numpy as np
import pytest
import tensorflow as tf

from benchmarks import _common
from benchmarks import overhead
import rigl_keras
from _helpers import by_layer  # tests/_helpers.py

_ROOT = pathlib.Path(__file__).resolve().parent.parent

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

# MobileNetV2 (a minute or more of tracing) runs in a slow test of its own.
_SPARSIFY_MODELS = ["lenet300_100", "transformer"]
_SPARSIFY_VARIANTS = ["plain", "static", "rigl", "sparsify_static", "sparsify_rigl"]
_TINY_SETTINGS = [
    "--repeats", "1",
    "--steps", "4",
    "--epochs", "2",
    "--warmup_steps", "1",
    "--update_freq", "2",
    "--batch_size", "8",
    "--num_examples", "64",
]
_TINY_SPARSIFY = _TINY_SETTINGS + [
    "--models", ",".join(_SPARSIFY_MODELS),
    "--variants", ",".join(_SPARSIFY_VARIANTS),
    "--memory_variants", "plain,static,sparsify_static,sparsify_rigl,sparsify_snfs",
]
_TINY_MOBILENET = _TINY_SETTINGS + [
    "--models", "mobilenetv2",
    "--variants", "plain,static,sparsify_static,sparsify_rigl",
    "--memory_variants", "plain,sparsify_static,sparsify_rigl",
]
# Masked parameters by hand: LeNet-300-100's kernels; the transformer's
# embedding, 2 blocks of (4 attention kernels 64 x 4 x 16, 64 x 128, 128 x
# 64) and the 64 x 10 classifier.
_MASKED_PARAMS = {
    "lenet300_100": 784 * 300 + 300 * 100 + 100 * 10,
    "transformer": 1000 * 64 + 2 * (4 * 64 * 4 * 16 + 64 * 128 + 128 * 64) + 64 * 10,
}


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


def test_report_command_reproduces_the_config(tiny_report):
    _, report = tiny_report
    argv = shlex.split(report["command"])
    assert argv[:3] == ["python", "-m", "benchmarks.overhead"]
    parsed = overhead.parse_args(argv[3:])
    assert pathlib.Path(parsed.output).name == "overhead.json" and parsed.compare == ""
    config = report["config"]
    for name in ("models", "variants", "memory_variants", "repeats", "epochs",
                 "warmup_steps", "batch_size", "num_examples", "sparsity",
                 "update_freq", "seed", "jit_compile"):
        assert getattr(parsed, name) == config[name], name
    assert parsed.steps == config["steps"] == 4
    assert config["steps_per_epoch"] == parsed.steps // parsed.epochs
    assert config["optimizer"] == f"SGD(learning_rate={parsed.learning_rate}, momentum=0.9)"


def test_report_verdict_is_every_fit_target(tiny_report):
    _, report = tiny_report
    checks = [check for summary in report["results"].values()
              for check in summary["targets"].values()]
    assert len(checks) == 4  # static and rigl on lenet300_100 and cnn.
    assert report["passed"] == all(check["pass"]["fit"] for check in checks)
    assert report["targets"] == {"static": "fit ratio <= 1.05x plain Keras",
                                 "rigl": "fit ratio <= 1.10x plain Keras"}


def test_report_machine_and_code_are_this_process(tiny_report):
    _, report = tiny_report
    machine = report["machine"]
    assert machine["nproc"] == os.cpu_count()
    assert (machine["python"], machine["tensorflow"], machine["keras"], machine["numpy"]) == (
        platform.python_version(), tf.__version__, keras.__version__, np.__version__)
    assert machine["rigl_keras"] == rigl_keras.__version__
    assert machine["env"] == _common.env_vars(overhead._ENV_VARS)
    library = pathlib.Path(rigl_keras.__file__).resolve().parent
    assert report["code"]["rigl_keras/layers.py"] == _common.file_digest(library / "layers.py")
    assert report["code"]["benchmarks/overhead.py"] == _common.file_digest(
        pathlib.Path(overhead.__file__))


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
    plain_fits = [r["fit_seconds"] for r in summary["variants"]["plain"]["repetitions"]]
    for variant, max_ratio in (("static", 1.05), ("rigl", 1.10)):
        fits = [r["fit_seconds"] for r in summary["variants"][variant]["repetitions"]]
        ratio = summary["ratios"][variant]["fit"]["paired_median"]
        # The median of the per-repetition ratios, recomputed from the runs.
        assert ratio == pytest.approx(
            statistics.median(f / p for f, p in zip(fits, plain_fits)))
        check = summary["targets"][variant]
        assert check["max_ratio"] == max_ratio
        assert check["pass"]["fit"] == (ratio <= max_ratio)
    assert "plain" not in summary["ratios"]


def test_report_markdown_lists_every_variant(tiny_report):
    _, report = tiny_report
    lines = report["markdown"].split("\n\n")[0].splitlines()
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


def test_tiny_report_measures_memory_of_the_timed_sparse_variants(tiny_report):
    _, report = tiny_report
    assert report["config"]["memory_variants"] == ["plain", "static", "rigl"]
    for model in ("lenet300_100", "cnn"):
        memory = report["results"][model]["memory"]
        assert list(memory["variants"]) == ["plain", "static", "rigl"]
        assert memory["checks"]["plain"] == {"extra_bytes": 0, "pass": True}
        masked = report["results"][model]["variants"]["rigl"]["repetitions"][0]["masked_params"]
        assert memory["variants"]["rigl"]["masked_params"] == masked > 0


# ---------------------------------------------------------------------------
# End to end: sparsify on off-the-shelf models.
# ---------------------------------------------------------------------------


# Times three models end to end (over a minute and a half): its tests are slow.
@pytest.fixture(scope="module")
def sparsify_report(tmp_path_factory):
    output = tmp_path_factory.mktemp("overhead_sparsify") / "overhead.json"
    overhead.main(_TINY_SPARSIFY + ["--output", str(output)])
    return json.loads(output.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_sparsify_report_config(sparsify_report):
    config = sparsify_report["config"]
    assert config["models"] == _SPARSIFY_MODELS
    assert config["variants"] == _SPARSIFY_VARIANTS
    assert config["batch_size"] == 8
    assert "MultiHeadAttention" in config["model_definitions"]["transformer"]
    assert "sparsify" in config["variant_definitions"]["sparsify_rigl"]
    assert "MaskedDense" in config["variant_definitions"]["rigl"]
    parsed = overhead.parse_args(shlex.split(sparsify_report["command"])[3:])
    assert (parsed.models, parsed.variants, parsed.memory_variants) == (
        config["models"], config["variants"], config["memory_variants"])


def _check_sparsify_timings(report, model):
    summary = report["results"][model]
    layer_model = model == "lenet300_100"
    requested = report["config"]["variants"]
    expected = [v for v in requested if layer_model or v not in ("static", "rigl")]
    assert list(summary["variants"]) == expected
    skipped = sorted(v for v in requested if v not in expected)
    assert sorted(summary["skipped_variants"]) == skipped
    for variant, data in summary["variants"].items():
        (rep,) = data["repetitions"]
        assert rep["fit_seconds"] > 0 and len(rep["epoch_seconds"]) == 2
        if variant == "plain":
            assert rep["sparsity"] == 0.0 and rep["masked_params"] == 0
        else:
            assert rep["sparsity"] == pytest.approx(0.9, abs=0.01)
            assert rep["masked_params"] > 0
    for variant, max_ratio in (("sparsify_static", 1.05), ("sparsify_rigl", 1.10)):
        check = summary["targets"][variant]
        ratio = summary["ratios"][variant]["fit"]["paired_median"]
        assert check["max_ratio"] == max_ratio
        assert check["pass"]["fit"] == (ratio <= max_ratio)


@pytest.mark.slow
@pytest.mark.parametrize("model", _SPARSIFY_MODELS)
def test_sparsify_report_times_every_applicable_variant(sparsify_report, model):
    _check_sparsify_timings(sparsify_report, model)


@pytest.mark.slow
def test_sparsify_report_pairs_sparsify_with_masked_layers_on_lenet(sparsify_report):
    results = sparsify_report["results"]
    lenet = results["lenet300_100"]
    assert list(lenet["versus"]) == ["sparsify_static/static", "sparsify_rigl/rigl"]
    variants = lenet["variants"]
    for pair, ratios in lenet["versus"].items():
        variant, baseline = pair.split("/")
        fit = variants[variant]["repetitions"][0]["fit_seconds"]
        base = variants[baseline]["repetitions"][0]["fit_seconds"]
        assert ratios["fit"]["paired_median"] == pytest.approx(fit / base)
        check = lenet["targets"][pair]
        assert check["max_ratio"] == 1.00
        assert check["pass"]["fit"] == (ratios["fit"]["paired_median"] <= 1.00)
    assert results["transformer"]["versus"] == {}
    assert results["transformer"]["skipped_variants"]["rigl"].startswith("needs a model")
    assert sparsify_report["passed"] == all(
        c["pass"]["fit"] for r in results.values() for c in r["targets"].values()
    )
    tables = sparsify_report["markdown"].split("\n\n")
    assert len(tables) == 3
    assert "| lenet300_100 | sparsify_rigl / rigl |" in tables[1]


def _check_memory(report, model, masked_params=None):
    memory = report["results"][model]["memory"]
    expected = [
        v for v in report["config"]["memory_variants"]
        if model == "lenet300_100" or v not in ("static", "rigl")
    ]
    assert list(memory["variants"]) == expected
    # The control: plain Keras adds nothing, so nothing else is counted.
    plain = memory["variants"]["plain"]
    assert plain["extra_bytes"] == 0 and plain["by_kind"] == {}
    assert plain["bytes_per_masked_param"] is None
    timed = report["results"][model]["variants"]["sparsify_rigl"]["repetitions"][0]
    for variant in expected[1:]:
        m = memory["variants"][variant]
        assert m["masked_params"] == timed["masked_params"]
        if masked_params is not None:
            assert m["masked_params"] == masked_params
        assert m["extra_bytes"] == sum(k["bytes"] for k in m["by_kind"].values())
        assert m["bytes_per_masked_param"] == pytest.approx(
            (m["extra_bytes"] - m["fixed_bytes"]) / m["masked_params"]
        )
        # Every masked weight has a mask of its own size, whatever its dtype.
        mask = m["by_kind"]["mask"]
        itemsize = {np.dtype(d).itemsize for d in mask["dtypes"]}
        assert len(itemsize) == 1
        assert mask["bytes"] == itemsize.pop() * m["masked_params"]
        check = memory["checks"][variant]
        # The gradient buffer only SNFS and the one-function RigL keep.
        limit = 9.0 if variant in ("sparsify_snfs", "sparsify_rigl_one_function") else 5.0
        assert check["max_bytes_per_masked_param"] == limit
        assert check["not_grown"] == (m["bytes_per_masked_param"] <= limit)
        assert check["aim_met"] == (m["bytes_per_masked_param"] <= 5.0)
    # The memory table lists every measured variant of the model.
    table = report["markdown"].split("\n\n")[-1]
    assert table.startswith("| model | variant | masked params |")
    for variant in expected:
        assert f"| {model} | {variant} |" in table


@pytest.mark.slow
@pytest.mark.parametrize("model", _SPARSIFY_MODELS)
def test_sparsify_report_memory_is_counted_from_variables(sparsify_report, model):
    _check_memory(sparsify_report, model, _MASKED_PARAMS[model])


@pytest.mark.slow
def test_mobilenet_v2_end_to_end(tmp_path):
    output = tmp_path / "overhead.json"
    overhead.main(_TINY_MOBILENET + ["--output", str(output)])
    report = json.loads(output.read_text(encoding="utf-8"))
    _check_sparsify_timings(report, "mobilenetv2")
    model = overhead.build_model("mobilenetv2", "plain")
    masked = sum(math.prod(row["shape"]) for row in rigl_keras.sparsify(model).masked)
    _check_memory(report, "mobilenetv2", masked)
    assert report["results"]["mobilenetv2"]["versus"] == {}


@pytest.mark.slow
def test_sparsify_report_memory_verdicts(sparsify_report):
    checks = [
        c for r in sparsify_report["results"].values() for c in r["memory"]["checks"].values()
    ]
    assert sparsify_report["memory_not_grown"] == all(
        c.get("not_grown", c.get("pass")) for c in checks
    )
    assert sparsify_report["memory_aim_met"] == all(c["aim_met"] for c in checks if "aim_met" in c)
    assert set(sparsify_report["memory_targets"]) == {
        "static", "sparsify_static", "sparsify_rigl", "sparsify_snfs"
    }


# ---------------------------------------------------------------------------
# Memory census on hand-made variables and a small model.
# ---------------------------------------------------------------------------


def test_census_counts_hand_made_variables():
    census = overhead.VariableCensus()
    try:
        kept = [
            tf.Variable(tf.zeros((3, 4), tf.float32)),  # 48 bytes
            tf.Variable(tf.zeros((5,), tf.bool)),  # 5 bytes
            keras.Variable(np.zeros((2, 2), np.float16)),  # 8 bytes, seen through .value
            tf.Variable(tf.constant(0, tf.int64)),  # 8 bytes
        ]
        new = census.new_variables()
    finally:
        census.close()
    assert sorted(overhead.variable_bytes(v) for v in new) == [5, 8, 8, 48]
    assert {id(v) for v in new} == {id(kept[0]), id(kept[1]), id(kept[2].value), id(kept[3])}


def _small_mlp(name):
    return keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4, name="fc1"), keras.layers.Dense(3, name="fc2")],
        name=name,
    )


@pytest.mark.parametrize("grow", [None, "gradient", "momentum"])
def test_extra_variables_of_a_small_sparsified_model(grow):
    # 5 x 4 + 4 x 3 = 32 masked parameters.
    plain_paths = {"fc1/kernel", "fc1/bias", "fc2/kernel", "fc2/bias"}
    assert {v.path.split("/", 1)[1] for v in _small_mlp("reference").weights} == plain_paths
    x = np.random.default_rng(0).random((48, 5)).astype("float32")
    y = np.random.default_rng(1).integers(0, 3, 48)
    census = overhead.VariableCensus()
    try:
        model = _small_mlp("mlp")
        if grow is not None:
            rigl_keras.sparsify(model)
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
        callbacks = [] if grow is None else [
            rigl_keras.RigLCallback(sparsity=0.5, update_freq=2, grow=grow, seed=0)
        ]
        probe = overhead._CensusProbe(census)
        update_probe = overhead._UpdateStepProbe(census, callbacks, plain_paths)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[update_probe] + callbacks + [probe])
        rows = overhead.extra_variables(model, callbacks, probe.variables, plain_paths)
    finally:
        census.close()
    if grow is None:
        assert rows == []  # the control: the optimizer and metrics are left out
        assert overhead.summarize_memory(rows, 0)["bytes_per_masked_param"] is None
        return
    for row in rows:
        assert row["bytes"] == math.prod(row["shape"]) * np.dtype(row["dtype"]).itemsize
    by_kind = overhead.summarize_memory(rows, 32)["by_kind"]
    # Counted by hand from the public API: each mask and recorded gradient.
    masks = [np.asarray(keras.ops.convert_to_numpy(w.mask)) for w in rigl_keras.masked_weights(model)]
    assert sum(m.size for m in masks) == 32
    assert by_kind["mask"]["bytes"] == sum(m.nbytes for m in masks)
    (callback,) = callbacks
    assert len(callback.dense_gradients) == 2
    # RigL's gradient is empty between updates; SNFS keeps its average.
    persistent = 0 if grow == "gradient" else 32 * 4
    gradients = [g.numpy() for g in callback.dense_gradients.values()]
    assert by_kind["dense_gradient"]["bytes"] == sum(g.nbytes for g in gradients) == persistent
    measured = overhead.summarize_memory(rows, 32)
    assert measured["extra_bytes"] == sum(r["bytes"] for r in rows)
    # A float32 mask and a bool ever-active flag; SNFS adds its average.
    assert measured["bytes_per_masked_param"] == (5.0 if grow == "gradient" else 9.0)
    # On the update step RigL holds its gradient (read before the update).
    update_step = overhead.summarize_memory(update_probe.rows, 32)
    assert update_step["by_kind"]["dense_gradient"]["bytes"] == 32 * 4
    assert update_step["bytes_per_masked_param"] == 9.0


@pytest.mark.parametrize(
    "name",
    ["per_step_seconds", "FixedMaskConstraint", "variant_applies", "VariableCensus",
     "variable_shape", "variable_bytes", "summarize_memory"],
)
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
        ["--memory_variants", "rezero"],
        ["--memory_variants", ""],
    ],
)
def test_parse_args_rejects_bad_values(argv):
    with pytest.raises(SystemExit):
        overhead.parse_args(argv)


def test_parse_args_defaults():
    config = overhead.parse_args([])
    assert config.models == ["lenet300_100", "cnn", "mobilenetv2", "transformer"]
    assert config.variants == ["plain", "static", "rigl", "sparsify_static", "sparsify_rigl"]
    assert config.memory_variants == config.variants
    assert overhead.parse_args(["--memory_variants", "none"]).memory_variants == []
    assert overhead.parse_args(["--variants", "plain"]).memory_variants == []
    assert overhead.parse_args(
        ["--variants", "plain,rezero,sparsify_rigl"]
    ).memory_variants == ["plain", "sparsify_rigl"]
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
    with pytest.raises(ValueError, match="variant='rigl'"):
        overhead.build_model("mobilenetv2", "rigl")


def test_sparsify_variants_mask_the_plain_model():
    model = overhead._compiled_model("lenet300_100", "sparsify_rigl", 0.01, seed=0)
    assert not rigl_keras.masked_layers(model)
    assert all(type(l).__name__ != "MaskedDense" for l in model.layers)
    assert [w.key.split("/", 1)[1] for w in rigl_keras.masked_weights(model)] == [
        "fc1/kernel", "fc2/kernel", "fc3/kernel"
    ]
    assert not rigl_keras.masked_weights(overhead._compiled_model("lenet300_100", "plain", 0.01, 0))
    (static,) = overhead._callbacks("sparsify_static", 0.9, 100, 0)
    (rigl,) = overhead._callbacks("sparsify_rigl", 0.9, 100, 0)
    (snfs,) = overhead._callbacks("sparsify_snfs", 0.9, 100, 0)
    assert static.update_freq is None and rigl.update_freq == snfs.update_freq == 100
    assert (rigl.grow, snfs.grow) == ("gradient", "momentum")


def test_shared_model_builders():
    transformer = overhead.build_model("transformer", "plain")
    assert transformer.count_params() == 131594
    assert [l.name for l in transformer.layers if "MultiHeadAttention" in type(l).__name__] == [
        "mha0", "mha1"
    ]
    assert tuple(transformer.input.shape) == (None, 32)
    mobilenet = overhead.build_model("mobilenetv2", "plain")
    assert sum(isinstance(l, keras.layers.DepthwiseConv2D) for l in mobilenet.layers) == 17
    assert tuple(mobilenet.output.shape) == (None, 10)
    assert mobilenet.layers[-1].activation is keras.activations.linear  # logits
    for name in ("mobilenetv2", "transformer"):
        dataset = overhead.make_dataset(name, 16, 8, seed=0)
        x, y = next(iter(dataset))
        assert tuple(x.shape[1:]) == tuple(overhead.build_model(name, "plain").input.shape[1:])
        assert int(tf.reduce_max(y)) < 10


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


def test_one_function_variant_trains_with_a_single_train_function():
    # The design comparison: the default RigL callback swaps between two
    # traced train functions; this variant must keep one for every step.
    def train_functions(variant):
        model = overhead._compiled_model("lenet300_100", variant, 0.01, seed=0)
        (rigl,) = overhead._callbacks(variant, 0.9, 2, 0)
        seen = []

        class Spy(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                seen.append(self.model.train_function)

        x = np.random.default_rng(0).random((64, 784)).astype("float32")
        y = np.arange(64) % 10
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[rigl, Spy()])
        return {id(f) for f in seen}, rigl

    swapped, _ = train_functions("sparsify_rigl")
    single, rigl = train_functions("sparsify_rigl_one_function")
    assert len(swapped) == 2 and len(single) == 1
    assert isinstance(rigl, rigl_keras.RigLCallback) and rigl.update_freq == 2
