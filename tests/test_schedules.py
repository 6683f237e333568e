"""Tests for rigl_keras.schedules."""

import doctest
import math

import hypothesis
from hypothesis import strategies as st
import keras
import numpy as np
import pytest
import tensorflow as tf

from rigl_keras import schedules


def _value(schedule, step):
    """Evaluates `schedule(step)` eagerly and returns a Python float."""
    return float(keras.ops.convert_to_numpy(schedule(step)))


# ---------------------------------------------------------------------------
# CosineDropFraction
# ---------------------------------------------------------------------------

_COSINE_CASES = [
    # (step, expected) for alpha=0.3, begin=100, end=1100, hand-computed.
    (0, 0.3),  # Before begin.
    (99, 0.3),  # Just before begin.
    (100, 0.3),  # At begin.
    (350, 0.3 * 0.5 * (1.0 + math.cos(math.pi / 4))),  # A quarter in.
    (600, 0.15),  # Midpoint.
    (850, 0.3 * 0.5 * (1.0 + math.cos(3 * math.pi / 4))),  # Three quarters.
    (1100, 0.0),  # At end.
    (5000, 0.0),  # After end.
]


@pytest.mark.parametrize("step, expected", _COSINE_CASES)
def test_cosine_hand_computed(step, expected):
    schedule = schedules.CosineDropFraction(
        initial_drop_fraction=0.3, begin_step=100, end_step=1100
    )
    np.testing.assert_allclose(_value(schedule, step), expected, atol=1e-6)


def test_cosine_defaults():
    schedule = schedules.CosineDropFraction(end_step=10)
    assert schedule.get_config() == {
        "initial_drop_fraction": 0.3,
        "begin_step": 0,
        "end_step": 10,
    }
    np.testing.assert_allclose(_value(schedule, 0), 0.3, atol=1e-6)
    np.testing.assert_allclose(_value(schedule, 5), 0.15, atol=1e-6)


def test_cosine_returns_float64_tensor():
    schedule = schedules.CosineDropFraction(0.3, 0, 10)
    out = schedule(3)
    assert tf.is_tensor(out)
    assert out.dtype == tf.float64
    assert out.shape == ()


@pytest.mark.parametrize("dtype", [tf.int64, tf.int32])
def test_cosine_inside_tf_function(dtype):
    schedule = schedules.CosineDropFraction(0.3, begin_step=100, end_step=1100)

    @tf.function
    def fn(step):
        return schedule(step)

    for step, expected in _COSINE_CASES:
        out = fn(tf.constant(step, dtype=dtype))
        assert out.dtype == tf.float64
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_cosine_with_optimizer_iterations_variable():
    schedule = schedules.CosineDropFraction(0.3, begin_step=100, end_step=1100)
    step = tf.Variable(600, dtype=tf.int64)
    out = tf.function(lambda: schedule(step))()
    np.testing.assert_allclose(out.numpy(), 0.15, atol=1e-6)


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(
    alpha=st.floats(min_value=1e-3, max_value=1.0),
    begin=st.integers(min_value=0, max_value=10_000),
    duration=st.integers(min_value=1, max_value=10_000),
    steps=st.lists(
        st.integers(min_value=0, max_value=30_000), min_size=2, max_size=5
    ),
)
def test_cosine_bounded_and_non_increasing(alpha, begin, duration, steps):
    schedule = schedules.CosineDropFraction(alpha, begin, begin + duration)
    values = [_value(schedule, s) for s in sorted(steps)]
    tol = 1e-6
    for v in values:
        assert -tol <= v <= alpha + tol
    for earlier, later in zip(values, values[1:]):
        assert later <= earlier + tol
    np.testing.assert_allclose(_value(schedule, begin), alpha, rtol=1e-6)
    np.testing.assert_allclose(
        _value(schedule, begin + duration), 0.0, atol=1e-6
    )


# ---------------------------------------------------------------------------
# ConstantDropFraction
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("step", [0, 1, 1000, 10**7])
def test_constant(step):
    schedule = schedules.ConstantDropFraction(drop_fraction=0.25)
    np.testing.assert_allclose(_value(schedule, step), 0.25, rtol=1e-7)


def test_constant_default_and_tf_function():
    schedule = schedules.ConstantDropFraction()
    out = tf.function(schedule)(tf.constant(7, dtype=tf.int64))
    assert out.dtype == tf.float64
    np.testing.assert_allclose(out.numpy(), 0.3, rtol=1e-7)


# ---------------------------------------------------------------------------
# PolynomialSparsity
# ---------------------------------------------------------------------------

