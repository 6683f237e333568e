"""RigL training under Keras mixed precision (`mixed_bfloat16`, `mixed_float16`).

Under a mixed policy the masked layers compute in bfloat16/float16 while
their variables (kernel, bias, mask) stay float32. The tests train a small
MLP (20 -> 32 -> 16 -> 4, three `MaskedDense` layers, 10 steps per epoch)
with `model.fit` and check, for each policy:

* masks hold exactly 0.0/1.0, zero counts never move and inactive kernel
  entries stay exactly 0.0 after every batch;
* the mask update sees a float32 kernel, mask and gradient and computes
  float32 drop and grow scores (a spying `RigL` subclass records the dtypes);
* the recorded dense gradient is float32 and equals the hand-computed
  float32 gradient of the plain math up to the policy's rounding (times the
  loss scale under `mixed_float16`, whose `LossScaleOptimizer` scales the
  loss before differentiation; the ranking of |gradient| is unchanged);
* a `LossScaleOptimizer`'s wrapped optimizer has its state reset at grown
  and dropped positions (under `mixed_float16` Keras wraps the optimizer in
  `compile`; under `mixed_bfloat16` the test wraps it);
* steps the `LossScaleOptimizer` skips on overflow poison neither the
  recorded gradient nor SNFS's gradient moving average.

The `policy` fixture sets the global policy and always puts `float32` back.
`mixed_float16` is skipped, with the reason, where the CPU cannot run
float16 kernels.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl_keras

import _helpers  # tests/_helpers.py
from rigl_keras import updaters

_BATCH = 16
_STEPS_PER_EPOCH = 10
_SENTINEL = 0.5
_MLP_ZEROS_08 = {"fc1": 534, "fc2": 414, "out": 23}
_NAMES = ("fc1", "fc2", "out")


def _float16_unsupported_reason():
    """`None` if float16 matmul (forward and backward) runs on this CPU."""
    try:
        a = tf.constant(np.arange(6).reshape(2, 3), tf.float16)
        with tf.GradientTape() as tape:
            tape.watch(a)
            b = tf.reduce_sum(tf.nn.relu(tf.matmul(a, a, transpose_b=True)))
        tape.gradient(b, a).numpy()
    except (tf.errors.OpError, RuntimeError, ValueError) as error:
        return f"this CPU cannot run float16 kernels: {error}"
    return None


@pytest.fixture(params=["mixed_bfloat16", "mixed_float16"])
def policy(request):
    """Sets the global dtype policy for one test; restores float32 after."""
    if request.param == "mixed_float16":
        reason = _float16_unsupported_reason()
        if reason:
            pytest.skip(reason)
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _data(n=160, seed=0, scale=1.0):
    x, y = _helpers.regression_data(n, seed)
    return x, scale * y


_mlp = _helpers.compiled_mlp


_numpy = _helpers.as_numpy


def _step(model):
    return int(_numpy(model.optimizer.iterations))


_masks = _helpers.mask_arrays


def _rigl_warnings(caught):
    keys = ("mask update", "dense gradient", "already has a sparse mask")
    return [str(w.message) for w in caught if any(k in str(w.message) for k in keys)]


class _DtypeSpyRigL(updaters.RigL):
    """RigL that records the dtypes its hooks see and return (at trace)."""

    def __init__(self):
        super().__init__()
        self.dtypes = {}

    def drop_scores(self, kernel, mask, gradient, seed):
        scores = super().drop_scores(kernel, mask, gradient, seed)
        self.dtypes.update(kernel=kernel.dtype, mask=mask.dtype,
                           drop_scores=scores.dtype)
        return scores

    def grow_scores(self, kernel, mask, gradient, seed):
        scores = super().grow_scores(kernel, mask, gradient, seed)
        self.dtypes.update(gradient=gradient.dtype, grow_scores=scores.dtype)
        return scores


class _RecordingRigL(_helpers.SpiedRigL):
    """Keeps the recorded dense gradient (dtype, value) of every update."""

    def before_update(self, step):
        self.recorded[step] = {
            key.split("/")[-2]: (g.dtype, _numpy(g))
            for key, g in self.dense_gradients.items()
        }


class _Tracker(keras.callbacks.Callback):
    """Weights before every batch; mask invariants after every batch."""

    def on_train_begin(self, logs=None):
        self.before = {}
        self.scale = {}
        self.batch_of = {}
        self.violations = []
        self.changed_steps = []
        self._previous = _masks(self.model)

    def on_train_batch_begin(self, batch, logs=None):
        step = _step(self.model) + 1
        self.before[step] = [_numpy(w) for w in self.model.trainable_weights]
        self.batch_of[step] = batch  # The last try of a step skipped on overflow.
        optimizer = self.model.optimizer
        is_lso = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        self.scale[step] = float(_numpy(optimizer.dynamic_scale)) if is_lso else 1.0

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        masks = _masks(self.model)
        if any(not np.array_equal(masks[n], self._previous[n]) for n in masks):
            self.changed_steps.append(step)
        self._previous = masks
        for layer in rigl_keras.masked_layers(self.model):
            mask = masks[layer.name]
            if mask.dtype != np.float32 or not np.all((mask == 0) | (mask == 1)):
                self.violations.append((step, layer.name, "mask values"))
            if int((mask == 0).sum()) != _MLP_ZEROS_08[layer.name]:
                self.violations.append((step, layer.name, "zero count"))
            if np.any(_numpy(layer.kernel)[mask == 0] != 0.0):
                self.violations.append((step, layer.name, "inactive kernel"))


def _hand_dense_gradients(weights, x, y):
    """dL/dW of the MLP's plain float32 math (kernels hold W * M)."""
    k1, b1, k2, b2, k3, b3 = [tf.constant(w, tf.float32) for w in weights]
    with tf.GradientTape() as tape:
        tape.watch([k1, k2, k3])
        h = tf.nn.relu(x @ k1 + b1)
        h = tf.nn.relu(h @ k2 + b2)
        loss = tf.reduce_mean(tf.square(h @ k3 + b3 - y))
    grads = tape.gradient(loss, [k1, k2, k3])
    return {name: g.numpy() for name, g in zip(_NAMES, grads)}


