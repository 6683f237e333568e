"""Mask update rules: drop the weakest connections, grow as many new ones.

One base class, `MaskUpdater`, owns the shared update (in the spirit of
jaxpruner's `SparseTrainer`): given a layer's kernel, mask and dense gradient
and a drop fraction `f`, it

1. drops `n = floor(f * nnz)` active connections with the lowest drop score
   (`|W|` by default),
2. grows exactly `n` connections among those inactive after the drop (just
   dropped ones included) with the highest grow score,
3. sets newly activated weights to `grow_init` and keeps the value of a
   connection dropped and regrown in the same update,

so that the number of non-zeros is unchanged, exactly. Ties are broken by a
random order drawn from a stateless seed, never by position.

The algorithms differ only in their hooks:

* `RigL` grows where `|dL/d(W * M)|` (the dense gradient) is largest.
* `SET` grows at random.
* `SNFS` grows where the momentum (an exponential moving average) of the
  dense gradient is largest; the caller supplies that average as `gradient`.

Everything here is TensorFlow ops on tensors (no variables, no NumPy), so the
update runs inside a `tf.function` on the device that holds the weights.
"""

import collections

import tensorflow as tf

from rigl_keras._selection import floor_count
from rigl_keras._selection import select_top_k

__all__ = [
    "MaskUpdate",
    "MaskUpdater",
    "RigL",
    "SET",
    "SNFS",
    "get",
]

MaskUpdate = collections.namedtuple(
    "MaskUpdate", ["mask", "kernel", "grown", "dropped"]
)
MaskUpdate.__doc__ = """Result of one mask update of one layer.

Attributes:
    mask: The new mask (same dtype as the old one), exactly 0/1.
    kernel: The new kernel: 0 outside the new mask, `grow_init` at newly
        activated positions, the old value elsewhere.
    grown: Boolean tensor, positions inactive before and active after.
    dropped: Boolean tensor, positions active before and inactive after.
"""

_GROW_INITS = ("zeros", "random_normal")


