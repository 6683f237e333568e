"""Sparse twins: the classes sparsified layers take so masks save and load.

`rigl_keras.sparsify` switches every layer it gives a mask to (and, inside a
Sequential or functional model, the layer that appears in the model's
config above it, such as a `MultiHeadAttention` whose `EinsumDense`
sublayers are masked) to its *sparse twin*: a subclass of the layer's own
class, registered with `keras.saving.register_keras_serializable`, that adds
three things and changes nothing else:

* `save_own_variables` / `load_own_variables` also store the masks (under
  keys `rigl_mask_<weight name>`), so weights files (`save_weights`,
  `BackupAndRestore`, `.keras` archives) carry them;
* `get_config` lists the masked weights of the layer's subtree (paths
  relative to the layer) under `"rigl_sparse_weights"`;
* `build` gives those weights their masks again, so `keras.models.load_model`
  rebuilds a sparsified model with its masks (then loaded from the file).

Twins of the layer classes `sparsify` supports by default, and of
`MultiHeadAttention`, are registered when `rigl_keras` is imported, so
`load_model` finds them in a fresh process. A twin of any other class is
made on first use; to load such a model from a `.keras` archive in a fresh
process, call `sparse_twin_class(TheClass)` before `load_model`.
"""

import collections.abc

import keras
import numpy as np

from rigl_keras import masking

__all__ = ["sparse_twin_class", "base_class", "is_sparse_twin"]

_CONFIG_KEY = "rigl_sparse_weights"
_STORE_PREFIX = "rigl_mask_"
_TWINS = {}


class _StoreWithoutMasks(collections.abc.Mapping):
    """A weights-store entry seen without the mask keys (for the base load)."""

    def __init__(self, store):
        self._store = store
        self._keys = [k for k in store.keys() if not str(k).startswith(_STORE_PREFIX)]

    def __getitem__(self, key):
        return self._store[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)

    def keys(self):
        return list(self._keys)


class SparseTwin:
    """Mixin of the sparse twin classes (see the module docstring)."""

    _rigl_base_class = None

    def __init__(self, *args, rigl_sparse_weights=(), **kwargs):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "_rigl_restore", tuple(rigl_sparse_weights))

    def build(self, *args, **kwargs):
        super().build(*args, **kwargs)
        restore = getattr(self, "_rigl_restore", ())
        if restore:
            attach_by_relative_paths(self, restore)

    def get_config(self):
        config = super().get_config()
        relative = relative_masked_paths(self)
        if relative:
            config[_CONFIG_KEY] = relative
        return config

    def save_own_variables(self, store):
        super().save_own_variables(store)
        for name, (_, mask) in own_masks(self).items():
            store[_STORE_PREFIX + name] = mask

    def load_own_variables(self, store):
        super().load_own_variables(_StoreWithoutMasks(store))
        keys = set(store.keys())
        for name, (variable, mask) in own_masks(self).items():
            if _STORE_PREFIX + name in keys:
                mask.assign(np.asarray(store[_STORE_PREFIX + name]))
            variable.assign(variable * keras.ops.cast(mask, variable.dtype))


def own_masks(layer):
    """`{weight name: (variable, mask)}` of the masks `sparsify` gave `layer`."""
    return masking.layer_masks(layer)


def is_sparse_twin(layer):
    """Whether `layer` is an instance of a sparse twin class."""
    return isinstance(layer, SparseTwin)


def base_class(layer):
    """The class `layer` had before `sparsify` (its own class otherwise)."""
    if is_sparse_twin(layer):
        return type(layer)._rigl_base_class
    return type(layer)


def _registered_name(cls):
    if cls.__module__.startswith("keras."):
        return f"Sparse{cls.__name__}"
    module = cls.__module__.replace(".", "_")
    return f"Sparse_{module}_{cls.__qualname__}"


