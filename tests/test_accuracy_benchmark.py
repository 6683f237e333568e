"""Tests for `benchmarks.accuracy` and `benchmarks.accuracy_tfmot`.

The plan, the commands, the aggregation, the targets and the reports are
checked on hand-made run JSONs (no training), structured runs (RigL with
4x1 blocks and 2:4) included. End to end, a tiny sweep (four runs of 2
steps on the real MNIST in `TFDS_DATA_DIR`: dense, RigL, RigL with 4x1
blocks, RigL with 2:4) is run through the real CLI, then run again to check
that finished runs are skipped. The TFMOT
peer script needs `tf_keras` and `tensorflow-model-optimization` (not
dependencies of the library): its end-to-end test is skipped without them.
"""

import dataclasses
import importlib.util
import json
import os
import pathlib
import shlex

import pytest
from absl import flags

from rigl_keras import distributions
from rigl_keras.experiments import models
from rigl_keras.experiments import train as train_lib

from benchmarks import accuracy
from benchmarks import accuracy_tfmot
import _helpers  # tests/_helpers.py

_HAS_TFMOT = all(
    importlib.util.find_spec(name) is not None
    for name in ("tf_keras", "tensorflow_model_optimization")
)


def _flags_of(argv):
    """`{name: value}` of the `--name=value` items of an argv."""
    return dict(a[2:].split("=", 1) for a in argv if a.startswith("--"))


# ---------------------------------------------------------------------------
# The plan and the commands.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, key",
    [
        (accuracy.RunSpec("lenet300_100", "rigl", 0.98, 0, 20), "lenet300_100_rigl_s98_seed0_e20"),
        (accuracy.RunSpec("lenet300_100", "dense", 0.0, 2, 20), "lenet300_100_dense_seed2_e20"),
        (accuracy.RunSpec("lenet5", "small_dense", 0.955, 1, 10, 7),
         "lenet5_small_dense_s95.5_seed1_e10_spe7"),
        (accuracy.RunSpec("lenet300_100", "rigl", 0.9, 0, 20, None, "block4x1"),
         "lenet300_100_rigl_block4x1_s90_seed0_e20"),
        (accuracy.RunSpec("lenet300_100", "rigl", 0.5, 2, 1, 2, "nm2of4"),
         "lenet300_100_rigl_nm2of4_s50_seed2_e1_spe2"),
    ],
)
def test_run_key(spec, key):
    assert spec.key == key


def test_default_plan_order_and_counts():
    plan = accuracy._plan(accuracy.parse_args([]))
    # LeNet-300-100: per seed dense + 7 methods x 3 sparsities (TFMOT
    # included) + RigL with 4x1 blocks at 90% and 95% and with 2:4;
    # LeNet-5: per seed dense + 6 methods at 95%.
    assert len(plan) == 3 * (1 + 7 * 3 + 3) + 3 * (1 + 6)
    assert len({s.key for s in plan}) == len(plan)
    first_seed = plan[:25]
    assert {(s.model, s.seed) for s in first_seed} == {("lenet300_100", 0)}
    assert {s.method for s in first_seed} == set(accuracy.METHODS)
    assert first_seed[0].method == "dense"
    # The structured runs close each seed of LeNet-300-100.
    assert [(s.method, s.structure, s.sparsity) for s in first_seed[-3:]] == [
        ("rigl", "block4x1", 0.9), ("rigl", "block4x1", 0.95), ("rigl", "nm2of4", 0.5)]
    structured = [s for s in plan if s.structure is not None]
    assert len(structured) == 9 and {s.seed for s in structured} == {0, 1, 2}
    assert {(s.model, s.epochs) for s in structured} == {("lenet300_100", 20)}
    models_in_order = [s.model for s in plan]
    assert models_in_order == sorted(models_in_order, key=accuracy.MODELS.index)
    for model, epochs, sparsities in (("lenet300_100", 20, {0.9, 0.95, 0.98}),
                                      ("lenet5", 10, {0.95})):
        runs = [s for s in plan if s.model == model]
        seeds = [s.seed for s in runs]
        assert seeds == sorted(seeds)  # Seed by seed.
        assert {s.epochs for s in runs} == {epochs}
        assert {s.sparsity for s in runs
                if s.method != "dense" and s.structure is None} == sparsities
        dense = [s for s in runs if s.method == "dense"]
        assert [(s.seed, s.sparsity) for s in dense] == [(0, 0.0), (1, 0.0), (2, 0.0)]
    assert not [s for s in plan if s.model == "lenet5" and s.method == "tfmot"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], {("block4x1", 0.9), ("block4x1", 0.95), ("nm2of4", 0.5)}),
        (["--structures", "none"], set()),
        (["--structures", "nm2of4"], {("nm2of4", 0.5)}),
        (["--block_sparsities", "0.8", "--structures", "block4x1"], {("block4x1", 0.8)}),
        (["--methods", "dense,set"], set()),  # Structured runs are RigL's.
        (["--models", "lenet5"], set()),
    ],
)
def test_plan_of_structured_runs(argv, expected):
    plan = accuracy._plan(accuracy.parse_args(argv + ["--seeds", "0"]))
    assert {(s.structure, s.sparsity) for s in plan if s.structure is not None} == expected
    assert all(s.method == "rigl" for s in plan if s.structure is not None)


