"""Masked weights: the unit every part of `rigl_keras` works on.

A *masked weight* is one trainable variable of a layer together with a
non-trainable float32 mask of its shape that holds exactly 0.0 or 1.0. Its
entries outside the mask are kept at exactly 0.0 in the variable itself, so
the layer computes with `W * M` without any change to its `call`.

Masked weights come from two places:

* `rigl_keras.MaskedDense` / `rigl_keras.MaskedConv2D`: the layer owns its
  `kernel` and `mask` weights;
* `rigl_keras.sparsify(model)`: any supported weight of any layer (see
  `rigl_keras.sparsify`).

`masked_weights(model)` finds them all, each once, in one fixed order; every
other module (callbacks, distributions, reports, FLOPs, export) uses it.
`kernel_weights(model)` adds, for layers without masks, the weights that
`sparsify` would mask (`supported_variables`): what reports, FLOPs and
kernel shapes count on plain models such as a `strip_masks` copy. Both
walk the model with `walk_layers`.
Each masked weight is keyed by its variable's `path` (unique even where
layer names repeat); `resolve_keys` also accepts a layer name wherever it
names exactly one masked weight.

The fan-in/fan-out view (`MaskedWeight.fan_shape`) is what the ER and ERK
distributions score: a shape whose product is the weight's size, whose sum
enters the ERK score and whose last two entries are (fan-in channels,
fan-out channels) for ER:

| weight | shape | fan_shape |
| --- | --- | --- |
| `Dense`, `Embedding`, RNN kernels | `(n_in, n_out)` | the same (an RNN kernel covers all its gates) |
| `Conv*D` kernel | `(*k, c_in, c_out)` | the same |
| `Conv*DTranspose` kernel | `(*k, c_out, c_in)` | `(*k, c_in, c_out)` |
| depthwise kernel | `(*k, c_in, multiplier)` | `(*k, 1, c_in * multiplier)`: fan-in `prod(k)` |
| `EinsumDense` kernel | e.g. `(d, heads, head_dim)` | `(fan_in, fan_out)`: the product of the contracted axes, then of the rest (`(d, heads * head_dim)`) |
| other weights | any | the shape itself |
"""

import math
import typing
import zlib

import keras
import numpy as np

__all__ = [
    "KernelWeight",
    "MaskedWeight",
    "default_weight_names",
    "get_masks",
    "is_graph_model",
    "kernel_weights",
    "masked_weights",
    "layer_masks",
    "nested_layers",
    "random_mask",
    "register_mask",
    "remove_masks",
    "resolve_keys",
    "seed_name",
    "supported_variables",
    "variable_value",
    "walk_layers",
    "weight_seed",
]


class MaskedWeight:
    """One variable under a 0/1 mask.

    Attributes:
        key: The variable's `path`, unique within a model.
        layer: The layer that owns the variable.
        variable: The trainable `keras.Variable`.
        mask: The non-trainable float32 `keras.Variable` of the same shape.
        fan_shape: The fan-in/fan-out view ER and ERK score (module
            docstring).
    """

    def __init__(self, layer, variable, mask, fan_shape=None):
        self.layer = layer
        self.variable = variable
        self.mask = mask
        self.key = variable.path
        self.fan_shape = tuple(fan_shape or variable.shape)

    @property
    def shape(self):
        """The weight's shape, a tuple of ints."""
        return tuple(int(d) for d in self.variable.shape)

    @property
    def size(self):
        """The number of entries."""
        return math.prod(self.shape)

    def apply_mask(self):
        """Sets the entries outside the mask to exactly 0.0."""
        self.variable.assign(
            self.variable * keras.ops.cast(self.mask, self.variable.dtype)
        )

    def __repr__(self):
        return f"MaskedWeight({self.key!r}, shape={self.shape})"


def _sublayers(layer):
    """The direct sublayers of `layer`, in the order the layer holds them.

    Operations that are not layers (a functional model may hold some) have
    no weights and are left out.
    """
    try:
        # pylint: disable-next=protected-access
        children = list(layer._flatten_layers(include_self=False, recursive=False))
    except AttributeError:  # it holds an operation without sublayer tracking
        children = list(getattr(layer, "_layers", None) or [])
    return [child for child in children if isinstance(child, keras.layers.Layer)]


