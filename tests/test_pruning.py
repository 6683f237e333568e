"""Tests for rigl_keras.GradualPruningCallback (gradual magnitude pruning)."""

import doctest
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl_keras
from _helpers import by_layer  # tests/_helpers.py
from rigl_keras import optimizer_state
from rigl_keras import pruning
from rigl_keras import schedules

# Layer sizes of the test MLP: a = 20 x 30 = 600 weights, b = 30 x 10 = 300.
N_A, N_B = 600, 300


def _model(optimizer=None, steps_per_execution=1):
    model = keras.Sequential(
        [
            keras.Input((20,)),
            rigl_keras.MaskedDense(30, activation="relu", name="a"),
            rigl_keras.MaskedDense(10, name="b"),
        ]
    )
    model.compile(
        optimizer or keras.optimizers.SGD(0.01, momentum=0.9),
        "mse",
        steps_per_execution=steps_per_execution,
    )
    return model


def _distinct_kernels(model, seed=0):
    """Gives every kernel distinct magnitudes, so the kept set is unique."""
    rng = np.random.default_rng(seed)
    for layer in rigl_keras.masked_layers(model):
        n = int(np.prod(layer.kernel.shape))
        values = (rng.permutation(n) + 1.0) / n * rng.choice([-1.0, 1.0], n)
        layer.kernel.assign(values.reshape(layer.kernel.shape).astype("float32"))


def _start(model, callback):
    """Runs the callback's start-of-training hooks outside fit()."""
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_begin(0)


def _step(model, callback, t):
    """Pretends optimizer step `t` just ran (epoch 0 started at step 0)."""
    model.optimizer.iterations.assign(t)
    callback.on_train_batch_end(t - 1)


def _zeros(model):
    return {
        l.name: int(np.sum(np.asarray(l.mask) == 0))
        for l in rigl_keras.masked_layers(model)
    }


def _masks(model):
    return {l.name: np.asarray(l.mask).copy() for l in rigl_keras.masked_layers(model)}


def _kernels(model):
    return {l.name: np.asarray(l.kernel).copy() for l in rigl_keras.masked_layers(model)}


# ---------------------------------------------------------------------------
# The schedule.
# ---------------------------------------------------------------------------


def test_schedule_hand_computed():
    model = _model()
    callback = rigl_keras.GradualPruningCallback(
        0.8, distribution="uniform", begin_step=100, end_step=300,
        update_freq=10, initial_sparsity=0.2,
    )
    _start(model, callback)
    cases = [
        (0, 0.2),  # before begin: s_i
        (100, 0.2),  # begin: s_i
        # mid: p = 1/2, 0.8 + (0.2 - 0.8) * (1/2)^3 = 0.8 - 0.075 = 0.725
        (200, 0.725),
        # p = 1/4: 0.8 - 0.6 * (3/4)^3 = 0.8 - 0.253125 = 0.546875
        (150, 0.546875),
        (300, 0.8),  # end: s_f, exactly
        (1000, 0.8),  # after end
    ]
    for step, expected in cases:
        targets = by_layer(callback.target_sparsities_at(step))
        assert targets == {"a": pytest.approx(expected, abs=1e-12),
                           "b": pytest.approx(expected, abs=1e-12)}
    assert by_layer(callback.target_sparsities_at(300))["a"] == 0.8
    # The callback's schedules are PolynomialSparsity objects with power 3.
    schedule = by_layer(callback.sparsity_schedules)["a"]
    assert isinstance(schedule, schedules.PolynomialSparsity)
    assert schedule.get_config() == {
        "final_sparsity": 0.8, "begin_step": 100, "end_step": 300,
        "initial_sparsity": 0.2, "power": 3,
    }
    assert float(schedule(200)) == pytest.approx(0.725, abs=1e-6)


# ---------------------------------------------------------------------------
# Pruning steps, driven step by step.
# ---------------------------------------------------------------------------

# begin 10, end 50, every 10 steps, s_f = 0.9 uniform, s_i = 0:
#   s_t = 0.9 * (1 - (1 - p)^3), p = (t - 10) / 40
#   t=10: p=0    s=0                        a: 0          b: 0
#   t=20: p=1/4  s=0.9*(1-27/64)=0.5203125  a: floor(312.1875)=312  b: floor(156.09375)=156
#   t=30: p=1/2  s=0.9*(1-1/8)=0.7875       a: floor(472.5)=472     b: floor(236.25)=236
#   t=40: p=3/4  s=0.9*(1-1/64)=0.8859375   a: floor(531.5625)=531  b: floor(265.78125)=265
#   t=50: p=1    s=0.9                      a: 540        b: 270
EXPECTED_ZEROS = {
    10: {"a": 0, "b": 0},
    20: {"a": 312, "b": 156},
    30: {"a": 472, "b": 236},
    40: {"a": 531, "b": 265},
    50: {"a": 540, "b": 270},
}


