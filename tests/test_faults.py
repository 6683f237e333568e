"""Faults and unusual use of `RigLCallback`, end to end through `model.fit`.

* Non-finite values at an update: a NaN target in one branch of a
  two-output model makes that branch's gradients (and then weights)
  non-finite; an `inf` written into one kernel right before the mask update
  makes that kernel non-finite with finite gradients. The affected layers
  keep their masks, the others update, and each affected layer is warned
  about once, however many updates it misses.
* `fit()` twice with the same callback: the step count continues, updates
  land on absolute optimizer steps, `end_step=None` is 75% of the second
  call's steps counted from its start.
* A callback reused with a second model (through `fit` or `CustomLoop`)
  raises, and leaves both models and the callback as they were.
* A masked layer called at two sites of a model has one mask, and its
  recorded dense gradient is the sum of both sites' gradients, checked
  against plain `keras.layers.Dense` twins holding `W * M`.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl_keras

import _helpers  # tests/_helpers.py

_BATCH = 16
_STEPS_PER_EPOCH = 10  # 160 samples / batch 16.
_MLP_ZEROS_08 = {"fc1": 534, "fc2": 414, "out": 23}


_numpy = _helpers.as_numpy


def _step(model):
    return int(_numpy(model.optimizer.iterations))


_masks = _helpers.mask_arrays
SpiedRigL = _helpers.SpiedRigL


_data = _helpers.regression_data


def _mlp(seed=0):
    return _helpers.compiled_mlp(
        keras.optimizers.SGD(0.05, momentum=0.9), seed=seed, name=f"mlp_{seed}"
    )


class _Snapshots(keras.callbacks.Callback):
    """Masks at train begin and after every batch at which one changed."""

    def on_train_begin(self, logs=None):
        self.initial = _masks(self.model)
        self.previous = self.initial
        self.changed = {}  # step -> names of the layers whose mask changed

    def on_train_batch_end(self, batch, logs=None):
        masks = _masks(self.model)
        names = sorted(n for n in masks if not np.array_equal(masks[n], self.previous[n]))
        if names:
            self.changed[_step(self.model)] = names
        self.previous = masks


def _skip_warnings(caught):
    return [str(w.message) for w in caught if "Skipped the mask update" in str(w.message)]


# ---------------------------------------------------------------------------
# Non-finite gradients and weights.
# ---------------------------------------------------------------------------


def _two_branch_model():
    """Two independent branches `a` and `b`, one output (and loss) each."""
    keras.utils.set_random_seed(0)
    xa, xb = keras.Input((10,), name="xa"), keras.Input((10,), name="xb")
    ha = rigl_keras.MaskedDense(16, activation="relu", name="a1")(xa)
    hb = rigl_keras.MaskedDense(16, activation="relu", name="b1")(xb)
    ya = rigl_keras.MaskedDense(2, name="a2")(ha)
    yb = rigl_keras.MaskedDense(2, name="b2")(hb)
    model = keras.Model([xa, xb], [ya, yb])
    model.compile(keras.optimizers.SGD(0.05), ["mse", "mse"])
    return model


def test_non_finite_gradient_skips_that_branch_and_warns_once_per_layer():
    model = _two_branch_model()
    rng = np.random.default_rng(0)
    xa, xb = (rng.standard_normal((160, 10)).astype("float32") for _ in range(2))
    ya, yb = (rng.standard_normal((160, 2)).astype("float32") for _ in range(2))
    # Step 4 is batch 3: a NaN target there makes branch b's gradients NaN at
    # the update step 4, and its weights NaN from then on (updates 8, 12).
    yb[3 * _BATCH] = np.nan
    rigl = rigl_keras.RigLCallback(
        distribution={"a1": 0.8, "a2": 0.5, "b1": 0.8, "b2": 0.5},
        update_freq=4, end_step=12, drop_fraction_schedule="constant", seed=0,
    )
    snapshots = _Snapshots()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit([xa, xb], [ya, yb], batch_size=_BATCH, epochs=2, shuffle=False,
                  verbose=0, callbacks=[rigl, snapshots])
    skipped = _skip_warnings(caught)
    assert sorted(skipped) == [
        f"Skipped the mask update of weight '{name}/kernel' at step 4: its dense "
        "gradient or kernel is not finite. Its mask and weights are unchanged."
        for name in ("b1", "b2")
    ]
    # Branch a updated at every update step; branch b never.
    assert snapshots.changed == {4: ["a1", "a2"], 8: ["a1", "a2"], 12: ["a1", "a2"]}
    masks = _masks(model)
    for name in ("b1", "b2"):
        np.testing.assert_array_equal(masks[name], snapshots.initial[name])
        assert not np.all(np.isfinite(_numpy(model.get_layer(name).kernel)))
    for name, mask in masks.items():
        assert np.all((mask == 0) | (mask == 1)), name
        assert int((mask == 0).sum()) == int((snapshots.initial[name] == 0).sum())
    for name in ("a1", "a2"):
        kernel = _numpy(model.get_layer(name).kernel)
        assert np.all(np.isfinite(kernel)) and np.all(kernel[masks[name] == 0] == 0.0)


class _PoisonKernel(keras.callbacks.Callback):
    """Before the mask update at `steps`: an active fc2 kernel entry := inf."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps
        self.saved = None

    def on_train_batch_end(self, batch, logs=None):
        self.saved = None
        if _step(self.model) not in self.steps:
            return
        layer = self.model.get_layer("fc2")
        kernel = _numpy(layer.kernel)
        self.saved = kernel.copy()
        self.mask_before = _numpy(layer.mask)
        row, col = np.argwhere(self.mask_before == 1)[0]
        kernel[row, col] = np.inf
        layer.kernel.assign(kernel)