_POLY_CASES = [
    # final=0.8, initial=0.1, begin=100, end=300, power=3; hand-computed:
    # s = 0.8 + (0.1 - 0.8) * (1 - p) ** 3.
    (0, 0.1),  # Before begin.
    (100, 0.1),  # At begin.
    (150, 0.8 - 0.7 * 0.75**3),  # p = 0.25 -> 0.5046875.
    (200, 0.8 - 0.7 * 0.125),  # Midpoint, p = 0.5 -> 0.7125.
    (300, 0.8),  # At end.
    (1000, 0.8),  # After end.
]


@pytest.mark.parametrize("step, expected", _POLY_CASES)
def test_polynomial_hand_computed(step, expected):
    schedule = schedules.PolynomialSparsity(
        final_sparsity=0.8,
        begin_step=100,
        end_step=300,
        initial_sparsity=0.1,
        power=3,
    )
    np.testing.assert_allclose(_value(schedule, step), expected, atol=1e-6)


def test_polynomial_defaults_and_linear_power():
    schedule = schedules.PolynomialSparsity(0.9, begin_step=0, end_step=100)
    # Defaults: initial_sparsity=0, power=3; p=0.5 -> 0.9 - 0.9 / 8.
    np.testing.assert_allclose(_value(schedule, 50), 0.7875, atol=1e-6)
    linear = schedules.PolynomialSparsity(0.9, 0, 100, power=1)
    np.testing.assert_allclose(_value(linear, 50), 0.45, atol=1e-6)


def test_polynomial_inside_tf_function():
    schedule = schedules.PolynomialSparsity(0.8, 100, 300, 0.1, 3)
    fn = tf.function(schedule)
    for step, expected in _POLY_CASES:
        out = fn(tf.constant(step, dtype=tf.int64))
        assert out.dtype == tf.float64
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(
    final=st.floats(min_value=0.0, max_value=0.99),
    initial_ratio=st.floats(min_value=0.0, max_value=1.0),
    begin=st.integers(min_value=0, max_value=10_000),
    duration=st.integers(min_value=1, max_value=10_000),
    power=st.integers(min_value=1, max_value=5),
    steps=st.lists(
        st.integers(min_value=0, max_value=30_000), min_size=2, max_size=5
    ),
)
def test_polynomial_bounded_and_non_decreasing(
    final, initial_ratio, begin, duration, power, steps
):
    initial = final * initial_ratio
    schedule = schedules.PolynomialSparsity(
        final, begin, begin + duration, initial, power
    )
    values = [_value(schedule, s) for s in sorted(steps)]
    tol = 1e-6
    for v in values:
        assert initial - tol <= v <= final + tol
    for earlier, later in zip(values, values[1:]):
        assert later >= earlier - tol


# ---------------------------------------------------------------------------
# Serialization
# ---------------------------------------------------------------------------

_INSTANCES = [
    schedules.CosineDropFraction(0.3, begin_step=100, end_step=1100),
    schedules.CosineDropFraction(end_step=5),
    schedules.ConstantDropFraction(0.1),
    schedules.PolynomialSparsity(0.8, 100, 300, initial_sparsity=0.1, power=2),
    schedules.PolynomialSparsity(0.5, 0, 10),
]
_STEPS = [0, 50, 100, 150, 200, 600, 1100, 5000]


@pytest.mark.parametrize("schedule", _INSTANCES, ids=repr)
def test_from_config_round_trip(schedule):
    config = schedule.get_config()
    restored = type(schedule).from_config(config)
    assert type(restored) is type(schedule)
    assert restored.get_config() == config
    for step in _STEPS:
        assert _value(restored, step) == _value(schedule, step)


@pytest.mark.parametrize("schedule", _INSTANCES, ids=repr)
def test_config_is_flat_python_numbers(schedule):
    for key, value in schedule.get_config().items():
        assert isinstance(key, str)
        assert type(value) in (int, float), (key, value)


@pytest.mark.parametrize("schedule", _INSTANCES, ids=repr)
def test_keras_serialize_round_trip(schedule):
    serialized = keras.saving.serialize_keras_object(schedule)
    assert serialized["registered_name"] == (
        f"rigl_keras>{type(schedule).__name__}"
    )
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    for step in _STEPS:
        assert _value(restored, step) == _value(schedule, step)


@pytest.mark.parametrize("schedule", _INSTANCES, ids=repr)
def test_get_accepts_instance_and_config(schedule):
    assert schedules.get(schedule) is schedule
    restored = schedules.get(keras.saving.serialize_keras_object(schedule))
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()


@pytest.mark.parametrize("identifier", ["cosine", "constant", "nope"])
def test_get_rejects_strings(identifier):
    with pytest.raises(ValueError, match=f"Received: identifier='{identifier}'"):
        schedules.get(identifier)


@pytest.mark.parametrize("identifier", [None, 0.3, 42, ["cosine"]])
def test_get_rejects_other_types(identifier):
    with pytest.raises(ValueError, match="Could not interpret"):
        schedules.get(identifier)


