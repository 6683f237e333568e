"""Tests for `rigl_keras.callbacks.RigLCallback`.

Most tests train a tiny MLP (20 -> 32 -> 16 -> 4, three `MaskedDense`
layers) on 160 random samples with batch size 16, i.e. 10 optimizer steps
per epoch, and watch it with two instruments:

* `SpiedRigL` (tests/_helpers.py), a `RigLCallback` that records the steps
  at which it updates masks;
* `_MaskTracker`, a callback placed after it that snapshots the masks after
  every execution and records every step at which a mask changed, a zero
  count differed from the start, or an inactive kernel entry was not 0.0.

Expected values are hand-computed (ERK zero counts, update steps, cosine drop
fractions). The end-to-end test trains on a planted sparse teacher; the
`MirroredStrategy` test runs `tests/_mirrored_script.py` in a subprocess.
"""

import doctest
import json
import math
import os
import pathlib
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl_keras
from rigl_keras import callbacks as callbacks_lib
from rigl_keras import optimizer_state
from rigl_keras import schedules

import _helpers  # tests/_helpers.py
from _helpers import SpiedRigL
from _helpers import by_layer

_TESTS_DIR = pathlib.Path(__file__).resolve().parent
_REPO_ROOT = _TESTS_DIR.parent

_BATCH = 16
_STEPS_PER_EPOCH = 10  # 160 samples / batch 16.

# Substrings of the warnings RigLCallback issues.
_RIGL_WARNINGS = ("mask update", "dense gradient", "already has a sparse mask")


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------


_data = _helpers.regression_data


def _mlp(optimizer=None, steps_per_execution=1, seed=0):
    """`_helpers.compiled_mlp`, by default with SGD(0.05, momentum=0.9)."""
    return _helpers.compiled_mlp(
        optimizer or keras.optimizers.SGD(0.05, momentum=0.9),
        seed=seed,
        steps_per_execution=steps_per_execution,
    )