class MaskUpdater:
    """Base drop-and-grow rule. Subclasses override the hooks.

    Hooks:
        drop_scores: the lowest-scoring active connections are dropped.
        grow_scores: the highest-scoring inactive connections are grown.
        grow_values: values of newly activated connections.

    Args:
        grow_init: `"zeros"` (the paper's choice) or `"random_normal"` (a
            normal draw with the standard deviation of the layer's active
            weights).

    Raises:
        ValueError: For an unknown `grow_init`.

    Example:

    >>> updater = RigL()
    >>> result = updater.update(
    ...     kernel=tf.constant([[0.5, 0.0], [0.1, 0.0]]),
    ...     mask=tf.constant([[1.0, 0.0], [1.0, 0.0]]),
    ...     gradient=tf.constant([[0.0, 0.9], [0.0, 0.2]]),
    ...     drop_fraction=0.5, seed=[0, 0])
    >>> result.mask.numpy().tolist()
    [[1.0, 1.0], [0.0, 0.0]]
    """

    #: Whether `grow_scores` reads the dense gradient.
    uses_gradient = False

    def __init__(self, grow_init="zeros"):
        if grow_init not in _GROW_INITS:
            raise ValueError(
                f"`grow_init` must be one of {_GROW_INITS}. "
                f"Received: grow_init={grow_init!r}"
            )
        self.grow_init = grow_init

    def drop_scores(self, kernel, mask, gradient, seed):
        """Scores of active connections; the lowest are dropped. `|W|`."""
        del mask, gradient, seed
        return tf.abs(kernel)

    def grow_scores(self, kernel, mask, gradient, seed):
        """Scores of inactive connections; the highest are grown."""
        raise NotImplementedError

    def grow_values(self, kernel, mask, seed):
        """Initial values for newly activated connections."""
        if self.grow_init == "zeros":
            return tf.zeros_like(kernel)
        active = tf.boolean_mask(kernel, mask > 0)
        stddev = tf.math.reduce_std(active) if active.shape[0] != 0 else 0.0
        stddev = tf.where(tf.size(active) > 0, stddev, 0.0)
        return tf.random.stateless_normal(
            tf.shape(kernel), seed=seed, stddev=stddev, dtype=kernel.dtype
        )

    def update(self, kernel, mask, gradient, drop_fraction, seed, structure=None, view=None):
        """Drops and regrows `floor(drop_fraction * nnz)` connections.

        With a `structure` (`rigl_keras.structures`), whole units are
        replaced instead: `floor(drop_fraction * active blocks)` blocks of a
        `Block`, scored by the sums of the hooks' scores over each block;
        for `NM`, `floor(drop_fraction * nnz)` entries, each group regrowing
        as many of its own as it lost (`Structure.drop_and_grow`). The mask
        must already have the structure (e.g. from
        `rigl_keras.structures.initial_mask`); the result has it too.

        Args:
            kernel: The kernel (inactive entries 0).
            mask: The mask, 0/1, same shape.
            gradient: Dense gradient `dL/d(W * M)` (or its moving average),
                float32, same shape; ignored by rules that do not use it.
            drop_fraction: Scalar, fraction of active connections to replace.
            seed: Shape `[2]` integer tensor for tie-breaks and random draws.
            structure: A `rigl_keras.structures.Structure`, or None
                (unstructured).
            view: The kernel's `rigl_keras.matrix_views.MatrixView` for a
                structure; default the plain view of its shape.

        Returns:
            A `MaskUpdate`.

        Raises:
            ValueError: If the structure does not fit the kernel's shape.

        Example:

        >>> from rigl_keras import structures
        >>> result = RigL().update(
        ...     kernel=tf.constant([[0.5], [0.4], [0.1], [0.0]]),
        ...     mask=tf.constant([[1.0], [1.0], [1.0], [0.0]]),
        ...     gradient=tf.constant([[0.0], [0.0], [0.0], [0.9]]),
        ...     drop_fraction=0.5, seed=[0, 0], structure=structures.NM(3, 4))
        >>> result.mask.numpy().ravel().tolist()
        [1.0, 1.0, 0.0, 1.0]
        """
        kernel = tf.convert_to_tensor(kernel)
        mask = tf.convert_to_tensor(mask)
        seed = tf.cast(seed, tf.int32)
        seeds = [tf.random.experimental.stateless_fold_in(seed, i) for i in range(4)]
        active = mask > 0
        drop_scores = self.drop_scores(kernel, mask, gradient, seeds[0])
        if structure is not None:  # It counts and chooses in its units.
            new_active = structure.drop_and_grow(
                drop_scores,
                self.grow_scores(kernel, mask, gradient, seeds[2]),
                active, drop_fraction, (seeds[1], seeds[3]), view,
            )
            return self._result(kernel, mask, active, new_active, seeds[0])
        nnz = tf.reduce_sum(tf.cast(active, tf.int64))
        n_replace = floor_count(drop_fraction, nnz)
        # Selecting the n to drop (rather than the nnz - n to keep) keeps
        # top_k's k small: it costs O(N log k).
        to_drop = select_top_k(
            -tf.cast(drop_scores, tf.float32), active, n_replace, seeds[1]
        )
        kept = tf.logical_and(active, tf.logical_not(to_drop))
        grow_scores = self.grow_scores(kernel, mask, gradient, seeds[2])
        grown_any = select_top_k(grow_scores, tf.logical_not(kept), n_replace, seeds[3])
        return self._result(kernel, mask, active, tf.logical_or(kept, grown_any), seeds[0])

    def _result(self, kernel, mask, active, new_active, seed):
        """The `MaskUpdate` from the active sets before and after."""
        grown = tf.logical_and(new_active, tf.logical_not(active))
        dropped = tf.logical_and(active, tf.logical_not(new_active))
        # Active before and after (kept, or dropped and regrown): old value.
        stays = tf.logical_and(new_active, active)
        if self.grow_init == "zeros" and type(self).grow_values is MaskUpdater.grow_values:
            new_kernel = tf.where(stays, kernel, tf.zeros_like(kernel))
        else:
            init = tf.cast(self.grow_values(kernel, mask, seed), kernel.dtype)
            new_kernel = tf.where(
                stays, kernel, tf.where(grown, init, tf.zeros_like(kernel))
            )
        return MaskUpdate(
            mask=tf.cast(new_active, mask.dtype),
            kernel=new_kernel,
            grown=grown,
            dropped=dropped,
        )

    def get_config(self):
        return {"grow_init": self.grow_init}

    def __repr__(self):
        return f"{type(self).__name__}(grow_init={self.grow_init!r})"


class RigL(MaskUpdater):
    """RigL (Evci et al. 2020): grow where the dense gradient is largest.

    Example:

    >>> RigL().uses_gradient
    True
    """

    uses_gradient = True

    def grow_scores(self, kernel, mask, gradient, seed):
        del kernel, mask, seed
        return tf.abs(gradient)


class SET(MaskUpdater):
    """SET (Mocanu et al. 2018): grow connections chosen uniformly at random.

    Example:

    >>> SET().uses_gradient
    False
    """

    def grow_scores(self, kernel, mask, gradient, seed):
        del mask, gradient
        return tf.random.stateless_uniform(tf.shape(kernel), seed=seed)


class SNFS(RigL):
    """SNFS (Dettmers & Zettlemoyer 2019), as in the RigL paper's baseline.

    Grows where the momentum of the dense gradient is largest; the caller
    passes that exponential moving average as `gradient` (the callback keeps
    it with momentum 0.9, updated every step).

    Example:

    >>> SNFS().uses_gradient
    True
    """


_UPDATERS = {"gradient": RigL, "random": SET, "momentum": SNFS}


def get(grow, grow_init="zeros"):
    """Returns the updater for a `grow` name or passes an updater through.

    Args:
        grow: `"gradient"` (RigL), `"random"` (SET), `"momentum"` (SNFS),
            or a `MaskUpdater` instance.
        grow_init: Passed to the updater built from a name.

    Returns:
        A `MaskUpdater`.

    Raises:
        ValueError: For an unknown name.

    Example:

    >>> get("random")
    SET(grow_init='zeros')
    """
    if isinstance(grow, MaskUpdater):
        return grow
    if grow not in _UPDATERS:
        raise ValueError(
            f"`grow` must be one of {tuple(_UPDATERS)} or a MaskUpdater. "
            f"Received: grow={grow!r}"
        )
    return _UPDATERS[grow](grow_init=grow_init)
