"""End-to-end optimizer coverage: state reset through `model.fit` + RigL.

`tests/test_optimizer_state.py` calls `reset_optimizer_state` directly. Here
every supported optimizer trains a small MLP (20 -> 32 -> 16 -> 4, three
`MaskedDense` layers, 10 steps per epoch) with `model.fit` and a
`RigLCallback`, and three instruments watch the run:

* `_SlotSentinel`, placed *before* the RigLCallback, acts at the end of each
  update step, after the optimizer applied that step and before the mask
  update: it saves every per-kernel optimizer variable and overwrites it
  with a sentinel (0.5);
* `_SlotCheck`, placed after it, records each slot at the changed (grown or
  dropped) positions and elsewhere, then puts the saved values back at the
  unchanged positions, so that the rest of the run is the uninstrumented one;
* `_ZeroTracker`, last, checks after every batch that inactive kernel
  entries are exactly 0.0 and zero counts never move.

The per-kernel optimizer variables are found without rigl_keras: Keras names
the variable it creates for a model variable `<variable.path with "/" as
"_">_<slot>` (`Optimizer.add_variable_from_reference`), so every optimizer
variable whose name has that prefix is state of that kernel. The expected
slot names and reset values are written out by hand per optimizer.

Every run starts from the model trained *dense* for one epoch with the same
optimizer, so the state is non-zero everywhere when the callback sparsifies
the model (a fine-tuning start): the positions it masks out must have their
state reset too, or momentum moves them off zero at the next step.
"""

import warnings

import keras
import numpy as np
import pytest

import rigl_keras

import _helpers  # tests/_helpers.py

_OPT = keras.optimizers
_BATCH = 16
_STEPS_PER_EPOCH = 10  # 160 samples / batch 16.
_SENTINEL = 0.5
_UPDATE_FREQ = 4
_EMA = "ema"  # Reset value of an EMA copy: the kernel's new value.

# Hand ERK zero counts of the MLP at sparsity 0.8 (as in test_callbacks.py).
_MLP_ZEROS_08 = {"fc1": 534, "fc2": 414, "out": 23}

# (id, optimizer factory, {slot name: reset value}).
_CASES = [
    ("sgd", lambda: _OPT.SGD(0.05), {}),
    ("sgd_momentum", lambda: _OPT.SGD(0.05, momentum=0.9), {"momentum": 0.0}),
    ("sgd_nesterov", lambda: _OPT.SGD(0.05, momentum=0.9, nesterov=True),
     {"momentum": 0.0}),
    ("adam", lambda: _OPT.Adam(0.01), {"momentum": 0.0, "velocity": 0.0}),
    ("adamw", lambda: _OPT.AdamW(0.01, weight_decay=0.1),
     {"momentum": 0.0, "velocity": 0.0}),
    ("rmsprop_momentum_centered",
     lambda: _OPT.RMSprop(0.01, momentum=0.5, centered=True),
     {"velocity": 0.0, "momentum": 0.0, "average_gradient": 0.0}),
    ("adagrad", lambda: _OPT.Adagrad(0.1, initial_accumulator_value=0.25),
     {"accumulator": 0.25}),
    ("adamax", lambda: _OPT.Adamax(0.01), {"momentum": 0.0, "norm": 0.0}),
    ("nadam", lambda: _OPT.Nadam(0.01), {"momentum": 0.0, "velocity": 0.0}),
    ("lion", lambda: _OPT.Lion(0.001), {"momentum": 0.0}),
    ("adam_ema", lambda: _OPT.Adam(0.01, use_ema=True),
     {"momentum": 0.0, "velocity": 0.0, "average": _EMA}),
    ("sgd_ema_overwrite",
     lambda: _OPT.SGD(0.05, momentum=0.9, use_ema=True, ema_overwrite_frequency=3),
     {"momentum": 0.0, "average": _EMA}),
    ("sgd_momentum_accumulation",
     lambda: _OPT.SGD(0.05, momentum=0.9, gradient_accumulation_steps=2),
     {"momentum": 0.0, "gradient_accumulator": 0.0}),
]

# Substrings of the warnings RigLCallback issues.
_RIGL_WARNINGS = ("mask update", "dense gradient", "already has a sparse mask")


_data = _helpers.regression_data


