"""Export of trained sparse models: strip the masks, write SavedModel/TFLite.

A model trained with `rigl_keras` holds masked weights: in
`MaskedDense`/`MaskedConv2D` layers, or in the sparse twins that
`rigl_keras.sparsify` made of any supported layer (`Dense`, `EinsumDense`
inside `MultiHeadAttention`, convolutions, ...), each weight with a 0/1
mask. For serving, none of that machinery is needed: `strip_masks` returns
a copy of the model in which each masked layer is its plain Keras layer
(`Dense`, `Conv2D`, the twin's own base class) holding the product
`weight * mask`, so the copy computes exactly what the masked model computes
in inference and loads without `rigl_keras` installed.

`export_saved_model` writes the stripped model as a TensorFlow SavedModel
(for TF Serving) and `export_tflite` converts it to a `.tflite` flatbuffer,
asking the converter for sparse weight encoding by default, in float32 or
quantized (`quantize="dynamic"` or `"int8"`). Only sparse `Dense` weights
in TFLite's blocks (`rigl_keras.structures.Block((4, 1))` for float32) run
faster; `export_tflite`'s docstring says what runs how.

Following TFMOT's `strip_pruning`, stripping clones the model with
`keras.models.clone_model(model, clone_function=...)`: Sequential and
functional models, and Sequential/functional models nested in them, are
supported; subclassed models are not (their structure is code, not data).

Example:

    stripped = rigl_keras.strip_masks(model)
    rigl_keras.export_saved_model(model, "/tmp/served/1")
    rigl_keras.export_tflite(model, "/tmp/model.tflite")
    rigl_keras.export_tflite(model, "/tmp/int8.tflite", quantize="int8",
                             representative_dataset=x_train[:200])
"""

import contextlib
import os
import shutil
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from rigl_keras import masking
from rigl_keras import sparse_twins
from rigl_keras.layers import MaskedConv2D
from rigl_keras.layers import MaskedDense
from rigl_keras.layers import MaskedLayer
from rigl_keras.layers import masked_layers

__all__ = ["strip_masks", "export_saved_model", "export_tflite"]

# Each masked layer class and its plain Keras twin. The masked layers accept
# every argument of their twin and their configs use the same keys, so the
# twin is built from the masked layer's config unchanged.
_PLAIN_TWINS = {
    MaskedDense: keras.layers.Dense,
    MaskedConv2D: keras.layers.Conv2D,
}


# Layers whose lookup tables must be tracked explicitly for export.
_LOOKUP_LAYERS = (
    keras.layers.IntegerLookup,
    keras.layers.StringLookup,
    keras.layers.TextVectorization,
)


def _all_sublayers(layer):
    """Every layer inside `layer`, nested ones included (not `layer`)."""
    return [sublayer for sublayer, _ in masking.walk_layers(layer)][1:]


def _check_model(model, caller):
    """Raises unless `model` is a built Sequential or functional model."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`{caller}` expects a `keras.Model` (Sequential or functional). "
            f"Received: model={model!r} of type {type(model).__name__}"
        )
    if not masking.is_graph_model(model):
        raise ValueError(
            f"`{caller}` supports Sequential and functional models only, "
            "because it rebuilds the model layer by layer with "
            "`keras.models.clone_model`. Received a subclassed model of type "
            f"{type(model).__name__!r}. For a model made sparse with "
            "`rigl_keras.sparsify`, `rigl_keras.unsparsify(model)` drops the "
            "masks in place (W * M baked in); otherwise rebuild it as a "
            "functional model (`keras.Model(inputs, outputs)`) around the "
            "same layers and strip that."
        )
    if not model.built:
        raise ValueError(
            f"`{caller}` needs a built model with defined inputs, but model "
            f"{model.name!r} is not built and has no defined inputs. Start "
            "it with `keras.Input(shape)`, or call `model.build(input_shape)` "
            "or the model itself on data first."
        )


def _plain_twin(layer):
    """A fresh plain Keras layer configured like the masked `layer`."""
    twin_class = _PLAIN_TWINS.get(type(layer))
    if twin_class is None:
        supported = ", ".join(cls.__name__ for cls in _PLAIN_TWINS)
        raise ValueError(
            f"Cannot strip the mask of layer {layer.name!r}: its type "
            f"{type(layer).__name__} has no plain Keras twin. Supported masked "
            f"layer types: {supported}."
        )
    return twin_class.from_config(layer.get_config())


def _clone_plain_layer(layer):
    """A fresh copy of an unmasked layer, from its config."""
    inner = masked_layers(layer)
    if inner:
        raise ValueError(
            f"Cannot strip the masks inside layer {layer.name!r} of type "
            f"{type(layer).__name__}: it contains masked layers "
            f"({', '.join(repr(m.name) for m in inner)}) but is not a "
            "Sequential or functional model, so it cannot be rebuilt layer by "
            "layer. Nest Sequential or functional models only, or strip this "
            "layer by hand."
        )
    config = layer.get_config()
    config.pop("rigl_sparse_weights", None)  # a sparse twin's own key
    try:
        return sparse_twins.base_class(layer).from_config(config)
    except Exception as error:  # pylint: disable=broad-except
        raise ValueError(
            f"Cannot copy layer {layer.name!r} of type "
            f"{type(layer).__name__}: `from_config(get_config())` failed "
            f"({type(error).__name__}: {error}). Give the layer a complete "
            "`get_config` (see the Keras serialization guide)."
        ) from error


def _copy_weights(source, target):
    """Copies `source`'s weights into its clone `target`, baking in masks."""
    if isinstance(source, MaskedLayer):
        kernel = source.kernel.numpy()
        target.kernel.assign(kernel * source.mask.numpy().astype(kernel.dtype))
        if source.bias is not None:
            target.bias.assign(source.bias.numpy())
        return
    if not isinstance(source, keras.layers.Layer):
        return  # an operation of a functional model (`h + x`): no weights
    masks = {id(w.variable): w.mask for w in masking.masked_weights(source)}
    weights = [
        keras.ops.convert_to_numpy(v) * keras.ops.convert_to_numpy(masks[id(v)])
        if id(v) in masks else keras.ops.convert_to_numpy(v)
        for v in source.weights
    ]
    if len(weights) != len(target.weights):
        raise ValueError(
            f"Cannot copy the weights of layer {source.name!r} of type "
            f"{type(source).__name__}: it has {len(weights)} weights but its "
            f"copy from `from_config` has {len(target.weights)}."
        )
    target.set_weights(weights)