def is_graph_model(layer):
    """Whether `layer` is a Sequential or functional model.

    Its config lists its layers, so Keras can clone and rebuild it layer by
    layer; a subclassed model rebuilds from code. Keras 3 does not export
    its `Functional` class, so it is looked for by name among the base
    classes (a `keras.Model` subclass constructed with `inputs` and
    `outputs` is functional too).
    """
    if isinstance(layer, keras.Sequential):
        return True
    return any(
        cls.__name__ == "Functional" and cls.__module__.startswith("keras")
        for cls in type(layer).__mro__
    )


def walk_layers(model):
    """Yields `(layer, ancestors)` depth first, each layer once.

    `ancestors` is the tuple of enclosing layers, outermost first (the model
    itself included for its sublayers).
    """
    seen = set()
    stack = [(model, ())]
    while stack:
        layer, ancestors = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer, ancestors
        children = _sublayers(layer)
        stack.extend((child, ancestors + (layer,)) for child in reversed(children))


# Where a layer keeps `{variable name: (variable, mask)}` of its own masks:
# an untracked entry of its __dict__, so Keras' weight tracking is unchanged.
_MASKS_ATTRIBUTE = "_rigl_masks"


def nested_layers(layer):
    """Every layer inside `layer`, nested ones included, without `layer`.

    Args:
        layer: A `keras.layers.Layer` (a model included).

    Returns:
        A list of layers, in `walk_layers` order.

    Example:

    >>> inner = keras.Sequential([keras.layers.Dense(2, name="fc")], name="inner")
    >>> outer = keras.Sequential([inner], name="outer")
    >>> [l.name for l in nested_layers(outer)]
    ['inner', 'fc']
    """
    return [sublayer for sublayer, _ in walk_layers(layer)][1:]


def layer_masks(layer):
    """`{variable name: (variable, mask)}` of the masks `layer` holds itself.

    `MaskedDense`/`MaskedConv2D` register theirs when built;
    `rigl_keras.sparsify` registers the masks it attaches.
    """
    return layer.__dict__.get(_MASKS_ATTRIBUTE) or {}


def register_mask(layer, variable, mask):
    """Records `mask` as the mask of `layer`'s `variable`."""
    masks = layer.__dict__.get(_MASKS_ATTRIBUTE)
    if masks is None:
        masks = {}
        object.__setattr__(layer, _MASKS_ATTRIBUTE, masks)
    masks[variable.name] = (variable, mask)


def remove_masks(layer):
    """Forgets every mask `layer` holds (its variables stay as they are)."""
    layer.__dict__.pop(_MASKS_ATTRIBUTE, None)


def own_masked_weights(layer):
    """The masked weights a single layer owns (not its sublayers')."""
    return [
        MaskedWeight(layer, variable, mask, layer_fan_shape(layer, variable))
        for variable, mask in layer_masks(layer).values()
    ]


def masked_weights(model):
    """Lists the masked weights of a model or layer, each once, in order.

    Nested models and layers are searched depth first in each layer's own
    order; a layer shared by several call sites appears once.

    Args:
        model: A `keras.Model` or `keras.layers.Layer`.

    Returns:
        A list of `MaskedWeight`.

    Raises:
        ValueError: If two masked weights share a variable path.

    Example:

    >>> model = keras.Sequential(
    ...     [keras.Input((3,)), keras.layers.Dense(2, name="fc")], name="mlp")
    >>> _ = rigl_keras.sparsify(model)
    >>> [w.key for w in masked_weights(model)]
    ['mlp/fc/kernel']
    """
    found = []
    keys = {}
    for layer, _ in walk_layers(model):
        for weight in own_masked_weights(layer):
            if weight.key in keys:
                raise ValueError(
                    f"Two masked weights share the variable path {weight.key!r} "
                    f"(layers {keys[weight.key]!r} and {layer.name!r}): give "
                    "the layers unique names so that their weights can be told "
                    "apart."
                )
            keys[weight.key] = layer.name
            found.append(weight)
    return found


