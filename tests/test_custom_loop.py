"""Tests for `rigl_keras.CustomLoop`: mask callbacks in a custom train loop.

Most tests train a small MLP (12 -> 32 -> 3, `MaskedDense` layers fc1 and
out) on 96 random samples in batches of 16 (6 optimizer steps per epoch),
with plain SGD so that a `tf.GradientTape` loop over the same batches and
`model.fit` compute the same numbers. The `MirroredStrategy` test runs
`tests/_multi_worker_script.py --mode=mirrored` in a subprocess (logical
CPU devices must be configured before TensorFlow starts);
`tests/test_multi_worker.py` covers `MultiWorkerMirroredStrategy`.
"""

import doctest
import json
import os
import pathlib
import re
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl_keras
from _helpers import SpiedRigL  # tests/_helpers.py
from _helpers import by_layer
from rigl_keras import masking
from rigl_keras import custom_loop as custom_loop_lib

_TESTS_DIR = pathlib.Path(__file__).resolve().parent
_REPO_ROOT = _TESTS_DIR.parent

_BATCH = 16
_STEPS_PER_EPOCH = 6  # 96 samples / batch 16.
# ERK at 0.8 over kernels (12, 32) and (32, 3): eps * (44 + 35) = 0.2 * 480,
# eps = 96 / 79; zeros floor(384 - 44 eps) = floor(330.53) = 330 and
# floor(96 - 35 eps) = floor(53.47) = 53.
_ERK_ZEROS = {"fc1": 330, "out": 53}


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 12)).astype("float32")
    y = rng.standard_normal((n, 3)).astype("float32")
    return x, y


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((12,)),
        rigl_keras.MaskedDense(32, activation="relu", name="fc1"),
        rigl_keras.MaskedDense(3, name="out"),
    ])


def _masks(model):
    return {l.name: np.asarray(l.mask).copy() for l in rigl_keras.masked_layers(model)}


def _zeros(model):
    return {name: int(np.sum(m == 0)) for name, m in _masks(model).items()}


def _rigl(cls=SpiedRigL, **kwargs):
    config = dict(
        sparsity=0.8, update_freq=2, end_step=10, drop_fraction=0.3,
        drop_fraction_schedule="constant", seed=3,
    )
    config.update(kwargs)
    return cls(**config)


class _ZeroTracker(keras.callbacks.Callback):
    """Placed after a mask callback in fit(): zero counts after each step."""

    def on_train_begin(self, logs=None):
        self.zeros = {0: _zeros(self.model)}

    def on_train_batch_end(self, batch, logs=None):
        step = int(np.asarray(self.model.optimizer.iterations.value))
        self.zeros[step] = _zeros(self.model)


def _fit(callback, epochs=2):
    x, y = _data()
    model = _mlp()
    model.compile(keras.optimizers.SGD(0.05), "mse")
    tracker = _ZeroTracker()
    model.fit(x, y, batch_size=_BATCH, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[callback, tracker])
    return model, tracker.zeros


def _begun_loop(callback, steps_per_call=1):
    """`(model, optimizer, loop)`: `_mlp()`, SGD(0.05), a begun CustomLoop."""
    model = _mlp()
    optimizer = keras.optimizers.SGD(0.05)
    loop = rigl_keras.CustomLoop(callback, model, optimizer,
                                 steps_per_call=steps_per_call)
    loop.begin()
    return model, optimizer, loop


def _sgd_step(model, optimizer, xb, yb, training=True):
    """One optimizer step on the MSE of `model(xb)` (inside a tf.function)."""
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(yb - model(xb, training=training)))
    optimizer.apply(tape.gradient(loss, model.trainable_variables),
                    model.trainable_variables)


def _loop(callback, epochs=2, steps_per_call=1, training=True):
    """The same training as `_fit`, in a GradientTape loop with CustomLoop.

    Returns `(model, loop, zeros)`, `zeros[step]` the per-layer zero counts
    after each `loop.step()`.
    """
    x, y = _data()
    model, optimizer, loop = _begun_loop(callback, steps_per_call)

    @tf.function
    def train_step(xs, ys):
        for i in range(steps_per_call):
            _sgd_step(model, optimizer, xs[i], ys[i], training=training)

    batches = [
        (x[i:i + _BATCH], y[i:i + _BATCH]) for i in range(0, len(x), _BATCH)
    ] * epochs
    zeros = {0: _zeros(model)}
    for start in range(0, len(batches), steps_per_call):
        chunk = batches[start:start + steps_per_call]
        train_step(np.stack([c[0] for c in chunk]), np.stack([c[1] for c in chunk]))
        due = loop.engine.next_update_step
        if loop.step() and isinstance(callback, SpiedRigL):
            callback.update_steps.append(due)
        zeros[start + steps_per_call] = _zeros(model)
    return model, loop, zeros


