"""`sparsify`: give any Keras model masks, in place, for sparse training.

`sparsify(model)` walks a built model of any kind (Sequential, functional,
subclassed, nested, `keras.applications`, KerasHub backbones) and gives an
all-ones mask (outputs unchanged) to every supported weight of every layer
that `filters` selects:

| layer (and subclasses) | masked weights |
| --- | --- |
| `Dense`, `EinsumDense` (so `MultiHeadAttention` and transformer blocks) | `kernel` |
| `Conv1D/2D/3D`, `Conv1D/2D/3DTranspose` | `kernel` |
| `DepthwiseConv1D/2D` | `kernel` (the depthwise kernel) |
| `SeparableConv1D/2D` | `depthwise_kernel`, `pointwise_kernel` |
| `Embedding` | `embeddings` |
| `SimpleRNN`/`LSTM`/`GRU` cells | `kernel`, `recurrent_kernel` |
| a layer with `get_sparsifiable_weights()` (`SparsifiableLayer`) | the weights it returns |

`MaskedDense`/`MaskedConv2D` keep their own masks. Biases, normalization
parameters and other weights stay dense and outside the sparsity budget.
The rigl_keras callbacks and `CustomLoop` then train the masked weights
sparse; `get_masks(model)` reads the masks.
"""

import re

import keras
import tensorflow as tf

from rigl_keras import layers as layers_lib
from rigl_keras import masking
from rigl_keras import sparse_twins

__all__ = ["SparsifiableLayer", "SparsifyReport", "sparsify", "unsparsify"]


class SparsifiableLayer:
    """Protocol of a custom layer that names its sparsifiable weights.

    Like TFMOT's `PrunableLayer`: a layer (subclassing this class is
    optional, the method is what counts) implements
    `get_sparsifiable_weights()` returning the list of its own trainable
    float variables that `sparsify` should mask. The layer's `call` needs
    no change: inactive entries are held at exactly 0.0 in the variables.

    Example:

    >>> class Scale(keras.layers.Layer, SparsifiableLayer):
    ...     def build(self, input_shape):
    ...         self.w = self.add_weight(shape=(input_shape[-1], 4), name="w")
    ...     def call(self, x):
    ...         return x @ self.w
    ...     def get_sparsifiable_weights(self):
    ...         return [self.w]
    >>> model = keras.Sequential([keras.Input((3,)), Scale(name="scale")], name="m")
    >>> [row["weight"] for row in sparsify(model).masked]
    ['m/scale/w']
    """

    def get_sparsifiable_weights(self):
        """The layer's own trainable float variables to mask."""
        raise NotImplementedError


class SparsifyReport:
    """What `sparsify` did: the masked weights and the skipped layers.

    Attributes:
        masked: List of `{"weight": variable path, "layer": layer path,
            "shape": tuple, "new": bool}` (`new` is false for a weight that
            already had a mask).
        skipped: List of `{"layer": layer path, "reason": str}` for every
            layer that owns weights but got no mask.

    `print(report)` shows both as tables.
    """

    def __init__(self):
        self.masked = []
        self.skipped = []

    def __str__(self):
        lines = [f"Masked weights ({len(self.masked)}):"]
        width = max([len(row["weight"]) for row in self.masked] + [6])
        for row in self.masked:
            shape = "x".join(map(str, row["shape"]))
            note = "" if row["new"] else "  (already masked)"
            lines.append(f"  {row['weight'].ljust(width)}  {shape}{note}")
        lines.append(f"Skipped layers ({len(self.skipped)}):")
        width = max([len(row["layer"]) for row in self.skipped] + [6])
        for row in self.skipped:
            lines.append(f"  {row['layer'].ljust(width)}  {row['reason']}")
        return "\n".join(lines)

    def __repr__(self):
        return (
            f"SparsifyReport(masked={len(self.masked)} weights, "
            f"skipped={len(self.skipped)} layers)"
        )


