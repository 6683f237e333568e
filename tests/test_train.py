"""Tests of the training CLI (rigl_keras.experiments.train) and its input pipeline.

The tests call `train(TrainConfig(...))` or `main` in-process on TFDS mock
data (`tfds.testing.mock_data`: random images with the real features); one
trains on the real MNIST from `TFDS_DATA_DIR` (default
`<repo>/../shared/tfds`), which must be there when the `CI` environment
variable is set. tests/test_cli.py runs the command line in subprocesses.
"""

import dataclasses
import doctest
import glob
import importlib.util
import json
import math
import os
import re
import subprocess
import sys

from absl import flags
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from _helpers import by_layer  # tests/_helpers.py
from _helpers import require_real_mnist
from rigl_keras.experiments import config as config_lib
from rigl_keras.experiments import data
from rigl_keras.experiments import models
from rigl_keras.experiments import train as train_lib

SPARSE_METHODS = ("static", "set", "snfs", "rigl", "prune")
TINY = dict(epochs=1, steps_per_epoch=5, batch_size=16, verbose=0)


def _require_tensorboard():
    if importlib.util.find_spec("tensorboard") is None:
        message = "the tensorboard package is not installed"
        if os.environ.get("CI"):
            pytest.fail(message + ": it must be installed for --logdir")
        pytest.skip(message)


def _run_mock(tmp_path, num_examples=100, **kwargs):
    kwargs.setdefault("results_json", str(tmp_path / "results.json"))
    config = train_lib.TrainConfig(**{**TINY, **kwargs})
    with tfds.testing.mock_data(num_examples=num_examples):
        return train_lib.train(config)


def _expected_rigl_flops(inference_ratio, update_freq):
    # (3 f_S dT + 2 f_S + f_D) / (dT + 1), relative to 3 f_D.
    r = inference_ratio
    return (3 * r * update_freq + 2 * r + 1) / (update_freq + 1) / 3


# ----------------------------------------------------------------------
# Every method, in-process on mock MNIST.


@pytest.mark.parametrize("method", list(train_lib.METHODS))
def test_every_method_trains_and_reports(tmp_path, method):
    results = _run_mock(tmp_path, method=method, update_freq=3)
    # 100 examples / 16 = 7 batches per epoch, capped at 5.
    assert results["steps"] == results["steps_per_epoch"] == 5
    assert 0.0 <= results["test_accuracy"] <= 1.0
    assert np.isfinite(results["test_loss"])
    assert results["wall_seconds"] > 0
    assert results["wall_seconds"] >= results["train_seconds"]
    assert set(results["layer_sparsity"]) == {"fc1/kernel", "fc2/kernel", "fc3/kernel"}
    r_inf, r_train = results["inference_flops"], results["train_flops"]
    if method == "dense":
        assert results["sparsity"] < 1e-3
        assert r_inf == r_train == 1.0
    elif method == "small_dense":
        assert results["sparsity"] < 1e-3
        widths = results["small_dense"]["widths"]
        assert widths == [33, 12]
        # A dense MLP's FLOPs are 2 x its kernel weights: same ratio.
        assert r_inf == pytest.approx(results["kernel_params"] / 266_200)
        assert r_train == pytest.approx(r_inf)
    else:
        # ERK at 90% over the whole model, fc3 dense.
        assert results["sparsity"] == pytest.approx(0.9, abs=1e-4)
        assert results["layer_sparsity"]["fc3/kernel"] == 0.0
        assert r_inf == pytest.approx(0.1, abs=1e-4)
        expected_train = {
            "static": r_inf,
            "set": r_inf,
            "snfs": (2 * r_inf + 1) / 3,
            "rigl": _expected_rigl_flops(r_inf, 3),
        }
        if method in expected_train:
            assert r_train == pytest.approx(expected_train[method])
        else:  # prune: dense at first, sparser later.
            assert r_inf < r_train < 1.0
        assert results["history"]["sparsity"][-1] == pytest.approx(
            results["sparsity"], abs=1e-6)
    # end_step = round(0.75 * 5) = 4: one update, at step 3, with the
    # cosine drop fraction 0.3 * (1 + cos(pi * 3 / 4)) / 2.
    if method in ("set", "snfs", "rigl"):
        assert results["end_step"] == 4
        assert results["history"]["drop_fraction"][-1] == pytest.approx(
            0.15 * (1 + math.cos(math.pi * 3 / 4)))
    if method == "static":
        assert results["history"]["drop_fraction"][-1] == 0.0
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == results


