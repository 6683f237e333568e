"""Export of trained sparse models as TFLite flatbuffers.

`export_tflite` strips the masks (`rigl_keras.strip_masks`), writes the
stripped model as a SavedModel and converts it with the TFLite converter,
asking for sparse weight encoding by default, in float32 or quantized
(`quantize="dynamic"` or `"int8"`). Only sparse `Dense` weights in TFLite's
blocks (`rigl_keras.structures.Block((4, 1))` for float32) run faster;
`export_tflite`'s docstring says what runs how.

Example:

    rigl_keras.export_tflite(model, "/tmp/model.tflite")
    rigl_keras.export_tflite(model, "/tmp/int8.tflite", quantize="int8",
                             representative_dataset=x_train[:200])
"""

import os
import tempfile
import warnings

import numpy as np
import tensorflow as tf

from rigl_keras import export
from rigl_keras import strip

__all__ = ["export_tflite"]


_QUANTIZE_MODES = (None, "dynamic", "int8")

# The message TensorFlow's converter gives for every int8 model with float
# inputs (it asks for input statistics only int8 inputs would need).
_QUANTIZED_INPUT_STATS_MESSAGE = "Statistics for quantized inputs were expected"

# Sparse-encoded tensors of these types are run by XNNPack (densified once).
_XNNPACK_SPARSE_TYPES = ("FLOAT32", "FLOAT16")

_BUILTIN_SETTING = (
    "experimental_op_resolver_type="
    "ai_edge_litert.interpreter.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES"
)


def _check_quantize(quantize, representative_dataset):
    """Validates `quantize` and `representative_dataset` before any work."""
    if not (quantize is None or isinstance(quantize, str)) or quantize not in _QUANTIZE_MODES:
        raise ValueError(
            "`quantize` must be one of None (float32), 'dynamic' "
            "(dynamic-range: int8 weights, float activations) or 'int8' (full "
            f"integer). Received: quantize={quantize!r}"
        )
    if quantize == "int8" and representative_dataset is None:
        raise ValueError(
            "quantize='int8' needs `representative_dataset`, a few hundred "
            "typical inputs to calibrate the activation ranges: a NumPy array "
            "of input examples, or a callable returning an iterable of input "
            "lists (TensorFlow's `representative_dataset`). "
            "Received: representative_dataset=None"
        )
    if quantize != "int8" and representative_dataset is not None:
        raise ValueError(
            "`representative_dataset` is used only with quantize='int8' "
            f"(full integer). Received: quantize={quantize!r} and "
            f"representative_dataset of type {type(representative_dataset).__name__}"
        )
    if representative_dataset is not None and not (
        callable(representative_dataset) or isinstance(representative_dataset, np.ndarray)
    ):
        raise ValueError(
            "`representative_dataset` must be a NumPy array of input examples "
            "(each fed as a batch of one) or a callable returning an iterable "
            "of input lists. Received: representative_dataset of type "
            f"{type(representative_dataset).__name__}"
        )


def _representative_dataset(data):
    """TensorFlow's generator form of `representative_dataset`."""
    if callable(data):
        return data

    def examples():
        for example in data:
            yield [np.asarray(example, dtype=np.float32)[np.newaxis]]

    return examples


def _sparse_tensors(flatbuffer):
    """`(name, shape, type)` of every sparse-encoded tensor of a `.tflite` file.

    Read from the flatbuffer with the TFLite schema that TensorFlow ships,
    so no interpreter is needed. `type` is the schema's name, e.g.
    `"FLOAT32"` or `"INT8"`.
    """
    # pylint: disable-next=import-outside-toplevel
    from tensorflow.lite.python import schema_py_generated as schema

    type_names = {
        value: name for name, value in vars(schema.TensorType).items() if name.isupper()
    }
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    tensors = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            if tensor.Sparsity() is not None:
                tensors.append((
                    tensor.Name().decode(),
                    tuple(int(d) for d in tensor.ShapeAsNumpy()),
                    type_names.get(tensor.Type(), "?"),
                ))
    return tensors


def _warn_sparse_quantized(path, tensors):
    """Warns about sparse quantized weights, which XNNPack cannot run."""
    quantized = [t for t in tensors if t[2] not in _XNNPACK_SPARSE_TYPES]
    if not quantized:
        return
    # TFLite names a tensor after the ops fused into it ("a;b;c"): the first.
    names = ", ".join(
        f"{name.split(';')[0]} {'x'.join(map(str, shape))}" for name, shape, _ in quantized
    )
    kinds = "/".join(sorted({kind.lower() for _, _, kind in quantized}))
    warnings.warn(
        f"`export_tflite` wrote {path!r} with {len(quantized)} sparse-encoded "
        f"{kinds} weight(s) ({names}). LiteRT's default XNNPack delegate "
        "cannot run a FULLY_CONNECTED on sparse quantized weights: depending "
        "on the graph the interpreter leaves it to the builtin kernels or "
        "fails in allocate_tensors()/invoke() with \"failed to delegate "
        "FULLY_CONNECTED node\" (ai-edge-litert 2.3.0 on x86). Run the file "
        "without the default delegate, which works: "
        "ai_edge_litert.interpreter.Interpreter(model_path=..., "
        f"{_BUILTIN_SETTING}); or export with sparse=False for a "
        "dense quantized file that XNNPack runs (larger, and faster on x86: "
        "benchmarks/results/export.md).",
        UserWarning,
        stacklevel=3,
    )