def default_weight_names():
    """`((layer classes, weight attribute names), ...)`: `sparsify`'s table.

    The first entry whose classes a layer is an instance of names its
    supported weights (the `SeparableConv*` entry comes before the
    `Conv*` one). See `rigl_keras.sparsify`.
    """
    layers = keras.layers
    return (
        ((layers.SeparableConv1D, layers.SeparableConv2D),
         ("depthwise_kernel", "pointwise_kernel")),
        ((layers.Dense, layers.EinsumDense, layers.Conv1D, layers.Conv2D,
          layers.Conv3D, layers.Conv1DTranspose, layers.Conv2DTranspose,
          layers.Conv3DTranspose, layers.DepthwiseConv1D,
          layers.DepthwiseConv2D), ("kernel",)),
        ((layers.Embedding,), ("embeddings",)),
        ((layers.SimpleRNNCell, layers.LSTMCell, layers.GRUCell),
         ("kernel", "recurrent_kernel")),
    )


def supported_variables(layer):
    """The weights of `layer` (its own) that `sparsify` masks by default.

    The variables its `get_sparsifiable_weights()` returns for a layer of
    the `SparsifiableLayer` protocol, the weights `default_weight_names`
    names for a supported Keras layer, the kernel of a `MaskedDense` /
    `MaskedConv2D`; `[]` for an unbuilt layer or any other layer.
    """
    if not layer.built:
        return []
    if hasattr(layer, "get_sparsifiable_weights"):
        return list(layer.get_sparsifiable_weights())
    for classes, names in default_weight_names():
        if isinstance(layer, classes):
            found = [getattr(layer, name, None) for name in names]
            # A LoRA-enabled layer's `kernel` is a tensor, not a variable.
            return [v for v in found if isinstance(v, keras.Variable)]
    return []


class KernelWeight(typing.NamedTuple):
    """A weight `kernel_weights` counts: its mask, or `None` if it has none.

    Attributes:
        key: The variable's `path`.
        layer: The layer that owns the variable.
        variable: The `keras.Variable`.
        mask: The weight's 0/1 mask variable, or `None`.
    """

    key: str
    layer: keras.layers.Layer
    variable: keras.Variable
    mask: typing.Optional[keras.Variable]


def kernel_weights(model):
    """The masked weights and the supported weights without a mask, in order.

    For each layer of `walk_layers(model)`: its masked weights if it has
    any, else its `supported_variables` (with `mask=None`). On a model
    without masks (a plain model, a `strip_masks` copy) these are the
    weights `sparsify` would mask; on a sparsified model, the masked ones
    and those of the layers left dense.

    Args:
        model: A `keras.Model` or `keras.layers.Layer`.

    Returns:
        A list of `KernelWeight`.

    Raises:
        ValueError: If two of them share a variable path.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc"),
    ...                           keras.layers.Dense(1, name="out")], name="mlp")
    >>> _ = rigl_keras.sparsify(model, filters="fc")
    >>> [(w.key, w.mask is not None) for w in kernel_weights(model)]
    [('mlp/fc/kernel', True), ('mlp/out/kernel', False)]
    """
    found = []
    keys = {}
    for layer, _ in walk_layers(model):
        masked = own_masked_weights(layer)
        if masked:
            entries = [KernelWeight(w.key, layer, w.variable, w.mask) for w in masked]
        else:
            entries = [
                KernelWeight(v.path, layer, v, None) for v in supported_variables(layer)
            ]
        for entry in entries:
            if entry.key in keys:
                raise ValueError(
                    f"Two weights share the variable path {entry.key!r} (layers "
                    f"{keys[entry.key]!r} and {layer.name!r}): give the layers "
                    "unique names so that their weights can be told apart."
                )
            keys[entry.key] = layer.name
            found.append(entry)
    return found


def get_masks(model):
    """Each masked weight's 0/1 mask, keyed by the weight's variable path.

    Args:
        model: A model or layer with masked weights.

    Returns:
        `{variable.path: NumPy float32 array}`, in `masked_weights` order.

    Example:

    >>> model = keras.Sequential(
    ...     [keras.Input((3,)), keras.layers.Dense(2, name="fc")], name="mlp")
    >>> _ = rigl_keras.sparsify(model)
    >>> {k: v.shape for k, v in rigl_keras.get_masks(model).items()}
    {'mlp/fc/kernel': (3, 2)}
    """
    return {
        w.key: np.asarray(keras.ops.convert_to_numpy(w.mask), np.float32)
        for w in masked_weights(model)
    }


