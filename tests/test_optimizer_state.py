"""Tests for rigl_keras.optimizer_state."""

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl_keras.optimizer_state
from rigl_keras import optimizer_state
from rigl_keras.layers import MaskedDense
from rigl_keras.optimizer_state import check_optimizer_supported
from rigl_keras.optimizer_state import optimizer_state_slots
from rigl_keras.optimizer_state import register_optimizer_state
from rigl_keras.optimizer_state import reset_optimizer_state

_OPT = keras.optimizers

# (id, factory, expected number of per-weight slots, reset values in order;
# None = the variable's own value, as for the EMA copy).
_CASES = [
    ("sgd_momentum", lambda: _OPT.SGD(0.1, momentum=0.9), [0.0]),
    ("sgd_nesterov", lambda: _OPT.SGD(0.1, momentum=0.9, nesterov=True), [0.0]),
    ("sgd_plain", lambda: _OPT.SGD(0.1), []),
    ("adam", lambda: _OPT.Adam(0.01), [0.0, 0.0]),
    ("adam_amsgrad", lambda: _OPT.Adam(0.01, amsgrad=True), [0.0, 0.0, 0.0]),
    ("adamw", lambda: _OPT.AdamW(0.01, weight_decay=0.1), [0.0, 0.0]),
    ("rmsprop", lambda: _OPT.RMSprop(0.01), [0.0]),
    ("rmsprop_momentum_centered",
     lambda: _OPT.RMSprop(0.01, momentum=0.5, centered=True), [0.0, 0.0, 0.0]),
    ("adagrad", lambda: _OPT.Adagrad(0.1, initial_accumulator_value=0.3), [0.3]),
    ("adamax", lambda: _OPT.Adamax(0.01), [0.0, 0.0]),
    ("nadam", lambda: _OPT.Nadam(0.01), [0.0, 0.0]),
    ("lion", lambda: _OPT.Lion(0.01), [0.0]),
    ("adadelta", lambda: _OPT.Adadelta(1.0), [0.0, 0.0]),
    ("ftrl", lambda: _OPT.Ftrl(0.1, initial_accumulator_value=0.2), [0.2, 0.0]),
    ("lamb", lambda: _OPT.Lamb(0.01), [0.0, 0.0]),
    ("sgd_ema", lambda: _OPT.SGD(0.1, use_ema=True), [None]),
    ("sgd_momentum_accumulation",
     lambda: _OPT.SGD(0.1, momentum=0.9, gradient_accumulation_steps=2), [0.0, 0.0]),
    ("loss_scale_adam", lambda: _OPT.LossScaleOptimizer(_OPT.Adam(0.01)), [0.0, 0.0]),
]