class _Unpoison(keras.callbacks.Callback):
    """After the mask update: checks fc2 untouched, puts the value back."""

    def __init__(self, poison):
        super().__init__()
        self.poison = poison
        self.untouched = []

    def on_train_batch_end(self, batch, logs=None):
        if self.poison.saved is None:
            return
        layer = self.model.get_layer("fc2")
        kernel = _numpy(layer.kernel)
        mask_same = np.array_equal(_numpy(layer.mask), self.poison.mask_before)
        finite = np.isfinite(kernel)
        kernel_same = np.array_equal(kernel[finite], self.poison.saved[finite])
        self.untouched.append((_step(self.model), mask_same and kernel_same))
        layer.kernel.assign(self.poison.saved)


def test_non_finite_kernel_at_update_skips_that_layer_and_warns_once():
    model = _mlp()
    rigl = rigl_keras.RigLCallback(
        sparsity=0.8, update_freq=4, end_step=16,
        drop_fraction_schedule="constant", seed=0,
    )
    poison = _PoisonKernel(steps=(8, 12))
    unpoison = _Unpoison(poison)
    snapshots = _Snapshots()
    x, y = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=_BATCH, epochs=2, shuffle=False, verbose=0,
                  callbacks=[poison, rigl, unpoison, snapshots])
    skipped = _skip_warnings(caught)
    assert len(skipped) == 1, skipped
    assert "/fc2/kernel' at step 8" in skipped[0]
    assert unpoison.untouched == [(8, True), (12, True)]
    assert snapshots.changed == {
        4: ["fc1", "fc2", "out"],
        8: ["fc1", "out"],
        12: ["fc1", "out"],
        16: ["fc1", "fc2", "out"],  # Finite again: updated.
    }
    assert {n: int((m == 0).sum()) for n, m in _masks(model).items()} == _MLP_ZEROS_08


# ---------------------------------------------------------------------------
# fit() twice.
# ---------------------------------------------------------------------------


def test_second_fit_continues_the_step_count():
    model = _mlp()
    rigl = SpiedRigL(sparsity=0.8, update_freq=4, drop_fraction_schedule="constant",
                      seed=0)
    snapshots = _Snapshots()
    x, y = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=_BATCH, epochs=2, shuffle=False, verbose=0,
                  callbacks=[rigl, snapshots])
        # Steps 1..20, end_step = floor(0.75 * 20) = 15.
        assert rigl.resolved_end_step == 15  # pylint: disable=protected-access
        assert rigl.update_steps == [4, 8, 12]
        assert sorted(snapshots.changed) == [4, 8, 12]
        first_masks = _masks(model)

        history = model.fit(x, y, batch_size=_BATCH, epochs=4, shuffle=False,
                            verbose=0, callbacks=[rigl, snapshots])
    # Steps 21..60; end_step = 20 + floor(0.75 * 40) = 50; updates on the
    # absolute grid begin_step + k * update_freq.
    assert _step(model) == 60
    assert rigl.resolved_end_step == 50  # pylint: disable=protected-access
    second = [24, 28, 32, 36, 40, 44, 48]
    assert rigl.update_steps == [4, 8, 12] + second
    assert sorted(snapshots.changed) == second
    # The second fit kept the first fit's masks as its start (no re-draw).
    for name, mask in snapshots.initial.items():
        np.testing.assert_array_equal(mask, first_masks[name])
    assert {n: int((m == 0).sum()) for n, m in _masks(model).items()} == _MLP_ZEROS_08
    # The recorders survived into the second fit's train function.
    assert not [str(w.message) for w in caught if "dense gradient" in str(w.message)]
    assert history.history["drop_fraction"] == [0.3, 0.3, 0.3, 0.0]


