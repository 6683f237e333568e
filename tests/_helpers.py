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