def _parse_cli(argv):
    """The `TrainConfig` the real CLI makes of a sweep command."""
    flag_values = flags.FlagValues()
    train_lib.define_flags(flag_values)
    flag_values(["rigl-train", *argv[3:]])
    return train_lib.config_from_flags(flag_values)


@pytest.mark.parametrize(
    "structure, sparsity, distribution, expected",
    [
        (None, 0.9, "erk", "None"),
        ("block4x1", 0.9, "erk", "Block(shape=(4, 1))"),
        ("block4x1", 0.95, "erk", "Block(shape=(4, 1))"),
        ("nm2of4", 0.5, "uniform", "NM(n=2, m=4)"),
    ],
)
def test_structured_command_is_the_unstructured_one_plus_the_structure(
        structure, sparsity, distribution, expected):
    spec = accuracy.RunSpec("lenet300_100", "rigl", sparsity, 1, 20, None, structure)
    argv = accuracy.run_command(spec, "/tmp/x.json", python="python")
    config = _parse_cli(argv)
    assert repr(config.structure) == expected
    assert (config.method, config.sparsity, config.distribution, config.seed) == (
        "rigl", sparsity, distribution, 1)
    # Every other flag is the unstructured sweep's.
    plain = _parse_cli(accuracy.run_command(
        accuracy.RunSpec("lenet300_100", "rigl", sparsity, 1, 20), "/tmp/x.json",
        python="python"))
    ignored = {"block_shape", "n_m", "distribution"}
    assert {k: v for k, v in config.to_dict().items() if k not in ignored} == {
        k: v for k, v in plain.to_dict().items() if k not in ignored}


def test_train_command_passes_cli_defaults_explicitly():
    defaults = train_lib.TrainConfig()
    spec = accuracy.RunSpec("lenet300_100", "set", 0.95, 2, 20)
    argv = accuracy.run_command(spec, "/tmp/x.json", python="python")
    assert argv[:3] == ["python", "-m", "rigl_keras.experiments.train"]
    flags = _flags_of(argv)
    assert flags["method"] == "set" and flags["model"] == "lenet300_100"
    assert (float(flags["sparsity"]), int(flags["seed"]), int(flags["epochs"])) == (0.95, 2, 20)
    assert int(flags["batch_size"]) == defaults.batch_size
    assert float(flags["learning_rate"]) == defaults.peak_learning_rate == 0.1
    assert float(flags["momentum"]) == defaults.momentum
    assert float(flags["weight_decay"]) == defaults.weight_decay
    assert int(flags["update_freq"]) == defaults.update_freq
    assert float(flags["end_fraction"]) == defaults.end_fraction
    assert float(flags["drop_fraction"]) == defaults.drop_fraction
    assert (flags["optimizer"], flags["lr_schedule"], flags["distribution"]) == (
        defaults.optimizer, defaults.lr_schedule, "erk")
    assert flags["results_json"] == "/tmp/x.json"
    # Every flag is one the CLI defines.
    names = {f.name for f in dataclasses.fields(train_lib.TrainConfig)}
    assert set(flags) <= names


def test_tfmot_command_matches_train_command():
    spec = accuracy.RunSpec("lenet300_100", "tfmot", 0.98, 1, 20)
    argv = accuracy.run_command(spec, "/tmp/t.json", python="python")
    assert argv[1:3] == ["-m", "benchmarks.accuracy_tfmot"]
    flags = _flags_of(argv)
    cli = _flags_of(accuracy.run_command(
        accuracy.RunSpec("lenet300_100", "prune", 0.98, 1, 20), "/tmp/t.json"))
    for name in accuracy._SHARED_FLAGS + ("sparsity", "seed", "epochs", "model"):
        assert flags[name] == cli[name], name
    # The per-layer targets are rigl_keras' ERK targets of the same model.
    plain = models.build("lenet300_100", masked=False, input_shape=(28, 28, 1),
                         num_classes=10)
    expected = _helpers.by_layer(
        distributions.distribute_sparsity(models.kernel_shapes(plain), 0.98, "erk"))
    assert json.loads(flags["layer_sparsity"]) == pytest.approx(expected)
    # The script parses every flag it is given, with the same values.
    parsed = accuracy_tfmot.parse_args(argv[3:])
    shared = accuracy.shared_flags()
    for name in accuracy._SHARED_FLAGS:
        assert getattr(parsed, name) == shared[name], name