# ---------------------------------------------------------------------------
# 1. The custom loop reproduces fit().
# ---------------------------------------------------------------------------


def test_matches_fit_with_same_config_and_seed():
    fit_callback, loop_callback = _rigl(), _rigl()
    fit_model, fit_zeros = _fit(fit_callback)
    loop_model, loop, loop_zeros = _loop(loop_callback)
    # 12 steps, update_freq 2, end_step 10.
    assert fit_callback.update_steps == [2, 4, 6, 8, 10]
    assert loop_callback.update_steps == [2, 4, 6, 8, 10]
    assert by_layer(loop_callback.target_sparsities) == by_layer(fit_callback.target_sparsities)
    # Exact counts from the start to the end, at every step.
    assert sorted(loop_zeros) == sorted(fit_zeros) == list(range(13))
    for step in range(13):
        assert fit_zeros[step] == loop_zeros[step] == _ERK_ZEROS, step
    fit_layers = {l.name: l for l in rigl_keras.masked_layers(fit_model)}
    for layer in rigl_keras.masked_layers(loop_model):
        twin = fit_layers[layer.name]
        np.testing.assert_array_equal(np.asarray(layer.mask), np.asarray(twin.mask))
        np.testing.assert_allclose(
            np.asarray(layer.kernel), np.asarray(twin.kernel), rtol=0, atol=1e-6
        )
        assert np.all(np.asarray(layer.kernel)[np.asarray(layer.mask) == 0] == 0.0)
    logs = loop.logs()
    assert logs["sparsity"] == pytest.approx(
        sum(_ERK_ZEROS.values()) / (12 * 32 + 32 * 3)
    )
    assert logs["drop_fraction"] == pytest.approx(0.3)
    churn = by_layer({k[len("churn/"):]: v for k, v in logs.items() if k.startswith("churn/")})
    assert 0 < churn["fc1"] <= 0.3 and 0 < logs["itop_rate"] <= 1


def test_masks_change_at_update_steps_only():
    callback = _rigl()
    x, y = _data()
    model, optimizer, loop = _begun_loop(callback)

    @tf.function
    def train_step(xb, yb):
        _sgd_step(model, optimizer, xb, yb)

    changed, masks = [], _masks(model)
    for step in range(1, 13):
        i = (step - 1) % _STEPS_PER_EPOCH * _BATCH
        train_step(x[i:i + _BATCH], y[i:i + _BATCH])
        loop.step()
        new = _masks(model)
        if any(not np.array_equal(masks[k], new[k]) for k in masks):
            changed.append(step)
        masks = new
    assert changed == [2, 4, 6, 8, 10]


def test_end_stops_recording_while_updates_are_still_due():
    callback = _rigl()
    x, y = _data()
    model, optimizer, loop = _begun_loop(callback)

    @tf.function
    def train_step(xb, yb):
        _sgd_step(model, optimizer, xb, yb)

    for _ in range(3):
        train_step(x[:_BATCH], y[:_BATCH])
        loop.step()
    assert loop.engine.next_update_step == 4
    loop.end()
    # Step 4 was due a recording; after end() it records nothing.
    train_step(x[:_BATCH], y[:_BATCH])
    gradients = [np.asarray(g) for g in callback.dense_gradients.values()]
    assert gradients and not any(np.any(g) for g in gradients)


def test_steps_per_call_runs_several_steps_per_call():
    one, several = _rigl(), _rigl()
    model_one, _, _ = _loop(one)
    model_two, loop_two, zeros = _loop(several, steps_per_call=2)
    assert several.update_steps == one.update_steps == [2, 4, 6, 8, 10]
    assert sorted(zeros) == list(range(0, 13, 2))
    assert all(z == _ERK_ZEROS for z in zeros.values())
    for a, b in zip(rigl_keras.masked_layers(model_one),
                    rigl_keras.masked_layers(model_two)):
        np.testing.assert_array_equal(np.asarray(a.mask), np.asarray(b.mask))
    # The model's own steps_per_execution (used by fit) is left alone.
    assert loop_two.model.steps_per_execution == 1


def test_update_step_skipped_by_a_call_raises():
    # Two optimizer steps per call but steps_per_call=1 declared: the update
    # due at step 3 falls inside the second call.
    callback = _rigl(update_freq=3, end_step=9)
    with pytest.raises(ValueError, match="fell inside one execution"):
        _loop_declared_one_running_two(callback)


