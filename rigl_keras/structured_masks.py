"""Masks with a structure: make, prune, update and check them.

`initial_mask`, `prune_mask` and `check_weights` work on weights (a
variable's shape, through its `rigl_keras.matrix_views.MatrixView`) and
take a `rigl_keras.structures.Structure` (they are exported there, with
`check`). The other functions are the matrix-level math the structures
call: tensors of a matrix view `(rows, cols)` in, boolean tensors (true
where active) out, and Python ints for the structure. All of it is
TensorFlow ops (no variables, no NumPy; `check_weights` reads NumPy
masks), traceable in a `tf.function` and with XLA, and deterministic given
a stateless seed (a shape-`[2]` integer tensor). XLA draws other stateless
random numbers than TensorFlow's own kernels from the same seed, so a
compiled function makes other (equally valid) random choices.

* Blocks `(a, b)`: the matrix is tiled from the top left; block `(i, j)`
  holds rows `a*i .. a*i+a-1` and columns `b*j .. b*j+b-1`. Scores are
  summed per block; a block is active when all its entries are; the
  unit-level choice is `rigl_keras._selection.select_top_k` on the block grid.
* N:M groups: group `(i, j)` is rows `m*i .. m*i+m-1` of column `j`
  (`to_groups` gives them as the rows of a `(rows * cols / m, m)` tensor).
  Choices within groups use `group_ranks`.

Example:

>>> ranks = group_ranks(tf.constant([[0.1, 0.9, 0.5]]), seed=[0, 0])
>>> ranks.numpy().tolist()
[[2, 0, 1]]
"""

import math
import numbers

from keras import ops
import numpy as np
import tensorflow as tf

from rigl_keras import _selection
from rigl_keras.matrix_views import MatrixView

__all__ = [
    "CheckResult",
    "block_drop_and_grow",
    "block_initial",
    "block_prune",
    "check_weights",
    "expand_blocks",
    "from_groups",
    "group_ranks",
    "initial_mask",
    "nm_drop_and_grow",
    "nm_initial",
    "nm_prune",
    "pool_blocks",
    "prune_mask",
    "to_groups",
    "units_to_zero",
]


def _fold(seed, i):
    return tf.random.experimental.stateless_fold_in(seed, i)


def group_ranks(scores, seed, preferred=None):
    """Rank of each entry within its row of `scores` `(groups, m)`, 0 best.

    Entries where `preferred` is true rank first, then by descending score;
    ties are ordered at random from `seed`. The ranks of every row are a
    permutation of `0 .. m-1`, so `ranks < k` selects exactly `k` per row
    (at most `m`), whatever the ties.

    Args:
        scores: Float tensor `(groups, m)`.
        seed: Stateless seed.
        preferred: Optional boolean tensor of the same shape.

    Returns:
        An int32 tensor of the shape of `scores`.
    """
    shape = tf.shape(scores)
    order = tf.argsort(tf.random.stateless_uniform(shape, seed=seed), axis=-1)
    keys = [ops.cast(scores, "float32")]
    if preferred is not None:
        keys.append(ops.cast(preferred, "float32"))
    for key in keys:  # Stable sorts: the last key sorted is the primary one.
        by_key = tf.argsort(
            ops.take_along_axis(key, order, axis=-1),
            axis=-1, direction="DESCENDING", stable=True,
        )
        order = ops.take_along_axis(order, by_key, axis=-1)
    return tf.argsort(order, axis=-1)  # The inverse permutation: ranks.


def units_to_zero(num_zero_units, num_units):
    """`num_zero_units` as an int32 scalar in `[0, num_units]`.

    Raises:
        ValueError: For a Python int outside the range (tensors are clipped).
    """
    if isinstance(num_zero_units, numbers.Integral) and not isinstance(num_zero_units, bool):
        if not 0 <= num_zero_units <= num_units:
            raise ValueError(
                f"`num_zero_units` must be in [0, {num_units}] (the number of "
                f"units). Received: num_zero_units={num_zero_units!r}"
            )
        return tf.constant(int(num_zero_units), tf.int32)
    return ops.clip(ops.cast(num_zero_units, "int32"), 0, num_units)


# ---------------------------------------------------------------------------
# Blocks.