def test_results_json_holds_every_flag_and_the_top_level_metrics(tmp_path):
    path = tmp_path / "out" / "r.json"
    results = _run_mock(tmp_path, method="rigl", sparsity=0.8, seed=7,
                        results_json=str(path), distribution="uniform",
                        dense_layers=("fc3",))
    on_disk = json.loads(path.read_text())
    for key in ("test_accuracy", "test_loss", "sparsity", "train_flops",
                "inference_flops", "wall_seconds"):
        assert isinstance(on_disk[key], float), key
    assert on_disk["results_json"] == str(path)
    flag_values = flags.FlagValues()
    train_lib.define_flags(flag_values)
    config_fields = {f.name for f in dataclasses.fields(train_lib.TrainConfig)}
    assert set(on_disk["flags"]) == config_fields
    assert config_fields <= set(flag_values)  # Every field is a flag.
    assert on_disk["flags"]["sparsity"] == 0.8
    assert on_disk["flags"]["seed"] == 7
    assert on_disk["flags"]["steps_per_epoch"] == 5
    assert on_disk["flags"]["dense_layers"] == ["fc3"]
    # Uniform: every layer at 80%, but fc3 kept dense.
    assert results["layer_sparsity"] == pytest.approx(
        {"fc1/kernel": 0.8, "fc2/kernel": 0.8, "fc3/kernel": 0.0}, abs=1e-4)


def test_same_seed_same_run(tmp_path):
    first = _run_mock(tmp_path, method="rigl", update_freq=2, seed=3)
    second = _run_mock(tmp_path, method="rigl", update_freq=2, seed=3,
                       results_json=str(tmp_path / "second.json"))
    assert first["history"]["loss"] == second["history"]["loss"]
    assert first["test_loss"] == second["test_loss"]