def _convnet(seed=0):
    """8x8x3 -> conv 3x3x8 -> conv 3x3x8 -> flatten -> dense 4."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        rigl_keras.MaskedConv2D(8, 3, activation="relu", name="conv1"),
        rigl_keras.MaskedConv2D(8, 3, activation="relu", name="conv2"),
        keras.layers.Flatten(),
        rigl_keras.MaskedDense(4, name="out"),
    ])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    return model


def _erk_zero_counts(shapes, sparsity):
    """Hand ERK: density_l = eps * sum(shape_l) / N_l, no layer saturated.

    `eps * sum_l sum(shape_l) = (1 - sparsity) * sum_l N_l`, and the zero
    count of a layer is `floor(N_l - eps * sum(shape_l))`.
    """
    total = sum(math.prod(s) for s in shapes.values())
    eps = (1.0 - sparsity) * total / sum(sum(s) for s in shapes.values())
    counts = {}
    for name, shape in shapes.items():
        assert eps * sum(shape) <= math.prod(shape), "a layer saturates"
        counts[name] = math.floor(math.prod(shape) - eps * sum(shape))
    return counts


def _step(model):
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


_numpy = _helpers.as_numpy


_masks = _helpers.mask_arrays


def _kernels(model):
    return {
        layer.name: _numpy(layer.kernel)
        for layer in rigl_keras.masked_layers(model)
    }


def _zero_counts(masks):
    return {name: int(np.sum(mask == 0)) for name, mask in masks.items()}


class _MaskTracker(keras.callbacks.Callback):
    """Placed after RigLCallback; checks invariants after every execution.

    Attributes:
        initial: Masks right after RigLCallback.on_train_begin.
        snapshots: `{step: masks}` after every execution.
        changed_steps: Steps after which some mask differed from the
            previous snapshot.
        violations: `(step, layer, what)` for every zero count that moved
            away from the initial one, every mask value outside {0, 1} and
            every inactive kernel entry that was not exactly 0.0.
    """

    def on_train_begin(self, logs=None):
        self.layers = rigl_keras.masked_layers(self.model)
        self.initial = _masks(self.model)
        self.counts = _zero_counts(self.initial)
        self.snapshots = {}
        self.changed_steps = []
        self.violations = []
        self._previous = self.initial

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        masks = _masks(self.model)
        if any(not np.array_equal(masks[n], self._previous[n]) for n in masks):
            self.changed_steps.append(step)
        for layer in self.layers:
            mask = masks[layer.name]
            if not np.all((mask == 0) | (mask == 1)):
                self.violations.append((step, layer.name, "mask values"))
            if int(np.sum(mask == 0)) != self.counts[layer.name]:
                self.violations.append((step, layer.name, "zero count"))
            kernel = _numpy(layer.kernel)
            if np.any(kernel[mask == 0] != 0.0):
                self.violations.append((step, layer.name, "inactive kernel"))
        self.snapshots[step] = masks
        self._previous = masks


def _fit(model, callbacks, x=None, y=None, epochs=3, **kwargs):
    """Fits without shuffling; fails on any RigLCallback warning."""
    if x is None:
        x, y = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            x, y, batch_size=_BATCH, epochs=epochs, shuffle=False, verbose=0,
            callbacks=callbacks, **kwargs,
        )
    rigl_warnings = [
        str(w.message) for w in caught
        if any(s in str(w.message) for s in _RIGL_WARNINGS)
    ]
    assert not rigl_warnings, rigl_warnings
    return history


def _expected_updates(begin, end, update_freq, last_step):
    return [
        t for t in range(1, last_step + 1)
        if begin < t <= end and (t - begin) % update_freq == 0
    ]


# Hand ERK for the MLP at sparsity 0.8: N = 640, 512, 64 (total 1216);
# sum(shape) = 52, 48, 20, eps = 0.2 * 1216 / 120 = 2.02667;
# zeros = floor(640 - 105.39), floor(512 - 97.28), floor(64 - 40.53).
_MLP_ZEROS_08 = {"fc1": 534, "fc2": 414, "out": 23}


# ---------------------------------------------------------------------------
# 1. Mask initialization at train begin.
# ---------------------------------------------------------------------------


def _begin(model, **kwargs):
    callback = rigl_keras.RigLCallback(**kwargs)
    callback.set_model(model)
    callback.on_train_begin()
    return callback


def test_initial_masks_mlp_hand_computed_erk():
    model = _mlp()
    kernels_before = _kernels(model)
    callback = _begin(model, sparsity=0.8, seed=3)
    shapes = {l.name: tuple(l.kernel.shape) for l in model.layers}
    assert _erk_zero_counts(shapes, 0.8) == _MLP_ZEROS_08
    masks = _masks(model)
    assert _zero_counts(masks) == _MLP_ZEROS_08
    # ... which is floor(target * N) of the library's own distribution.
    targets = rigl_keras.sparsity_distribution(model, 0.8, method="erk")
    assert callback.target_sparsities == targets
    targets = by_layer(targets)
    for layer in model.layers:
        n = math.prod(layer.kernel.shape)
        assert _MLP_ZEROS_08[layer.name] == math.floor(targets[layer.name] * n)
    for name, mask in masks.items():
        kernel = _numpy(model.get_layer(name).kernel)
        assert set(np.unique(mask)) == {0.0, 1.0}
        assert np.all(kernel[mask == 0] == 0.0)
        np.testing.assert_array_equal(
            kernel[mask == 1], kernels_before[name][mask == 1]
        )
    assert callback.current_sparsity() == pytest.approx(971 / 1216)


def test_initial_masks_convnet_hand_computed_erk():
    model = _convnet()
    _begin(model, sparsity=0.8, seed=0)
    # Kernels (3, 3, 3, 8), (3, 3, 8, 8) and (4 * 4 * 8, 4).
    shapes = {"conv1": (3, 3, 3, 8), "conv2": (3, 3, 8, 8), "out": (128, 4)}
    expected = _erk_zero_counts(shapes, 0.8)
    # eps = 0.2 * 1304 / 171 = 1.52515.
    assert expected == {"conv1": 190, "conv2": 542, "out": 310}
    masks = _masks(model)
    assert _zero_counts(masks) == expected
    for name, mask in masks.items():
        assert np.all(_numpy(model.get_layer(name).kernel)[mask == 0] == 0.0)


def _initial_masks(model_seed, seed):
    model = _mlp(seed=model_seed)
    _begin(model, sparsity=0.8, seed=seed)
    return _masks(model)


def test_initial_masks_depend_on_seed_only():
    masks_a = _initial_masks(model_seed=0, seed=5)
    masks_b = _initial_masks(model_seed=1, seed=5)
    masks_c = _initial_masks(model_seed=0, seed=6)
    for name in masks_a:
        np.testing.assert_array_equal(masks_a[name], masks_b[name])
    assert any(not np.array_equal(masks_a[n], masks_c[n]) for n in masks_a)


def test_resumed_sparse_mask_is_kept():
    model = _mlp()
    rng = np.random.default_rng(42)
    planted = {}
    for layer in model.layers:
        n = math.prod(layer.kernel.shape)
        mask = np.ones(n, np.float32)
        mask[rng.permutation(n)[: _MLP_ZEROS_08[layer.name]]] = 0.0
        planted[layer.name] = mask.reshape(layer.kernel.shape)
        layer.mask.assign(planted[layer.name])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _begin(model, sparsity=0.8, seed=3)
    for name, mask in _masks(model).items():
        np.testing.assert_array_equal(mask, planted[name])
        assert np.all(_numpy(model.get_layer(name).kernel)[mask == 0] == 0.0)


def test_resumed_mask_with_other_count_is_kept_with_warning():
    model = _mlp()
    mask = np.ones((20, 32), np.float32)
    mask[:10] = 0.0  # 320 zeros where the target is 534.
    model.get_layer("fc1").mask.assign(mask)
    with pytest.warns(UserWarning, match="fc1.*320 zeros.*534"):
        _begin(model, sparsity=0.8, seed=3)
    np.testing.assert_array_equal(_numpy(model.get_layer("fc1").mask), mask)
    assert _zero_counts(_masks(model))["fc2"] == _MLP_ZEROS_08["fc2"]


# ---------------------------------------------------------------------------
# 2.-3. Update schedule.
# ---------------------------------------------------------------------------


def test_updates_exactly_on_schedule_and_frozen_after_end_step():
    model = _mlp()
    rigl = SpiedRigL(
        sparsity=0.8, update_freq=3, begin_step=4, end_step=20,
        drop_fraction=0.3, drop_fraction_schedule="constant", seed=0,
    )
    tracker = _MaskTracker()
    _fit(model, [rigl, tracker], epochs=3)
    expected = [7, 10, 13, 16, 19]
    assert _expected_updates(4, 20, 3, 30) == expected
    assert rigl.update_steps == expected
    # Every update changed some mask, and masks changed at no other step.
    assert tracker.changed_steps == expected
    assert tracker.violations == []
    assert _zero_counts(_masks(model)) == _MLP_ZEROS_08
    for name, mask in tracker.snapshots[6].items():
        np.testing.assert_array_equal(mask, tracker.initial[name])
    final = _masks(model)
    for name in final:
        np.testing.assert_array_equal(tracker.snapshots[20][name], final[name])
        assert not np.array_equal(final[name], tracker.initial[name])
        kernel = _numpy(model.get_layer(name).kernel)
        assert np.all(kernel[final[name] == 0] == 0.0)


def test_drop_fraction_log_is_cosine_value_at_last_update():
    model = _mlp()
    rigl = SpiedRigL(
        sparsity=0.8, update_freq=4, end_step=25, drop_fraction=0.3, seed=0
    )
    history = _fit(model, [rigl], epochs=3)
    assert rigl.update_steps == [4, 8, 12, 16, 20, 24]

    def cosine(t):
        return 0.3 * 0.5 * (1.0 + math.cos(math.pi * t / 25))

    # Epochs end at steps 10, 20, 30; the last updates before are 8, 20, 24.
    assert history.history["drop_fraction"] == pytest.approx(
        [cosine(8), cosine(20), cosine(24)], rel=1e-6, abs=1e-7
    )


def test_end_step_none_is_75_percent_of_this_fit():
    model = _mlp()
    rigl = SpiedRigL(
        sparsity=0.8, update_freq=3, drop_fraction_schedule="constant", seed=0
    )
    tracker = _MaskTracker()
    _fit(model, [rigl, tracker], epochs=3)
    assert rigl.resolved_end_step == int(0.75 * 3 * _STEPS_PER_EPOCH) == 22
    assert rigl.update_steps == _expected_updates(0, 22, 3, 30)
    assert tracker.changed_steps[-1] == 21
    assert tracker.violations == []
    # A second fit() counts from where it starts: 30 + 0.75 * 20 = 45.
    rigl.update_steps = []
    _fit(model, [rigl], epochs=2)
    assert rigl.resolved_end_step == 45
    assert rigl.update_steps == _expected_updates(0, 45, 3, 50)[-5:]
    assert rigl.update_steps == [33, 36, 39, 42, 45]


def test_end_step_none_with_initial_epoch_keeps_uninterrupted_end_step():
    model = _mlp()
    _fit(model, [rigl_keras.RigLCallback(sparsity=0.8, update_freq=3, seed=0)],
         epochs=1)
    masks = _masks(model)
    # Resumed at epoch 1 of 3 by a fresh callback: the end step is that of
    # an uninterrupted 3-epoch run, 0.75 * 30 = 22, and the masks are kept.
    resumed = SpiedRigL(sparsity=0.8, update_freq=3, seed=1)
    tracker = _MaskTracker()
    _fit(model, [resumed, tracker], epochs=3, initial_epoch=1)
    assert resumed.resolved_end_step == 22
    assert resumed.update_steps == [12, 15, 18, 21]
    for name, mask in tracker.initial.items():
        np.testing.assert_array_equal(mask, masks[name])


def test_verbose_prints_one_line_per_update(capsys):
    model = _mlp()
    rigl = rigl_keras.RigLCallback(
        sparsity=0.8, update_freq=5, end_step=10, verbose=1,
        drop_fraction_schedule="constant", seed=0)
    _fit(model, [rigl], epochs=1)
    lines = [l for l in capsys.readouterr().out.splitlines() if "RigLCallback" in l]
    assert len(lines) == 2, lines
    assert "step 5:" in lines[0] and "step 10:" in lines[1]
    assert "drop fraction 0.3000" in lines[0] and "sparsity 0.7985" in lines[0]


def test_steps_per_execution_equal_to_update_freq():
    model = _mlp(steps_per_execution=5)
    rigl = SpiedRigL(
        sparsity=0.8, update_freq=5, end_step=25,
        drop_fraction_schedule="constant", seed=0,
    )
    tracker = _MaskTracker()
    # _fit also checks that no "dense gradient is all zeros" warning came:
    # the gradient of the update step is recorded inside the 5-step loop.
    _fit(model, [rigl, tracker], epochs=3)
    assert sorted(tracker.snapshots) == [5, 10, 15, 20, 25, 30]
    assert rigl.update_steps == [5, 10, 15, 20, 25]
    assert tracker.changed_steps == [5, 10, 15, 20, 25]
    assert tracker.violations == []


def test_optimizer_steps_skipped_by_loss_scale_optimizer():
    # A LossScaleOptimizer skips the optimizer step (iterations does not
    # advance) while the scaled gradients overflow: here the first step(s)
    # at scale 2**127 with a loss of ~100. Updates must still happen at the
    # optimizer steps 4, 8, ..., 24, not at batch counts.
    x, y = _data()
    model = _mlp(optimizer=keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.01), initial_scale=2.0**127))
    rigl = SpiedRigL(
        sparsity=0.8, update_freq=4, end_step=24,
        drop_fraction_schedule="constant", seed=0,
    )
    tracker = _MaskTracker()
    _fit(model, [rigl, tracker], x, 10.0 * y, epochs=3)
    assert _step(model) < 3 * _STEPS_PER_EPOCH  # Some steps were skipped.
    assert rigl.update_steps == [4, 8, 12, 16, 20, 24]
    assert tracker.changed_steps == [4, 8, 12, 16, 20, 24]
    assert tracker.violations == []


@pytest.mark.parametrize(
    "steps_per_execution, kwargs, argument",
    [
        (3, {"update_freq": 4}, "update_freq"),
        (4, {"update_freq": 4, "begin_step": 2}, "begin_step"),
    ],
)
def test_steps_per_execution_not_dividing_raises(
    steps_per_execution, kwargs, argument
):
    model = _mlp(steps_per_execution=steps_per_execution)
    rigl = rigl_keras.RigLCallback(sparsity=0.8, end_step=20, seed=0, **kwargs)
    with pytest.raises(ValueError, match=f"`{argument}`.*steps_per_execution"):
        _fit(model, [rigl], epochs=1)


# ---------------------------------------------------------------------------
# 4. Static, SET, SNFS.
# ---------------------------------------------------------------------------


def test_static_sparse_training_keeps_masks_fixed():
    model = _mlp()
    rigl = SpiedRigL(sparsity=0.8, update_freq=None, seed=0)
    tracker = _MaskTracker()
    history = _fit(model, [rigl, tracker], epochs=3)
    assert rigl.update_steps == []
    assert tracker.changed_steps == []
    assert tracker.violations == []
    assert _zero_counts(tracker.initial) == _MLP_ZEROS_08
    for name, mask in _masks(model).items():
        np.testing.assert_array_equal(mask, tracker.initial[name])
    assert history.history["sparsity"] == pytest.approx([971 / 1216] * 3)


@pytest.mark.parametrize("grow", ["random", "momentum"])
def test_set_and_snfs_keep_counts_exact(grow):
    model = _mlp(optimizer=keras.optimizers.Adam(0.01))
    rigl = SpiedRigL(
        sparsity=0.8, update_freq=4, end_step=24, grow=grow,
        drop_fraction_schedule="constant", seed=0,
    )
    tracker = _MaskTracker()
    _fit(model, [rigl, tracker], epochs=3)
    expected = [4, 8, 12, 16, 20, 24]
    assert rigl.update_steps == expected
    assert tracker.changed_steps == expected
    assert tracker.violations == []
    assert _zero_counts(_masks(model)) == _MLP_ZEROS_08


# ---------------------------------------------------------------------------
# 5. Optimizer state reset.
# ---------------------------------------------------------------------------


class _SlotProbe(keras.callbacks.Callback):
    """Fills the kernel slots with 0.5 before `step`, reads them after.

    (0.5 keeps RMSprop's centered variance `v - mean_grad ** 2` positive.)

    Placed after RigLCallback, so its `on_train_batch_end` sees the state
    right after the mask update of `step`.
    """

    def __init__(self, step):
        super().__init__()
        self.step = step

    def _slots(self, layer):
        return optimizer_state.optimizer_state_slots(
            self.model.optimizer, layer.kernel
        )

    def on_train_batch_begin(self, batch, logs=None):
        if _step(self.model) + 1 != self.step:
            return
        self.masks_before = _masks(self.model)
        for layer in rigl_keras.masked_layers(self.model):
            for variable, _ in self._slots(layer):
                variable.assign(np.full(variable.shape, 0.5, "float32"))

    def on_train_batch_end(self, batch, logs=None):
        if _step(self.model) != self.step:
            return
        self.masks_after = _masks(self.model)
        self.kernels_after = _kernels(self.model)
        self.slots_after = {
            layer.name: [
                (_numpy(variable), reset)
                for variable, reset in self._slots(layer)
            ]
            for layer in rigl_keras.masked_layers(self.model)
        }


@pytest.mark.parametrize(
    "make_optimizer, n_slots",
    [
        (lambda: keras.optimizers.SGD(0.05, momentum=0.9), 1),
        (lambda: keras.optimizers.Adam(0.01, amsgrad=True), 3),
        (lambda: keras.optimizers.RMSprop(0.01, momentum=0.5, centered=True), 3),
    ],
    ids=["sgd_momentum", "adam_amsgrad", "rmsprop_centered"],
)
def test_optimizer_state_reset_at_grown_and_dropped(make_optimizer, n_slots):
    model = _mlp(optimizer=make_optimizer())
    rigl = rigl_keras.RigLCallback(
        sparsity=0.8, update_freq=5, end_step=5,
        drop_fraction_schedule="constant", seed=0,
    )
    probe = _SlotProbe(step=5)
    _fit(model, [rigl, probe], epochs=1)
    for name, before in probe.masks_before.items():
        after = probe.masks_after[name]
        grown = (before == 0) & (after == 1)
        dropped = (before == 1) & (after == 0)
        changed = grown | dropped
        assert grown.sum() > 0 and grown.sum() == dropped.sum(), name
        # grow_init="zeros".
        assert np.all(probe.kernels_after[name][grown] == 0.0), name
        slots = probe.slots_after[name]
        assert len(slots) == n_slots
        for value, reset in slots:
            assert reset == 0.0
            assert np.all(value[changed] == reset), name
            # Everywhere else the filled-in 0.5 moved on, but was not reset.
            assert np.all(value[~changed] != reset), name


# ---------------------------------------------------------------------------
# 6. Non-finite dense gradient.
# ---------------------------------------------------------------------------


class _PoisonedRigL(SpiedRigL):
    """Writes a NaN (first update) or inf (later) into fc1's dense gradient."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.before, self.after = {}, {}

    def before_update(self, step):
        (key,) = [k for k in self.dense_gradients if k.endswith("/fc1/kernel")]
        variable = self.dense_gradients[key]
        gradient = _numpy(variable).copy()
        gradient[3, 5] = np.nan if not self.before else np.inf
        variable.assign(gradient)
        self.before[step] = (_masks(self.model), _kernels(self.model))

    def after_update(self, step):
        self.after[step] = (_masks(self.model), _kernels(self.model))


def test_non_finite_dense_gradient_skips_only_that_layer():
    model = _mlp()
    rigl = _PoisonedRigL(
        sparsity=0.8, update_freq=5, end_step=10,
        drop_fraction_schedule="constant", seed=0,
    )
    x, y = _data()
    with pytest.warns(UserWarning, match="fc1") as record:
        model.fit(x, y, batch_size=_BATCH, epochs=1, shuffle=False, verbose=0,
                  callbacks=[rigl])
    skipped = [str(w.message) for w in record if "Skipped the mask update" in str(w.message)]
    assert len(skipped) == 1, skipped  # Warned once, not at every update.
    assert "/fc1/kernel'" in skipped[0] and "step 5" in skipped[0]
    assert sorted(rigl.before) == [5, 10]
    for step in (5, 10):
        (masks_before, kernels_before), (masks_after, kernels_after) = (
            rigl.before[step], rigl.after[step])
        np.testing.assert_array_equal(masks_after["fc1"], masks_before["fc1"])
        np.testing.assert_array_equal(kernels_after["fc1"], kernels_before["fc1"])
        for name in ("fc2", "out"):
            assert not np.array_equal(masks_after[name], masks_before[name])
    assert _zero_counts(_masks(model)) == _MLP_ZEROS_08


# ---------------------------------------------------------------------------
# 7. Logs.
# ---------------------------------------------------------------------------


def test_drop_fraction_log_is_zero_in_epochs_without_update():
    model = _mlp()
    rigl = SpiedRigL(sparsity=0.8, update_freq=4, end_step=14, seed=0)
    history = _fit(model, [rigl], epochs=3)
    assert rigl.update_steps == [4, 8, 12]
    assert history.history["drop_fraction"][0] > 0
    assert history.history["drop_fraction"][1] > 0
    assert history.history["drop_fraction"][2] == 0.0  # masks frozen


def test_history_logs_sparsity_over_all_masked_kernels():
    model = _mlp()
    # "out" is not named, so it stays dense and never changes.
    rigl = rigl_keras.RigLCallback(
        distribution={"fc1": 0.5, "fc2": 0.25}, update_freq=3,
        drop_fraction_schedule="constant", seed=0,
    )
    tracker = _MaskTracker()
    history = _fit(model, [rigl, tracker], epochs=2)
    assert by_layer(rigl.target_sparsities) == {"fc1": 0.5, "fc2": 0.25, "out": 0.0}
    assert _zero_counts(_masks(model)) == {"fc1": 320, "fc2": 128, "out": 0}
    # (320 + 128 + 0) zeros over 640 + 512 + 64 entries.
    assert history.history["sparsity"] == pytest.approx([448 / 1216] * 2)
    for step in (10, 20):
        masks = tracker.snapshots[step]
        zeros = sum(int(np.sum(m == 0)) for m in masks.values())
        assert zeros / sum(m.size for m in masks.values()) == pytest.approx(
            history.history["sparsity"][step // 10 - 1])
    assert history.history["drop_fraction"] == pytest.approx([0.3, 0.3])
    assert tracker.changed_steps  # fc1 and fc2 were rewired...
    assert not any(  # ...but never the dense layer.
        np.any(s["out"] == 0) for s in tracker.snapshots.values())


def test_itop_rate_and_churn_logs_match_the_masks():
    """`itop_rate` is the fraction of masked kernel positions active at some
    time in this fit(); `churn/<layer>` the fraction of a layer's active
    connections newly grown at the epoch's last update: both from masks
    snapshotted after every step."""
    model = _mlp()
    rigl = SpiedRigL(
        sparsity=0.8, update_freq=3, drop_fraction_schedule="constant", seed=0
    )
    tracker = _MaskTracker()
    history = _fit(model, [rigl, tracker], epochs=2)
    for epoch, end in enumerate((10, 20)):
        ever = {n: m > 0 for n, m in tracker.initial.items()}
        for step in range(1, end + 1):
            for name, mask in tracker.snapshots[step].items():
                ever[name] |= mask > 0
        total = sum(m.size for m in ever.values())
        itop = sum(int(m.sum()) for m in ever.values()) / total
        assert history.history["itop_rate"][epoch] == pytest.approx(itop)
        last = max(s for s in rigl.update_steps if s <= end)
        keys = {k.split("/")[-2]: k for k in rigl.target_sparsities}
        for name in ("fc1", "fc2", "out"):
            before, after = tracker.snapshots[last - 1][name], tracker.snapshots[last][name]
            grown = int(np.sum((before == 0) & (after == 1)))
            assert history.history[f"churn/{keys[name]}"][epoch] == pytest.approx(
                grown / int(np.sum(after == 1))), (epoch, name)
    assert 0.2 < history.history["itop_rate"][0] < history.history["itop_rate"][1]


# ---------------------------------------------------------------------------
# 8. NumPy arrays and tf.data.
# ---------------------------------------------------------------------------


def test_dataset_with_known_cardinality_matches_numpy():
    x, y = _data()
    numpy_model = _mlp()
    numpy_rigl = SpiedRigL(sparsity=0.8, update_freq=3, seed=0)
    _fit(numpy_model, [numpy_rigl], x, y, epochs=2)

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(_BATCH)
    data_model = _mlp()
    data_rigl = SpiedRigL(sparsity=0.8, update_freq=3, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data_model.fit(dataset, epochs=2, verbose=0, callbacks=[data_rigl])
    assert data_rigl.resolved_end_step == numpy_rigl.resolved_end_step == 15
    assert data_rigl.update_steps == numpy_rigl.update_steps == [3, 6, 9, 12, 15]
    numpy_masks, data_masks = _masks(numpy_model), _masks(data_model)
    for name in numpy_masks:
        np.testing.assert_array_equal(data_masks[name], numpy_masks[name])


def _unknown_cardinality_dataset():
    x, y = _data()
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .filter(lambda a, b: True)
        .batch(_BATCH)
    )
    assert dataset.cardinality() == tf.data.UNKNOWN_CARDINALITY
    return dataset


def test_dataset_of_unknown_cardinality_needs_end_step():
    model = _mlp()
    rigl = rigl_keras.RigLCallback(sparsity=0.8, update_freq=3, seed=0)
    with pytest.raises(ValueError, match="end_step"):
        model.fit(_unknown_cardinality_dataset(), epochs=2, verbose=0,
                  callbacks=[rigl])


def test_dataset_of_unknown_cardinality_with_end_step():
    model = _mlp()
    rigl = SpiedRigL(
        sparsity=0.8, update_freq=3, end_step=14,
        drop_fraction_schedule="constant", seed=0,
    )
    tracker = _MaskTracker()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(_unknown_cardinality_dataset(), epochs=2, verbose=0,
                  callbacks=[rigl, tracker])
    assert rigl.update_steps == [3, 6, 9, 12]
    assert tracker.changed_steps == [3, 6, 9, 12]
    assert tracker.violations == []


# ---------------------------------------------------------------------------
# 9. Bad input.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"sparsity": -0.1}, "sparsity"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": "x"}, "sparsity"),
        ({"sparsity": float("nan")}, "sparsity"),
        ({"update_freq": 0}, "update_freq"),
        ({"update_freq": 2.5}, "update_freq"),
        ({"drop_fraction": 0}, "drop_fraction"),
        ({"drop_fraction": 1.5}, "drop_fraction"),
        ({"begin_step": 5, "end_step": 5}, "end_step"),
        ({"begin_step": 5, "end_step": 3}, "end_step"),
        ({"begin_step": -1}, "begin_step"),
        ({"distribution": "lognormal"}, "distribution"),
        ({"distribution": {"fc1": 1.0}}, "distribution"),
        ({"drop_fraction_schedule": "linear"}, "drop_fraction_schedule"),
        ({"grow": "magnitude"}, "grow"),
        ({"grow_init": "ones"}, "grow_init"),
        ({"seed": 1.5}, "seed"),
        ({"verbose": 2}, "verbose"),
    ],
)
def test_bad_argument_raises_naming_it(kwargs, argument):
    with pytest.raises(ValueError, match=f"`?{argument}`?.*Received: {argument}"):
        rigl_keras.RigLCallback(**kwargs)


def test_model_without_masked_layer_raises_at_fit():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(4)])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="no masked weight.*rigl_keras.sparsify"):
        _fit(model, [rigl_keras.RigLCallback(seed=0)], epochs=1)


