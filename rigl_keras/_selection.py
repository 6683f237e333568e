"""Exact selection: the top k of a score among eligible entries, and counts.

Internal to `rigl_keras` (the update rules, pruning and structured masks
use it): `select_top_k` picks exactly k entries, breaking ties by a random
order from a stateless seed (never by position); `floor_count` is
`floor(fraction * count)` without float round-off.
"""

import tensorflow as tf

__all__ = ["PREFILTER_MIN_SIZE", "floor_count", "select_top_k"]


# From this many elements on, the k-th largest score is found among a
# prefiltered subset (see `_kth_largest_value`) instead of by `tf.math.top_k`
# over the whole tensor (O(N log k), single-threaded on CPU, and
# cache-unfriendly on large tensors). The result is the same.
PREFILTER_MIN_SIZE = 2**14

# Fraction of the elements drawn to estimate a lower bound of the k-th score.
_SAMPLE_FRACTION = 1 / 16


def _top_k_min(values, k):
    """The k-th largest of a 1-D tensor by `top_k` (+inf when k == 0)."""
    top_values, _ = tf.math.top_k(values, k=k, sorted=False)
    return tf.reduce_min(top_values)


def _kth_largest_value(values, k, prefilter):
    """The k-th largest of 1-D float32 `values`, exactly, and how many are
    at least as large.

    With `prefilter`, a random sample of the values gives a lower bound
    `low` that, with high probability, is at most the k-th largest: the
    k-th largest is then found by `top_k` among the values `>= low` alone
    (about k of them), and counted among them too. If fewer than k values
    are `>= low` (the bound missed) the whole tensor is searched, so the
    result never depends on the sample: only the time does.

    Returns:
        `(kth, count)`: the k-th largest value (+inf when k == 0) and the
        number of values `>= kth`.
    """

    def search(subset):
        kth = _top_k_min(subset, k)
        return kth, tf.reduce_sum(tf.cast(subset >= kth, tf.int32))

    if not prefilter:
        return search(values)
    size = tf.size(values)
    sample_size = tf.maximum(1, tf.cast(tf.cast(size, tf.float32) * _SAMPLE_FRACTION, tf.int32))
    positions = tf.random.stateless_uniform(
        [sample_size], seed=[0, 0], minval=0, maxval=size, dtype=tf.int32
    )
    sample = tf.gather(values, positions)
    # Expected count of sampled values above the k-th largest, plus a margin
    # of four standard deviations.
    expected = tf.cast(k, tf.float32) * _SAMPLE_FRACTION
    k_sample = tf.minimum(
        sample_size, tf.cast(tf.math.ceil(expected + 4.0 * tf.sqrt(expected) + 8.0), tf.int32)
    )
    low = _top_k_min(sample, k_sample)
    # Every value >= the k-th largest is in `subset` when it has k or more.
    subset = tf.boolean_mask(values, values >= low)
    return tf.cond(
        tf.size(subset) >= k, lambda: search(subset), lambda: search(values)
    )


def select_top_k(scores, eligible, k, seed, prefilter_min_size=None):
    """Selects the `k` highest scores among eligible positions.

    Ties are broken by a random order drawn from `seed` (a stateless seed:
    the same seed gives the same choice on every replica and in every run).

    Args:
        scores: Float tensor of any shape (finite values).
        eligible: Boolean tensor of the same shape.
        k: Integer scalar tensor, at most the number of eligible positions.
        seed: Shape `[2]` integer tensor.
        prefilter_min_size: Size from which the k-th score is searched for
            among a sampled, prefiltered subset rather than by `top_k` over
            all scores (the result is the same); default
            `PREFILTER_MIN_SIZE`.

    Returns:
        A boolean tensor of the shape of `scores`, true at exactly `k`
        eligible positions.

    Example:

    >>> chosen = select_top_k(tf.constant([3., 1., 2.]),
    ...                       tf.constant([True, True, False]),
    ...                       tf.constant(1), seed=[0, 0])
    >>> chosen.numpy().tolist()
    [True, False, False]
    """
    flat_scores = tf.reshape(tf.cast(scores, tf.float32), [-1])
    flat_eligible = tf.reshape(eligible, [-1])
    size = tf.size(flat_scores)
    candidates = tf.where(flat_eligible, flat_scores, -float("inf"))
    # Everything strictly above the k-th largest score is chosen; among the
    # positions tied at that score, the rest are drawn by seeded random keys.
    # Only sequential passes and top_k: no permutation of the whole tensor.
    if prefilter_min_size is None:
        prefilter_min_size = PREFILTER_MIN_SIZE
    static_size = flat_scores.shape.num_elements()
    prefilter = static_size is not None and static_size >= prefilter_min_size
    threshold, count_at_or_above = _kth_largest_value(candidates, k, prefilter)
    # (Ineligible positions hold -inf, below any finite threshold.)
    at_or_above = candidates >= threshold

    def draw_among_ties():
        above = candidates > threshold
        tied = tf.logical_and(flat_eligible, tf.equal(candidates, threshold))
        missing = k - tf.reduce_sum(tf.cast(above, tf.int32))
        keys = tf.random.stateless_uniform(
            [size], seed=seed, minval=None, maxval=None, dtype=tf.int64
        )
        tie_keys = tf.where(tied, keys, tf.int64.min)
        _, tie_picks = tf.math.top_k(tie_keys, k=missing, sorted=False)
        picked_ties = tf.scatter_nd(
            tie_picks[:, tf.newaxis], tf.ones_like(tie_picks, tf.bool), [size]
        )
        return tf.logical_or(above, picked_ties)

    # Usually exactly k scores are at or above the k-th largest (distinct
    # float scores tie only at the threshold itself): then every tied
    # position is needed and no random draw is made, with the same result
    # as the draw would give.
    chosen = tf.cond(
        tf.equal(count_at_or_above, k),
        lambda: at_or_above,
        draw_among_ties,
    )
    return tf.reshape(chosen, tf.shape(scores))


def _as_float64(value):
    """A float64 tensor; Python numbers are converted without a float32 hop."""
    if tf.is_tensor(value):
        return tf.cast(value, tf.float64)
    return tf.constant(value, tf.float64)


def floor_count(fraction, count):
    """`floor(fraction * count)` as an int32 tensor, safe from float round-off.

    A product within a relative 1e-9 of an integer is snapped to it before
    the floor (as `rigl_keras.distributions.layer_zero_counts` does), so
    that `0.29 * 100` (28.999999999999996 in floating point) gives 29. Pass
    float64 fractions (the schedules return float64): a float32 `0.7` is
    0.699999988 and gives 6 of 10.

    Args:
        fraction: Scalar float tensor or number.
        count: Scalar integer tensor or number.

    Returns:
        A scalar int32 tensor.

    Example:

    >>> int(floor_count(0.29, 100)), int(floor_count(0.7, 10))
    (29, 7)
    """
    exact = _as_float64(fraction) * tf.cast(count, tf.float64)
    nearest = tf.round(exact)
    tolerance = 1e-9 * tf.maximum(tf.constant(1.0, tf.float64), exact)
    snapped = tf.abs(exact - nearest) <= tolerance
    return tf.cast(tf.where(snapped, nearest, tf.floor(exact)), tf.int32)