def resolve_keys(weights, names, argument):
    """Maps user-given names to masked-weight keys.

    A name is a variable path (a key), or a layer name that names exactly
    one masked weight.

    Args:
        weights: The model's `MaskedWeight` list.
        names: Iterable of names.
        argument: The argument's name, for error messages.

    Returns:
        `{name: key}` in the order of `names`.

    Raises:
        ValueError: For a name that matches no masked weight, or a layer
            name that owns several.
    """
    by_key = {w.key: w for w in weights}
    by_layer = {}
    for w in weights:
        by_layer.setdefault(w.layer.name, []).append(w.key)
    resolved = {}
    for name in names:
        if name in by_key:
            resolved[name] = name
        elif len(by_layer.get(name, ())) == 1:
            resolved[name] = by_layer[name][0]
        elif name in by_layer:
            raise ValueError(
                f"`{argument}` names layer {name!r}, which has several masked "
                f"weights {by_layer[name]}: name the weight by its path. "
                f"Received: {argument}={name!r}"
            )
        else:
            raise ValueError(
                f"`{argument}` names {name!r}, which is neither the path of a "
                "masked weight nor the name of a layer with one masked weight. "
                f"Masked weights: {list(by_key)}. Received: {argument}={name!r}"
            )
    return resolved


def variable_value(variable):
    """The backend variable behind a Keras variable (or the argument itself).

    Traced graphs read and assign through it; a `MirroredVariable` under a
    `tf.distribute` strategy stays one.
    """
    if isinstance(variable, keras.Variable):
        return variable.value
    return variable


def weight_seed(seed, name):
    """A per-weight seed from the user seed and a stable digest of `name`.

    `zlib.crc32`, unlike Python's salted `hash`, is the same in every
    process, so every worker draws the same masks.

    Example:

    >>> weight_seed(0, "fc1/kernel") == weight_seed(0, "fc1/kernel")
    True
    """
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**31 - 1)


def random_mask(shape, num_zeros, seed):
    """A 0/1 float32 mask of `shape` with exactly `num_zeros` zeros.

    Args:
        shape: The mask's shape.
        num_zeros: Integer in `[0, prod(shape)]`.
        seed: Integer seed; the same seed gives the same mask.

    Returns:
        A NumPy float32 array.

    Raises:
        ValueError: If `num_zeros` is outside `[0, prod(shape)]`.

    Example:

    >>> int((random_mask((4, 5), 7, seed=0) == 0).sum())
    7
    """
    size = int(np.prod(shape))
    if not 0 <= num_zeros <= size:
        raise ValueError(
            f"`num_zeros` must be in [0, {size}] for shape {tuple(shape)}. "
            f"Received: num_zeros={num_zeros}"
        )
    mask = np.ones(size, np.float32)
    order = np.random.default_rng(seed).permutation(size)
    mask[order[:num_zeros]] = 0.0
    return mask.reshape(shape)


def seed_name(weight, model):
    """The name a weight's random draws are keyed by: its path below `model`.

    Two models built alike get the same draws from the same seed even
    where Keras numbered their names differently (`sequential_3/fc/kernel`
    and `sequential_4/fc/kernel` are both `fc/kernel`).
    """
    prefix = f"{model.name}/"
    if weight.key.startswith(prefix):
        return weight.key[len(prefix):]
    return weight.key


def _einsum_fan_shape(layer, shape):
    """`(fan_in, fan_out)` of an `EinsumDense` kernel from its equation."""
    inputs, rest = layer.equation.split(",")
    kernel_axes = rest.split("->")[0]
    if len(kernel_axes) != len(shape):
        return tuple(shape)
    fan_in = math.prod(d for axis, d in zip(kernel_axes, shape) if axis in inputs)
    fan_out = math.prod(d for axis, d in zip(kernel_axes, shape) if axis not in inputs)
    return (fan_in, fan_out)


def layer_fan_shape(layer, variable):
    """The fan-in/fan-out view of a layer's `variable` (module docstring)."""
    shape = tuple(int(d) for d in variable.shape)
    if isinstance(layer, keras.layers.EinsumDense):
        return _einsum_fan_shape(layer, shape)
    if len(shape) < 3:
        return shape
    depthwise = variable.name == "depthwise_kernel" or isinstance(
        layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
    )
    if depthwise:
        return shape[:-2] + (1, shape[-2] * shape[-1])
    transpose = (
        keras.layers.Conv1DTranspose,
        keras.layers.Conv2DTranspose,
        keras.layers.Conv3DTranspose,
    )
    if isinstance(layer, transpose):
        return shape[:-2] + (shape[-1], shape[-2])
    return shape