def _compile_filters(filters):
    """A predicate `layer -> bool` from `filters` (as `Model.quantize`)."""
    if filters is None:
        return lambda layer: True
    if isinstance(filters, str):
        filters = [filters]
    if isinstance(filters, (list, tuple)):
        if not filters or not all(isinstance(p, str) for p in filters):
            raise ValueError(
                "`filters` must be None, a regex string, a non-empty list of "
                f"regex strings, or a callable layer -> bool. Received: filters={filters!r}"
            )
        patterns = [re.compile(p) for p in filters]
        return lambda layer: any(
            p.search(layer.name) or p.search(layer.path or "") for p in patterns
        )
    if callable(filters):
        return lambda layer: bool(filters(layer))
    raise ValueError(
        "`filters` must be None, a regex string, a list of regex strings, or "
        f"a callable layer -> bool. Received: filters={filters!r}"
    )


def _own_variables(layer):
    # pylint: disable-next=protected-access
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def _candidates(layer):
    """`(variables, reason)`: the layer's sparsifiable weights, or why none."""
    if hasattr(layer, "get_sparsifiable_weights"):
        variables = list(layer.get_sparsifiable_weights())
        own = {id(v) for v in _own_variables(layer)}
        for variable in variables:
            if not isinstance(variable, keras.Variable) or id(variable) not in own:
                raise ValueError(
                    f"Layer {layer.name!r}: `get_sparsifiable_weights()` must "
                    "return the layer's own keras.Variable objects. "
                    f"Received: {variable!r}"
                )
        return variables, "get_sparsifiable_weights() returned nothing"
    for classes, names in masking.default_weight_names():
        if not isinstance(layer, classes):
            continue
        if getattr(layer, "quantization_mode", None) is not None:
            return [], f"quantized ({layer.quantization_mode}): sparsify before quantizing"
        if getattr(layer, "lora_enabled", False):
            return [], "LoRA is enabled: a low-rank update would fill the mask"
        return [getattr(layer, name) for name in names], ""
    return [], "no supported weight (see rigl_keras.sparsify)"


def _check_float(layer, variable):
    if not keras.backend.is_float_dtype(variable.dtype):
        raise ValueError(
            f"Cannot mask weight {variable.path!r} of layer {layer.name!r}: its "
            f"dtype is {variable.dtype}, masks are for float weights. "
            f"Received: a weight of dtype {variable.dtype}"
        )


def _config_root(layer, ancestors):
    """The layer whose config rebuilds `layer` in its model, or `None`.

    That is the child of the innermost Sequential/functional model above
    `layer` (`layer` itself when it is such a child); `None` when no
    Sequential/functional model encloses it (a subclassed model rebuilds
    from code).
    """
    chain = ancestors + (layer,)
    for index in range(len(chain) - 2, -1, -1):
        if masking.is_graph_model(chain[index]):
            return chain[index + 1]
    return None


def _check_built(model):
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(
            "`model` must be a keras.Model or keras.layers.Layer. "
            f"Received: model={model!r}"
        )
    unbuilt = [
        layer.name for layer, _ in masking.walk_layers(model)
        if not layer.built and _candidates_safe(layer)
    ]
    if not model.built or unbuilt:
        names = f" (unbuilt layers: {unbuilt[:5]})" if unbuilt else ""
        raise ValueError(
            f"Model {model.name!r} is not built{names}: its weights do not "
            "exist yet. Build it first: start it with `keras.Input(shape)`, "
            "or call it on a batch of data (`model(x)`); for a subclassed "
            "model `model.build(input_shape)` builds the sublayers only if "
            "the model defines `build()`."
        )


def _candidates_safe(layer):
    """Whether an unbuilt layer would have sparsifiable weights."""
    if hasattr(layer, "get_sparsifiable_weights"):
        return True
    return any(isinstance(layer, classes) for classes, _ in masking.default_weight_names())