_mlp = _helpers.compiled_mlp


_numpy = _helpers.as_numpy


def _step(model):
    return int(_numpy(model.optimizer.iterations))


_masks = _helpers.mask_arrays


def _kernel_slots(model, layer):
    """`{slot name: optimizer variable}` of `layer.kernel`, found by name."""
    optimizer = model.optimizer
    while isinstance(optimizer, _OPT.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    prefix = layer.kernel.path.replace("/", "_") + "_"
    return {
        v.name[len(prefix):]: v
        for v in optimizer.variables
        if v.name.startswith(prefix)
    }


class _UpdateSteps(keras.callbacks.Callback):
    """Shared state: the optimizer steps at which a mask update happens.

    A step `t` counts once, at the first batch whose end sees
    `iterations == t` (with gradient accumulation it stays there for k
    batches).
    """

    def __init__(self, update_steps):
        super().__init__()
        self.update_steps = set(update_steps)
        self._last = None

    def _at_update_step(self):
        step = _step(self.model)
        first = step != self._last
        self._last = step
        return first and step in self.update_steps


class _SlotSentinel(_UpdateSteps):
    """Before the mask update: saves the kernel slots, fills the sentinel."""

    def on_train_batch_end(self, batch, logs=None):
        self.saved = None
        if not self._at_update_step():
            return
        self.masks_before = _masks(self.model)
        self.saved = {}
        for layer in rigl_keras.masked_layers(self.model):
            for name, variable in _kernel_slots(self.model, layer).items():
                self.saved[layer.name, name] = _numpy(variable)
                variable.assign(np.full(variable.shape, _SENTINEL, "float32"))


class _SlotCheck(keras.callbacks.Callback):
    """After the mask update: records the slots, restores unchanged entries."""

    def __init__(self, sentinel):
        super().__init__()
        self.sentinel = sentinel
        self.records = []  # (step, layer, slot, changed, kernel, value)

    def on_train_batch_end(self, batch, logs=None):
        if self.sentinel.saved is None:
            return
        step = _step(self.model)
        masks_after = _masks(self.model)
        for layer in rigl_keras.masked_layers(self.model):
            before = self.sentinel.masks_before[layer.name]
            changed = before != masks_after[layer.name]
            kernel = _numpy(layer.kernel)
            for name, variable in _kernel_slots(self.model, layer).items():
                value = _numpy(variable)
                self.records.append((step, layer.name, name, changed, kernel, value))
                saved = self.sentinel.saved[layer.name, name]
                variable.assign(np.where(changed, value, saved))


class _ZeroTracker(keras.callbacks.Callback):
    """After every batch: inactive kernel entries are 0.0, counts fixed."""

    def on_train_begin(self, logs=None):
        self.counts = {n: int((m == 0).sum()) for n, m in _masks(self.model).items()}
        self.violations = []
        self.changed_steps = []
        self._previous = _masks(self.model)
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        masks = _masks(self.model)
        if any(not np.array_equal(masks[n], self._previous[n]) for n in masks):
            self.changed_steps.append(step)
        self._previous = masks
        for layer in rigl_keras.masked_layers(self.model):
            mask = masks[layer.name]
            if int((mask == 0).sum()) != self.counts[layer.name]:
                self.violations.append((step, layer.name, "zero count"))
            if np.any(_numpy(layer.kernel)[mask == 0] != 0.0):
                self.violations.append((step, layer.name, "inactive kernel"))


def _fit_checked(model, callbacks, epochs):
    """Fits without shuffling; fails on any RigLCallback warning."""
    x, y = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=_BATCH, epochs=epochs, shuffle=False,
                  verbose=0, callbacks=callbacks)
    messages = [str(w.message) for w in caught
                if any(s in str(w.message) for s in _RIGL_WARNINGS)]
    assert not messages, messages


@pytest.mark.parametrize("name, make, expected_slots", _CASES,
                         ids=[c[0] for c in _CASES])
