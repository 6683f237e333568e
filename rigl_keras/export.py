"""Export of trained sparse models as a TensorFlow SavedModel.

`export_saved_model` strips the masks (`rigl_keras.strip_masks`: each
masked weight becomes `weight * mask` in a plain Keras layer) and writes
the stripped model as a SavedModel for TF Serving, with the endpoints
Keras' own `model.export` gives (`serve`, `serving_default`).
`rigl_keras.tflite.export_tflite` converts the same SavedModel to TFLite.

Example:

    rigl_keras.export_saved_model(model, "/tmp/served/1")
"""

import os
import shutil
import tempfile

import keras
import tensorflow as tf

from rigl_keras import masking
from rigl_keras import strip

__all__ = ["export_saved_model", "write_saved_model"]

# Layers whose lookup tables must be tracked explicitly for export.
_LOOKUP_LAYERS = (
    keras.layers.IntegerLookup,
    keras.layers.StringLookup,
    keras.layers.TextVectorization,
)



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


def write_saved_model(stripped, path, signature_names=("serving_default",)):
    """Writes `stripped` to the new directory `path`, one endpoint per name.

    Each endpoint calls the model in inference mode on its inputs (batch
    dimension free). The endpoints capture, and so save, every variable the
    model uses. `archive.track(model)` would save each of them a second
    time (Keras issue keras-team/keras#23553: the `keras.Variable` wrappers
    and the `tf.Variable`s they wrap are saved separately), doubling the
    SavedModel; only layers holding lookup tables, which the endpoints do
    not capture, are tracked.

    Args:
        stripped: A model without masks (`rigl_keras.strip_masks`).
        path: The directory to create.
        signature_names: The endpoint names; Keras also serves the first
            one as `"serving_default"`.
    """
    archive = keras.export.ExportArchive()
    for layer in masking.nested_layers(stripped):
        if isinstance(layer, _LOOKUP_LAYERS):
            archive.track(layer)
    for name in signature_names:
        archive.add_endpoint(
            name=name,
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
    stripped = strip.stripped_copy(model, "export_saved_model", warn=False)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".rigl_export_", dir=parent)
    try:
        written = os.path.join(staging, "saved_model")
        names = ["serve"]  # First: Keras also names it "serving_default".
        if signature_name not in ("serve", "serving_default"):
            names.append(signature_name)
        write_saved_model(stripped, written, names)
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(written, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