def test_rigl_trains_under_mixed_policy(policy):
    model = _mlp(keras.optimizers.Adam(0.01))
    compute = "bfloat16" if policy == "mixed_bfloat16" else "float16"
    for layer in rigl_keras.masked_layers(model):
        assert layer.compute_dtype == compute
        assert layer.kernel.dtype == "float32" and layer.mask.dtype == "float32"
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)

    spy = _DtypeSpyRigL()
    rigl = _RecordingRigL(
        sparsity=0.8, update_freq=4, end_step=24, grow=spy,
        drop_fraction_schedule="constant", seed=0,
    )
    rigl.recorded = {}
    tracker = _Tracker()
    x, y = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=_BATCH, epochs=3, shuffle=False,
                            verbose=0, callbacks=[rigl, tracker])
    assert _rigl_warnings(caught) == []
    assert np.all(np.isfinite(history.history["loss"]))

    updates = [4, 8, 12, 16, 20, 24]
    assert sorted(rigl.recorded) == updates
    assert tracker.changed_steps == updates
    assert tracker.violations == []
    assert spy.dtypes == {
        "kernel": tf.float32, "mask": tf.float32, "gradient": tf.float32,
        "drop_scores": tf.float32, "grow_scores": tf.float32,
    }
    for step, recorded in rigl.recorded.items():
        batch = tracker.batch_of[step]
        rows = slice(batch * _BATCH, (batch + 1) * _BATCH)
        hand = _hand_dense_gradients(tracker.before[step], x[rows], y[rows])
        for name in _NAMES:
            dtype, gradient = recorded[name]
            assert dtype == tf.float32, (step, name)
            # The hook sits on the inner optimizer: unscaled gradients.
            expected = hand[name]
            # bfloat16 keeps 8 significant bits, float16 11 (and a rounded
            # pre-activation near 0 can flip a ReLU): compare in norm.
            error = np.linalg.norm(gradient - expected) / np.linalg.norm(expected)
            assert error < 0.05, (step, name, error)


def _inner_slots(model, layer):
    """`{slot: variable}` of `layer.kernel` in the LossScaleOptimizer's inner
    optimizer, found by Keras' naming (`<kernel path>_<slot>`)."""
    inner = model.optimizer.inner_optimizer
    prefix = layer.kernel.path.replace("/", "_") + "_"
    return {v.name[len(prefix):]: v for v in inner.variables if v.name.startswith(prefix)}


