"""Structured sparsity: masks made of blocks, or N of every M inputs.

A structure constrains a weight's mask on its matrix view, inputs x outputs
(`rigl_keras.matrix_views`: a `Dense` kernel as it is, a conv kernel
`(*k, c_in, c_out)` as `(prod(k) * c_in, c_out)`, an `EinsumDense` kernel
as `(fan_in, fan_out)`):

* `Block((a, b))`: the mask is constant on every `a x b` block of the
  matrix; a weight at sparsity `s` has `floor(s * number_of_blocks)` zero
  blocks. `Block((4, 1))` on a `Dense` kernel (4 consecutive inputs of one
  unit) is TFLite's 1x4 block.
* `NM(n, m)`: along the input axis, every group of `m` consecutive inputs
  of one output has exactly `n` active entries; the sparsity is `1 - n/m`.

The *units* a structure counts are its blocks (`Block`) or the entries
(`NM`, and no structure). The mask functions (`rigl_keras.structured_masks`,
exported here) are TensorFlow ops, traceable in a `tf.function` (also with
XLA) and deterministic given a stateless seed:

* `initial_mask(shape, structure, num_zero_units, seed)`: a random mask;
* `prune_mask(scores, mask, structure, num_zero_units, seed)`: magnitude
  pruning that keeps the highest-scoring active units;
* `Structure.drop_and_grow(...)`: the choice of one drop-and-grow update,
  which `rigl_keras.updaters.MaskUpdater.update(..., structure=...)` makes.

`check(model, structure)` tells whether a model's masks have a structure;
`get`, `serialize` and `deserialize` convert configs.
`rigl_keras.structure_arguments` reads the `structure=` argument of the
callbacks (one structure for every weight, or a dict per weight).

Example:

>>> mask = initial_mask((8, 2), NM(2, 4), None, seed=0)
>>> keras.ops.convert_to_numpy(mask).reshape(2, 4, 2).sum(axis=1).tolist()
[[2.0, 2.0], [2.0, 2.0]]
"""

import math
import numbers

import keras
import numpy as np

from rigl_keras import _checks
from rigl_keras import masking
from rigl_keras import structured_masks
from rigl_keras import _selection
from rigl_keras.matrix_views import MatrixView
from rigl_keras.matrix_views import matrix_shape
from rigl_keras.matrix_views import matrix_view
from rigl_keras.structured_masks import CheckResult
from rigl_keras.structured_masks import initial_mask
from rigl_keras.structured_masks import prune_mask

__all__ = [
    "Block",
    "CheckResult",
    "MatrixView",
    "NM",
    "Structure",
    "check",
    "deserialize",
    "get",
    "initial_mask",
    "matrix_shape",
    "matrix_view",
    "is_per_weight",
    "per_weight",
    "prune_mask",
    "serialize",
]

# An N:M sparsity given as a number may differ from 1 - n/m by this much.
_SPARSITY_ATOL = 1e-6


def _positive_int(value, argument):
    if not _checks.is_int(value) or value < 1:
        raise ValueError(
            f"`{argument}` must be a positive integer. Received: {argument}={value!r}"
        )
    return int(value)