def test_the_benchmarks_package_imports_no_tensorflow_or_keras():
    # `python -m benchmarks.accuracy_tfmot` imports the package before the
    # script sets TF_USE_LEGACY_KERAS=1.
    code = ("import sys, benchmarks; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'rigl_keras')))")
    result = _helpers.run_python(["-c", code], cwd=str(_helpers.REPO_ROOT), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_tfmot_script_defaults_equal_cli_defaults():
    parsed = accuracy_tfmot.parse_args(["--results_json", "/tmp/r.json"])
    shared = accuracy.shared_flags()
    for name in accuracy._SHARED_FLAGS:
        assert getattr(parsed, name) == shared[name], name
    assert parsed.epochs == train_lib.TrainConfig().epochs


@pytest.mark.parametrize("model", ["lenet300_100", "lenet5"])
def test_tfmot_kernel_shapes_and_targets_match_library(model):
    plain = models.build(model, masked=False, input_shape=(28, 28, 1), num_classes=10)
    # The TFMOT script keys by layer name, the library by variable path.
    shapes = _helpers.by_layer(models.kernel_shapes(plain))
    assert accuracy_tfmot.kernel_shapes(model) == shapes
    assert list(accuracy_tfmot.kernel_shapes(model)) == list(shapes)
    assert accuracy_tfmot.erk_targets(model, 0.95) == pytest.approx(
        distributions.distribute_sparsity(shapes, 0.95, "erk"))


def test_tfmot_script_rejects_bad_flags():
    with pytest.raises(SystemExit):
        accuracy_tfmot.parse_args(["--results_json", "r.json", "--sparsity", "1.0"])
    with pytest.raises(SystemExit):
        accuracy_tfmot.parse_args(["--results_json", "r.json", "--epochs", "0"])


def test_sweep_rejects_bad_flags():
    for argv in (["--methods", "rigl,bogus"], ["--sparsities", "0.9,1.5"],
                 ["--seeds", "0,0"], ["--epochs", "0"], ["--structures", "block2x2"],
                 ["--block_sparsities", "1.0"]):
        with pytest.raises(SystemExit):
            accuracy.parse_args(argv)


# ---------------------------------------------------------------------------
# Aggregation and targets on hand-made runs.
# ---------------------------------------------------------------------------


def _write_run(runs_dir, method, sparsity, seed, test_accuracy, model="lenet300_100",
               epochs=20, flops=None, structure=None, holds=True, **flag_overrides):
    """Writes a run JSON as the sweep leaves it; `flag_overrides` change its flags.

    A structured run (`structure` a name in `STRUCTURES`) has the trainer's
    `structure` entry (`holds`) and its flags (`block_shape`/`n_m`,
    distribution), as the CLI writes them.
    """
    spec = accuracy.RunSpec(model, method, sparsity, seed, epochs, None, structure)
    flags = {**accuracy.shared_flags(), "method": method, "seed": seed,
             "distribution": spec.distribution, **spec.structure_flags, **flag_overrides}
    if flops is None:
        flops = None if method == "tfmot" else 1.0 - sparsity
    run = {
        "test_accuracy": float(test_accuracy),
        "sparsity": sparsity,
        "train_flops": flops,
        "inference_flops": flops,
        "wall_seconds": 10.0 + seed,
        "flags": flags,
        "structure": None if structure is None else {
            "structure": "...", "holds": holds, "violations": {} if holds else {"x": "y"}},
        "benchmark": {"key": spec.key, **dataclasses.asdict(spec)},
    }
    path = accuracy.run_path(runs_dir, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run), encoding="utf-8")
    return spec


# Mean test accuracies (in %) of the hand-made sweep, 3 seeds each, spread
# -1, 0, +1 point around the mean (sample std exactly 1 point), except dense
# (spread +-0.5: std 0.5).
_MEANS = {
    ("dense", 0.0): 98.0,
    ("rigl", 0.9): 97.8,     # dense - RigL = 0.2 <= 0.4: met.
    ("rigl", 0.95): 97.5,
    ("set", 0.95): 97.5,     # Tie: RigL >= SET holds.
    ("static", 0.95): 97.0,
    ("rigl", 0.98): 96.5,    # dense - RigL = 1.5 > 1.0: missed.
    ("set", 0.98): 96.0,
    ("static", 0.98): 96.2,  # SET < static: missed.
    ("prune", 0.9): 97.9,
    ("tfmot", 0.9): 97.7,    # prune - TFMOT = +0.2: met.
    ("prune", 0.98): 96.0,
    ("tfmot", 0.98): 96.5,   # prune - TFMOT = -0.5: missed.
}                            # No prune/TFMOT at 95%: pending.
# RigL with structured masks, same spread as the sparse runs above.
_STRUCTURED_MEANS = {
    ("block4x1", 0.9): 97.6,   # RigL - block RigL = 0.2 <= 0.3: met.
    ("block4x1", 0.95): 97.0,
    ("nm2of4", 0.5): 97.7,     # dense - 2:4 RigL = 0.3 > 0.2: missed.
}