def _state_owner(optimizer):
    while isinstance(optimizer, _OPT.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer


def _trained(make, rng, steps=3):
    """An optimizer with non-zero state over two variables of distinct shapes."""
    optimizer = make()
    target = keras.Variable(rng.normal(size=(4, 5)).astype("float32"), name="target")
    other = keras.Variable(rng.normal(size=(6,)).astype("float32"), name="other")
    optimizer.build([target, other])
    for _ in range(steps):
        optimizer.apply_gradients(
            [
                (tf.constant(rng.normal(size=(4, 5)), tf.float32), target),
                (tf.constant(rng.normal(size=(6,)), tf.float32), other),
            ]
        )
    return optimizer, target, other


@pytest.mark.parametrize("name, make, reset_values", _CASES, ids=[c[0] for c in _CASES])
def test_reset_at_positions_only(name, make, reset_values):
    del name
    rng = np.random.default_rng(0)
    optimizer, target, other = _trained(make, rng)
    slots = optimizer_state_slots(optimizer, target)
    assert [value for _, value in slots] == reset_values

    # The slots are exactly the optimizer's variables of the target's shape
    # (an independent listing: nothing is missed, nothing foreign found).
    owner = _state_owner(optimizer)
    expected_ids = {id(v) for v in owner.variables if tuple(v.shape) == (4, 5)}
    assert {id(state) for state, _ in slots} == expected_ids
    other_ids = {id(v) for v in owner.variables if tuple(v.shape) == (6,)}
    assert {id(state) for state, _ in optimizer_state_slots(optimizer, other)} == other_ids

    # A dropped/grown weight gets its new value before the reset.
    positions = rng.random((4, 5)) < 0.4
    positions[0, 0], positions[-1, -1] = True, False
    target.assign(np.where(positions, 0.0, target.numpy()))
    before = [state.numpy().copy() for state, _ in slots]
    before_other = [s.numpy().copy() for s, _ in optimizer_state_slots(optimizer, other)]
    for (state, value), old in zip(slots, before):
        fresh = target.numpy() if value is None else value
        # The state differs from its reset value somewhere at the positions,
        # so the test can see the reset.
        assert np.any(old[positions] != np.broadcast_to(fresh, old.shape)[positions])

    reset_optimizer_state(optimizer, target, tf.constant(positions))

    for (state, value), old in zip(slots, before):
        new = state.numpy()
        fresh = target.numpy() if value is None else np.full((4, 5), value, "float32")
        np.testing.assert_array_equal(new[positions], fresh[positions])
        np.testing.assert_array_equal(new[~positions], old[~positions])
    for (state, _), old in zip(optimizer_state_slots(optimizer, other), before_other):
        np.testing.assert_array_equal(state.numpy(), old)


def test_reset_inside_tf_function():
    rng = np.random.default_rng(1)
    optimizer, target, _ = _trained(lambda: _OPT.Adam(0.01), rng)
    positions = tf.constant(rng.random((4, 5)) < 0.5)
    tf.function(lambda p: reset_optimizer_state(optimizer, target, p))(positions)
    for state, _ in optimizer_state_slots(optimizer, target):
        np.testing.assert_array_equal(state.numpy()[positions.numpy()], 0.0)


def test_loss_scale_optimizer_resets_the_inner_state():
    rng = np.random.default_rng(2)
    optimizer, target, _ = _trained(
        lambda: _OPT.LossScaleOptimizer(_OPT.Adam(0.01)), rng
    )
    inner = optimizer.inner_optimizer
    momentum = inner._momentums[inner._get_variable_index(target)]
    velocity = inner._velocities[inner._get_variable_index(target)]
    positions = np.zeros((4, 5), bool)
    positions[1] = True
    old_m, old_v = momentum.numpy(), velocity.numpy()
    assert np.all(old_m[1] != 0) and np.all(old_v[1] != 0)
    reset_optimizer_state(optimizer, target, tf.constant(positions))
    np.testing.assert_array_equal(momentum.numpy()[1], 0.0)
    np.testing.assert_array_equal(velocity.numpy()[1], 0.0)
    np.testing.assert_array_equal(momentum.numpy()[~positions], old_m[~positions])
    np.testing.assert_array_equal(velocity.numpy()[~positions], old_v[~positions])


# ---------------------------------------------------------------------------
# Unknown and registered optimizers.
# ---------------------------------------------------------------------------


class _MyMomentum(keras.optimizers.Optimizer):
    """A custom optimizer with one per-weight slot, unknown to rigl_keras."""

    def __init__(self, learning_rate=0.1, **kwargs):
        super().__init__(learning_rate=learning_rate, name="my_momentum", **kwargs)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = self.add_optimizer_variables(variables, "velocity")

    def update_step(self, gradient, variable, learning_rate):
        velocity = self.velocities[self._get_variable_index(variable)]
        self.assign(velocity, 0.9 * velocity + gradient)
        self.assign_sub(variable, learning_rate * velocity)


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, restored after the test."""
    copy = dict(optimizer_state._OPTIMIZER_STATE)  # pylint: disable=protected-access
    monkeypatch.setattr(optimizer_state, "_OPTIMIZER_STATE", copy)
    return copy


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: _OPT.Adafactor(), "Adafactor"),
        (lambda: _MyMomentum(), "_MyMomentum"),
        (lambda: _OPT.LossScaleOptimizer(_OPT.Adafactor()), "Adafactor"),
    ],
)
def test_unknown_optimizer_raises_naming_it(make, name, registry):
    del registry
    optimizer = make()
    variable = keras.Variable(np.ones((2, 3), "float32"))
    optimizer.build([variable])
    for call in (
        lambda: check_optimizer_supported(optimizer),
        lambda: optimizer_state_slots(optimizer, variable),
        lambda: reset_optimizer_state(optimizer, variable, tf.ones((2, 3), tf.bool)),
    ):
        with pytest.raises(ValueError, match=name) as info:
            call()
        assert "register_optimizer_state" in str(info.value)


def test_register_makes_custom_optimizer_supported(registry):
    rng = np.random.default_rng(3)
    register_optimizer_state(_MyMomentum, [("velocities", lambda opt: 0.0)])
    assert _MyMomentum in registry
    optimizer, target, _ = _trained(_MyMomentum, rng)
    check_optimizer_supported(optimizer)
    (velocity, value), = optimizer_state_slots(optimizer, target)
    assert value == 0.0
    old = velocity.numpy()
    positions = np.zeros((4, 5), bool)
    positions[:, 2] = True
    reset_optimizer_state(optimizer, target, tf.constant(positions))
    np.testing.assert_array_equal(velocity.numpy()[positions], 0.0)
    np.testing.assert_array_equal(velocity.numpy()[~positions], old[~positions])


def test_subclass_of_known_optimizer_is_supported(registry):
    del registry

    class MySGD(_OPT.SGD):
        pass

    optimizer, target, _ = _trained(lambda: MySGD(0.1, momentum=0.9), np.random.default_rng(4))
    check_optimizer_supported(optimizer)
    assert len(optimizer_state_slots(optimizer, target)) == 1


def test_subclass_adding_state_raises_until_registered(registry):
    """A subclass of a known optimizer that keeps extra per-weight state is
    not silently treated as its parent: its extra state would never be
    reset."""

    class SGDWithTrace(_OPT.SGD):
        def build(self, variables):
            super().build(variables)
            self.traces = self.add_optimizer_variables(variables, "trace")

    optimizer = SGDWithTrace(0.1, momentum=0.9)
    variable = keras.Variable(np.ones((2, 3), "float32"))
    optimizer.build([variable])
    with pytest.raises(ValueError, match="SGDWithTrace.*trace") as info:
        check_optimizer_supported(optimizer)
    assert "register_optimizer_state" in str(info.value)
    register_optimizer_state(
        SGDWithTrace, [("momentums", lambda opt: 0.0), ("traces", lambda opt: 0.0)]
    )
    check_optimizer_supported(optimizer)
    assert len(optimizer_state_slots(optimizer, variable)) == 2


def test_every_registered_class_is_an_optimizer():
    for cls, slots in optimizer_state.registered_optimizers().items():
        assert issubclass(cls, keras.optimizers.Optimizer)
        assert slots and all(isinstance(attr, str) and callable(fn) for attr, fn in slots)


# ---------------------------------------------------------------------------
# End to end: a dropped weight stays at exactly zero.
# ---------------------------------------------------------------------------


def _drop_and_train(make_optimizer, reset, rng_seed=5):
    rng = np.random.default_rng(rng_seed)
    keras.utils.set_random_seed(rng_seed)
    model = keras.Sequential(
        [keras.Input((6,)), MaskedDense(8, activation="relu"), MaskedDense(2)]
    )
    model.compile(optimizer=make_optimizer(), loss="mse")
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)  # 4 steps.
    layer = model.layers[0]
    dropped = np.zeros((6, 8), bool)
    dropped[rng.random((6, 8)) < 0.5] = True
    dropped[0, 0] = True
    layer.mask.assign(np.where(dropped, 0.0, layer.mask.numpy()))
    layer.apply_mask()
    if reset:
        reset_optimizer_state(model.optimizer, layer.kernel, tf.constant(dropped))
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)  # 8 steps.
    return layer.kernel.numpy(), dropped, layer


@pytest.mark.parametrize(
    "make_optimizer",
    [lambda: _OPT.SGD(0.1, momentum=0.9), lambda: _OPT.Adam(0.01)],
    ids=["sgd_momentum", "adam"],
)
def test_dropped_weights_stay_exactly_zero_after_reset(make_optimizer):
    kernel, dropped, layer = _drop_and_train(make_optimizer, reset=True)
    assert np.all(kernel[dropped] == 0.0)
    # The rest of the layer did train.
    assert np.any(kernel[~dropped] != 0.0)
    np.testing.assert_array_equal(layer.mask.numpy()[dropped], 0.0)


def test_without_reset_momentum_moves_dropped_weights():
    """The control: stale momentum alone moves a masked weight off zero."""
    kernel, dropped, _ = _drop_and_train(lambda: _OPT.SGD(0.1, momentum=0.9), reset=False)
    assert np.any(kernel[dropped] != 0.0)


def test_docstring_examples(registry):
    del registry  # The module's example registers a class.
    result = doctest.testmod(
        rigl_keras.optimizer_state,
        extraglobs={"np": np, "tf": tf, "keras": keras},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.attempted > 0
    assert result.failed == 0