@contextlib.contextmanager
def _uncompiled(model):
    """Hides that `model` (and models nested in it) are compiled, meanwhile.

    `clone_model` compiles the clone of a compiled model from its compile
    config, which fails for an unregistered custom loss or metric (common in
    training scripts) and is of no use for export. The flags are restored
    on exit.
    """
    models = [model] + [
        layer
        for layer in _all_sublayers(model)
        if isinstance(layer, keras.Model)
    ]
    compiled = [m for m in models if getattr(m, "compiled", False)]
    try:
        for m in compiled:
            m.compiled = False
        yield
    finally:
        for m in compiled:
            m.compiled = True


def _strip(model, caller, warn):
    """`strip_masks` with the caller's name for errors and an optional warning."""
    _check_model(model, caller)
    if not masking.masked_weights(model) and warn:
        warnings.warn(
            f"Model {model.name!r} contains no masked weight "
            "(`rigl_keras.sparsify`, MaskedDense, MaskedConv2D): "
            "`strip_masks` returns an unchanged copy.",
            UserWarning,
            stacklevel=3,
        )
    pairs = []

    def clone_function(layer):
        if isinstance(layer, MaskedLayer):
            clone = _plain_twin(layer)
        else:
            clone = _clone_plain_layer(layer)
        pairs.append((layer, clone))
        return clone

    # recursive=True rebuilds nested Sequential/functional models through
    # `clone_function` too; the clone cache maps a shared layer to one clone.
    with _uncompiled(model):
        stripped = keras.models.clone_model(
            model, clone_function=clone_function, recursive=True
        )
    for source, target in pairs:
        _copy_weights(source, target)
    return stripped


def strip_masks(model):
    """Returns a copy of `model` with every masked layer made a plain layer.

    Each `MaskedDense` becomes a `keras.layers.Dense` and each `MaskedConv2D`
    a `keras.layers.Conv2D` with the same config (name included) whose kernel
    is `kernel * mask` and whose bias is the masked layer's bias; a layer
    `rigl_keras.sparsify` masked becomes its own base class again, with
    every masked weight multiplied by its mask (attention's internal
    `EinsumDense` layers included). Every other layer is copied with its
    config and weights. A subclassed model cannot be cloned: call
    `rigl_keras.unsparsify(model)` on it instead (in place). The result computes what the
    masked model computes in inference, needs no `rigl_keras` code to load,
    and shares no variables with `model`, which is left untouched.

    Args:
        model: A built Sequential or functional `keras.Model`. Sequential and
            functional models nested in it are stripped too.

    Returns:
        A new, uncompiled `keras.Model` of the same kind (compile it to train
        or evaluate it further).

    Raises:
        TypeError: If `model` is not a `keras.Model`.
        ValueError: If `model` is subclassed, not built (no defined inputs),
            or holds a layer that cannot be stripped or copied (a masked
            layer type without a plain twin, a masked layer inside a custom
            layer or subclassed model, a layer without a working config);
            the message names the layer.

    Warns:
        UserWarning: If `model` contains no masked layer (the copy is then
            equal to `model`).

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), MaskedDense(2)])
    >>> stripped = strip_masks(model)
    >>> [type(layer).__name__ for layer in stripped.layers]
    ['Dense']
    """
    return _strip(model, "strip_masks", warn=True)