# ---------------------------------------------------------------------------
# A callback reused with another model.
# ---------------------------------------------------------------------------


def test_callback_reused_with_another_model_raises_and_changes_nothing():
    first, second = _mlp(seed=0), _mlp(seed=1)
    rigl = SpiedRigL(sparsity=0.8, update_freq=5, end_step=40,
                      drop_fraction_schedule="constant", seed=0)
    rigl.update_steps = []
    x, y = _data()
    first.fit(x, y, batch_size=_BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[rigl])
    second_weights = [_numpy(w) for w in second.weights]

    message = "already bound to model 'mlp_0'.*model 'mlp_1'"
    with pytest.raises(ValueError, match=message):
        second.fit(x, y, batch_size=_BATCH, epochs=1, verbose=0, callbacks=[rigl])
    with pytest.raises(ValueError, match=message):
        rigl_keras.CustomLoop(rigl, second, keras.optimizers.SGD(0.1))

    # The second model was not touched: dense masks, same weights, no step.
    assert _step(second) == 0
    for weight, before in zip(second.weights, second_weights):
        np.testing.assert_array_equal(_numpy(weight), before)
    assert all(np.all(m == 1) for m in _masks(second).values())
    # The callback still drives the first model, on its own optimizer.
    first.fit(x, y, batch_size=_BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[rigl])
    assert _step(first) == 20
    assert rigl.update_steps == [5, 10, 15, 20]


# ---------------------------------------------------------------------------
# A masked layer shared by two call sites.
# ---------------------------------------------------------------------------


def _two_site_model(layer_factory):
    """`head(concat(shared(xa), shared(xb)))` with `shared = layer_factory()`."""
    xa, xb = keras.Input((6,), name="xa"), keras.Input((6,), name="xb")
    shared = layer_factory()
    merged = keras.layers.Concatenate()([shared(xa), shared(xb)])
    output = keras.layers.Dense(3, name="head")(merged)
    return keras.Model([xa, xb], output)


def _site_gradients(weights, xa, xb, y):
    """dL/dW at the two sites, through plain Dense twins holding W * M."""
    kernel, bias, head_kernel, head_bias = weights
    site_a = keras.layers.Dense(5, activation="tanh")
    site_b = keras.layers.Dense(5, activation="tanh")
    head = keras.layers.Dense(3)
    site_a.build((None, 6))
    site_b.build((None, 6))
    head.build((None, 10))
    site_a.set_weights([kernel, bias])
    site_b.set_weights([kernel, bias])
    head.set_weights([head_kernel, head_bias])
    with tf.GradientTape() as tape:
        merged = tf.concat([site_a(xa), site_b(xb)], axis=-1)
        loss = tf.reduce_mean(tf.square(head(merged) - y))
    grad_a, grad_b = tape.gradient(loss, [site_a.kernel.value, site_b.kernel.value])
    return grad_a.numpy(), grad_b.numpy()


class _SiteWeights(keras.callbacks.Callback):
    """`before[step] = (batch, [shared kernel, bias, head kernel, bias])`."""

    def __init__(self):
        super().__init__()
        self.before = {}

    def on_train_batch_begin(self, batch, logs=None):
        shared, head = self.model.get_layer("shared"), self.model.get_layer("head")
        self.before[_step(self.model) + 1] = (batch, [
            _numpy(shared.kernel), _numpy(shared.bias),
            _numpy(head.kernel), _numpy(head.bias)])