def test_lenet5_with_adam_and_er(tmp_path):
    results = _run_mock(tmp_path, model="lenet5", optimizer="adam",
                        distribution="er", lr_schedule="constant")
    assert set(by_layer(results["layer_sparsity"])) == {"conv1", "conv2", "fc1", "fc2"}
    assert results["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert results["flags"]["learning_rate"] is None  # Adam's default 1e-3.


def test_tiny_wrn_on_cifar10_with_augmentation(tmp_path):
    results = _run_mock(
        tmp_path, dataset="cifar10", model="wrn_22_2", wrn_depth=10,
        wrn_width=1, augment=True, lr_schedule="step", num_examples=48,
        batch_size=8, steps_per_epoch=3, weight_decay=5e-4,
    )
    assert results["dataset"]["input_shape"] == [32, 32, 3]
    assert len(results["layer_sparsity"]) == 1 + 6 + 2 + 1
    assert results["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert np.isfinite(results["test_loss"])


def test_learning_rate_schedules():
    config = train_lib.TrainConfig(lr_schedule="step", learning_rate=0.5)
    schedule = train_lib._learning_rate(config, 100)
    values = [float(schedule(s)) for s in (0, 29, 31, 61, 81)]
    assert values == pytest.approx([0.5, 0.5, 0.1, 0.02, 0.004])
    cosine = train_lib._learning_rate(train_lib.TrainConfig(), 100)
    assert float(cosine(0)) == pytest.approx(0.1)
    assert float(cosine(50)) == pytest.approx(0.05)
    assert float(cosine(100)) == pytest.approx(0.0, abs=1e-7)
    adam = train_lib.TrainConfig(optimizer="adam", lr_schedule="constant")
    assert train_lib._learning_rate(adam, 100) == 1e-3


# ----------------------------------------------------------------------
# TensorBoard and exports.


def _scalars(logdir, run="train"):
    """`{tag: [(step, value), ...]}` of the scalars under `logdir/run`."""
    found = {}
    for path in glob.glob(os.path.join(logdir, run, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    found.setdefault(value.tag, []).append(
                        (event.step, float(tf.make_ndarray(value.tensor))))
    return found


def test_tensorboard_has_loss_sparsity_and_drop_fraction(tmp_path):
    _require_tensorboard()
    logdir = str(tmp_path / "tb")
    results = _run_mock(tmp_path, method="rigl", logdir=logdir, epochs=2,
                        steps_per_epoch=3, update_freq=2, results_json=None)
    scalars = {tag: [v for _, v in values] for tag, values in _scalars(logdir).items()}
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_sparsity",
                "epoch_drop_fraction", "epoch_learning_rate"):
        assert len(scalars.get(tag, [])) == 2, (tag, sorted(scalars))
    assert scalars["epoch_sparsity"] == pytest.approx([0.9, 0.9], abs=1e-4)
    assert scalars["epoch_drop_fraction"] == pytest.approx(
        results["history"]["drop_fraction"])
    # The final test metrics, with the training tags, at the last epoch.
    test = _scalars(logdir, "test")
    assert test == {
        "epoch_loss": [(1, pytest.approx(results["test_loss"], rel=1e-6))],
        "epoch_accuracy": [(1, pytest.approx(results["test_accuracy"], rel=1e-6))],
    }
    # Without --results_json the JSON goes next to the TensorBoard logs.
    assert results["results_json"] == os.path.join(os.path.abspath(logdir), "results.json")
    assert os.path.exists(results["results_json"])


def test_logdir_without_tensorboard_is_a_usage_error(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a))
    config = train_lib.TrainConfig(logdir=str(tmp_path), **TINY)
    with pytest.raises(train_lib.UsageError, match="pip install tensorboard"):
        train_lib.train(config)


def test_export_saved_model_and_tflite(tmp_path):
    export_dir = tmp_path / "saved"
    tflite = tmp_path / "m.tflite"
    results = _run_mock(tmp_path, method="rigl", export_dir=str(export_dir),
                        tflite_path=str(tflite))
    assert (export_dir / "saved_model.pb").exists()
    assert tflite.stat().st_size > 0
    assert results["export_dir"] == str(export_dir)
    loaded = tf.saved_model.load(str(export_dir))
    assert "serving_default" in loaded.signatures


def _output_kwargs(tmp_path, which):
    """TrainConfig kwargs whose output `which` exists already."""
    if which == "results_json":
        (tmp_path / "r.json").write_text("{}")
        return {"results_json": str(tmp_path / "r.json")}
    if which == "logdir":  # Its default results JSON.
        (tmp_path / "tb").mkdir()
        (tmp_path / "tb" / "results.json").write_text("{}")
        return {"logdir": str(tmp_path / "tb")}
    if which == "tflite_path":
        (tmp_path / "m.tflite").write_bytes(b"old")
        return {"tflite_path": str(tmp_path / "m.tflite")}
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"old")
    return {"export_dir": str(tmp_path / "saved")}


@pytest.mark.parametrize("which", ["results_json", "logdir", "tflite_path", "export_dir"])
def test_existing_outputs_are_refused_before_training(tmp_path, which):
    kwargs = _output_kwargs(tmp_path, which)
    empty = tmp_path / "no_data"
    empty.mkdir()
    # No dataset there: the output is checked before anything loads.
    config = train_lib.TrainConfig(data_dir=str(empty), **TINY, **kwargs)
    with pytest.raises(train_lib.UsageError, match="overwrite=True") as info:
        train_lib.train(config)
    assert str(info.value).startswith(f"`{which}` would replace the existing")
    assert info.value.flag_message.startswith(f"--{which}: ")
    assert "pass --overwrite to replace it" in info.value.flag_message
    with pytest.raises(data.DatasetUnavailableError):
        train_lib.train(dataclasses.replace(config, overwrite=True))


def test_overwrite_replaces_every_output(tmp_path):
    kwargs = {}
    for which in ("results_json", "tflite_path", "export_dir"):
        kwargs.update(_output_kwargs(tmp_path, which))
    results = _run_mock(tmp_path, overwrite=True, **kwargs)
    assert json.loads((tmp_path / "r.json").read_text()) == results
    assert (tmp_path / "m.tflite").read_bytes() != b"old"
    assert (tmp_path / "saved" / "saved_model.pb").read_bytes() != b"old"


def test_results_json_is_written_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = _run_mock(tmp_path, results_json=None)
    assert results["results_json"] is None
    assert os.listdir(tmp_path) == []
    assert "results JSON" not in train_lib.format_summary(results)


def test_summary_counts_epochs_in_words():
    results = {
        "flags": dict(train_lib.TrainConfig(epochs=1).to_dict(), batch_size=16),
        "steps": 5, "steps_per_epoch": 5, "test_accuracy": 0.5, "test_loss": 1.0,
        "sparsity": 0.9, "layer_sparsity": {"fc1": 0.9}, "train_flops": 0.1,
        "inference_flops": 0.1, "wall_seconds": 2.0, "train_seconds": 1.0,
        "results_json": None,
    }
    assert re.search(r"^steps +5 \(1 epoch x 5, batch 16\)$",
                     train_lib.format_summary(results), re.M)
    results["flags"]["epochs"], results["steps"] = 2, 10
    assert re.search(r"^steps +10 \(2 epochs x 5, batch 16\)$",
                     train_lib.format_summary(results), re.M)


# ----------------------------------------------------------------------
# Errors: flags, config, missing data.


def _parse(*args):
    flag_values = flags.FlagValues()
    train_lib.define_flags(flag_values)
    flag_values(["rigl-train", *args])
    return train_lib.config_from_flags(flag_values)


def test_flags_map_to_config():
    config = _parse("--method=snfs", "--model=lenet5", "--sparsity=0.8",
                    "--dense_layers=conv1,fc2", "--steps_per_epoch=7")
    assert config.method == "snfs" and config.model == "lenet5"
    assert config.sparsity == 0.8 and config.dense_layers == ("conv1", "fc2")
    assert config.steps_per_epoch == 7
    defaults = _parse()
    assert (defaults.dataset, defaults.model, defaults.method,
            defaults.sparsity, defaults.distribution) == (
                "mnist", "lenet300_100", "rigl", 0.9, "erk")
    assert defaults.data_dir is None  # TFDS's own default (TFDS_DATA_DIR).
    assert defaults == train_lib.TrainConfig()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method=sparse_magic"], "flag --method=sparse_magic: value should be one of <dense|small_dense|"),
        (["--model=resnet50"],
         "flag --model=resnet50: value should be one of <lenet300_100|lenet5|wrn_22_2>"),
        (["--distribution=random"], "flag --distribution=random: value should be one of <uniform|er|erk>"),
        (["--sparsity=abc"], "flag --sparsity=abc: could not convert string to float"),
        (["--sparsity=1.5"], "--sparsity must be in [0, 1); got 1.5"),
        (["--sparsity=-0.1"], "--sparsity must be in [0, 1); got -0.1"),
        (["--end_fraction=0"], "--end_fraction must be in (0, 1]; got 0.0"),
        (["--epochs=0"], "--epochs must be an integer >= 1; got 0"),
        (["--steps_per_epoch=0"], "--steps_per_epoch must be an integer >= 1; got 0"),
        (["--wrn_depth=20"], "--wrn_depth must be 6 * n + 4 with n >= 1 (10, 16, 22, 28, ...); got 20"),
        (["--dense_layers=fc1,nosuch"],
         "--dense_layers must be names of lenet300_100's layers (fc1, fc2, fc3); got fc1,nosuch"),
        (["--model=lenet5", "--dense_layers=fc3"],
         "--dense_layers must be names of lenet5's layers (conv1, conv2, fc1, fc2); got fc3"),
    ],
)
def test_bad_flags_are_rejected_in_flag_words(args, message):
    with pytest.raises((flags.Error, train_lib.UsageError)) as info:
        _parse(*args)
    error = info.value
    got = error.flag_message if isinstance(error, train_lib.UsageError) else str(error)
    assert got.startswith(message), got


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sparsity": 1.0}, r"^`sparsity` must be in \[0, 1\)\. Received: sparsity=1\.0$"),
        ({"method": "magic"}, "^`method` must be one of dense, small_dense, "),
        ({"wrn_depth": 20}, "Received: wrn_depth=20$"),
        ({"learning_rate": 0.0}, "a positive number or None. Received: learning_rate=0.0$"),
        ({"steps_per_epoch": 0}, "Received: steps_per_epoch=0$"),
        ({"dense_layers": ["fc9"]}, r"\(fc1, fc2, fc3\)\. Received: dense_layers=\('fc9',\)$"),
    ],
)
def test_bad_config_raises_value_error_in_python_words(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_lib.TrainConfig(**kwargs)


@pytest.mark.parametrize(
    "model, kwargs",
    [("lenet300_100", {}), ("lenet5", {}),
     ("wrn_22_2", {"depth": 22, "width": 2}), ("wrn_22_2", {"depth": 10, "width": 1})],
)
def test_layer_names_known_before_building_are_the_built_ones(model, kwargs):
    architecture = train_lib.MODELS[model].architecture
    built = models.build(architecture, input_shape=(32, 32, 3), num_classes=10, **kwargs)
    expected = list(by_layer(models.kernel_shapes(built)))
    names = config_lib.kernel_layer_names(
        model, kwargs.get("depth", 22), kwargs.get("width", 2))
    assert sorted(names) == sorted(expected)


def test_missing_dataset_names_data_dir_and_env_var(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    config = train_lib.TrainConfig(data_dir=str(empty), **TINY)
    with pytest.raises(data.DatasetUnavailableError) as info:
        train_lib.train(config)
    message = str(info.value)
    assert "--data_dir" in message and "TFDS_DATA_DIR" in message
    assert str(empty) in message and "'mnist'" in message
    with pytest.raises(data.DatasetError, match="no dataset named 'no_such_set'"):
        train_lib.train(train_lib.TrainConfig(dataset="no_such_set", **TINY))


def _main_in_process(monkeypatch, *args):
    """`train_lib.main` on mock data with `args` parsed into fresh flags."""
    flag_values = flags.FlagValues()
    train_lib.define_flags(flag_values)
    flag_values(["rigl-train", *args])
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")  # The user's choice: kept.
    verbosity = train_lib.logging.get_verbosity()
    try:
        with tfds.testing.mock_data(num_examples=40):
            train_lib.main(["rigl-train"], flag_values)
    finally:
        train_lib.logging.set_verbosity(verbosity)


def test_cli_reports_a_setup_value_error_in_one_line(tmp_path, monkeypatch, capsys):
    def bad_build(*args, **kwargs):
        raise ValueError("`input_shape` is too small.\nUse bigger images.")

    monkeypatch.setattr(models, "build", bad_build)
    with pytest.raises(SystemExit) as info:
        _main_in_process(monkeypatch, "--epochs=1", "--steps_per_epoch=1", "--verbose=0")
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "rigl_keras.experiments.train: error: `input_shape` is too small. Use bigger images.")


def test_cli_lets_an_error_while_training_propagate(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise ValueError("boom in fit")

    monkeypatch.setattr(keras.Model, "fit", crash)
    with pytest.raises(ValueError, match="boom in fit"):
        _main_in_process(monkeypatch, "--epochs=1", "--steps_per_epoch=1", "--verbose=0",
                         f"--results_json={tmp_path / 'r.json'}")


# ----------------------------------------------------------------------
# Input pipeline.


def test_load_dataset_batches_floats_in_unit_range():
    with tfds.testing.mock_data(num_examples=20):
        ds = data.load_dataset("mnist", "train", batch_size=8, seed=1)
        batches = list(ds)
        info = data.dataset_info("mnist")
    assert [int(b[0].shape[0]) for b in batches] == [8, 8, 4]
    images, labels = batches[0]
    assert images.dtype == tf.float32 and tuple(images.shape[1:]) == (28, 28, 1)
    assert labels.dtype == tf.int64
    assert float(tf.reduce_min(images)) >= 0.0 and float(tf.reduce_max(images)) <= 1.0
    assert (info.input_shape, info.num_classes) == ((28, 28, 1), 10)


def test_augment_is_a_shifted_window_maybe_flipped():
    image = tf.reshape(tf.range(6 * 5 * 2, dtype=tf.float32) + 1.0, (6, 5, 2))
    padded = np.pad(image.numpy(), ((4, 4), (4, 4), (0, 0)))
    seen_flip = set()
    for index in range(20):
        out = data._augment(image, tf.constant([0, index], tf.int64)).numpy()
        assert out.shape == (6, 5, 2)
        matches = [
            (dy, dx, flip)
            for dy in range(9) for dx in range(9) for flip in (False, True)
            if np.array_equal(
                out, (padded[dy:dy + 6, dx:dx + 5][:, ::-1] if flip
                      else padded[dy:dy + 6, dx:dx + 5]))
        ]
        assert matches, index
        seen_flip.add(matches[0][2])
        again = data._augment(image, tf.constant([0, index], tf.int64)).numpy()
        np.testing.assert_array_equal(out, again)  # Stateless: reproducible.
    assert seen_flip == {False, True}


# ----------------------------------------------------------------------
# Real data and the entry point.


def test_rigl_lenet300_100_on_real_mnist(tmp_path):
    data_dir = require_real_mnist()
    results = train_lib.train(train_lib.TrainConfig(
        data_dir=data_dir, epochs=1, steps_per_epoch=300, update_freq=50,
        verbose=0, results_json=str(tmp_path / "r.json")))
    assert results["dataset"]["train_examples"] == 60_000
    assert results["test_accuracy"] > 0.85, results["test_accuracy"]
    assert results["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert results["history"]["drop_fraction"][-1] > 0.0


# ----------------------------------------------------------------------
# Structured masks (--block_shape, --n_m).


@pytest.mark.parametrize("method", ["rigl", "prune"])
def test_block_shape_trains_block_masks(tmp_path, method):
    results = _run_mock(tmp_path, method=method, update_freq=2, block_shape="4,1")
    assert results["flags"]["block_shape"] == [4, 1]
    assert results["structure"] == {
        "structure": "Block(shape=(4, 1))", "holds": True, "violations": {}}
    # fc1 (784 x 300) at its ERK target, counted in whole 4x1 blocks.
    zeros = results["layer_sparsity"]["fc1/kernel"] * 784 * 300
    assert zeros == pytest.approx(round(zeros)) and round(zeros) % 4 == 0


def test_n_m_trains_two_of_four_masks(tmp_path):
    results = _run_mock(tmp_path, method="rigl", update_freq=2, n_m=(2, 4),
                        sparsity=0.5, distribution="uniform")
    assert results["structure"]["holds"] is True
    assert results["sparsity"] == pytest.approx(0.5)


def test_block_that_does_not_fit_the_model_is_a_usage_error(tmp_path):
    # lenet5's conv1 kernel (5, 5, 1, 6) has 25 rows: 4 does not divide it.
    with pytest.raises(train_lib.UsageError) as error:
        _run_mock(tmp_path, model="lenet5", block_shape=(4, 1))
    assert error.value.flag_message.startswith("--block_shape: Block(shape=(4, 1)) does not fit")
    assert "conv1/kernel" in error.value.flag_message


def test_config_docstring_examples_and_no_tensorflow():
    results = doctest.testmod(config_lib)
    assert results.attempted > 0 and results.failed == 0
    # The configuration is checked before TensorFlow loads: the module (with
    # the package's __init__, which imports the library, left out) imports
    # nothing that imports it.
    package = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "rigl_keras")
    code = ("import sys, types; package = types.ModuleType('rigl_keras'); "
            f"package.__path__ = [{package!r}]; sys.modules['rigl_keras'] = package; "
            "import rigl_keras.experiments.config; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ["False", "False"]