def _loop_declared_one_running_two(callback):
    x, y = _data()
    model, optimizer, loop = _begun_loop(callback)

    @tf.function
    def two_steps(xb, yb):
        for _ in range(2):
            _sgd_step(model, optimizer, xb, yb)

    for _ in range(3):
        two_steps(x[:_BATCH], y[:_BATCH])
        loop.step()


def test_layer_called_without_training_warns_of_zero_gradient():
    # Without training=True the layers do not record the dense gradient:
    # RigL would grow by tie-break only, and says so.
    with pytest.warns(UserWarning, match="zero at every inactive position"):
        _loop(_rigl(), training=False)


def test_static_sparse_training_needs_no_end_step():
    callback = rigl_keras.RigLCallback(sparsity=0.8, update_freq=None, seed=3)
    model, _, zeros = _loop(callback, epochs=1)
    assert all(z == _ERK_ZEROS for z in zeros.values())
    initial = {
        name: masking.random_mask(
            m.shape, _ERK_ZEROS[name],
            # Seeds are keyed by the weight's path below the model.
            masking.weight_seed(3, f"{name}/kernel"),
        )
        for name, m in _masks(model).items()
    }
    for name, mask in _masks(model).items():
        np.testing.assert_array_equal(mask, initial[name])


# ---------------------------------------------------------------------------
# 2. GradualPruningCallback through CustomLoop.
# ---------------------------------------------------------------------------


def test_gradual_pruning_via_custom_loop_matches_fit():
    def pruning():
        return rigl_keras.GradualPruningCallback(
            sparsity=0.8, distribution={"fc1": 0.8, "out": 0.5},
            begin_step=0, end_step=8, update_freq=2,
        )

    loop_model, _, zeros = _loop(pruning())
    fit_model, fit_zeros = _fit(pruning())
    # s_t = s_f * (1 - (1 - t / 8) ** 3): 1 - (1 - p) ** 3 is 0.578125,
    # 0.875, 0.984375, 1 at t = 2, 4, 6, 8. fc1 (384 weights, s_f 0.8):
    # floor(177.6) = 177, floor(268.8) = 268, floor(302.4) = 302,
    # floor(307.2) = 307; out (96 weights, s_f 0.5): floor(27.75) = 27,
    # 42, floor(47.25) = 47, 48.
    at_pruning_step = {
        0: {"fc1": 0, "out": 0},
        2: {"fc1": 177, "out": 27},
        4: {"fc1": 268, "out": 42},
        6: {"fc1": 302, "out": 47},
        8: {"fc1": 307, "out": 48},
    }
    for step in range(13):
        expected = at_pruning_step[min(step - step % 2, 8)]
        assert zeros[step] == expected, step
        assert fit_zeros[step] == expected, step
    fit_layers = {l.name: l for l in rigl_keras.masked_layers(fit_model)}
    for layer in rigl_keras.masked_layers(loop_model):
        np.testing.assert_array_equal(
            np.asarray(layer.mask), np.asarray(fit_layers[layer.name].mask)
        )


# ---------------------------------------------------------------------------
# 3. Argument errors.
# ---------------------------------------------------------------------------


def test_rejects_a_callback_that_is_not_a_mask_callback():
    model = _mlp()
    with pytest.raises(ValueError, match="Received: callback="):
        rigl_keras.CustomLoop(keras.callbacks.History(), model,
                              keras.optimizers.SGD(0.1))


@pytest.mark.parametrize("make_callback", [
    lambda: rigl_keras.RigLCallback(update_freq=2, seed=0),
    lambda: rigl_keras.GradualPruningCallback(sparsity=0.5, update_freq=2),
], ids=["rigl", "pruning"])
def test_requires_end_step(make_callback):
    with pytest.raises(ValueError, match="Received: end_step=None"):
        rigl_keras.CustomLoop(make_callback(), _mlp(), keras.optimizers.SGD(0.1))


def test_requires_an_optimizer():
    model = _mlp()  # Not compiled: no model.optimizer.
    with pytest.raises(ValueError, match="Received: optimizer=None"):
        rigl_keras.CustomLoop(_rigl(), model)


def test_uses_the_compiled_optimizer_by_default():
    model = _mlp()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    loop = rigl_keras.CustomLoop(_rigl(), model)
    assert loop.optimizer is model.optimizer


@pytest.mark.parametrize("steps_per_call", [0, -1, 1.5, True, "2", None])
def test_rejects_bad_steps_per_call(steps_per_call):
    with pytest.raises(ValueError, match=re.escape(
            f"Received: steps_per_call={steps_per_call!r}")):
        rigl_keras.CustomLoop(_rigl(), _mlp(), keras.optimizers.SGD(0.1),
                              steps_per_call=steps_per_call)