def test_exact_zero_counts_shrinking_masks_and_magnitude_order():
    model = _model()
    _distinct_kernels(model)
    callback = rigl_keras.GradualPruningCallback(
        0.9, distribution="uniform", begin_step=10, end_step=50, update_freq=10
    )
    _start(model, callback)
    # Starts dense.
    assert _zeros(model) == {"a": 0, "b": 0}
    rng = np.random.default_rng(1)
    for t in range(1, 71):
        # Simulate training between steps: active weights move, so the kept
        # set must be recomputed from the current magnitudes.
        for layer in rigl_keras.masked_layers(model):
            noise = rng.normal(0.0, 0.05, layer.kernel.shape).astype("float32")
            layer.kernel.assign(np.asarray(layer.kernel) + noise * np.asarray(layer.mask))
        before_masks, before_kernels = _masks(model), _kernels(model)
        _step(model, callback, t)
        after_masks = _masks(model)
        if t in EXPECTED_ZEROS:
            assert _zeros(model) == EXPECTED_ZEROS[t], t
        else:
            # Between pruning steps and after end_step: nothing changes.
            for name in after_masks:
                np.testing.assert_array_equal(after_masks[name], before_masks[name])
        for layer in rigl_keras.masked_layers(model):
            name = layer.name
            old, new = before_masks[name], after_masks[name]
            assert np.all(new <= old), "masks only shrink"
            kernel = np.asarray(layer.kernel)
            assert np.all(kernel[new == 0] == 0.0), "kernel zeroed outside the mask"
            np.testing.assert_array_equal(kernel[new == 1], before_kernels[name][new == 1])
            pruned = (old == 1) & (new == 0)
            if pruned.any():
                magnitudes = np.abs(before_kernels[name])
                assert magnitudes[new == 1].min() > magnitudes[pruned].max()
    assert _zeros(model) == EXPECTED_ZEROS[50]
    assert callback.current_sparsity() == pytest.approx(810 / 900)


def test_end_step_off_the_grid_is_a_pruning_step():
    model = _model()
    callback = rigl_keras.GradualPruningCallback(
        0.5, distribution="uniform", begin_step=0, end_step=25, update_freq=10
    )
    _start(model, callback)
    # t=10: p=0.4, s = 0.5 * (1 - 0.6^3) = 0.5 * 0.784 = 0.392 -> a: floor(235.2)=235
    # t=20: p=0.8, s = 0.5 * (1 - 0.2^3) = 0.5 * 0.992 = 0.496 -> a: floor(297.6)=297
    # t=25: p=1,   s = 0.5                                     -> a: 300
    expected = {10: 235, 20: 297, 25: 300}
    for t in range(1, 40):
        _step(model, callback, t)
        if t in expected:
            assert _zeros(model)["a"] == expected[t]
    assert _zeros(model) == {"a": 300, "b": 150}


def test_initial_sparsity_applied_at_train_begin_and_clamped_per_layer():
    model = _model()
    callback = rigl_keras.GradualPruningCallback(
        0.9, distribution={"a": 0.9, "b": 0.2}, begin_step=0, end_step=10,
        update_freq=5, initial_sparsity=0.5,
    )
    _start(model, callback)
    # a: floor(0.5 * 600) = 300; b's final target 0.2 < 0.5: it starts
    # (and stays) at 0.2 -> floor(0.2 * 300) = 60.
    assert _zeros(model) == {"a": 300, "b": 60}
    for t in range(1, 11):
        _step(model, callback, t)
    assert _zeros(model) == {"a": 540, "b": 60}


def test_layer_with_zero_target_is_untouched():
    model = _model()
    callback = rigl_keras.GradualPruningCallback(
        0.5, distribution={"a": 0.5}, begin_step=0, end_step=4, update_freq=2
    )
    _start(model, callback)
    kernel_b = np.asarray(model.get_layer("b").kernel).copy()
    for t in range(1, 6):
        _step(model, callback, t)
    assert _zeros(model) == {"a": 300, "b": 0}
    np.testing.assert_array_equal(np.asarray(model.get_layer("b").kernel), kernel_b)