@pytest.fixture()
def fake_runs(tmp_path):
    runs_dir = tmp_path / "runs"
    for (method, sparsity), mean in _MEANS.items():
        spread = 0.5 if method == "dense" else 1.0
        for seed, delta in zip((0, 1, 2), (-spread, 0.0, spread)):
            _write_run(runs_dir, method, sparsity, seed, (mean + delta) / 100)
    for (structure, sparsity), mean in _STRUCTURED_MEANS.items():
        for seed, delta in zip((0, 1, 2), (-1.0, 0.0, 1.0)):
            # One 2:4 run's masks broke the structure.
            holds = not (structure == "nm2of4" and seed == 1)
            _write_run(runs_dir, "rigl", sparsity, seed, (mean + delta) / 100,
                       structure=structure, holds=holds)
    return runs_dir


_N_GROUPS = len(_MEANS) + len(_STRUCTURED_MEANS)
_N_RUNS = 3 * _N_GROUPS


def _group(groups, method, sparsity, structure=None):
    found = [g for g in groups if g["method"] == method and g["structure"] == structure and (
        g["sparsity"] is None if sparsity is None else g["sparsity"] == sparsity)]
    assert len(found) == 1, (method, sparsity, structure)
    return found[0]


def test_aggregate_mean_and_sample_std(fake_runs):
    groups = accuracy.aggregate(accuracy.load_runs(fake_runs))
    assert len(groups) == _N_GROUPS
    rigl = _group(groups, "rigl", 0.98)
    assert rigl["n"] == 3 and rigl["seeds"] == [0, 1, 2]
    assert rigl["test_accuracy"]["mean"] == pytest.approx(0.965)
    assert rigl["test_accuracy"]["std"] == pytest.approx(0.01)  # Sample std.
    assert rigl["test_accuracy"]["min"] == pytest.approx(0.955)
    assert rigl["test_accuracy"]["max"] == pytest.approx(0.975)
    assert rigl["train_flops"] == pytest.approx(0.02)
    assert rigl["wall_seconds"] == pytest.approx(11.0)
    dense = _group(groups, "dense", None)
    assert dense["test_accuracy"]["std"] == pytest.approx(0.005)
    assert _group(groups, "tfmot", 0.9)["train_flops"] is None
    # Ordered by METHODS, then sparsity.
    order = [(g["method"], g["sparsity"]) for g in groups]
    assert order[0] == ("dense", None)
    assert order.index(("static", 0.95)) < order.index(("static", 0.98)) < order.index(
        ("set", 0.95))


def test_structured_runs_are_their_own_groups(fake_runs):
    groups = accuracy.aggregate(accuracy.load_runs(fake_runs))
    # Unstructured RigL at 90% is averaged over its own three runs only.
    rigl = _group(groups, "rigl", 0.9)
    assert rigl["n"] == 3 and rigl["test_accuracy"]["mean"] == pytest.approx(0.978)
    assert rigl["structure_holds"] is None
    block = _group(groups, "rigl", 0.9, "block4x1")
    assert block["n"] == 3 and block["seeds"] == [0, 1, 2]
    assert block["test_accuracy"]["mean"] == pytest.approx(0.976)
    assert block["test_accuracy"]["std"] == pytest.approx(0.01)
    assert block["structure_holds"] == 3
    n_m = _group(groups, "rigl", 0.5, "nm2of4")
    assert n_m["structure_holds"] == 2 and n_m["train_flops"] == pytest.approx(0.5)
    # Unstructured before structured; structures in STRUCTURES order.
    rigl_order = [(g["structure"], g["sparsity"]) for g in groups if g["method"] == "rigl"]
    assert rigl_order == [(None, 0.9), (None, 0.95), (None, 0.98), ("block4x1", 0.9),
                          ("block4x1", 0.95), ("nm2of4", 0.5)]


def test_cache_does_not_mistake_structured_and_unstructured_runs(tmp_path):
    plain = _write_run(tmp_path, "rigl", 0.9, 0, 0.97)
    block = accuracy.RunSpec("lenet300_100", "rigl", 0.9, 0, 20, None, "block4x1")
    assert accuracy.finished(tmp_path, plain) and not accuracy.finished(tmp_path, block)
    # A file at the structured key whose flags are unstructured (or of the
    # other structure, or another distribution) is not a finished run.
    for overrides in ({"block_shape": None}, {"block_shape": None, "n_m": [2, 4]},
                      {"block_shape": [1, 4]}, {"distribution": "uniform"}):
        _write_run(tmp_path, "rigl", 0.9, 0, 0.97, structure="block4x1", **overrides)
        assert not accuracy.finished(tmp_path, block), overrides
    _write_run(tmp_path, "rigl", 0.9, 0, 0.97, structure="block4x1")
    assert accuracy.finished(tmp_path, block)
    n_m = _write_run(tmp_path, "rigl", 0.5, 0, 0.97, structure="nm2of4")
    assert accuracy.finished(tmp_path, n_m)
    _write_run(tmp_path, "rigl", 0.5, 0, 0.97, structure="nm2of4", distribution="erk")
    assert not accuracy.finished(tmp_path, n_m)
    # A run made before the CLI had the structure flags (no such keys) is
    # an unstructured run.
    path = accuracy.run_path(tmp_path, plain)
    run = json.loads(path.read_text(encoding="utf-8"))
    for name in ("block_shape", "n_m"):
        run["flags"].pop(name)
    path.write_text(json.dumps(run), encoding="utf-8")
    assert accuracy.finished(tmp_path, plain)


