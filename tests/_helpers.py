"""Small helpers shared by the test files (not a test module)."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl_keras

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def tfds_data_dir():
    """`TFDS_DATA_DIR`, or `<repo>/../shared/tfds` where CI keeps the data."""
    return pathlib.Path(
        os.environ.get("TFDS_DATA_DIR", str(REPO_ROOT.parent / "shared" / "tfds")))


def require_real_mnist():
    """The TFDS folder holding the real MNIST: fails in CI, skips elsewhere."""
    data_dir = tfds_data_dir()
    if not (data_dir / "mnist").is_dir():
        message = f"MNIST in TFDS format is missing from {data_dir}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must provide ../shared/tfds)")
        pytest.skip(message)
    return str(data_dir)


def python_env(**overrides):
    """The environment of a child Python: this checkout first on `PYTHONPATH`.

    `overrides` set variables; a value of `None` removes one.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_python(argv, cwd, env=None, timeout=600):
    """Runs `python *argv` in `cwd`; the `CompletedProcess` (text output)."""
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, cwd=cwd,
        timeout=timeout, env=env or python_env(), check=False,
    )


def as_numpy(variable):
    """A NumPy copy of a (possibly distributed) Keras variable.

    Reads the `tf.Variable` behind it (`keras.ops.convert_to_numpy` on a
    Keras variable goes through a NumPy 2-deprecated `__array__` call).
    """
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return np.array(tf.convert_to_tensor(variable))


def mask_arrays(model):
    """`{layer_name: mask as a NumPy array}` of every masked layer."""
    return {l.name: as_numpy(l.mask) for l in rigl_keras.masked_layers(model)}


def load_module(name, path):
    """Imports the Python file at `path` as a module called `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def regression_data(n=160, seed=0, features=20, outputs=4):
    """`(x, y)`: standard normal float32 arrays `(n, features)`, `(n, outputs)`."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype("float32")
    y = rng.standard_normal((n, outputs)).astype("float32")
    return x, y


def compiled_mlp(optimizer, seed=0, steps_per_execution=1, name=None):
    """20 -> 32 -> 16 -> 4 MLP of MaskedDense layers fc1, fc2, out (mse)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((20,)),
        rigl_keras.MaskedDense(32, activation="relu", name="fc1"),
        rigl_keras.MaskedDense(16, activation="relu", name="fc2"),
        rigl_keras.MaskedDense(4, name="out"),
    ], name=name)
    model.compile(optimizer, "mse", steps_per_execution=steps_per_execution)
    return model


def by_layer(mapping):
    """Re-keys `{variable path: value}` by the owning layer's name.

    For models whose masked weights each sit in a uniquely named layer
    (`"sequential_3/fc1/kernel"` -> `"fc1"`).
    """
    out = {}
    for key, value in mapping.items():
        name = key.split("/")[-2]
        assert name not in out, f"two masked weights in layer {name!r}"
        out[name] = value
    return out


def optimizer_step(model):
    """The model's optimizer step count, read from the device."""
    return int(as_numpy(model.optimizer.iterations))


class SpiedRigL(rigl_keras.RigLCallback):
    """A `RigLCallback` that calls `before_update(step)` / `after_update(step)`
    around each of its mask updates in `fit()`, seen through public API only
    (`next_update_step`); `update_steps` lists the steps updated, over
    all its `fit()` calls."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.update_steps = []

    def on_train_batch_end(self, batch, logs=None):
        due = self.next_update_step
        if due is None or optimizer_step(self.model) != due:
            super().on_train_batch_end(batch, logs)
            return
        self.before_update(due)
        super().on_train_batch_end(batch, logs)
        self.update_steps.append(due)
        self.after_update(due)

    def before_update(self, step):
        """Called before the mask update at optimizer step `step`."""

    def after_update(self, step):
        """Called after the mask update at optimizer step `step`."""


def small_transformer(vocab=50, length=8, dim=16, classes=10, name="transformer"):
    """Functional: Embedding, one MultiHeadAttention block, Dense feed-forward.

    Tokens `(length,)` -> `embed` (vocab x dim) -> `mha` (2 heads of
    dim // 2, self-attention) + residual -> `ln` -> `ff1` (2 * dim, relu)
    -> `ff2` (dim) + residual -> mean over positions -> `head` (classes).
    """
    layers = keras.layers
    tokens = keras.Input((length,), dtype="int32")
    h = layers.Embedding(vocab, dim, name="embed")(tokens)
    h = layers.LayerNormalization(name="ln")(
        h + layers.MultiHeadAttention(2, dim // 2, name="mha")(h, h))
    ff = layers.Dense(2 * dim, activation="relu", name="ff1")(h)
    h = h + layers.Dense(dim, name="ff2")(ff)
    outputs = layers.Dense(classes, name="head")(layers.GlobalAveragePooling1D()(h))
    return keras.Model(tokens, outputs, name=name)


def small_conv_net(size=12, classes=4, name="convnet"):
    """Functional: Conv2D, DepthwiseConv2D, SeparableConv2D, Dense.

    `(size, size, 3)` -> `conv` (8 filters 3x3, same, relu) -> `dw`
    (depthwise 3x3, same, relu) -> `sep` (16 filters 3x3, stride 2, same,
    relu) -> mean over positions -> `head` (classes).
    """
    layers = keras.layers
    images = keras.Input((size, size, 3))
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(images)
    h = layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(h)
    h = layers.SeparableConv2D(16, 3, strides=2, padding="same", activation="relu",
                               name="sep")(h)
    outputs = layers.Dense(classes, name="head")(layers.GlobalAveragePooling2D()(h))
    return keras.Model(images, outputs, name=name)


def keep_first(weight, n_active):
    """Sets `weight`'s mask to its first `n_active` entries (flat order).

    `weight` is a `rigl_keras.masked_weights` entry; the inactive entries
    of the variable are then set to 0.0.
    """
    mask = np.zeros(weight.size, np.float32)
    mask[:n_active] = 1.0
    weight.mask.assign(mask.reshape(weight.shape))
    weight.apply_mask()