def test_distribution_naming_unknown_layer_raises_at_fit():
    rigl = rigl_keras.RigLCallback(distribution={"fc1": 0.5, "conv9": 0.5}, seed=0)
    with pytest.raises(ValueError, match="`distribution`.*conv9"):
        _fit(_mlp(), [rigl], epochs=1)


def test_callback_reused_with_second_model_raises():
    rigl = rigl_keras.RigLCallback(sparsity=0.8, update_freq=5, seed=0)
    first = _mlp()
    _fit(first, [rigl], epochs=1)
    _fit(first, [rigl], epochs=1)  # The same model again is fine.
    with pytest.raises(ValueError, match="already bound"):
        _fit(_mlp(seed=1), [rigl], epochs=1)


def test_unsupported_optimizer_raises_at_fit():
    class MyOptimizer(keras.optimizers.Optimizer):
        def update_step(self, gradient, variable, learning_rate):
            variable.assign_sub(gradient * learning_rate)

    model = _mlp(optimizer=MyOptimizer(0.01))
    with pytest.raises(ValueError, match="MyOptimizer"):
        _fit(model, [rigl_keras.RigLCallback(update_freq=5, seed=0)], epochs=1)


# ---------------------------------------------------------------------------
# 10. Serialization.
# ---------------------------------------------------------------------------


