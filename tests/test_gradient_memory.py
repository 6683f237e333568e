"""The memory of RigL's dense gradient in `model.fit`.

Where `fit` swaps two train functions (one optimizer step per batch, no
loss scaling, no gradient accumulation) the dense gradient of a weight
takes memory only on an update step: from just before that step until the
update has used it. Between updates it holds no element, so RigL keeps a
float32 mask and a bool ever-active flag per masked parameter (5 B), and
no float32 gradient copy. SNFS keeps its moving average, and paths that
decide in the graph keep the gradient's shape through the update window.
"""

import keras
import numpy as np
import pytest

import rigl_keras

_BATCH = 16
_UPDATE_FREQ = 4


def _model(jit_compile=False, optimizer=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((12,)),
        keras.layers.Dense(16, activation="relu", name="fc1"),
        keras.layers.Dense(8, activation="relu", name="fc2"),
        keras.layers.Dense(3, name="out"),
    ])
    rigl_keras.sparsify(model)
    model.compile(optimizer or keras.optimizers.SGD(0.05, momentum=0.9), "mse",
                  jit_compile=jit_compile)
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((160, 12)).astype("float32")
    y = rng.standard_normal((160, 3)).astype("float32")
    return x, y


def _sizes(callback):
    return {
        key: int(np.size(keras.ops.convert_to_numpy(g)))
        for key, g in callback.dense_gradients.items()
    }


class _Sizes(keras.callbacks.Callback):
    """`{step: {weight key: elements}}` of a callback's dense gradients at
    the end of every batch (before or after the callback's own hook,
    depending on where it is placed), and the steps that changed a mask."""

    def __init__(self, rigl):
        super().__init__()
        self.rigl = rigl
        self.sizes = {}
        self.mask_changes = []
        self.zero_counts = set()
        self._masks = None

    def on_train_batch_end(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.sizes[step] = _sizes(self.rigl)
        masks = [keras.ops.convert_to_numpy(w.mask)
                 for w in rigl_keras.masked_weights(self.model)]
        if self._masks is not None and any(
                not np.array_equal(a, b) for a, b in zip(masks, self._masks)):
            self.mask_changes.append(step)
        self._masks = masks
        self.zero_counts.add(tuple(int((m == 0).sum()) for m in masks))


def _fit(model, rigl, epochs=2, **kwargs):
    before, after = _Sizes(rigl), _Sizes(rigl)
    x, y = _data()
    model.fit(x, y, batch_size=_BATCH, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[before, rigl, after], **kwargs)
    return before, after


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_rigl_gradient_takes_memory_only_on_update_steps(jit_compile):
    model = _model(jit_compile)
    rigl = rigl_keras.RigLCallback(
        sparsity=0.8, update_freq=_UPDATE_FREQ, end_step=16, seed=0)
    before, after = _fit(model, rigl)
    sizes = {w.key: w.size for w in rigl_keras.masked_weights(model)}
    assert _sizes(rigl).keys() == sizes.keys()
    updates = [4, 8, 12]  # The cosine drop fraction is 0 at end_step=16.
    assert after.mask_changes == updates
    assert len(after.zero_counts) == 1  # Exact counts at every step.
    before, after = before.sizes, after.sizes
    for step in sorted(before):
        # Before the callback's update: the recorded step holds the
        # weight's gradient (step 16 records too: its drop fraction is 0).
        expected = sizes if step in updates + [16] else dict.fromkeys(sizes, 0)
        assert before[step] == expected, step
        # After it: nothing, at every step.
        assert after[step] == dict.fromkeys(sizes, 0), step
    for w in rigl_keras.masked_weights(model):
        mask = keras.ops.convert_to_numpy(w.mask)
        assert np.all(keras.ops.convert_to_numpy(w.variable)[mask == 0] == 0.0)


def test_lazy_gradient_gives_the_masks_of_a_kept_one():
    # A LossScaleOptimizer (it may skip steps) makes fit() decide in the
    # graph, with recorders that keep their memory. A power-of-two loss
    # scale changes no gradient here, so both runs grow the same masks.
    masks = {}
    for name in ("lazy", "kept"):
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
        if name == "kept":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model = _model(optimizer=optimizer)
        rigl = rigl_keras.RigLCallback(
            sparsity=0.8, update_freq=_UPDATE_FREQ, end_step=16, seed=0)
        _, after = _fit(model, rigl)
        after = after.sizes
        kept = [s for s in after.values() if set(s.values()) != {0}]
        assert len(kept) == (len(after) if name == "kept" else 0)
        masks[name] = [keras.ops.convert_to_numpy(w.mask)
                       for w in rigl_keras.masked_weights(model)]
    for lazy, kept in zip(masks["lazy"], masks["kept"]):
        np.testing.assert_array_equal(lazy, kept)


def test_snfs_keeps_its_moving_average():
    model = _model()
    rigl = rigl_keras.RigLCallback(
        sparsity=0.8, update_freq=_UPDATE_FREQ, end_step=16, grow="momentum", seed=0)
    _, after = _fit(model, rigl)
    sizes = {w.key: w.size for w in rigl_keras.masked_weights(model)}
    assert all(s == sizes for s in after.sizes.values())


def test_weights_kept_dense_get_no_gradient():
    model = _model()
    rigl = rigl_keras.RigLCallback(
        sparsity=0.8, update_freq=_UPDATE_FREQ, end_step=16, seed=0,
        dense_layers=["out"])
    before, _ = _fit(model, rigl)
    before = before.sizes
    keys = {w.key for w in rigl_keras.masked_weights(model)}
    (dense,) = [k for k in keys if "/out/" in k]
    assert set(rigl.dense_gradients) == keys - {dense}
    assert before[4] == {
        w.key: w.size for w in rigl_keras.masked_weights(model) if w.key != dense}