def test_single_seed_has_zero_std(tmp_path):
    _write_run(tmp_path, "rigl", 0.9, 0, 0.97)
    (group,) = accuracy.aggregate(accuracy.load_runs(tmp_path))
    assert group["n"] == 1 and group["test_accuracy"]["std"] == 0.0


def test_targets_met_missed_pending(fake_runs):
    groups = accuracy.aggregate(accuracy.load_runs(fake_runs))
    targets = accuracy.evaluate_targets(groups, ("lenet300_100", 20, None))
    status = {t["name"]: t["status"] for t in targets}
    assert status == {
        "RigL > SET > static at 98%": "missed",
        "RigL >= SET >= static at 95%": "met",
        "RigL at 90% within 0.4 points of dense": "met",
        "RigL at 98% within 1.0 points of dense": "missed",
        "prune within 0.3 points of TFMOT at 90%": "met",
        "prune within 0.3 points of TFMOT at 95%": "pending",
        "prune within 0.3 points of TFMOT at 98%": "missed",
        _BLOCK_TARGET: "met",
        _NM_TARGET: "missed",
    }
    by_name = {t["name"]: t for t in targets}
    block = by_name[_BLOCK_TARGET]
    assert block["values"] == pytest.approx({"rigl/block4x1@90": 97.6, "rigl@90": 97.8})
    assert "unstructured - block RigL +0.200" in block["detail"]
    n_m = by_name[_NM_TARGET]
    assert n_m["values"] == pytest.approx({"rigl/nm2of4@50": 97.7, "dense": 98.0})
    assert "dense - 2:4 RigL +0.300" in n_m["detail"] and "(n=3)" in n_m["detail"]
    missed = by_name["RigL at 98% within 1.0 points of dense"]
    assert missed["values"] == pytest.approx({"rigl@98": 96.5, "dense": 98.0})
    assert "dense - RigL +1.500" in missed["detail"] and "(n=3)" in missed["detail"]
    assert "prune - TFMOT -0.500" in by_name["prune within 0.3 points of TFMOT at 98%"]["detail"]
    assert "prune@95" in by_name["prune within 0.3 points of TFMOT at 95%"]["detail"]
    # Another setting (other epochs) has no runs: everything pending.
    other = accuracy.evaluate_targets(groups, ("lenet300_100", 5, None))
    assert {t["status"] for t in other} == {"pending"}


_BLOCK_TARGET = "RigL with 4×1 blocks at 90% within 0.3 points of unstructured RigL at 90%"
_NM_TARGET = "RigL with 2:4 (50%, uniform) within 0.2 points of dense"


@pytest.mark.parametrize(
    "structure, sparsity, reference, reference_accuracy, accuracy_, status",
    [
        ("block4x1", 0.9, "rigl", 0.980, 0.977, "met"),      # 0.3 exactly.
        ("block4x1", 0.9, "rigl", 0.980, 0.9765, "missed"),  # 0.35.
        ("block4x1", 0.9, "rigl", 0.980, 0.985, "met"),      # Better than unstructured.
        ("nm2of4", 0.5, "dense", 0.984, 0.982, "met"),       # 0.2 exactly.
        ("nm2of4", 0.5, "dense", 0.984, 0.9815, "missed"),   # 0.25.
    ],
)
def test_structured_targets(tmp_path, structure, sparsity, reference, reference_accuracy,
                            accuracy_, status):
    _write_run(tmp_path, reference, 0.0 if reference == "dense" else 0.9, 0,
               reference_accuracy)
    _write_run(tmp_path, "rigl", sparsity, 0, accuracy_, structure=structure)
    # An unstructured RigL at 50% (which no target uses) is not taken for 2:4.
    _write_run(tmp_path, "rigl", 0.5, 0, 0.5)
    targets = accuracy.evaluate_targets(
        accuracy.aggregate(accuracy.load_runs(tmp_path)), ("lenet300_100", 20, None))
    by_name = {t["name"]: t for t in targets}
    name, other = ((_BLOCK_TARGET, _NM_TARGET) if structure == "block4x1"
                   else (_NM_TARGET, _BLOCK_TARGET))
    assert by_name[name]["status"] == status
    assert by_name[other]["status"] == "pending"