def test_optimizer_state_of_pruned_positions_is_reset():
    model = _model()
    _distinct_kernels(model)
    callback = rigl_keras.GradualPruningCallback(
        0.5, distribution="uniform", begin_step=0, end_step=2, update_freq=2
    )
    _start(model, callback)
    layer = model.get_layer("a")
    slots = optimizer_state.optimizer_state_slots(model.optimizer, layer.kernel)
    assert slots, "SGD with momentum has a momentum slot"
    for state, _ in slots:
        state.assign(np.full(state.shape, 7.0, "float32"))
    _step(model, callback, 1)
    _step(model, callback, 2)
    mask = np.asarray(layer.mask)
    for state, _ in slots:
        value = np.asarray(state)
        assert np.all(value[mask == 0] == 0.0)
        assert np.all(value[mask == 1] == 7.0)


def test_recompiled_with_new_optimizer_resets_the_new_optimizers_state():
    """One callback over two fit() calls with `model.compile` between them:
    the second fit's pruning resets the state of the optimizer in use."""
    model = _model()
    x = np.random.default_rng(0).random((64, 20), dtype=np.float32)
    y = np.random.default_rng(1).random((64, 10), dtype=np.float32)
    callback = rigl_keras.GradualPruningCallback(
        0.8, distribution="uniform", begin_step=0, end_step=40, update_freq=4
    )
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    model.compile(optimizer, "mse")
    before = _zeros(model)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    assert int(np.asarray(optimizer.iterations)) == 16
    assert all(_zeros(model)[name] > before[name] for name in before)
    for layer in rigl_keras.masked_layers(model):
        pruned = np.asarray(layer.mask) == 0
        for state, _ in optimizer_state.optimizer_state_slots(optimizer, layer.kernel):
            assert np.all(np.asarray(state)[pruned] == 0.0), layer.name
        assert np.all(np.asarray(layer.kernel)[pruned] == 0.0), layer.name


def test_ties_are_broken_deterministically_with_exact_counts():
    results = []
    for _ in range(2):
        model = _model()
        for layer in rigl_keras.masked_layers(model):
            layer.kernel.assign(np.ones(layer.kernel.shape, "float32"))
        callback = rigl_keras.GradualPruningCallback(
            0.7, distribution="uniform", begin_step=0, end_step=1, update_freq=1
        )
        _start(model, callback)
        _step(model, callback, 1)
        # floor(0.7 * 600) = 420, floor(0.7 * 300) = 210.
        assert _zeros(model) == {"a": 420, "b": 210}
        results.append(_masks(model))
    for name in results[0]:
        np.testing.assert_array_equal(results[0][name], results[1][name])


def test_non_finite_kernel_is_skipped_with_a_warning():
    model = _model()
    callback = rigl_keras.GradualPruningCallback(
        0.5, distribution="uniform", begin_step=0, end_step=1, update_freq=1
    )
    _start(model, callback)
    kernel = np.asarray(model.get_layer("a").kernel).copy()
    kernel[0, 0] = np.nan
    model.get_layer("a").kernel.assign(kernel)
    with pytest.warns(UserWarning, match="not finite"):
        _step(model, callback, 1)
    assert _zeros(model) == {"a": 0, "b": 150}


# ---------------------------------------------------------------------------
# End to end with fit().
# ---------------------------------------------------------------------------


def _data(n=320, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 20)).astype("float32")
    w = rng.normal(size=(20, 10)).astype("float32")
    return x, (x @ w).astype("float32")


def test_fit_end_to_end_erk():
    keras.utils.set_random_seed(0)
    model = _model(keras.optimizers.Adam(0.01))
    x, y = _data()
    callback = rigl_keras.GradualPruningCallback(
        0.8, begin_step=0, end_step=None, update_freq=5, verbose=1
    )
    history = model.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=[callback])
    # end_step=None: 75% of 4 * 10 = 40 steps -> 30.
    assert by_layer(callback.sparsity_schedules)["a"].end_step == 30
    targets = callback.target_sparsities
    expected = rigl_keras.sparsity_distribution(model, 0.8, "erk")
    assert targets == expected
    shapes = {"a": (20, 30), "b": (30, 10)}
    assert _zeros(model) == rigl_keras.distributions.layer_zero_counts(shapes, by_layer(targets))
    assert len(history.history["sparsity"]) == 4
    assert history.history["sparsity"][-1] == pytest.approx(callback.current_sparsity())
    assert history.history["sparsity"][-1] == pytest.approx(0.8, abs=2 / 900)
    assert all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    for layer in rigl_keras.masked_layers(model):
        assert np.all(np.asarray(layer.kernel)[np.asarray(layer.mask) == 0] == 0.0)