def test_update_freq_must_be_a_multiple_of_steps_per_call():
    model = _mlp()
    loop = rigl_keras.CustomLoop(_rigl(update_freq=3, end_step=9), model,
                                 keras.optimizers.SGD(0.1), steps_per_call=2)
    with pytest.raises(ValueError, match="Received: update_freq=3"):
        loop.begin()
    assert model.steps_per_execution == 1  # Restored after the check.


def test_step_before_begin_raises():
    loop = rigl_keras.CustomLoop(_rigl(), _mlp(), keras.optimizers.SGD(0.1))
    with pytest.raises(RuntimeError, match="begin"):
        loop.step()


def test_seed_check_is_for_multi_worker_only():
    # One process (default strategy, MirroredStrategy on one device) draws
    # seed=None itself; only several workers need a common seed
    # (tests/test_multi_worker.py checks the error there).
    assert not custom_loop_lib._is_multi_worker(tf.distribute.get_strategy())  # pylint: disable=protected-access
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert not custom_loop_lib._is_multi_worker(mirrored)  # pylint: disable=protected-access
    loop = rigl_keras.CustomLoop(
        rigl_keras.RigLCallback(sparsity=0.8, update_freq=2, end_step=4),
        _mlp(), keras.optimizers.SGD(0.1))
    loop.begin()
    assert isinstance(loop.callback.seed, int)


def test_module_doctests():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = doctest.testmod(
            custom_loop_lib,
            extraglobs={"keras": keras, "np": np, "rigl_keras": rigl_keras},
        )
    assert results.attempted > 0
    assert results.failed == 0


# ---------------------------------------------------------------------------
# 4. MirroredStrategy over two logical CPUs (subprocess).
# ---------------------------------------------------------------------------


def _run_script(mode, out, timeout=300):
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        process = subprocess.run(
            [sys.executable, str(_TESTS_DIR / "_multi_worker_script.py"),
             f"--mode={mode}", f"--out={out}"],
            capture_output=True, text=True, timeout=timeout, env=env,
            cwd=str(_REPO_ROOT), check=False,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{mode} script timed out after {timeout} s:\n{error.stderr}")
    if process.returncode != 0:
        pytest.fail(
            f"{mode} script failed (exit {process.returncode}).\n"
            f"stdout:\n{process.stdout[-3000:]}\nstderr:\n{process.stderr[-10000:]}"
        )


def _variable(values, layer, what):
    """Replica 0 of `<model>/<layer>/<what>` (the model's name varies)."""
    keys = [k for k in values if k.endswith(f"/{layer}/{what}@0")]
    assert len(keys) == 1, (layer, what, sorted(values))
    return values[keys[0]]


def test_mirrored_strategy_custom_loop(tmp_path):
    _run_script("mirrored", tmp_path)
    with np.load(tmp_path / "mirrored.npz") as loaded:
        mirrored = dict(loaded)
    with np.load(tmp_path / "single.npz") as loaded:
        single = dict(loaded)
    summary = json.loads((tmp_path / "mirrored.json").read_text())
    single_summary = json.loads((tmp_path / "single.json").read_text())
    assert summary["num_replicas_in_sync"] == 2
    # Same model and schedule as tests/test_multi_worker.py: ERK zeros 868,
    # 3846, 123; updates at 4, ..., 24 (cosine fraction 0 at 24).
    expected = {"fc1": 868, "fc2": 3846, "out": 123}
    assert summary["changed_steps"] == [4, 8, 12, 16, 20]
    assert single_summary["changed_steps"] == [4, 8, 12, 16, 20]
    replicas = {}
    for key, value in mirrored.items():
        if "@" in key:
            name, replica = key.rsplit("@", 1)
            replicas.setdefault(name, {})[replica] = value
    assert replicas and all(sorted(r) == ["0", "1"] for r in replicas.values())
    for name, copies in replicas.items():
        np.testing.assert_array_equal(copies["0"], copies["1"], err_msg=name)
    for layer, zeros in expected.items():
        mask = _variable(mirrored, layer, "mask")
        kernel = _variable(mirrored, layer, "kernel")
        assert int(np.sum(mask == 0)) == zeros, layer
        assert np.all(kernel[mask == 0] == 0.0), layer
        assert np.any(mask != mirrored[f"initial_mask/{layer}"]), layer
        # The replicas' dense gradients are averaged: the masks of one
        # process on the whole batch.
        np.testing.assert_array_equal(mask, _variable(single, layer, "mask"))
        np.testing.assert_allclose(
            kernel, _variable(single, layer, "kernel"), rtol=0, atol=1e-5
        )