def test_block_target_pending_without_unstructured_rigl(tmp_path):
    _write_run(tmp_path, "rigl", 0.9, 0, 0.97, structure="block4x1")
    targets = accuracy.evaluate_targets(
        accuracy.aggregate(accuracy.load_runs(tmp_path)), ("lenet300_100", 20, None))
    (block,) = [t for t in targets if t["name"] == _BLOCK_TARGET]
    assert block["status"] == "pending" and "rigl@90" in block["detail"]
    # And the structured run does not stand in for unstructured RigL.
    (rigl,) = [t for t in targets if t["name"].startswith("RigL at 90%")]
    assert rigl["status"] == "pending"


def test_target_boundaries_are_inclusive(tmp_path):
    # dense - RigL == 0.4 exactly (up to float round-off) meets "within 0.4".
    _write_run(tmp_path, "dense", 0.0, 0, 0.984)
    _write_run(tmp_path, "rigl", 0.9, 0, 0.980)
    targets = accuracy.evaluate_targets(
        accuracy.aggregate(accuracy.load_runs(tmp_path)), ("lenet300_100", 20, None))
    (target,) = [t for t in targets if t["name"].startswith("RigL at 90%")]
    assert target["status"] == "met"


def test_markdown_table(fake_runs):
    groups = accuracy.aggregate(accuracy.load_runs(fake_runs))
    text = accuracy.markdown_tables(groups)
    lines = text.split("\n\n### ")[0].splitlines()  # The first table.
    assert lines[0] == "### LeNet-300-100 on MNIST, 20 epochs"
    assert lines[2] == ("| Method | 90% | 95% | 98% | Train FLOPs (90% / 95% / 98%) "
                        "| Inference FLOPs (90% / 95% / 98%) |")
    rows = {line.split(" | ")[0][2:]: line for line in lines[4:]}
    assert list(rows) == ["Dense", "Static", "SET", "RigL", "Pruning (ours)",
                          "Pruning (TFMOT)"]
    assert rows["RigL"] == ("| RigL | 97.80 ± 1.00 (3) | 97.50 ± 1.00 (3) | "
                           "96.50 ± 1.00 (3) | 0.100 / 0.050 / 0.020 | "
                           "0.100 / 0.050 / 0.020 |")
    assert rows["Dense"].count("98.00 ± 0.50 (3)") == 3
    assert rows["Pruning (ours)"].split(" | ")[2] == "—"  # No run at 95%.
    assert rows["Pruning (TFMOT)"].endswith("| n/a | n/a |")
    # The structured runs are not in the first table (no 50% column) but in
    # their own, each next to its reference.
    structured = text.split("### LeNet-300-100 on MNIST, 20 epochs: structured masks")[1]
    lines = structured.strip().splitlines()
    assert lines[0].startswith("| Method | Structure | Sparsity | Distribution | Test accuracy |")
    assert lines[2:] == [
        "| RigL | 4×1 blocks | 90% | ERK | 97.60 ± 1.00 (3) | RigL, unstructured | "
        "97.80 ± 1.00 (3) | -0.20 | 0.100 | 0.100 | 3 of 3 |",
        "| RigL | 4×1 blocks | 95% | ERK | 97.00 ± 1.00 (3) | RigL, unstructured | "
        "97.50 ± 1.00 (3) | -0.50 | 0.050 | 0.050 | 3 of 3 |",
        "| RigL | 2:4 | 50% | uniform | 97.70 ± 1.00 (3) | Dense | 98.00 ± 0.50 (3) | "
        "-0.30 | 0.500 | 0.500 | 2 of 3 |",
    ]


def test_finished_requires_valid_json_with_shared_flags(tmp_path):
    spec = _write_run(tmp_path, "rigl", 0.9, 0, 0.97)
    assert accuracy.finished(tmp_path, spec)
    assert not accuracy.finished(tmp_path, accuracy.RunSpec("lenet300_100", "rigl", 0.9, 1, 20))
    stale = _write_run(tmp_path, "set", 0.9, 0, 0.97, batch_size=64)
    assert not accuracy.finished(tmp_path, stale)
    accuracy.run_path(tmp_path, spec).write_text('{"test_accuracy": 0.9', encoding="utf-8")
    assert not accuracy.finished(tmp_path, spec)
    # Neither a broken file nor a trainer's partial output is aggregated.
    (tmp_path / "x.partial.json").write_text(json.dumps({"test_accuracy": 0.5}))
    assert [r["benchmark"]["key"] for r in accuracy.load_runs(tmp_path)] == [stale.key]