class Structure:
    """Base class of mask structures.

    Subclasses implement `num_units`, `zero_units`, `get_config` and the
    matrix hooks `_fit_error`, `initial_matrix`, `prune_matrix`,
    `drop_and_grow_matrix` and `matrix_violation` (matrix-view tensors in,
    boolean tensors out: `rigl_keras.structured_masks`).
    """

    def validate(self, shape_or_view, name=None):
        """Checks that the structure fits a weight; returns its matrix view.

        Args:
            shape_or_view: A variable's shape (its default matrix view), a
                `MatrixView`, or a `rigl_keras.masking.MaskedWeight`.
            name: The weight's name for the message (a masked weight's key
                by default).

        Returns:
            The `MatrixView`.

        Raises:
            ValueError: Naming the weight and its shape, if the structure
                does not divide the matrix view.
        """
        if isinstance(shape_or_view, masking.MaskedWeight):
            view, name = matrix_view(shape_or_view), name or shape_or_view.key
        elif isinstance(shape_or_view, MatrixView):
            view = shape_or_view
        else:
            view = MatrixView(shape_or_view)
        reason = self._fit_error(view.matrix_shape)
        if reason:
            raise ValueError(
                f"{self!r} does not fit weight {name or 'weight'!r} of shape "
                f"{view.shape} (matrix view {view.matrix_shape}): {reason}"
            )
        return view

    def _fit_error(self, rows_cols):
        """Why the structure does not divide a matrix view, or None."""
        raise NotImplementedError

    def check_sparsity(self, sparsity, key=None):
        """Checks a requested sparsity against the structure; returns it.

        Args:
            sparsity: A number in `[0, 1]`.
            key: The weight's key, for the message.

        Returns:
            The sparsity as a float (for `NM`, exactly `1 - n/m`).

        Raises:
            ValueError: If `sparsity` is not in `[0, 1]` or disagrees with
                the structure.
        """
        if not isinstance(sparsity, numbers.Real) or not 0.0 <= sparsity <= 1.0:
            raise ValueError(
                f"`sparsity` of weight {key!r} must be a number in [0, 1]. "
                f"Received: sparsity={sparsity!r}"
            )
        return float(sparsity)

    def drop_and_grow(self, drop_scores, grow_scores, active, drop_fraction, seeds, view=None):
        """The active set after one drop-and-grow update of a weight.

        How units are dropped and grown is the subclass's (`Block`, `NM`);
        the number replaced is `floor(drop_fraction * active units)`.

        Args:
            drop_scores: Float tensor of the variable's shape (the lowest
                are dropped).
            grow_scores: Float tensor of the variable's shape (the highest
                are grown).
            active: Boolean tensor of the variable's shape, a mask with the
                structure.
            drop_fraction: Scalar, the fraction of active units to replace.
            seeds: Two stateless seeds, for the drop and the grow ties.
            view: The variable's `MatrixView`; default its plain view.

        Returns:
            The boolean active set after the update, of the variable's shape.

        Raises:
            ValueError: If the structure does not fit the weight.
        """
        view = self.validate(view or tuple(active.shape))
        new_active = self.drop_and_grow_matrix(
            view.to_matrix(drop_scores), view.to_matrix(grow_scores),
            view.to_matrix(active), drop_fraction, seeds,
        )
        return view.from_matrix(new_active)

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        """Creates the structure from `get_config()`'s dict."""
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="rigl_keras")
class Block(Structure):
    """A mask constant on every `a x b` block of the matrix view.

    Blocks tile the matrix view from the top left. An update drops the
    `floor(drop_fraction * active_blocks)` active blocks with the lowest
    sum of drop scores (`|W|`) and grows as many blocks, among those not
    kept, with the highest sum of grow scores (`|dL/d(W*M)|` for RigL, the
    momentum's for SNFS, a uniform draw per entry for SET). A block is
    active when all its entries are.

    Args:
        shape: `(a, b)`, two positive integers: the block's extent along
            the inputs and along the outputs. `(4, 1)` on a `Dense` kernel
            is 4 consecutive inputs of one unit (TFLite's 1x4 block).

    Raises:
        ValueError: If `shape` is not two positive integers.

    Example:

    >>> block = Block((4, 1))
    >>> block.num_units((8, 3)), block.zero_units((8, 3), 0.5)
    (6, 3)
    """

    def __init__(self, shape):
        if (
            isinstance(shape, (str, bytes))
            or not hasattr(shape, "__len__")
            or len(shape) != 2
            or not all(_checks.is_int(d) and d >= 1 for d in shape)
        ):
            raise ValueError(
                "`shape` must be two positive integers (rows, cols) of the "
                f"block. Received: shape={shape!r}"
            )
        self.shape = (int(shape[0]), int(shape[1]))

    def _fit_error(self, rows_cols):
        (rows, cols), (a, b) = rows_cols, self.shape
        if rows % a or cols % b:
            return f"{a} must divide its {rows} rows and {b} its {cols} columns."
        return None

    def num_units(self, shape_or_view):
        """The number of blocks of a weight (a shape, view or masked weight)."""
        rows, cols = self.validate(shape_or_view).matrix_shape
        return (rows // self.shape[0]) * (cols // self.shape[1])

    def zero_entries(self, shape_or_view, sparsity):
        """The number of zero entries at `sparsity`: whole zero blocks."""
        return self.zero_units(shape_or_view, sparsity) * math.prod(self.shape)

    def zero_units(self, shape_or_view, sparsity):
        """`floor(sparsity * number_of_blocks)`, safe from float round-off."""
        sparsity = self.check_sparsity(sparsity)
        return int(_selection.floor_count(sparsity, self.num_units(shape_or_view)))

    def initial_matrix(self, rows_cols, num_zero_units, seed):
        return structured_masks.block_initial(rows_cols, self.shape, num_zero_units, seed)

    def prune_matrix(self, scores, active, num_zero_units, seed):
        return structured_masks.block_prune(scores, active, self.shape, num_zero_units, seed)

    def drop_and_grow_matrix(self, drop_scores, grow_scores, active, drop_fraction, seeds):
        return structured_masks.block_drop_and_grow(
            drop_scores, grow_scores, active, self.shape, drop_fraction, seeds
        )

    def matrix_violation(self, active):
        """Why a boolean NumPy matrix lacks the structure, or None."""
        a, b = self.shape
        blocks = active.reshape(active.shape[0] // a, a, active.shape[1] // b, b)
        partly = int(np.sum(blocks.any(axis=(1, 3)) != blocks.all(axis=(1, 3))))
        if partly:
            total = blocks.shape[0] * blocks.shape[2]
            return f"{partly} of {total} blocks of {a}x{b} are partly active."
        return None

    def get_config(self):
        return {"shape": self.shape}


@keras.saving.register_keras_serializable(package="rigl_keras")
class NM(Structure):
    """Exactly `n` active entries in every group of `m` consecutive inputs.

    A group is `m` consecutive rows of one column of the matrix view (for a
    conv kernel, `m` consecutive input channels of one spatial tap when `m`
    divides `c_in`). The sparsity is `1 - n/m`. An update drops the
    `floor(drop_fraction * nnz)` active entries with the lowest drop score
    over the whole weight; every group that lost `d` entries then grows
    the `d` of its own entries not kept (just dropped ones included) with
    the highest grow score, so every group keeps exactly `n`.

    Args:
        n: Positive integer, the active entries per group.
        m: Positive integer `>= n`, the group size.

    Raises:
        ValueError: If `n` or `m` is not a positive integer, or `n > m`.

    Example:

    >>> NM(2, 4).check_sparsity(0.5)
    0.5
    """

    def __init__(self, n, m):
        self.n = _positive_int(n, "n")
        self.m = _positive_int(m, "m")
        if self.n > self.m:
            raise ValueError(f"`n` must be at most `m`. Received: n={n!r}, m={m!r}")

    @property
    def sparsity(self):
        """`1 - n/m`."""
        return 1.0 - self.n / self.m

    def _fit_error(self, rows_cols):
        if rows_cols[0] % self.m:
            return f"m={self.m} must divide its {rows_cols[0]} inputs (rows)."
        return None

    def check_sparsity(self, sparsity, key=None):
        super().check_sparsity(sparsity, key)
        if abs(sparsity - self.sparsity) > _SPARSITY_ATOL:
            raise ValueError(
                f"`sparsity` of weight {key!r} disagrees with {self!r}, whose "
                f"sparsity is 1 - n/m = {self.sparsity!r}. Received: sparsity={sparsity!r}"
            )
        return self.sparsity

    def num_units(self, shape_or_view):
        """The number of entries of a weight (shape, view or masked weight)."""
        return math.prod(self.validate(shape_or_view).matrix_shape)

    def zero_entries(self, shape_or_view, sparsity):
        """The number of zero entries, `(1 - n/m) * size`."""
        return self.zero_units(shape_or_view, sparsity)

    def zero_units(self, shape_or_view, sparsity):
        """The zero entries, `(1 - n/m) * size`, once `sparsity` agrees."""
        self.check_sparsity(sparsity)
        return self.num_units(shape_or_view) // self.m * (self.m - self.n)

    def _check_count(self, num_zero_units, size):
        expected = size // self.m * (self.m - self.n)
        if _checks.is_int(num_zero_units) and num_zero_units != expected:
            raise ValueError(
                f"`num_zero_units` disagrees with {self!r}, which has {expected} "
                f"zeros of {size}. Received: num_zero_units={num_zero_units!r}"
            )

    def initial_matrix(self, rows_cols, num_zero_units, seed):
        self._check_count(num_zero_units, math.prod(rows_cols))
        return structured_masks.nm_initial(rows_cols, self.n, self.m, seed)

    def prune_matrix(self, scores, active, num_zero_units, seed):
        self._check_count(num_zero_units, math.prod(active.shape))
        return structured_masks.nm_prune(scores, active, self.n, self.m, seed)

    def drop_and_grow_matrix(self, drop_scores, grow_scores, active, drop_fraction, seeds):
        return structured_masks.nm_drop_and_grow(
            drop_scores, grow_scores, active, self.m, drop_fraction, seeds
        )

    def matrix_violation(self, active):
        """Why a boolean NumPy matrix lacks the structure, or None."""
        counts = active.reshape(active.shape[0] // self.m, self.m, -1).sum(axis=1)
        wrong = counts[counts != self.n]
        if wrong.size:
            return (
                f"{wrong.size} of {counts.size} groups of {self.m} do not have "
                f"{self.n} active (they have {sorted(set(wrong.tolist()))})."
            )
        return None

    def get_config(self):
        return {"n": self.n, "m": self.m}


def serialize(structure):
    """The Keras config of a structure (None for None)."""
    return None if structure is None else keras.saving.serialize_keras_object(structure)


def deserialize(config):
    """The structure of a `serialize` config (None for None).

    Raises:
        ValueError: If `config` does not describe a `Structure`.
    """
    if config is None:
        return None
    structure = keras.saving.deserialize_keras_object(
        config, custom_objects={"Block": Block, "NM": NM}
    )
    if not isinstance(structure, Structure):
        raise ValueError(
            f"`config` must describe a rigl_keras structure. Received: config={config!r}"
        )
    return structure


def get(identifier):
    """A `Structure` from a structure, its `serialize` config, or None.

    Args:
        identifier: A `Structure`, a config dict, or None (no structure).

    Returns:
        A `Structure` or None.

    Raises:
        ValueError: For anything else.

    Example:

    >>> get(serialize(Block((4, 1))))
    Block(shape=(4, 1))
    """
    if identifier is None or isinstance(identifier, Structure):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise ValueError(
        "`identifier` must be a Structure, its config dict, or None. "
        f"Received: identifier={identifier!r}"
    )


def check(model, structure):
    """Whether every masked weight's mask has its structure.

    Args:
        model: A model or layer with masked weights.
        structure: A `Structure` (or its config) for every masked weight,
            or a dict `{weight path or unique layer name: Structure or
            None}` (weights not named, and those mapped to None, are not
            checked).

    Returns:
        A `CheckResult`, truthy when all checked weights pass; its
        `violations` name the others with a reason (a shape the structure
        does not fit, partly active blocks, groups without `n` active).

    Raises:
        ValueError: For a dict key that names no masked weight, or a value
            that is not a structure.

    Example:

    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, name="fc")])
    >>> _ = rigl_keras.sparsify(model)
    >>> bool(check(model, NM(2, 4)))  # an all-ones mask has 4 of 4 active
    False
    """
    weights = masking.masked_weights(model)
    return structured_masks.check_weights(
        weights, per_weight(weights, structure))


def per_weight(weights, structure):
    """`{weight key: Structure or None}` from a `structure=` argument.

    Args:
        weights: The `rigl_keras.masking.MaskedWeight`s.
        structure: None, a `Structure` (or its config) for every weight, or
            a dict `{weight path or unique layer name: Structure or None}`
            (weights not named get None).

    Returns:
        A dict with every weight's key.

    Raises:
        ValueError: For a dict key that names no masked weight, or a value
            that is not a structure.
    """
    if is_per_weight(structure):
        keys = masking.resolve_keys(weights, structure, "structure")
        given = {keys[name]: get(value) for name, value in structure.items()}
        return {w.key: given.get(w.key) for w in weights}
    structure = get(structure)
    return {w.key: structure for w in weights}


def is_per_weight(structure):
    """Whether a `structure=` value is a dict per weight (not a config)."""
    return (
        isinstance(structure, dict)
        and not ("class_name" in structure and "config" in structure)
    )
