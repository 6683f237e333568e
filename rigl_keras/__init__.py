"""rigl_keras: dynamic sparse training (RigL) for TensorFlow and Keras 3.

Quick start, on any built Keras model:

    rigl_keras.sparsify(model)
    model.fit(x, y, epochs=10,
              callbacks=[rigl_keras.RigLCallback(sparsity=0.9)])
"""

from rigl_keras import distributions
from rigl_keras import flops
from rigl_keras import optimizer_state
from rigl_keras import schedules
from rigl_keras import structures
from rigl_keras import updaters
from rigl_keras.callbacks import GradualPruningCallback
from rigl_keras.callbacks import RigLCallback
from rigl_keras.custom_loop import CustomLoop
from rigl_keras.distributions import sparsity_distribution
from rigl_keras.export import export_saved_model
from rigl_keras.export import export_tflite
from rigl_keras.export import strip_masks
from rigl_keras.layers import MaskedConv2D
from rigl_keras.layers import MaskedDense
from rigl_keras.layers import masked_layers
from rigl_keras.masking import get_masks
from rigl_keras.masking import masked_weights
from rigl_keras.report import SparsityReport
from rigl_keras.report import sparsity_report
from rigl_keras.sparsify import SparsifiableLayer
from rigl_keras.sparsify import SparsifyReport
from rigl_keras.sparsify import sparsify
from rigl_keras.sparsify import unsparsify

__version__ = "0.1.0"

__all__ = [
    "CustomLoop",
    "GradualPruningCallback",
    "MaskedConv2D",
    "MaskedDense",
    "RigLCallback",
    "SparsifiableLayer",
    "SparsifyReport",
    "SparsityReport",
    "distributions",
    "export_saved_model",
    "export_tflite",
    "flops",
    "get_masks",
    "masked_layers",
    "masked_weights",
    "optimizer_state",
    "schedules",
    "sparsity_distribution",
    "sparsity_report",
    "sparsify",
    "strip_masks",
    "structures",
    "unsparsify",
    "updaters",
]
