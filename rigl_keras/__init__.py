"""rigl_keras: dynamic sparse training (RigL) for TensorFlow and Keras 3.

Quick start:

    model.fit(x, y, epochs=10,
              callbacks=[rigl_keras.RigLCallback(sparsity=0.9)])

with `rigl_keras.MaskedDense` / `rigl_keras.MaskedConv2D` in place of
`Dense` / `Conv2D`.
"""

from rigl_keras import distributions
from rigl_keras import optimizer_state
from rigl_keras import schedules
from rigl_keras import updaters
from rigl_keras.callbacks import RigLCallback
from rigl_keras.distributions import sparsity_distribution
from rigl_keras.layers import MaskedConv2D
from rigl_keras.layers import MaskedDense
from rigl_keras.layers import masked_layers

__version__ = "0.1.0"

__all__ = [
    "MaskedConv2D",
    "MaskedDense",
    "RigLCallback",
    "distributions",
    "masked_layers",
    "optimizer_state",
    "schedules",
    "sparsity_distribution",
    "updaters",
]