def _full_callback():
    return rigl_keras.RigLCallback(
        sparsity=0.7,
        distribution="er",
        update_freq=7,
        drop_fraction=0.2,
        drop_fraction_schedule=schedules.CosineDropFraction(0.2, 10, 100),
        begin_step=10,
        end_step=100,
        grow="random",
        grow_init="random_normal",
        seed=3,
        dense_layers=("out",),
        erk_power_scale=0.5,
        verbose=1,
    )


@pytest.mark.parametrize(
    "make_callback",
    [
        rigl_keras.RigLCallback,
        _full_callback,
        lambda: rigl_keras.RigLCallback(
            distribution={"fc1": 0.5}, update_freq=None, grow="momentum"),
    ],
    ids=["defaults", "everything_set", "dict_static_snfs"],
)
def test_config_round_trip(make_callback):
    callback = make_callback()
    config = callback.get_config()
    json.dumps(config)  # Plain JSON.
    clone = rigl_keras.RigLCallback.from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(callback)
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert type(restored) is rigl_keras.RigLCallback
    assert restored.get_config() == config
    assert type(restored.updater) is type(callback.updater)


def test_config_round_trip_keeps_schedule_object():
    callback = _full_callback()
    config = callback.get_config()
    assert config["drop_fraction_schedule"]["class_name"].endswith(
        "CosineDropFraction")
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(callback))
    schedule = restored.drop_fraction_schedule
    assert isinstance(schedule, schedules.CosineDropFraction)
    assert schedule.get_config() == {
        "initial_drop_fraction": 0.2, "begin_step": 10, "end_step": 100}
    assert restored.end_step == 100 and restored.dense_layers == ("out",)