def test_state_reset_end_to_end(name, make, expected_slots):
    optimizer = make()
    accumulation = optimizer.gradient_accumulation_steps or 1
    model = _mlp(optimizer)
    x, y = _data()
    # Dense warm start: non-zero optimizer state at every position.
    model.fit(x, y, batch_size=_BATCH, epochs=1, shuffle=False, verbose=0)
    start = _step(model)
    assert start == _STEPS_PER_EPOCH // accumulation
    epochs = 2
    last = start + epochs * _STEPS_PER_EPOCH // accumulation
    end_step = last - 2
    expected_updates = [
        t for t in range(start + 1, end_step + 1) if t % _UPDATE_FREQ == 0
    ]
    assert len(expected_updates) >= 2, expected_updates

    rigl = rigl_keras.RigLCallback(
        sparsity=0.8, update_freq=_UPDATE_FREQ, end_step=end_step,
        drop_fraction_schedule="constant", grow_init="random_normal", seed=0,
    )
    sentinel = _SlotSentinel(expected_updates)
    check = _SlotCheck(sentinel)
    tracker = _ZeroTracker()
    _fit_checked(model, [sentinel, rigl, check, tracker], epochs)

    # Updates happened at the expected optimizer steps, and nowhere else.
    assert tracker.changed_steps == expected_updates
    assert tracker.violations == []
    assert {n: int((m == 0).sum()) for n, m in _masks(model).items()} == _MLP_ZEROS_08
    # The slots found by name are the hand-listed ones.
    for layer in rigl_keras.masked_layers(model):
        assert set(_kernel_slots(model, layer)) == set(expected_slots), name

    checked_steps = sorted({r[0] for r in check.records})
    if expected_slots:
        assert checked_steps == expected_updates
    for step, layer_name, slot, changed, kernel, value in check.records:
        where = (name, step, layer_name, slot)
        assert changed.sum() > 0, where
        reset = expected_slots[slot]
        expected = kernel[changed] if reset is _EMA else np.full(changed.sum(), reset)
        np.testing.assert_array_equal(value[changed], expected, err_msg=str(where))
        # Only the changed positions were reset.
        assert np.all(value[~changed] == _SENTINEL), where

    # After fit (EMA values written into the weights by
    # `finalize_variable_values`), inactive weights are still exactly zero.
    for layer in rigl_keras.masked_layers(model):
        mask = _numpy(layer.mask)
        assert np.all(_numpy(layer.kernel)[mask == 0] == 0.0), (name, layer.name)


