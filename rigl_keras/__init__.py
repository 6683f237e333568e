"""rigl_keras: dynamic sparse training (RigL) for TensorFlow and Keras 3.

Quick start, on any built Keras model:

    rigl_keras.sparsify(model)
    model.fit(x, y, epochs=10,
              callbacks=[rigl_keras.RigLCallback(sparsity=0.9)])
"""

import importlib
import os
import sys

__version__ = "0.1.0"

# The public submodules.
_SUBMODULES = (
    "distributions",
    "flops",
    "optimizer_state",
    "schedules",
    "structures",
    "updaters",
)

# Public name -> the module that defines it.
_PUBLIC = {
    "CustomLoop": "rigl_keras.custom_loop",
    "GradualPruningCallback": "rigl_keras.callbacks",
    "MaskCallback": "rigl_keras.callbacks",
    "MaskedConv2D": "rigl_keras.layers",
    "MaskedDense": "rigl_keras.layers",
    "RigLCallback": "rigl_keras.callbacks",
    "SparsifiableLayer": "rigl_keras.sparsify",
    "SparsifyReport": "rigl_keras.sparsify",
    "SparsityReport": "rigl_keras.report",
    "export_saved_model": "rigl_keras.export",
    "export_tflite": "rigl_keras.tflite",
    "get_masks": "rigl_keras.masking",
    "masked_layers": "rigl_keras.layers",
    "masked_weights": "rigl_keras.masking",
    "sparsify": "rigl_keras.sparsify",
    "sparsity_distribution": "rigl_keras.distributions",
    "sparsity_report": "rigl_keras.report",
    "strip_masks": "rigl_keras.strip",
    "unsparsify": "rigl_keras.sparsify",
}

__all__ = sorted([*_PUBLIC, *_SUBMODULES])


def __getattr__(name):
    if name in _SUBMODULES:
        value = importlib.import_module(f"rigl_keras.{name}")
    elif name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    else:
        raise AttributeError(f"module 'rigl_keras' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


_CLI_MODULE = "rigl_keras.experiments.train"


def _started_as_the_cli():
    """Whether this process runs the training CLI (`_CLI_MODULE`).

    The CLI checks its flags before TensorFlow loads, which takes seconds,
    so that a bad flag fails at once; the library is then imported on first
    use of one of its names.
    """
    argv = list(getattr(sys, "orig_argv", ()))
    for i, arg in enumerate(argv):
        if arg == "-m" and argv[i + 1:i + 2] == [_CLI_MODULE]:
            return True
        if arg == "-m" + _CLI_MODULE:
            return True
    return os.path.basename(sys.argv[0]) == "rigl-train" if sys.argv else False


if not _started_as_the_cli():
    # Importing everything registers the Keras serializable classes (sparse
    # twins, layers, schedules, structures), so that `keras.models.load_model`
    # finds them after a plain `import rigl_keras`.
    for _name in __all__:
        __getattr__(_name)
    del _name