def pool_blocks(matrix, block, reduce="sum"):
    """Per-block sum (float32) or all (boolean) of a `(rows, cols)` matrix."""
    (rows, cols), (a, b) = matrix.shape, block
    blocks = ops.reshape(matrix, (rows // a, a, cols // b, b))
    if reduce == "all":
        return ops.all(blocks, axis=(1, 3))
    return ops.sum(ops.cast(blocks, "float32"), axis=(1, 3))


def expand_blocks(units, block):
    """A matrix constant on each block from its block grid `units`."""
    a, b = block
    return ops.repeat(ops.repeat(units, a, axis=0), b, axis=1)


def block_initial(matrix_shape, block, num_zero_units, seed):
    """Exactly `num_zero_units` zero blocks, chosen uniformly at random."""
    grid = (matrix_shape[0] // block[0], matrix_shape[1] // block[1])
    zero = _selection.select_top_k(
        tf.random.stateless_uniform(grid, seed=_fold(seed, 0)),
        ops.ones(grid, "bool"),
        units_to_zero(num_zero_units, math.prod(grid)),
        _fold(seed, 1),
    )
    return expand_blocks(ops.logical_not(zero), block)


def block_prune(scores, active, block, num_zero_units, seed):
    """Keeps the active blocks of highest summed score, `num_units -
    num_zero_units` of them (all active ones if fewer are active)."""
    unit_scores = pool_blocks(scores, block)
    unit_active = pool_blocks(active, block, reduce="all")
    num_units = math.prod(unit_scores.shape)
    keep = num_units - units_to_zero(num_zero_units, num_units)
    n_active = ops.sum(ops.cast(unit_active, "int32"))
    kept = _selection.select_top_k(unit_scores, unit_active, tf.minimum(keep, n_active), seed)
    return expand_blocks(kept, block)


def block_drop_and_grow(drop_scores, grow_scores, active, block, drop_fraction, seeds):
    """Replaces `floor(drop_fraction * active_blocks)` whole blocks.

    Drops the active blocks with the lowest summed drop score, then grows
    as many among those not kept (just dropped ones included) with the
    highest summed grow score.

    Args:
        drop_scores: Float `(rows, cols)`.
        grow_scores: Float `(rows, cols)`.
        active: Boolean `(rows, cols)`, constant on blocks.
        block: `(a, b)`.
        drop_fraction: Scalar.
        seeds: Two stateless seeds, for the drop and the grow tie-breaks.

    Returns:
        The boolean active matrix after the update.
    """
    unit_active = pool_blocks(active, block, reduce="all")
    n_replace = _selection.floor_count(
        drop_fraction, ops.sum(ops.cast(unit_active, "int64"))
    )
    to_drop = _selection.select_top_k(
        -pool_blocks(drop_scores, block), unit_active, n_replace, seeds[0]
    )
    kept = ops.logical_and(unit_active, ops.logical_not(to_drop))
    grown = _selection.select_top_k(
        pool_blocks(grow_scores, block), ops.logical_not(kept), n_replace, seeds[1]
    )
    return expand_blocks(ops.logical_or(kept, grown), block)


# ---------------------------------------------------------------------------
# N:M groups.


def to_groups(matrix, m):
    """The N:M groups of a `(rows, cols)` matrix as rows of `(-1, m)`."""
    rows, cols = matrix.shape
    x = ops.reshape(matrix, (rows // m, m, cols))
    return ops.reshape(ops.transpose(x, (0, 2, 1)), (-1, m))


def from_groups(groups, matrix_shape, m):
    """The inverse of `to_groups`."""
    rows, cols = matrix_shape
    x = ops.reshape(groups, (rows // m, cols, m))
    return ops.reshape(ops.transpose(x, (0, 2, 1)), (rows, cols))


def nm_initial(matrix_shape, n, m, seed):
    """`n` active entries per group, chosen uniformly at random."""
    ranks = group_ranks(ops.zeros((math.prod(matrix_shape) // m, m)), seed)
    return from_groups(ranks < n, matrix_shape, m)


def nm_prune(scores, active, n, m, seed):
    """Keeps the `n` highest-scoring active entries of every group (all of
    a group's active entries if it has fewer)."""
    active_groups = to_groups(active, m)
    ranks = group_ranks(to_groups(scores, m), seed, preferred=active_groups)
    return from_groups(ops.logical_and(active_groups, ranks < n), active.shape, m)


def nm_drop_and_grow(drop_scores, grow_scores, active, m, drop_fraction, seeds):
    """Replaces `floor(drop_fraction * nnz)` entries within their groups.

    Drops the active entries with the lowest drop score over the whole
    matrix (`select_top_k`); every group that lost `d` entries then grows
    the `d` of its entries not kept (just dropped ones included) with the
    highest grow score, so every group keeps its count of active entries
    (`n` in a valid N:M mask). Args and Returns as `block_drop_and_grow`,
    with the group size `m` for `block`.
    """
    act = to_groups(active, m)
    n_replace = _selection.floor_count(drop_fraction, ops.sum(ops.cast(act, "int64")))
    to_drop = _selection.select_top_k(
        -ops.cast(to_groups(drop_scores, m), "float32"), act, n_replace, seeds[0]
    )
    kept = ops.logical_and(act, ops.logical_not(to_drop))
    lost = ops.sum(ops.cast(to_drop, "int32"), axis=1, keepdims=True)
    not_kept = ops.logical_not(kept)
    ranks = group_ranks(to_groups(grow_scores, m), seeds[1], preferred=not_kept)
    grown = ops.logical_and(not_kept, ranks < lost)
    return from_groups(ops.logical_or(kept, grown), active.shape, m)


# ---------------------------------------------------------------------------
# Weights: a variable's shape, through its matrix view.


def _as_seed(seed):
    """A shape-[2] int64 seed from an int or a shape-[2] tensor."""
    seed = tf.cast(seed, tf.int64)
    if seed.shape.rank == 0:
        seed = tf.stack([seed, tf.zeros([], tf.int64)])
    return seed


class _Unstructured:
    """No structure: every entry is a unit (the hooks of a 1x1 block)."""

    def validate(self, shape_or_view, name=None):
        del name
        if isinstance(shape_or_view, MatrixView):
            return shape_or_view
        return MatrixView(shape_or_view)

    def initial_matrix(self, matrix_shape, num_zero_units, seed):
        return block_initial(matrix_shape, (1, 1), num_zero_units, seed)

    def prune_matrix(self, scores, active, num_zero_units, seed):
        return block_prune(scores, active, (1, 1), num_zero_units, seed)


def initial_mask(shape, structure, num_zero_units, seed, view=None):
    """A random float32 0/1 mask of `shape` with the structure.

    Args:
        shape: The variable's shape.
        structure: A `rigl_keras.structures.Structure`, or None for an
            unstructured mask.
        num_zero_units: The number of zero units (blocks for `Block`,
            entries otherwise), an int in `[0, num_units]` or an integer
            tensor (clipped to that range). For `NM` the count is fixed:
            pass None (a disagreeing int raises).
        seed: An int or a shape-`[2]` integer tensor (stateless).
        view: The variable's `MatrixView`; default the plain view of `shape`.

    Returns:
        A float32 tensor of `shape`.

    Raises:
        ValueError: If the structure does not fit `shape`, or for a bad
            `num_zero_units`.

    Example:

    >>> mask = initial_mask((4, 2), None, 3, seed=1)
    >>> float(keras.ops.sum(mask))
    5.0
    """
    structure = structure or _Unstructured()
    view = structure.validate(view or shape)
    active = structure.initial_matrix(view.matrix_shape, num_zero_units, _as_seed(seed))
    return ops.cast(view.from_matrix(active), "float32")


def prune_mask(scores, mask, structure, num_zero_units, seed, view=None):
    """Magnitude pruning with a structure: keeps the best active units.

    `Block` (and no structure) keeps the `num_units - num_zero_units`
    active blocks (entries) with the highest summed score; `NM` keeps the
    `n` highest-scoring active entries of every group. Inactive units stay
    inactive: where fewer are active than asked for, all of them are kept.
    Ties are broken at random from `seed`.

    Args:
        scores: Float tensor of the variable's shape, e.g. `|W|`.
        mask: The current 0/1 (or boolean) mask, same shape.
        structure: A `rigl_keras.structures.Structure`, or None.
        num_zero_units: As in `initial_mask` (`NM`: None).
        seed: An int or a shape-`[2]` integer tensor (stateless).
        view: The variable's `MatrixView`; default the plain view.

    Returns:
        The new float32 0/1 mask of the variable's shape.

    Raises:
        ValueError: As `initial_mask`.

    Example:

    >>> mask = prune_mask(tf.constant([3., 1., 2., 4.]), tf.ones(4), None, 2, seed=0)
    >>> keras.ops.convert_to_numpy(mask).tolist()
    [1.0, 0.0, 0.0, 1.0]
    """
    structure = structure or _Unstructured()
    scores = tf.convert_to_tensor(scores)
    view = structure.validate(view or tuple(scores.shape))
    active = view.to_matrix(tf.convert_to_tensor(mask) > 0)
    kept = structure.prune_matrix(view.to_matrix(scores), active, num_zero_units, _as_seed(seed))
    return ops.cast(view.from_matrix(kept), "float32")


class CheckResult:
    """What `rigl_keras.structures.check` found; truthy when all pass.

    Attributes:
        structures: `{weight key: Structure}` of the weights checked.
        violations: `{weight key: reason}` of those that fail.
    """

    def __init__(self, structures, violations):
        self.structures = dict(structures)
        self.violations = dict(violations)

    def __bool__(self):
        return not self.violations

    def __str__(self):
        if not self.violations:
            return f"All {len(self.structures)} checked masked weights have their structure."
        lines = [
            f"{len(self.violations)} of {len(self.structures)} checked masked "
            "weights violate their structure:"
        ]
        lines += [
            f"  {key} ({self.structures[key]!r}): {reason}"
            for key, reason in self.violations.items()
        ]
        return "\n".join(lines)

    def __repr__(self):
        return f"CheckResult(checked={len(self.structures)}, violations={self.violations!r})"


def check_weights(weights, structures):
    """Checks masked weights against `{weight key: Structure}`.

    Weights whose key is missing or maps to None are not checked.

    Returns:
        A `CheckResult`.
    """
    checked, violations = {}, {}
    for weight in weights:
        structure = structures.get(weight.key)
        if structure is None:
            continue
        checked[weight.key] = structure
        try:
            view = structure.validate(weight)
        except ValueError as error:
            violations[weight.key] = str(error)
            continue
        reason = structure.matrix_violation(
            np.asarray(ops.convert_to_numpy(view.to_matrix(weight.mask))) > 0
        )
        if reason:
            violations[weight.key] = reason
    return CheckResult(checked, violations)