def _input_signature(model):
    """The serving signature of a stripped model: its inputs, batch free.

    Returns a one-element list holding the model's input structure (a spec
    for a single-input model, a list or dict of specs otherwise), the form
    `keras.export.ExportArchive.add_endpoint` expects for `model(inputs)`.
    """
    inputs = model.inputs[0] if isinstance(model, keras.Sequential) else model.input

    def spec(tensor):
        shape = (None,) + tuple(tensor.shape[1:])
        return tf.TensorSpec(shape, dtype=tensor.dtype, name=tensor.name)

    return [keras.tree.map_structure(spec, inputs)]


def _write_saved_model(stripped, path, signature_name):
    """Writes `stripped` to the new directory `path` with one signature.

    The endpoint captures, and so saves, every variable the model uses.
    `archive.track(model)` would save each of them a second time (Keras
    issue keras-team/keras#23553: the `keras.Variable` wrappers and the
    `tf.Variable`s they wrap are saved separately), doubling the SavedModel;
    only layers holding lookup tables, which the endpoint does not capture,
    are tracked.
    """
    archive = keras.export.ExportArchive()
    for layer in _all_sublayers(stripped):
        if isinstance(layer, _LOOKUP_LAYERS):
            archive.track(layer)
    archive.add_endpoint(
        name=signature_name,
        fn=lambda inputs: stripped(inputs, training=False),
        input_signature=_input_signature(stripped),
    )
    archive.write_out(path, verbose=False)


def _check_signature_name(signature_name):
    if not isinstance(signature_name, str) or not signature_name.isidentifier():
        raise ValueError(
            "`signature_name` must be a non-empty string that is a valid "
            "Python identifier (letters, digits, underscores). "
            f"Received: signature_name={signature_name!r}"
        )


def export_saved_model(
    model, path, signature_name="serving_default", overwrite=False
):
    """Strips the masks and writes a TensorFlow SavedModel for serving.

    The SavedModel serves one function that maps the model's inputs (batch
    dimension free) to its outputs in inference mode (`training=False`).
    As with Keras' `model.export`, the reloaded object calls it as
    `serve(x)` and has it as the signatures `"serve"` and
    `"serving_default"` (which TF Serving requires); a `signature_name`
    other than these two adds a signature and an attribute of that name.
    Load it with `tf.saved_model.load(path)`, inspect it with
    `saved_model_cli show --dir path --all` or serve it with TF Serving.
    The variables hold `kernel * mask`, so their zeros are the pruned
    weights.

    The SavedModel is written to a temporary directory next to `path` and
    moved into place at the end, so a failed export leaves `path` as it was.

    Args:
        model: A built Sequential or functional `keras.Model`, masked or not.
        path: Directory to write (`str` or path-like). Missing parent
            directories are created.
        signature_name: An extra name of the serving signature (and
            attribute) besides `"serve"` and `"serving_default"`.
        overwrite: Whether to replace `path` if it is a non-empty directory.

    Returns:
        `path`, as a string.

    Raises:
        FileExistsError: If `path` is an existing file, or a non-empty
            directory and `overwrite` is False.
        TypeError: If `model` is not a `keras.Model`.
        ValueError: For a bad `signature_name` and for the models that
            `strip_masks` rejects.

    Example:

    >>> path = export_saved_model(model, "/tmp/served/1")  # doctest: +SKIP
    >>> tf.saved_model.load(path).serve(x)  # doctest: +SKIP
    """
    path = os.fspath(path)
    _check_signature_name(signature_name)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(
            f"`path` must be a directory to write the SavedModel into, but "
            f"it exists as a file. Received: path={path!r}"
        )
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise FileExistsError(
            "`path` is a non-empty directory; pass overwrite=True to replace "
            f"it. Received: path={path!r}"
        )
    stripped = _strip(model, "export_saved_model", warn=False)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".rigl_export_", dir=parent)
    try:
        written = os.path.join(staging, "saved_model")
        archive = keras.export.ExportArchive()
        for layer in _all_sublayers(stripped):
            if isinstance(layer, _LOOKUP_LAYERS):  # As in _write_saved_model.
                archive.track(layer)
        names = ["serve"]  # First: Keras also names it "serving_default".
        if signature_name not in ("serve", "serving_default"):
            names.append(signature_name)
        for name in names:
            archive.add_endpoint(
                name=name,
                fn=lambda inputs: stripped(inputs, training=False),
                input_signature=_input_signature(stripped),
            )
        archive.write_out(written, verbose=False)
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(written, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


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
    stripped = _strip(model, "export_tflite", warn=False)
    with tempfile.TemporaryDirectory(prefix="rigl_tflite_") as tmp:
        saved = os.path.join(tmp, "saved_model")
        _write_saved_model(stripped, saved, "serving_default")
        flatbuffer = _convert(saved, sparse, quantize, representative_dataset)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(flatbuffer)
    if quantize is not None and sparse:
        _warn_sparse_quantized(path, _sparse_tensors(flatbuffer))
    return path
