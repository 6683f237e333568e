"""Stripping: a plain copy of a sparse model, with `W * M` baked in.

A model trained with `rigl_keras` holds masked weights: in
`MaskedDense`/`MaskedConv2D` layers, or in the sparse twins that
`rigl_keras.sparsify` made of any supported layer (`Dense`, `EinsumDense`
inside `MultiHeadAttention`, convolutions, ...), each weight with a 0/1
mask. For serving, none of that machinery is needed: `strip_masks` returns
a copy of the model in which each masked layer is its plain Keras layer
(`Dense`, `Conv2D`, the twin's own base class) holding the product
`weight * mask`, so the copy computes exactly what the masked model computes
in inference and loads without `rigl_keras` installed.

Following TFMOT's `strip_pruning`, stripping clones the model with
`keras.models.clone_model(model, clone_function=...)`: Sequential and
functional models, and Sequential/functional models nested in them, are
supported; subclassed models are not (their structure is code, not data:
`rigl_keras.unsparsify` drops their masks in place).

Example:

    stripped = rigl_keras.strip_masks(model)
"""

import contextlib
import warnings

import keras

from rigl_keras import masking
from rigl_keras import sparse_twins
from rigl_keras.layers import MaskedConv2D
from rigl_keras.layers import MaskedDense
from rigl_keras.layers import MaskedLayer
from rigl_keras.layers import masked_layers

__all__ = ["strip_masks", "stripped_copy"]

# Each masked layer class and its plain Keras twin. The masked layers accept
# every argument of their twin and their configs use the same keys, so the
# twin is built from the masked layer's config unchanged.
_PLAIN_TWINS = {
    MaskedDense: keras.layers.Dense,
    MaskedConv2D: keras.layers.Conv2D,
}



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
        for layer in masking.nested_layers(model)
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


def stripped_copy(model, caller, warn=True):
    """`strip_masks`, naming `caller` in its errors.

    Args:
        model: As for `strip_masks`.
        caller: The public function's name, for error messages.
        warn: Whether to warn when `model` holds no masked weight.

    Returns:
        The stripped copy (see `strip_masks`).
    """
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
    return stripped_copy(model, "strip_masks")