def test_callback_with_custom_updater_is_not_serializable():
    callback = rigl_keras.RigLCallback(grow=rigl_keras.updaters.SET())
    with pytest.raises(NotImplementedError):
        callback.get_config()


def test_module_doctests():
    results = doctest.testmod(
        callbacks_lib,
        extraglobs={"keras": keras, "np": np, "rigl_keras": rigl_keras},
        optionflags=doctest.ELLIPSIS,
    )
    assert results.attempted > 0
    assert results.failed == 0


# ---------------------------------------------------------------------------
# 11. End to end: a planted sparse teacher.
# ---------------------------------------------------------------------------


def _teacher(seed, n=2048, dim=64, classes=10, density=0.1):
    """x ~ N(0, 1); a (dim, classes) teacher with 90% exact zeros.

    Non-zero teacher weights have magnitude in [0.5, 1.5] and random sign.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype("float32")
    weights = np.zeros((dim, classes), np.float32)
    k = int(density * dim * classes)
    positions = rng.permutation(dim * classes)[:k]
    weights.flat[positions] = rng.choice([-1.0, 1.0], k) * rng.uniform(0.5, 1.5, k)
    return x, weights


def _student_fit(x, y, seed, update_freq, layers, loss, optimizer, epochs,
                 metrics=None):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((x.shape[1],))] + layers())
    model.compile(optimizer(), loss, metrics=metrics)
    rigl = rigl_keras.RigLCallback(
        sparsity=0.9, update_freq=update_freq, seed=seed)
    history = model.fit(x, y, batch_size=64, epochs=epochs, verbose=0,
                        callbacks=[rigl])
    return model, {k: v[-1] for k, v in history.history.items()}


def test_end_to_end_rigl_beats_static_on_sparse_teacher_classification():
    def layers():
        return [
            rigl_keras.MaskedDense(128, activation="relu", name="hidden"),
            rigl_keras.MaskedDense(10, name="logits"),
        ]

    for seed in (0, 1):
        x, weights = _teacher(seed)
        y = np.argmax(x @ weights, axis=1)
        results = {}
        for name, update_freq in (("rigl", 10), ("static", None)):
            model, results[name] = _student_fit(
                x, y, seed, update_freq, layers,
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                lambda: keras.optimizers.Adam(0.01), epochs=15,
                metrics=["accuracy"],
            )
            assert results[name]["sparsity"] == pytest.approx(0.9, abs=1e-3)
        rigl, static = results["rigl"], results["static"]
        # Observed: loss 0.10-0.11 vs 0.42-0.47, accuracy 0.98 vs 0.84-0.86.
        assert rigl["loss"] < 0.6 * static["loss"], results
        assert rigl["accuracy"] > static["accuracy"] + 0.05, results


def test_end_to_end_rigl_recovers_sparse_linear_teacher_support():
    def layers():
        return [rigl_keras.MaskedDense(10, name="out")]

    for seed in (0, 1):
        x, weights = _teacher(seed)
        y = x @ weights
        losses = {}
        for name, update_freq in (("rigl", 10), ("static", None)):
            model, result = _student_fit(
                x, y, seed, update_freq, layers, "mse",
                lambda: keras.optimizers.SGD(0.05, momentum=0.9), epochs=6,
            )
            losses[name] = result["loss"]
            if name == "rigl":
                # 64 non-zeros for the teacher's 64: RigL finds all of them.
                mask = _numpy(model.get_layer("out").mask)
                np.testing.assert_array_equal(mask != 0, weights != 0)
                np.testing.assert_allclose(
                    _numpy(model.get_layer("out").kernel), weights, atol=0.05)
        # Observed: RigL ~6e-5, static ~6 (a random mask overlaps ~10%).
        assert losses["rigl"] < 1e-3 and losses["static"] > 1.0, losses


# ---------------------------------------------------------------------------
# 12. MirroredStrategy over two logical CPUs (subprocess).
# ---------------------------------------------------------------------------


def test_mirrored_strategy_two_replicas():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        process = subprocess.run(
            [sys.executable, str(_TESTS_DIR / "_mirrored_script.py")],
            capture_output=True, text=True, timeout=300, env=env,
            cwd=str(_REPO_ROOT), check=False,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"MirroredStrategy script timed out:\n{error.stderr}")
    lines = [l for l in process.stdout.splitlines() if l.startswith("RESULT ")]
    if process.returncode != 0 or len(lines) != 1:
        pytest.fail(
            f"MirroredStrategy script failed (exit {process.returncode}).\n"
            f"stdout:\n{process.stdout[-5000:]}\nstderr:\n{process.stderr[-10000:]}"
        )
    result = json.loads(lines[0][len("RESULT "):])
    assert result["replicas"] == 2
    assert result["warnings"] == []
    # Kernels (16, 32) and (32, 4): eps = 0.2 * 640 / 84; zeros
    # floor(512 - 73.14) = 438 and floor(128 - 54.86) = 73.
    expected_zeros = {"fc1": 438, "out": 73}
    for run in ("rigl", "snfs"):
        layers = result[run]["layers"]
        assert sorted(layers) == ["fc1", "out"]
        for name, info in layers.items():
            where = f"{run}/{name}: {info}"
            assert info["n_local"] == 2, where
            assert info["devices"][0].endswith("CPU:0"), where
            assert info["devices"][1].endswith("CPU:1"), where
            assert info["masks_equal"] and info["kernels_equal"], where
            assert info["mask_values"] == [0.0, 1.0], where
            assert info["zeros"] == [expected_zeros[name]] * 2, where
            assert info["changed"] > 0, where  # Updates did rewire.
            assert info["inactive_max_abs"] == 0.0, where
    # The recorded dense gradient is the global-batch gradient (the sum of
    # the replicas' gradients of their share of the loss), as on one device.
    for name, info in result["rigl"]["layers"].items():
        assert info["same_mask_as_single"], (name, info)
        assert info["kernel_diff_single"] < 1e-5, (name, info)
        assert info["recorded_rel_diff_single"] < 1e-4, (name, info)


def test_steps_between_updates_run_a_train_function_without_recording():
    """With steps_per_execution=1 the callback keeps two traced train
    functions and runs the recording one only on update steps."""
    model = _mlp()
    rigl = SpiedRigL(sparsity=0.8, update_freq=4, end_step=20, seed=0)
    functions = []

    class _FunctionSpy(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            functions.append(self.model.train_function)

    _fit(model, [rigl, _FunctionSpy()], epochs=2)
    update_function = functions[3]
    # Steps 1..20: one function on the update steps 4, 8, 12, 16, 20, the
    # other everywhere else (and after fit()).
    on_update = [i for i, f in enumerate(functions, start=1) if f is update_function]
    assert on_update == rigl.update_steps == [4, 8, 12, 16, 20]
    others = {id(f) for f in functions if f is not update_function}
    assert len(others) == 1
    assert id(model.train_function) in others


@pytest.mark.parametrize("new_optimizer", [True, False], ids=["new_optimizer", "same_optimizer"])
def test_callback_reused_after_recompile_trains_the_recompiled_model(new_optimizer):
    """`model.compile` between two fit() calls with one callback: the second
    fit runs the new train function (new loss, new optimizer), records on
    the new optimizer's steps and resets the new optimizer's state."""
    model = _mlp()
    rigl = SpiedRigL(sparsity=0.8, update_freq=4, end_step=1000, seed=0)
    _fit(model, [rigl], epochs=1)
    optimizer = (
        keras.optimizers.SGD(0.05, momentum=0.9) if new_optimizer else model.optimizer
    )
    start = _step(model) if not new_optimizer else 0

    def shifted_mse(y_true, y_pred):  # a loss the old train function lacks
        return 1000.0 + keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)

    model.compile(optimizer, shifted_mse)
    rigl.update_steps.clear()
    before = _masks(model)
    history = _fit(model, [rigl], epochs=2)
    assert _step(model) == start + 2 * _STEPS_PER_EPOCH
    assert model.optimizer is optimizer
    # The recorded gradient is that of this optimizer's steps: updates at
    # its multiples of 4, with a non-zero gradient (else _fit would fail on
    # the "all zeros" warning), and they rewired.
    assert rigl.update_steps == [s for s in range(start + 1, start + 21) if s % 4 == 0]
    assert any(not np.array_equal(before[k], v) for k, v in _masks(model).items())
    # The new loss is the one trained.
    assert history.history["loss"][-1] > 1000.0
    # The new optimizer's state was reset where masks changed: momentum is
    # zero at every inactive position and inactive weights are 0.0.
    for layer in rigl_keras.masked_layers(model):
        inactive = _numpy(layer.mask) == 0
        assert np.all(_numpy(layer.kernel)[inactive] == 0.0), layer.name
        for state, _ in optimizer_state.optimizer_state_slots(optimizer, layer.kernel):
            assert np.all(_numpy(state)[inactive] == 0.0), layer.name


def test_fit_shorter_than_the_first_update_warns_once_with_the_numbers():
    model = _mlp()
    rigl = rigl_keras.RigLCallback(sparsity=0.8, update_freq=100, seed=0)
    x, y = _data()
    with pytest.warns(UserWarning, match="will not update the masks") as record:
        model.fit(x, y, batch_size=_BATCH, epochs=1, verbose=0, callbacks=[rigl])
    (message,) = [str(w.message) for w in record if "will not update" in str(w.message)]
    # 10 steps; end_step None -> 7, so no update step fits in the window.
    assert "steps 1 to 10" in message and "end_step=7" in message, message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=_BATCH, epochs=1, verbose=0, callbacks=[rigl])
    assert not [w for w in caught if "will not update" in str(w.message)]


def test_fit_that_reaches_an_update_does_not_warn():
    model = _mlp()
    rigl = rigl_keras.RigLCallback(sparsity=0.8, update_freq=5, end_step=100, seed=0)
    x, y = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=_BATCH, epochs=1, verbose=0, callbacks=[rigl])
    assert not [w for w in caught if "will not update" in str(w.message)]


def test_update_beyond_this_fit_warns_with_the_first_update_step():
    model = _mlp()
    rigl = rigl_keras.RigLCallback(sparsity=0.8, update_freq=50, end_step=200, seed=0)
    x, y = _data()
    with pytest.warns(UserWarning, match="first mask update is at step 50"):
        model.fit(x, y, batch_size=_BATCH, epochs=2, verbose=0, callbacks=[rigl])