def test_shared_layer_has_one_mask_and_records_the_sum_of_both_sites():
    keras.utils.set_random_seed(0)
    model = _two_site_model(
        lambda: rigl_keras.MaskedDense(5, activation="tanh", name="shared"))
    model.compile(keras.optimizers.SGD(0.05), "mse")
    rng = np.random.default_rng(0)
    xa, xb = (rng.standard_normal((160, 6)).astype("float32") for _ in range(2))
    y = rng.standard_normal((160, 3)).astype("float32")

    class Spy(SpiedRigL):
        def before_update(self, step):
            (gradient,) = self.dense_gradients.values()
            self.recorded[step] = _numpy(gradient)

    rigl = Spy(distribution={"shared": 0.6}, update_freq=4, end_step=12,
               drop_fraction_schedule="constant", seed=0)
    rigl.recorded = {}
    weights = _SiteWeights()
    snapshots = _Snapshots()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit([xa, xb], y, batch_size=_BATCH, epochs=2, shuffle=False,
                  verbose=0, callbacks=[rigl, weights, snapshots])
    assert not [str(w.message) for w in caught if "dense gradient" in str(w.message)]

    # One masked layer, one mask variable, 60% of its 30 entries zero.
    assert [l.name for l in rigl_keras.masked_layers(model)] == ["shared"]
    masks = [w for w in model.weights if w.path.endswith("/mask")]
    assert len(masks) == 1
    mask = _numpy(masks[0])
    assert int((mask == 0).sum()) == 18
    assert sorted(snapshots.changed) == [4, 8, 12]
    assert np.all(_numpy(model.get_layer("shared").kernel)[mask == 0] == 0.0)

    assert sorted(rigl.recorded) == [4, 8, 12]
    for step, recorded in rigl.recorded.items():
        batch, before = weights.before[step]
        rows = slice(batch * _BATCH, (batch + 1) * _BATCH)
        grad_a, grad_b = _site_gradients(before, xa[rows], xb[rows], y[rows])
        np.testing.assert_allclose(recorded, grad_a + grad_b, rtol=1e-5, atol=1e-7,
                                   err_msg=f"step {step}")
        # Both sites matter: neither alone is the recorded gradient.
        for single in (grad_a, grad_b):
            assert np.abs(recorded - single).max() > 0.1 * np.abs(recorded).max()

    # Inference uses W * M at both sites: the model equals its Dense twin.
    twin = _two_site_model(lambda: keras.layers.Dense(5, activation="tanh", name="shared"))
    shared = model.get_layer("shared")
    twin.get_layer("shared").set_weights(
        [_numpy(shared.kernel) * mask, _numpy(shared.bias)])
    twin.get_layer("head").set_weights(model.get_layer("head").get_weights())
    np.testing.assert_allclose(
        model.predict([xa, xb], verbose=0), twin.predict([xa, xb], verbose=0),
        rtol=1e-5, atol=1e-6)


def test_snfs_moving_average_of_a_shared_layer_moves_once_per_step():
    # SNFS keeps avg_t = m * avg_{t-1} + (1 - m) * (g_a + g_b) per optimizer
    # step for a layer called at two sites, not one move per call site.
    keras.utils.set_random_seed(0)
    model = _two_site_model(lambda: keras.layers.Dense(5, activation="tanh", name="shared"))
    rigl_keras.sparsify(model, filters="shared")
    model.compile(keras.optimizers.SGD(0.05), "mse")
    rng = np.random.default_rng(1)
    xa, xb = (rng.standard_normal((160, 6)).astype("float32") for _ in range(2))
    y = rng.standard_normal((160, 3)).astype("float32")

    class Spy(SpiedRigL):
        def before_update(self, step):
            (gradient,) = self.dense_gradients.values()
            self.recorded[step] = _numpy(gradient)

    rigl = Spy(distribution={"shared": 0.6}, update_freq=4, end_step=12,
               drop_fraction_schedule="constant", grow="momentum", seed=0)
    rigl.recorded = {}
    weights = _SiteWeights()
    model.fit([xa, xb], y, batch_size=_BATCH, epochs=2, shuffle=False, verbose=0,
              callbacks=[rigl, weights])
    assert sorted(rigl.recorded) == [4, 8, 12]
    average = np.zeros((6, 5), np.float32)
    for step in range(1, 13):
        batch, before = weights.before[step]
        rows = slice(batch * _BATCH, (batch + 1) * _BATCH)
        grad_a, grad_b = _site_gradients(before, xa[rows], xb[rows], y[rows])
        average = 0.9 * average + 0.1 * (grad_a + grad_b)
        if step in rigl.recorded:
            np.testing.assert_allclose(rigl.recorded[step], average, rtol=1e-4,
                                       atol=1e-7, err_msg=f"step {step}")
