"""RigL training with an XLA-compiled train step (`jit_compile=True`).

The masked layers' custom gradient (masking, and the dense-gradient
recording behind a `tf.cond` on the step counter) must compile with XLA.
Each test trains the same model from the same seed twice, with
`jit_compile=False` and `jit_compile=True`, and compares: the masks after
every mask update are identical, the final weights equal up to float
round-off (XLA fuses and reorders float ops), and the drop fraction and
sparsity logs equal.
"""

import warnings

import keras
import numpy as np
import pytest

import rigl_keras

_BATCH = 16
# update_freq=4, end_step=24: the cosine drop fraction is 0 at step 24.
_UPDATES = [4, 8, 12, 16, 20]


def _mlp():
    return keras.Sequential([
        keras.Input((20,)),
        rigl_keras.MaskedDense(32, activation="relu", name="fc1"),
        rigl_keras.MaskedDense(16, activation="relu", name="fc2"),
        rigl_keras.MaskedDense(4, name="out"),
    ])


def _convnet():
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        rigl_keras.MaskedConv2D(8, 3, activation="relu", name="conv1"),
        rigl_keras.MaskedConv2D(8, 3, activation="relu", name="conv2"),
        keras.layers.Flatten(),
        rigl_keras.MaskedDense(4, name="out"),
    ])


def _data(kind):
    rng = np.random.default_rng(0)
    shape = (160, 20) if kind == "mlp" else (160, 8, 8, 3)
    x = rng.standard_normal(shape).astype("float32")
    y = rng.standard_normal((160, 4)).astype("float32")
    return x, y


def _numpy(variable):
    return np.array(keras.ops.convert_to_numpy(variable))


class _MaskSnapshots(keras.callbacks.Callback):
    """`{step: masks}` after every batch at which some mask changed."""

    def on_train_begin(self, logs=None):
        self.layers = rigl_keras.masked_layers(self.model)
        self.previous = [_numpy(l.mask) for l in self.layers]
        self.snapshots = {}

    def on_train_batch_end(self, batch, logs=None):
        masks = [_numpy(l.mask) for l in self.layers]
        if any(not np.array_equal(a, b) for a, b in zip(masks, self.previous)):
            step = int(_numpy(self.model.optimizer.iterations))
            self.snapshots[step] = masks
        self.previous = masks


def _train(kind, grow, jit_compile):
    keras.utils.set_random_seed(0)
    model = _mlp() if kind == "mlp" else _convnet()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse",
                  jit_compile=jit_compile)
    assert model.jit_compile is jit_compile  # Keras did not turn XLA off.
    rigl = rigl_keras.RigLCallback(
        sparsity=0.8, update_freq=4, end_step=24, grow=grow,
        drop_fraction_schedule="cosine", seed=0,
    )
    snapshots = _MaskSnapshots()
    x, y = _data(kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=_BATCH, epochs=3, shuffle=False,
                            verbose=0, callbacks=[rigl, snapshots])
    messages = [str(w.message) for w in caught
                if "mask update" in str(w.message) or "dense gradient" in str(w.message)]
    assert not messages, messages
    return model, snapshots.snapshots, history.history


@pytest.mark.parametrize(
    "kind, grow",
    [("mlp", "gradient"), ("mlp", "momentum"), ("convnet", "gradient")],
    ids=["mlp_rigl", "mlp_snfs", "convnet_rigl"],
)
def test_jit_compile_matches_graph_mode(kind, grow):
    model, snapshots, history = _train(kind, grow, jit_compile=False)
    xla_model, xla_snapshots, xla_history = _train(kind, grow, jit_compile=True)

    assert sorted(snapshots) == _UPDATES
    assert sorted(xla_snapshots) == _UPDATES
    for step in _UPDATES:
        for mask, xla_mask in zip(snapshots[step], xla_snapshots[step]):
            np.testing.assert_array_equal(xla_mask, mask, err_msg=f"step {step}")
    for weight, xla_weight in zip(model.weights, xla_model.weights):
        np.testing.assert_allclose(_numpy(xla_weight), _numpy(weight),
                                   rtol=1e-4, atol=1e-5, err_msg=weight.path)
    for layer in rigl_keras.masked_layers(xla_model):
        mask = _numpy(layer.mask)
        assert np.all(_numpy(layer.kernel)[mask == 0] == 0.0), layer.name
    assert xla_history["drop_fraction"] == history["drop_fraction"]
    assert xla_history["sparsity"] == history["sparsity"]
    np.testing.assert_allclose(xla_history["loss"], history["loss"], rtol=1e-4)
