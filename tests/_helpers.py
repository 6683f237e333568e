"""Small helpers shared by the test files (not a test module)."""

import keras
import numpy as np

import rigl_keras


def as_numpy(variable):
    """A NumPy copy of a (possibly distributed) Keras variable."""
    return np.array(keras.ops.convert_to_numpy(variable))


def mask_arrays(model):
    """`{layer_name: mask as a NumPy array}` of every masked layer."""
    return {l.name: as_numpy(l.mask) for l in rigl_keras.masked_layers(model)}


def compiled_mlp(optimizer, seed=0):
    """20 -> 32 -> 16 -> 4 MLP of MaskedDense layers fc1, fc2, out (mse)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((20,)),
        rigl_keras.MaskedDense(32, activation="relu", name="fc1"),
        rigl_keras.MaskedDense(16, activation="relu", name="fc2"),
        rigl_keras.MaskedDense(4, name="out"),
    ])
    model.compile(optimizer, "mse")
    return model