def test_get_rejects_config_of_non_schedule():
    config = keras.saving.serialize_keras_object(keras.layers.Dense(2))
    with pytest.raises(ValueError, match="does not describe a rigl_keras"):
        schedules.get(config)


def test_base_class_is_abstract():
    with pytest.raises(TypeError):
        schedules.DropFractionSchedule()


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(initial_drop_fraction=0, end_step=10),
            r"`initial_drop_fraction` must be in \(0, 1\]. "
            r"Received: initial_drop_fraction=0",
        ),
        (
            dict(initial_drop_fraction=-0.1, end_step=10),
            r"Received: initial_drop_fraction=-0.1",
        ),
        (
            dict(initial_drop_fraction=1.5, end_step=10),
            r"Received: initial_drop_fraction=1.5",
        ),
        (
            dict(initial_drop_fraction=float("nan"), end_step=10),
            r"Received: initial_drop_fraction=nan",
        ),
        (
            dict(initial_drop_fraction="0.3", end_step=10),
            r"Received: initial_drop_fraction='0.3'",
        ),
        (
            dict(begin_step=-1, end_step=10),
            r"`begin_step` must be >= 0. Received: begin_step=-1",
        ),
        (
            dict(begin_step=10, end_step=10),
            r"`end_step` must be > begin_step \(10\). Received: end_step=10",
        ),
        (dict(begin_step=10, end_step=5), r"Received: end_step=5"),
        (dict(), r"`end_step` is required.*Received: end_step=None"),
        (dict(end_step=10.5), r"must be an integer. Received: end_step=10.5"),
        (
            dict(begin_step=True, end_step=10),
            r"must be an integer. Received: begin_step=True",
        ),
    ],
)
def test_cosine_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        schedules.CosineDropFraction(**kwargs)


def test_cosine_accepts_boundary_values():
    schedule = schedules.CosineDropFraction(1.0, begin_step=0, end_step=1)
    np.testing.assert_allclose(_value(schedule, 0), 1.0, rtol=1e-7)
    # NumPy integers are accepted and stored as Python ints.
    schedule = schedules.CosineDropFraction(
        0.3, np.int64(2), end_step=np.int32(4)
    )
    assert schedule.get_config() == {
        "initial_drop_fraction": 0.3,
        "begin_step": 2,
        "end_step": 4,
    }
    assert type(schedule.get_config()["begin_step"]) is int


@pytest.mark.parametrize(
    "drop_fraction, message",
    [
        (0, r"`drop_fraction` must be in \(0, 1\]. Received: drop_fraction=0"),
        (0.0, r"Received: drop_fraction=0.0"),
        (1.01, r"Received: drop_fraction=1.01"),
        (-1, r"Received: drop_fraction=-1"),
        (None, r"Received: drop_fraction=None"),
    ],
)
def test_constant_validation(drop_fraction, message):
    with pytest.raises(ValueError, match=message):
        schedules.ConstantDropFraction(drop_fraction)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(final_sparsity=1.0),
            r"`final_sparsity` must be in \[0, 1\). "
            r"Received: final_sparsity=1.0",
        ),
        (dict(final_sparsity=-0.1), r"Received: final_sparsity=-0.1"),
        (
            dict(initial_sparsity=-0.5),
            r"`initial_sparsity` must be in \[0, 1\). "
            r"Received: initial_sparsity=-0.5",
        ),
        (dict(initial_sparsity=1), r"Received: initial_sparsity=1"),
        (
            dict(final_sparsity=0.5, initial_sparsity=0.6),
            r"`initial_sparsity` must be <= final_sparsity \(0.5\). "
            r"Received: initial_sparsity=0.6",
        ),
        (dict(begin_step=-5), r"Received: begin_step=-5"),
        (dict(end_step=0), r"Received: end_step=0"),
        (
            dict(power=0.5),
            r"`power` must be >= 1. Received: power=0.5",
        ),
        (dict(power=0), r"Received: power=0"),
        (dict(power="3"), r"Received: power='3'"),
    ],
)
def test_polynomial_validation(kwargs, message):
    args = dict(final_sparsity=0.8, begin_step=0, end_step=100)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        schedules.PolynomialSparsity(**args)


def test_polynomial_accepts_boundary_values():
    schedule = schedules.PolynomialSparsity(
        0.0, begin_step=0, end_step=1, initial_sparsity=0.0, power=1
    )
    np.testing.assert_allclose(_value(schedule, 1), 0.0, atol=1e-7)
    equal = schedules.PolynomialSparsity(0.5, 0, 10, initial_sparsity=0.5)
    np.testing.assert_allclose(_value(equal, 3), 0.5, atol=1e-7)


# ---------------------------------------------------------------------------
# Docstring examples
# ---------------------------------------------------------------------------


def test_docstring_examples():
    result = doctest.testmod(schedules, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