def test_only_aggregate_writes_outputs_without_training(fake_runs, tmp_path):
    out = tmp_path / "out"
    report = accuracy.main(["--only_aggregate", "--models", "lenet300_100",
                            "--runs_dir", str(fake_runs), "--output_dir", str(out)])
    assert report["executed"] == []
    written = json.loads((out / "accuracy.json").read_text(encoding="utf-8"))
    assert written["progress"]["planned"] == 75
    assert written["progress"]["finished"] == _N_RUNS  # All in the plan.
    assert written["progress"]["runs_in_dir"] == _N_RUNS
    assert "lenet300_100_snfs_s90_seed0_e20" in written["progress"]["missing"]
    assert not [k for k in written["progress"]["missing"] if "block4x1" in k or "nm2of4" in k]
    assert len(written["runs"]) == _N_RUNS
    n_m = [r for r in written["runs"] if r["structure"] == "nm2of4"]
    assert [r["structure_holds"] for r in n_m] == [True, False, True]
    assert written["config"]["structures"]["nm2of4"]["n_m"] == [2, 4]
    assert [t["status"] for t in written["targets"]] == [t["status"] for t in report["targets"]]
    markdown = (out / "accuracy.md").read_text(encoding="utf-8")
    assert markdown == written["markdown"]
    assert "| RigL | 97.80 ± 1.00 (3) |" in markdown
    assert "- **missed**: RigL at 98% within 1.0 points of dense" in markdown
    assert "45 of 75 planned runs finished" in markdown
    assert "- met: " + _BLOCK_TARGET in markdown
    assert "- **missed**: " + _NM_TARGET in markdown
    if importlib.util.find_spec("matplotlib") is not None:
        assert written["plot"] == "accuracy.png"
        assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dry_run_writes_nothing(fake_runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert accuracy.main(["--dry_run", "--models", "lenet5", "--seeds", "0",
                          "--runs_dir", str(fake_runs), "--output_dir", str(out)]) is None
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "todo  lenet5_dense_seed0_e10"
    assert printed[-1] == "0 of 7 runs finished, 7 to do"
    assert not out.exists()


# ---------------------------------------------------------------------------
# End to end on real MNIST (tiny runs through the real CLI).
# ---------------------------------------------------------------------------

_TINY = ["--models", "lenet300_100", "--sparsities", "0.9", "--block_sparsities", "0.9",
         "--seeds", "0", "--epochs", "1", "--steps_per_epoch", "2"]


# Runs a sweep of the CLI end to end (about a minute): its tests are slow.
@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    default = pathlib.Path(__file__).resolve().parents[2] / "shared" / "tfds"
    data_dir = pathlib.Path(os.environ.get("TFDS_DATA_DIR", default))
    if not (data_dir / "mnist").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"MNIST in TFDS format is missing from {data_dir}")
        pytest.skip(f"MNIST in TFDS format not found in {data_dir}")
    previous = os.environ.get("TFDS_DATA_DIR")
    os.environ["TFDS_DATA_DIR"] = str(data_dir)  # the runs are subprocesses
    root = tmp_path_factory.mktemp("accuracy")
    argv = _TINY + ["--methods", "dense,rigl", "--runs_dir", str(root / "runs"),
                    "--output_dir", str(root / "out"), "--log_dir", str(root / "logs")]
    try:
        yield root, argv, accuracy.main(argv)
    finally:
        if previous is None:
            os.environ.pop("TFDS_DATA_DIR", None)
        else:
            os.environ["TFDS_DATA_DIR"] = previous


_TINY_KEYS = ["lenet300_100_dense_seed0_e1_spe2", "lenet300_100_rigl_s90_seed0_e1_spe2",
              "lenet300_100_rigl_block4x1_s90_seed0_e1_spe2",
              "lenet300_100_rigl_nm2of4_s50_seed0_e1_spe2"]