def sparse_twin_class(cls):
    """The sparse twin of a layer class, made and registered on first use.

    Args:
        cls: A `keras.layers.Layer` subclass.

    Returns:
        The twin class, a subclass of `cls` registered as
        `"rigl_keras>Sparse<Name>"`.

    Raises:
        ValueError: If `cls` is not a Keras layer class.

    Example:

    >>> twin = sparse_twin_class(keras.layers.Dense)
    >>> issubclass(twin, keras.layers.Dense), twin.__name__
    (True, 'SparseDense')
    """
    if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
        raise ValueError(
            f"`cls` must be a keras.layers.Layer subclass. Received: cls={cls!r}"
        )
    if issubclass(cls, SparseTwin):
        return cls
    if cls not in _TWINS:
        twin = type(
            f"Sparse{cls.__name__}",
            (SparseTwin, cls),
            {
                "__module__": __name__,
                "_rigl_base_class": cls,
                "__doc__": f"`{cls.__name__}` with masks made by `rigl_keras.sparsify`.",
            },
        )
        keras.saving.register_keras_serializable(
            package="rigl_keras", name=_registered_name(cls)
        )(twin)
        _TWINS[cls] = twin
    return _TWINS[cls]


def make_twin(layer):
    """Switches `layer`, in place, to its sparse twin class."""
    if not is_sparse_twin(layer):
        layer.__class__ = sparse_twin_class(type(layer))
        object.__setattr__(layer, "_rigl_restore", ())


def restore_base_class(layer):
    """Switches a twin back to its own class (after its masks are gone)."""
    if is_sparse_twin(layer):
        layer.__class__ = type(layer)._rigl_base_class
        layer.__dict__.pop("_rigl_restore", None)


def attach_mask(layer, variable):
    """Gives `variable` of `layer` an all-ones mask; `None` if it has one.

    The mask is a float32 `keras.Variable` that the layer does not track
    (so `get_weights`, `set_weights` and the optimizer see exactly the
    layer's own weights); the twin class saves and loads it.
    """
    if variable.name in masking.layer_masks(layer):
        return None
    make_twin(layer)
    mask = keras.Variable(
        np.ones(tuple(variable.shape), np.float32),
        trainable=False,
        dtype="float32",
        name=f"{variable.name}_mask",
    )
    masking.register_mask(layer, variable, mask)
    return mask


def relative_masked_paths(layer):
    """Paths, relative to `layer`, of the masked weights of its subtree."""
    prefix = f"{layer.path}/" if layer.path else ""
    paths = []
    for weight in masking.masked_weights(layer):
        if weight.layer is not layer and not is_sparse_twin(weight.layer):
            continue  # A MaskedDense inside: its config rebuilds its mask.
        if prefix and weight.key.startswith(prefix):
            paths.append(weight.key[len(prefix):])
    return paths


def attach_by_relative_paths(layer, relative_paths):
    """Gives masks to the weights at `relative_paths` below `layer`.

    Raises:
        ValueError: If a path names no variable of the layer's subtree.
    """
    prefix = f"{layer.path}/" if layer.path else ""
    by_path = {}
    for sublayer, _ in masking.walk_layers(layer):
        # pylint: disable-next=protected-access
        for variable in getattr(sublayer, "_trainable_variables", []):
            by_path.setdefault(variable.path, (sublayer, variable))
    for relative in relative_paths:
        found = by_path.get(prefix + relative)
        if found is None:
            raise ValueError(
                f"Layer {layer.name!r} was saved with a mask on weight "
                f"{relative!r}, but after building it has no such weight "
                f"(its weights: {sorted(by_path)})."
            )
        attach_mask(*found)


def _default_twin_classes():
    layers = keras.layers
    return (
        layers.Dense, layers.EinsumDense, layers.Embedding,
        layers.Conv1D, layers.Conv2D, layers.Conv3D,
        layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose,
        layers.DepthwiseConv1D, layers.DepthwiseConv2D,
        layers.SeparableConv1D, layers.SeparableConv2D,
        layers.SimpleRNNCell, layers.LSTMCell, layers.GRUCell,
        layers.SimpleRNN, layers.LSTM, layers.GRU,
        layers.MultiHeadAttention,
    )


for _cls in _default_twin_classes():
    sparse_twin_class(_cls)
