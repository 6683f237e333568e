"""Small helpers shared by the test files (not a test module)."""

import importlib.util

import keras
import numpy as np
import tensorflow as tf

import rigl_keras


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