class _Sentinel(keras.callbacks.Callback):
    """Before the mask update of `step`: inner slots := sentinel."""

    def __init__(self, step):
        super().__init__()
        self.step = step
        self.masks_before = None

    def on_train_batch_end(self, batch, logs=None):
        if _step(self.model) != self.step or self.masks_before is not None:
            return
        self.masks_before = _masks(self.model)
        for layer in rigl_keras.masked_layers(self.model):
            for variable in _inner_slots(self.model, layer).values():
                variable.assign(np.full(variable.shape, _SENTINEL, "float32"))


class _SlotReader(keras.callbacks.Callback):
    """After the mask update of `step`: reads masks and inner slots."""

    def __init__(self, step):
        super().__init__()
        self.step = step
        self.slots = None

    def on_train_batch_end(self, batch, logs=None):
        if _step(self.model) != self.step or self.slots is not None:
            return
        self.masks_after = _masks(self.model)
        self.slots = {
            layer.name: {n: _numpy(v) for n, v in _inner_slots(self.model, layer).items()}
            for layer in rigl_keras.masked_layers(self.model)
        }


def test_loss_scale_optimizer_inner_state_reset(policy):
    if policy == "mixed_float16":
        model = _mlp(keras.optimizers.Adam(0.01))  # Wrapped by compile.
    else:
        model = _mlp(keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.01)))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.optimizer.inner_optimizer, keras.optimizers.Adam)
    rigl = rigl_keras.RigLCallback(
        sparsity=0.8, update_freq=5, end_step=5,
        drop_fraction_schedule="constant", seed=0,
    )
    sentinel, reader = _Sentinel(step=5), _SlotReader(step=5)
    x, y = _data()
    model.fit(x, y, batch_size=_BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[sentinel, rigl, reader])
    assert reader.slots is not None
    for name, before in sentinel.masks_before.items():
        after = reader.masks_after[name]
        grown = (before == 0) & (after == 1)
        dropped = (before == 1) & (after == 0)
        assert grown.sum() > 0 and grown.sum() == dropped.sum(), name
        changed = grown | dropped
        assert set(reader.slots[name]) == {"momentum", "velocity"}
        for slot, value in reader.slots[name].items():
            assert np.all(value[changed] == 0.0), (name, slot)
            assert np.all(value[~changed] == _SENTINEL), (name, slot)


@pytest.mark.parametrize("grow", ["gradient", "momentum"])
def test_overflow_steps_skipped_by_loss_scaling_do_not_poison_updates(grow):
    # Under mixed_float16, targets 300x larger than usual overflow the
    # float16 gradients at the initial loss scale 2**15: the
    # LossScaleOptimizer skips those steps and halves its scale. Updates
    # must still happen at optimizer steps 4, 8, 12, 16, with a finite
    # recorded gradient (for SNFS: a finite moving average).
    reason = _float16_unsupported_reason()
    if reason:
        pytest.skip(reason)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _mlp(keras.optimizers.SGD(1e-5))
        rigl = _RecordingRigL(
            sparsity=0.8, update_freq=4, end_step=16, grow=grow,
            drop_fraction_schedule="constant", seed=0,
        )
        rigl.recorded = {}
        tracker = _Tracker()
        x, y = _data(scale=300.0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x, y, batch_size=_BATCH, epochs=3, shuffle=False,
                      verbose=0, callbacks=[rigl, tracker])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    skipped = 3 * _STEPS_PER_EPOCH - _step(model)
    assert skipped > 0  # Some steps overflowed.
    assert _rigl_warnings(caught) == []
    assert sorted(rigl.recorded) == [4, 8, 12, 16]
    assert tracker.changed_steps == [4, 8, 12, 16]
    assert tracker.violations == []
    for recorded in rigl.recorded.values():
        for _, gradient in recorded.values():
            assert np.all(np.isfinite(gradient)) and np.any(gradient != 0.0)


def test_policy_is_float32_after_the_mixed_precision_tests():
    # Runs last in this file: the tests above put float32 back.
    assert keras.mixed_precision.global_policy().name == "float32"