def test_gradient_accumulation_records_the_accumulated_gradient():
    # With gradient_accumulation_steps=k, `optimizer.iterations` counts
    # applied steps (one every k batches). An update at optimizer step t must
    # come after batch k*t and grow where the dense gradient summed over the
    # k micro-batches of step t is largest; end_step=None is 75% of this
    # fit's *optimizer* steps.
    k = 2
    model = _mlp(_OPT.SGD(0.05, momentum=0.9, gradient_accumulation_steps=k))
    x, y = _data()

    class Spy(_helpers.SpiedRigL):
        def before_update(self, step):
            raw = int(_numpy(self.model.optimizer._iterations))  # pylint: disable=protected-access
            gradients = {k.split("/")[-2]: _numpy(g) for k, g in self.dense_gradients.items()}
            self.seen.append((step, raw, gradients))

    class Weights(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.before.append([_numpy(w) for w in self.model.trainable_weights])

    rigl = Spy(sparsity=0.8, update_freq=2, seed=0)
    rigl.seen = []
    weights = Weights()
    weights.before = []
    _fit_checked(model, [rigl, weights], epochs=2)
    # 20 batches = 10 optimizer steps; end_step = floor(0.75 * 10) = 7.
    assert _step(model) == 10
    assert rigl.resolved_end_step == 7  # pylint: disable=protected-access
    assert [(s, raw) for s, raw, _ in rigl.seen] == [(2, 4), (4, 8), (6, 12)]
    for step, raw, recorded in rigl.seen:
        # Batches raw-k .. raw-1 (0-based) made up optimizer step `step`;
        # the weights did not move between them.
        first = raw - k
        np.testing.assert_array_equal(weights.before[first][0], weights.before[raw - 1][0])
        total = {name: 0.0 for name in recorded}
        for batch in range(first, raw):
            rows = slice((batch % _STEPS_PER_EPOCH) * _BATCH,
                         (batch % _STEPS_PER_EPOCH + 1) * _BATCH)
            part = _hand_dense_gradients(weights.before[batch], x[rows], y[rows])
            total = {name: total[name] + part[name] for name in total}
        for name in recorded:
            np.testing.assert_allclose(
                recorded[name], total[name], rtol=1e-4, atol=1e-6,
                err_msg=f"step {step}, layer {name}")


def test_snfs_moving_average_moves_once_per_optimizer_step_with_accumulation():
    # SNFS keeps avg_t = m * avg_{t-1} + (1 - m) * g_t per *optimizer* step,
    # g_t the dense gradient summed over the step's k micro-batches (as RigL
    # records it), not a move at every micro-batch.
    k, momentum = 2, 0.9
    model = _mlp(_OPT.SGD(0.05, momentum=0.9, gradient_accumulation_steps=k))
    x, y = _data()

    class Spy(_helpers.SpiedRigL):
        def before_update(self, step):
            gradients = {k.split("/")[-2]: _numpy(g) for k, g in self.dense_gradients.items()}
            self.seen.append((step, gradients))

    class Weights(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.before.append([_numpy(w) for w in self.model.trainable_weights])

    rigl = Spy(sparsity=0.8, update_freq=2, grow="momentum", seed=0)
    rigl.seen = []
    weights = Weights()
    weights.before = []
    _fit_checked(model, [rigl, weights], epochs=2)
    assert [s for s, _ in rigl.seen] == [2, 4, 6]
    for step, recorded in rigl.seen:
        average = {name: 0.0 for name in recorded}
        for optimizer_step in range(step):
            total = {name: 0.0 for name in recorded}
            for batch in range(optimizer_step * k, (optimizer_step + 1) * k):
                rows = slice((batch % _STEPS_PER_EPOCH) * _BATCH,
                             (batch % _STEPS_PER_EPOCH + 1) * _BATCH)
                part = _hand_dense_gradients(weights.before[batch], x[rows], y[rows])
                total = {name: total[name] + part[name] for name in total}
            average = {name: momentum * average[name] + (1 - momentum) * total[name]
                       for name in average}
        for name in recorded:
            np.testing.assert_allclose(
                recorded[name], average[name], rtol=1e-4, atol=1e-6,
                err_msg=f"step {step}, layer {name}")


def _hand_dense_gradients(weights, x, y):
    """dL/dW of the MLP's plain math (kernels hold W * M), L = mean sq. error."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    k1, b1, k2, b2, k3, b3 = [tf.constant(w) for w in weights]
    with tf.GradientTape() as tape:
        tape.watch([k1, k2, k3])
        h = tf.nn.relu(x @ k1 + b1)
        h = tf.nn.relu(h @ k2 + b2)
        loss = tf.reduce_mean(tf.square(h @ k3 + b3 - y))
    grads = tape.gradient(loss, [k1, k2, k3])
    return {name: g.numpy() for name, g in zip(("fc1", "fc2", "out"), grads)}


class _PlainMomentum(keras.optimizers.Optimizer):
    """An optimizer with per-weight state that rigl_keras does not know."""

    def build(self, variables):
        super().build(variables)
        self.velocity = self.add_optimizer_variables(variables, "velocity")

    def update_step(self, gradient, variable, learning_rate):
        velocity = self.velocity[self._get_variable_index(variable)]
        velocity.assign(0.9 * velocity + gradient)
        variable.assign_sub(learning_rate * velocity)


@pytest.mark.parametrize(
    "make, class_name",
    [
        (lambda: _PlainMomentum(0.01), "_PlainMomentum"),
        (lambda: _OPT.Adafactor(0.01), "Adafactor"),
        (lambda: _OPT.LossScaleOptimizer(_OPT.Adafactor(0.01)), "Adafactor"),
    ],
    ids=["custom", "adafactor", "loss_scale_adafactor"],
)
def test_unknown_optimizer_state_raises_naming_it(make, class_name):
    model = _mlp(make())
    rigl = rigl_keras.RigLCallback(sparsity=0.8, update_freq=4, end_step=8, seed=0)
    x, y = _data()
    with pytest.raises(ValueError, match=rf"optimizer {class_name}\b.*register"):
        model.fit(x, y, batch_size=_BATCH, epochs=1, verbose=0, callbacks=[rigl])
    assert _step(model) == 0  # Raised before any training step.