def _convert(saved, sparse, quantize, representative_dataset):
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved, signature_keys=["serving_default"]
    )
    optimizations = []
    if quantize is not None:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if quantize == "int8":
        converter.representative_dataset = _representative_dataset(representative_dataset)
        # Every op in int8, or a conversion error: no silent float fallback.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_QUANTIZED_INPUT_STATS_MESSAGE)
        return converter.convert()


def export_tflite(model, path, sparse=True, quantize=None, representative_dataset=None):
    """Strips the masks and converts the model to a TFLite flatbuffer.

    The stripped model is written as a SavedModel to a temporary directory
    and converted with `tf.lite.TFLiteConverter.from_saved_model`. With
    `sparse=True` the converter is asked to store sparse constant weights in
    a compressed sparse format (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`);
    it does so only for weights sparse enough to gain from it (at least 30%
    zeros). How a sparse weight runs depends on its structure:

    * A `FULLY_CONNECTED` weight whose zeros come in TFLite's blocks of one
      output and consecutive inputs (1x4 for float32, 1x16 for int8) is
      stored in blocks and read by TFLite's sparse `FULLY_CONNECTED`
      kernel, which skips the zero blocks: train it with
      `structure=rigl_keras.structures.Block((4, 1))` (float32) or
      `Block((16, 1))` (int8) on `Dense` kernels. For float32 the file then
      runs faster than the dense model, with XNNPack on or off
      (`benchmarks/results/export.md`).
    * Any other sparse weight is stored element-wise and a `DENSIFY` op
      rebuilds the dense weight at the first invocation: the file is
      smaller, not faster.
    * Convolutions have no sparse kernel in TFLite on x86: their sparse
      weights are densified and run dense (XNNPack's sparse inference path
      is for 1x1 convolutions on ARM).

    Quantization (`quantize`):

    * `None`: float32.
    * `"dynamic"`: dynamic-range quantization, int8 weights and float32
      activations (`tf.lite.Optimize.DEFAULT`).
    * `"int8"`: full integer quantization, int8 weights and activations
      calibrated on `representative_dataset`; every op must have an int8
      kernel (`TFLITE_BUILTINS_INT8`), else the conversion fails. The
      inputs and outputs stay float32 (QUANTIZE/DEQUANTIZE ops at the
      edges).

    Sparse quantized weights and XNNPack: LiteRT's default delegate,
    XNNPack, runs sparse float weights (densified) but not a
    `FULLY_CONNECTED` on sparse int8 weights; with the default interpreter
    settings such a file runs the op with the builtin kernels or fails in
    `allocate_tensors()`/`invoke()` with "failed to delegate
    FULLY_CONNECTED node" (LiteRT 2.3.0, x86), depending on the graph.
    `export_tflite` therefore warns whenever it writes sparse-encoded
    quantized weights, and such a file runs without the default delegate:

        from ai_edge_litert import interpreter
        runner = interpreter.Interpreter(
            model_path=path,
            experimental_op_resolver_type=(
                interpreter.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES),
        )

    Or export with `sparse=False`: a dense quantized file, which XNNPack
    runs (and which is the faster int8 file on x86).

    Run the file with the LiteRT interpreter (`pip install
    rigl_keras[tflite]`, `ai_edge_litert.interpreter`).

    Args:
        model: A built Sequential or functional `keras.Model`, masked or not.
        path: File to write (`str` or path-like), replaced if it exists.
            Missing parent directories are created.
        sparse: Whether to ask for sparse weight encoding.
        quantize: None, `"dynamic"` or `"int8"` (see above).
        representative_dataset: For `quantize="int8"` only, and required
            there: a NumPy array of input examples (without the batch
            dimension; each is fed as a batch of one), or a callable
            returning an iterable of samples, each a list of input arrays
            with a batch dimension (TensorFlow's
            `converter.representative_dataset`). A few hundred typical
            inputs calibrate the activation ranges.

    Returns:
        `path`, as a string.

    Raises:
        IsADirectoryError: If `path` is an existing directory.
        TypeError: If `model` is not a `keras.Model`.
        ValueError: For an unknown `quantize`, for `quantize="int8"`
            without `representative_dataset` (or one given otherwise, or of
            another type), and for the models that `strip_masks` rejects.

    Warns:
        UserWarning: If the file holds sparse-encoded quantized weights
            (see above).

    Example:

    >>> export_tflite(model, "/tmp/model.tflite")  # doctest: +SKIP
    '/tmp/model.tflite'
    >>> export_tflite(model, "/tmp/int8.tflite", quantize="int8",
    ...               representative_dataset=x_train[:200])  # doctest: +SKIP
    '/tmp/int8.tflite'
    """
    path = os.fspath(path)
    _check_quantize(quantize, representative_dataset)
    if os.path.isdir(path):
        raise IsADirectoryError(
            "`path` must be a file to write the .tflite model into, but it "
            f"exists as a directory. Received: path={path!r}"
        )
    stripped = strip.stripped_copy(model, "export_tflite", warn=False)
    with tempfile.TemporaryDirectory(prefix="rigl_tflite_") as tmp:
        saved = os.path.join(tmp, "saved_model")
        export.write_saved_model(stripped, saved)
        flatbuffer = _convert(saved, sparse, quantize, representative_dataset)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(flatbuffer)
    if quantize is not None and sparse:
        _warn_sparse_quantized(path, _sparse_tensors(flatbuffer))
    return path