@pytest.mark.slow
def test_tiny_sweep_runs_and_reports(tiny_sweep):
    root, _, report = tiny_sweep
    keys = _TINY_KEYS[:2]
    assert report["executed"] == _TINY_KEYS and report["skipped"] == []
    assert sorted(p.name for p in (root / "runs").iterdir()) == sorted(
        f"{k}.json" for k in _TINY_KEYS)
    written = json.loads((root / "out" / "accuracy.json").read_text(encoding="utf-8"))
    assert written["progress"] == {"planned": 4, "finished": 4, "missing": [],
                                   "failed_this_invocation": [], "runs_in_dir": 4}
    command = shlex.split(written["command"])
    assert command[:3] == ["python", "-m", "benchmarks.accuracy"]
    parsed = accuracy.parse_args(command[3:])
    for name in ("models", "methods", "sparsities", "epochs", "seeds", "steps_per_epoch"):
        value = getattr(parsed, name)
        value = list(value) if isinstance(value, (list, tuple)) else value
        assert written["config"][name] == value, name
    # The runs depend on the CLI too: its files are in the digests.
    assert {"rigl_keras/layers.py", "rigl_keras/experiments/train.py",
            "benchmarks/accuracy_tfmot.py"} <= set(written["code"])
    by_key = {r["key"]: r for r in written["runs"]}
    for key in keys:
        run = json.loads((root / "runs" / f"{key}.json").read_text(encoding="utf-8"))
        assert by_key[key]["test_accuracy"] == run["test_accuracy"]
        assert 0.0 <= run["test_accuracy"] <= 1.0
        assert run["steps"] == 2 and run["flags"]["batch_size"] == 128
        assert "results_json" not in run and "results_json" not in run["flags"]
        assert set(run["history"]) <= set(accuracy._HISTORY_KEEP)
        command = shlex.split(run["benchmark"]["command"])
        assert command[:3] == ["python", "-m", "rigl_keras.experiments.train"]
    rigl = by_key[keys[1]]
    assert rigl["measured_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert rigl["train_flops"] < 1.0 and rigl["inference_flops"] == pytest.approx(0.1, abs=1e-3)
    assert by_key[keys[0]]["measured_sparsity"] == 0.0
    markdown = (root / "out" / "accuracy.md").read_text(encoding="utf-8")
    assert "### LeNet-300-100 on MNIST, 1 epoch of at most 2 steps" in markdown
    assert "| RigL | " in markdown and "| Dense | " in markdown
    assert "4 of 4 planned runs finished." in markdown
    if importlib.util.find_spec("matplotlib") is not None:
        png = (root / "out" / "accuracy.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


@pytest.mark.parametrize(
    "key, flag, value, distribution, structure",
    [
        (_TINY_KEYS[2], "block_shape", [4, 1], "erk", "Block(shape=(4, 1))"),
        (_TINY_KEYS[3], "n_m", [2, 4], "uniform", "NM(n=2, m=4)"),
    ],
)
@pytest.mark.slow
def test_tiny_sweep_trains_structured_masks(tiny_sweep, key, flag, value, distribution,
                                            structure):
    root, _, _ = tiny_sweep
    run = json.loads((root / "runs" / f"{key}.json").read_text(encoding="utf-8"))
    assert run["flags"][flag] == value and run["flags"]["distribution"] == distribution
    assert run["flags"]["method"] == "rigl" and run["steps"] == 2
    # The trainer checked the trained masks against the structure.
    assert run["structure"] == {"structure": structure, "holds": True, "violations": {}}
    assert f"--{flag}={value[0]},{value[1]}" in shlex.split(run["benchmark"]["command"])
    assert run["benchmark"]["structure"] == key.split("_")[3]
    written = json.loads((root / "out" / "accuracy.json").read_text(encoding="utf-8"))
    (row,) = [r for r in written["runs"] if r["key"] == key]
    assert row["structure_holds"] is True
    if flag == "n_m":
        # 2:4 with the uniform distribution: every kernel at 50%.
        assert run["sparsity"] == pytest.approx(0.5)
        assert set(run["layer_sparsity"].values()) == {0.5}
    else:
        # 4x1 blocks with ERK: the same per-layer sparsities as unstructured
        # RigL up to whole blocks (4 entries).
        plain = json.loads((root / "runs" / f"{_TINY_KEYS[1]}.json").read_text())
        assert run["sparsity"] == pytest.approx(0.9, abs=1e-3)
        for name, sparsity in plain["layer_sparsity"].items():
            assert run["layer_sparsity"][name] == pytest.approx(sparsity, abs=1e-3)
    markdown = (root / "out" / "accuracy.md").read_text(encoding="utf-8")
    assert "### LeNet-300-100 on MNIST, 1 epoch of at most 2 steps: structured masks" in markdown
    assert "1 of 1 |" in markdown.split("structured masks")[1]


@pytest.mark.slow
def test_tiny_sweep_is_resumable(tiny_sweep):
    root, argv, _ = tiny_sweep
    runs = sorted((root / "runs").iterdir())
    before = {p.name: p.stat().st_mtime_ns for p in runs}
    again = accuracy.main(argv)
    assert again["executed"] == []
    assert again["skipped"] == _TINY_KEYS  # In plan order.
    assert sorted(again["skipped"]) == [p.stem for p in runs]
    assert {p.name: p.stat().st_mtime_ns for p in sorted((root / "runs").iterdir())} == before


@pytest.mark.slow
@pytest.mark.skipif(not _HAS_TFMOT, reason="needs tf_keras and tensorflow-model-optimization")
def test_tfmot_run_through_the_sweep(tmp_path):
    argv = _TINY + ["--methods", "tfmot", "--runs_dir", str(tmp_path / "runs"),
                    "--output_dir", str(tmp_path / "out"), "--log_dir", str(tmp_path / "logs")]
    report = accuracy.main(argv)
    assert report["executed"] == ["lenet300_100_tfmot_s90_seed0_e1_spe2"]
    run = json.loads((tmp_path / "runs" / f"{report['executed'][0]}.json").read_text())
    assert run["flags"]["method"] == "tfmot_prune"
    assert run["flags"]["layer_targets"] == pytest.approx(
        accuracy.erk_targets("lenet300_100", 0.9))
    assert set(run["layer_sparsity"]) == {"fc1", "fc2", "fc3"}
    assert 0.0 <= run["test_accuracy"] <= 1.0 and run["steps"] == 2
    assert run["train_flops"] is None and "tf_keras" in run["versions"]
    assert "| Pruning (TFMOT) | " in report["markdown"]