def sparsify(model, filters=None):
    """Gives masks to the supported weights of a built model, in place.

    Every supported weight (module docstring) of every layer selected by
    `filters` gets a non-trainable float32 mask of ones, so the outputs do
    not change until a rigl_keras callback sparsifies the masks. Each layer
    that gets a mask is switched to its sparse twin class (a subclass of its
    own class, `rigl_keras.sparse_twins`), which saves and loads the masks.
    Calling `sparsify` again adds nothing.

    Args:
        model: A built `keras.Model` or layer of any kind.
        filters: Which layers to sparsify, as in `Model.quantize`: `None`
            (all), a regex or list of regexes searched in the layer's name
            and path, or a callable `layer -> bool`. A layer is selected
            when it or a layer enclosing it (below `model`) matches, so
            `"mha"` selects every weight inside the layer `mha`.

    Returns:
        A `SparsifyReport` listing the masked weights and the skipped
        layers with the reason.

    Raises:
        ValueError: If the model is not built, `filters` is malformed or
            selects no layer with a supported weight, a selected weight is
            not a float, or a layer's `get_sparsifiable_weights()` returns
            something other than its own variables.

    Example:

    >>> model = keras.applications.MobileNetV2(
    ...     weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.35)
    >>> report = rigl_keras.sparsify(model)
    >>> len(report.masked)
    53
    """
    _check_built(model)
    selected = _compile_filters(filters)
    report = SparsifyReport()
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    matched = False
    with strategy.scope():
        for layer, ancestors in masking.walk_layers(model):
            if isinstance(layer, layers_lib.MaskedLayer):
                for weight in masking.own_masked_weights(layer):
                    report.masked.append(_row(layer, weight.variable, new=False))
                matched = matched or selected(layer)
                continue
            if masking.is_graph_model(layer):
                continue
            variables, reason = _candidates(layer)
            if not variables:
                if _own_variables(layer):
                    report.skipped.append({"layer": layer.path or layer.name, "reason": reason})
                continue
            chain = ancestors[1:] + (layer,)
            if not any(selected(l) for l in chain):
                report.skipped.append(
                    {"layer": layer.path or layer.name, "reason": "not selected by `filters`"}
                )
                continue
            matched = True
            for variable in variables:
                _check_float(layer, variable)
            for variable in variables:
                added = sparse_twins.attach_mask(layer, variable)
                report.masked.append(_row(layer, variable, new=added is not None))
            root = _config_root(layer, ancestors)
            if root is not None and root is not layer:
                sparse_twins.make_twin(root)
    if filters is not None and not matched:
        raise ValueError(
            f"`filters` selected no layer of model {model.name!r} with a "
            "supported weight. Layer names: "
            f"{[l.name for l, _ in masking.walk_layers(model)][1:20]}. "
            f"Received: filters={filters!r}"
        )
    return report


def _row(layer, variable, new):
    return {
        "weight": variable.path,
        "layer": layer.path or layer.name,
        "shape": tuple(int(d) for d in variable.shape),
        "new": new,
    }


def unsparsify(model):
    """Drops the masks `sparsify` added, in place, keeping `W * M`.

    The in-place counterpart of `rigl_keras.strip_masks`, for models Keras
    cannot clone (subclassed ones): every masked weight is set to
    `W * M`, its mask is removed and every layer gets its own class back.
    `MaskedDense`/`MaskedConv2D` are left as they are (use `strip_masks`).

    Args:
        model: A model or layer.

    Returns:
        The number of masks removed.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> _ = sparsify(model)
    >>> unsparsify(model), type(model.layers[0]).__name__
    (1, 'Dense')
    """
    removed = 0
    for layer, _ in masking.walk_layers(model):
        if not sparse_twins.is_sparse_twin(layer):
            continue  # MaskedDense / MaskedConv2D keep their own masks.
        masks = sparse_twins.own_masks(layer)
        for variable, mask in masks.values():
            variable.assign(variable * keras.ops.cast(mask, variable.dtype))
            removed += 1
        masking.remove_masks(layer)
        sparse_twins.restore_base_class(layer)
    return removed