def test_fit_masks_frozen_after_end_step():
    model = _model()
    x, y = _data()
    masks = {}

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            masks[int(self.model.optimizer.iterations)] = _masks(self.model)

    callback = rigl_keras.GradualPruningCallback(
        0.6, distribution="uniform", begin_step=0, end_step=8, update_freq=4
    )
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[callback, Record()])
    # Pruning steps 4 and 8; frozen from step 8 on at floor(0.6 * N).
    assert int(np.sum(masks[8]["a"] == 0)) == 360
    assert int(np.sum(masks[8]["b"] == 0)) == 180
    for t in range(9, 21):
        for name in ("a", "b"):
            np.testing.assert_array_equal(masks[t][name], masks[8][name])


def test_fit_rejects_steps_per_execution_mismatch():
    model = _model(steps_per_execution=2)
    x, y = _data(64)
    callback = rigl_keras.GradualPruningCallback(0.5, update_freq=3, end_step=10)
    with pytest.raises(ValueError, match="steps_per_execution"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])


def test_fit_with_steps_per_execution():
    model = _model(steps_per_execution=2)
    x, y = _data(64)
    callback = rigl_keras.GradualPruningCallback(
        0.5, distribution="uniform", update_freq=2, end_step=6
    )
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert _zeros(model) == {"a": 300, "b": 150}


# ---------------------------------------------------------------------------
# Validation and serialization.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"sparsity": math.nan}, "sparsity"),
        ({"sparsity": 0.5, "initial_sparsity": 0.6}, "initial_sparsity"),
        ({"sparsity": 0.5, "initial_sparsity": -0.1}, "initial_sparsity"),
        ({"sparsity": 0.5, "update_freq": 0}, "update_freq"),
        ({"sparsity": 0.5, "update_freq": 2.5}, "update_freq"),
        ({"sparsity": 0.5, "begin_step": -1}, "begin_step"),
        ({"sparsity": 0.5, "begin_step": 10, "end_step": 10}, "end_step"),
        ({"sparsity": 0.5, "distribution": "random"}, "distribution"),
        ({"sparsity": 0.5, "distribution": {"a": 1.0}}, "distribution"),
        ({"sparsity": 0.5, "verbose": 2}, "verbose"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rigl_keras.GradualPruningCallback(**kwargs)


def test_error_message_style():
    with pytest.raises(ValueError, match=r"Received: update_freq=0"):
        rigl_keras.GradualPruningCallback(0.5, update_freq=0)


def test_model_without_masked_layers_raises():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    callback = rigl_keras.GradualPruningCallback(0.5, end_step=10)
    callback.set_model(model)
    with pytest.raises(ValueError, match="no masked weight.*rigl_keras.sparsify"):
        callback.on_train_begin()


def test_dict_naming_unknown_layer_raises():
    model = _model()
    callback = rigl_keras.GradualPruningCallback(0.5, distribution={"zzz": 0.5}, end_step=10)
    callback.set_model(model)
    with pytest.raises(ValueError, match="zzz"):
        callback.on_train_begin()


def test_end_step_none_needs_known_length():
    model = _model()
    x, y = _data(64)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat().take(8)
    dataset = dataset.filter(lambda a, b: True)  # unknown cardinality
    callback = rigl_keras.GradualPruningCallback(0.5)
    with pytest.raises(ValueError, match="end_step"):
        model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[callback])


def test_bound_to_one_model():
    callback = rigl_keras.GradualPruningCallback(0.5, end_step=10)
    callback.set_model(_model())
    with pytest.raises(ValueError, match="already bound"):
        callback.set_model(_model())


def test_config_round_trip():
    callback = rigl_keras.GradualPruningCallback(
        0.85, distribution={"a": 0.9}, begin_step=5, end_step=50, update_freq=5,
        initial_sparsity=0.1, dense_layers=("b",), erk_power_scale=0.5, verbose=1,
    )
    config = callback.get_config()
    clone = rigl_keras.GradualPruningCallback.from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(callback)
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, rigl_keras.GradualPruningCallback)
    assert restored.get_config() == config
    assert config == {
        "sparsity": 0.85, "distribution": {"a": 0.9}, "begin_step": 5,
        "end_step": 50, "update_freq": 5, "initial_sparsity": 0.1,
        "dense_layers": ["b"], "erk_power_scale": 0.5, "verbose": 1,
        "structure": None,
    }


def test_public_api():
    assert rigl_keras.GradualPruningCallback is rigl_keras.callbacks.GradualPruningCallback
    assert "GradualPruningCallback" in rigl_keras.__all__


def test_docstring_examples():
    result = doctest.testmod(
        pruning,
        extraglobs={"np": np, "tf": tf, "keras": keras, "rigl_keras": rigl_keras},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.attempted > 0
    assert result.failed == 0
