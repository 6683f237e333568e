"""Tests for rigl_keras.updaters."""

import doctest
import math

import hypothesis
from hypothesis import strategies as st
import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl_keras.updaters
from rigl_keras import _selection
from rigl_keras import updaters
from rigl_keras.updaters import RigL
from rigl_keras.updaters import SET
from rigl_keras.updaters import SNFS
from rigl_keras._selection import select_top_k


def _update(updater, kernel, mask, gradient, drop_fraction, seed=(0, 0)):
    """Runs `updater.update` eagerly and returns NumPy arrays."""
    result = updater.update(
        kernel=tf.constant(kernel, tf.float32),
        mask=tf.constant(mask, tf.float32),
        gradient=tf.constant(gradient, tf.float32),
        drop_fraction=drop_fraction,
        seed=tf.constant(seed, tf.int32),
    )
    return tuple(np.asarray(t) for t in result)


def _f32(values):
    return np.array(values, "float32")


# A 6-entry layer with 4 active weights of distinct magnitudes.
_KERNEL = [0.5, -0.1, 0.3, 0.0, 0.0, 0.2]
_MASK = [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]


# ---------------------------------------------------------------------------
# Hand-computed cases.
# ---------------------------------------------------------------------------


def test_rigl_drops_smallest_magnitude_grows_largest_gradient():
    # nnz = 4, f = 0.5 -> n = 2. Drop |W| smallest: idx 1 (0.1), 5 (0.2).
    # Inactive after the drop: 1, 3, 4, 5; largest |grad|: 4 (0.8), 3 (0.7).
    # Large gradients at the kept positions 0 and 2 must not matter.
    mask, kernel, grown, dropped = _update(
        RigL(), _KERNEL, _MASK, [9.0, 0.05, 9.0, 0.7, -0.8, 0.01], 0.5
    )
    np.testing.assert_array_equal(mask, [1, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(kernel, _f32([0.5, 0.0, 0.3, 0.0, 0.0, 0.0]))
    np.testing.assert_array_equal(grown, [0, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(dropped, [0, 1, 0, 0, 0, 1])
    assert mask.dtype == np.float32 and grown.dtype == bool


def test_rigl_regrows_just_dropped_connection_keeping_its_value():
    # Drop 1 and 5 as above; the gradient is largest at the just-dropped 1,
    # then at 3: 1 is regrown with its old value -0.1, 3 is new (zero).
    mask, kernel, grown, dropped = _update(
        RigL(), _KERNEL, _MASK, [0.0, -5.0, 0.0, 0.7, 0.1, 0.01], 0.5
    )
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(kernel, _f32([0.5, -0.1, 0.3, 0.0, 0.0, 0.0]))
    np.testing.assert_array_equal(grown, [0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(dropped, [0, 0, 0, 0, 0, 1])


def test_rigl_2d_hand_computed():
    kernel = [[0.9, 0.0, -0.4], [0.0, 0.05, 0.0], [-0.3, 0.0, 0.7]]
    mask = [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    gradient = [[0.0, 0.2, 0.0], [-0.6, 0.0, 0.1], [0.0, 0.3, 0.0]]
    # nnz = 5, f = 0.5 -> n = 2: drop 0.05 at (1,1) and -0.3 at (2,0);
    # grow |grad| 0.6 at (1,0) and 0.3 at (2,1).
    new_mask, new_kernel, grown, dropped = _update(RigL(), kernel, mask, gradient, 0.5)
    np.testing.assert_array_equal(new_mask, [[1, 0, 1], [1, 0, 0], [0, 1, 1]])
    np.testing.assert_array_equal(
        new_kernel, _f32([[0.9, 0.0, -0.4], [0.0, 0.0, 0.0], [0.0, 0.0, 0.7]])
    )
    np.testing.assert_array_equal(grown, [[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(dropped, [[0, 0, 0], [0, 1, 0], [1, 0, 0]])


def test_set_drops_by_magnitude_and_grows_the_count():
    mask, kernel, grown, dropped = _update(SET(), _KERNEL, _MASK, np.zeros(6), 0.5)
    assert mask.sum() == 4
    # The drop is deterministic (distinct magnitudes): 1 and 5 go.
    assert mask[0] == 1 and mask[2] == 1
    np.testing.assert_array_equal(kernel[[0, 2]], _f32([0.5, 0.3]))
    assert grown.sum() == dropped.sum() <= 2
    np.testing.assert_array_equal(dropped, np.array(_MASK, bool) & (mask == 0))
    np.testing.assert_array_equal(kernel[mask == 0], 0.0)
    np.testing.assert_array_equal(kernel[grown], 0.0)


def test_set_grows_at_random():
    """Over seeds, SET grows different connections (ignores the gradient)."""
    kernel = np.zeros(50, "float32")
    mask = np.zeros(50, "float32")
    kernel[:10] = np.arange(1, 11)
    mask[:10] = 1.0
    gradient = np.arange(50, dtype="float32")  # RigL would always pick 40-49.
    results = {
        tuple(_update(SET(), kernel, mask, gradient, 0.5, seed=(s, 0))[0])
        for s in range(5)
    }
    assert len(results) > 1


def test_snfs_grows_by_the_gradient_it_is_given():
    mask, _, grown, _ = _update(
        SNFS(), _KERNEL, _MASK, [9.0, 0.05, 9.0, 0.7, -0.8, 0.01], 0.5
    )
    np.testing.assert_array_equal(mask, [1, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(grown, [0, 0, 0, 1, 1, 0])


@pytest.mark.parametrize(
    "drop_fraction, nnz, expected",
    [(0.3, 10, 3), (0.5, 10, 5), (0.25, 7, 1), (0.99, 10, 9), (1.0, 6, 6), (0.1, 9, 0)],
)
def test_number_replaced_is_floor_of_fraction_times_nnz(drop_fraction, nnz, expected):
    size = 20
    kernel = np.zeros(size, "float32")
    mask = np.zeros(size, "float32")
    # Active weights 1..nnz; drop scores distinct, so the smallest go.
    kernel[:nnz] = np.arange(1, nnz + 1)
    mask[:nnz] = 1.0
    # Gradient largest at never-active positions: nothing is regrown.
    gradient = np.zeros(size, "float32")
    gradient[nnz:] = np.arange(size - nnz, 0, -1) + 100.0
    new_mask, new_kernel, grown, dropped = _update(
        RigL(), kernel, mask, gradient, drop_fraction
    )
    assert expected == math.floor(drop_fraction * nnz)
    assert dropped.sum() == expected and grown.sum() == expected
    np.testing.assert_array_equal(np.flatnonzero(dropped), np.arange(expected))
    np.testing.assert_array_equal(np.flatnonzero(grown), np.arange(nnz, nnz + expected))
    assert new_mask.sum() == nnz


@pytest.mark.parametrize("drop_fraction", [0.0, 0.1, 0.24])
def test_zero_replacements_change_nothing(drop_fraction):
    # nnz = 4: floor(f * 4) = 0 for f < 0.25.
    gradient = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    mask, kernel, grown, dropped = _update(RigL(), _KERNEL, _MASK, gradient, drop_fraction)
    np.testing.assert_array_equal(mask, _MASK)
    np.testing.assert_array_equal(kernel, np.array(_KERNEL, "float32"))
    assert not grown.any() and not dropped.any()


def test_empty_and_dense_masks():
    zeros = np.zeros((3, 4), "float32")
    mask, kernel, grown, dropped = _update(RigL(), zeros, zeros, zeros + 1.0, 0.5)
    np.testing.assert_array_equal(mask, zeros)
    assert not grown.any() and not dropped.any()
    # A dense layer: everything dropped is the only thing growable.
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 4)).astype("float32")
    mask, new_kernel, grown, dropped = _update(
        RigL(), kernel, np.ones((3, 4)), rng.normal(size=(3, 4)), 0.5
    )
    np.testing.assert_array_equal(mask, np.ones((3, 4)))
    np.testing.assert_array_equal(new_kernel, kernel)
    assert not grown.any() and not dropped.any()


def test_grow_init_zeros_and_random_normal():
    gradient = [9.0, 0.05, 9.0, 0.7, -0.8, 0.01]
    _, kernel, grown, _ = _update(RigL(grow_init="zeros"), _KERNEL, _MASK, gradient, 0.5)
    np.testing.assert_array_equal(kernel[grown], 0.0)
    mask, kernel, grown, _ = _update(
        RigL(grow_init="random_normal"), _KERNEL, _MASK, gradient, 0.5, seed=(3, 4)
    )
    assert np.all(kernel[grown] != 0.0)
    np.testing.assert_array_equal(kernel[[0, 2]], _f32([0.5, 0.3]))
    np.testing.assert_array_equal(kernel[mask == 0], 0.0)
    _, again, _, _ = _update(
        RigL(grow_init="random_normal"), _KERNEL, _MASK, gradient, 0.5, seed=(3, 4)
    )
    np.testing.assert_array_equal(again, kernel)


def test_overridden_grow_values_hook_is_used():
    class GrowAtSeven(RigL):
        def grow_values(self, kernel, mask, seed):
            return tf.fill(tf.shape(kernel), 7.0)

    result = GrowAtSeven().update(
        kernel=tf.constant([[0.5, 0.0], [0.1, 0.0]]),
        mask=tf.constant([[1.0, 0.0], [1.0, 0.0]]),
        gradient=tf.constant([[0.0, 0.9], [0.0, 0.2]]),
        drop_fraction=0.5, seed=[0, 0])
    # 0.1 is dropped, (0, 1) grown at 7.0; 0.5 keeps its value.
    np.testing.assert_array_equal(result.kernel.numpy(), [[0.5, 7.0], [0.0, 0.0]])


def test_random_normal_uses_the_spread_of_active_weights():
    rng = np.random.default_rng(1)
    size = 4000
    kernel = np.zeros(size, "float32")
    mask = np.zeros(size, "float32")
    kernel[:2000] = rng.normal(scale=3.0, size=2000)
    mask[:2000] = 1.0
    gradient = np.zeros(size, "float32")
    gradient[2000:] = 1.0 + rng.random(2000)
    _, new_kernel, grown, _ = _update(
        RigL(grow_init="random_normal"), kernel, mask, gradient, 0.5
    )
    assert grown.sum() == 1000
    np.testing.assert_allclose(new_kernel[grown].std(), kernel[:2000].std(), rtol=0.1)


def test_update_inside_tf_function():
    update = tf.function(
        lambda k, m, g, f, s: RigL(grow_init="random_normal").update(k, m, g, f, s)
    )
    result = update(
        tf.constant(_KERNEL), tf.constant(_MASK),
        tf.constant([9.0, 0.05, 9.0, 0.7, -0.8, 0.01]),
        tf.constant(0.5), tf.constant([1, 2]),
    )
    np.testing.assert_array_equal(result.mask.numpy(), [1, 0, 1, 1, 1, 0])
    # All-inactive layer inside a graph: no NaN from an empty std.
    zeros = tf.zeros([2, 3])
    result = update(zeros, zeros, zeros, tf.constant(0.5), tf.constant([1, 2]))
    np.testing.assert_array_equal(result.kernel.numpy(), np.zeros((2, 3)))


# ---------------------------------------------------------------------------
# Properties.
# ---------------------------------------------------------------------------


@st.composite
def _layers(draw):
    ndim = draw(st.integers(2, 4))
    shape = []
    budget = 400
    for _ in range(ndim):
        dim = draw(st.integers(1, max(1, min(12, budget))))
        shape.append(dim)
        budget //= dim
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    density = draw(st.floats(0.0, 1.0))
    mask = (rng.random(shape) < density).astype("float32")
    # Few distinct values: ties in both scores are common.
    if draw(st.booleans()):
        kernel = rng.integers(-3, 4, size=shape).astype("float32")
        gradient = rng.integers(-3, 4, size=shape).astype("float32")
    else:
        kernel = rng.normal(size=shape).astype("float32")
        gradient = rng.normal(size=shape).astype("float32")
    kernel *= mask
    drop_fraction = draw(
        st.floats(0.0, 1.0, exclude_min=True)
    )
    seed = (draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1)))
    return kernel, mask, gradient, drop_fraction, seed


_SETTINGS = hypothesis.settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)


@_SETTINGS
@hypothesis.given(layer=_layers(), updater=st.sampled_from([RigL(), SET(), SNFS()]))
def test_update_invariants(layer, updater):
    kernel, mask, gradient, drop_fraction, seed = layer
    new_mask, new_kernel, grown, dropped = _update(
        updater, kernel, mask, gradient, drop_fraction, seed
    )
    before = mask > 0
    after = new_mask > 0
    kept = before & after
    nnz = int(before.sum())
    n = int(_selection.floor_count(drop_fraction, nnz))
    assert n == math.floor(drop_fraction * nnz) or abs(drop_fraction * nnz - n) < 1e-6

    assert set(np.unique(new_mask)) <= {0.0, 1.0}
    assert int(after.sum()) == nnz
    np.testing.assert_array_equal(grown, after & ~before)
    np.testing.assert_array_equal(dropped, before & ~after)
    assert not (grown & kept).any()
    assert grown.sum() == dropped.sum() <= n
    np.testing.assert_array_equal(new_kernel[~after], 0.0)
    np.testing.assert_array_equal(new_kernel[grown], 0.0)
    np.testing.assert_array_equal(new_kernel[kept], kernel[kept])

    # Drop: the nnz - n largest |W| among the active are kept; nothing
    # dropped is larger than the (nnz - n)-th largest kept value.
    if dropped.any() and nnz > n:
        kept_values = np.sort(np.abs(kernel[kept]))[::-1]
        assert np.abs(kernel[dropped]).max() <= kept_values[nnz - n - 1]
    # Grow (RigL, SNFS): every position left inactive was eligible and lost.
    if updater.uses_gradient and grown.any() and (~after).any():
        assert np.abs(gradient[grown]).min() >= np.abs(gradient[~after]).max()


@_SETTINGS
@hypothesis.given(layer=_layers(), updater=st.sampled_from([RigL(), SET()]))
def test_update_deterministic_given_seed(layer, updater):
    kernel, mask, gradient, drop_fraction, seed = layer
    first = _update(updater, kernel, mask, gradient, drop_fraction, seed)
    second = _update(updater, kernel, mask, gradient, drop_fraction, seed)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("updater", [RigL(), SET()])
def test_different_seeds_break_ties_differently(updater):
    # 100 active weights all of magnitude 1, 100 inactive with equal
    # gradients: which 30 go and which 30 come is decided by the seed.
    kernel = np.zeros(200, "float32")
    kernel[:100] = 1.0
    mask = (kernel != 0).astype("float32")
    gradient = np.ones(200, "float32")
    masks = [
        _update(updater, kernel, mask, gradient, 0.3, seed=(s, 7))[0]
        for s in range(3)
    ]
    for m in masks:
        assert m.sum() == 100
    assert not np.array_equal(masks[0], masks[1]) or not np.array_equal(masks[0], masks[2])
    # The dropped set itself depends on the seed (ties in |W|).
    dropped = [
        tuple(_update(updater, kernel, mask, gradient, 0.3, seed=(s, 7))[3]) for s in range(3)
    ]
    assert len(set(dropped)) > 1


# ---------------------------------------------------------------------------
# select_top_k.
# ---------------------------------------------------------------------------


def _top_k(scores, eligible, k, seed=(0, 0)):
    return select_top_k(
        tf.constant(scores, tf.float32), tf.constant(eligible, tf.bool),
        tf.constant(k, tf.int32), tf.constant(seed, tf.int32),
    ).numpy()


def test_select_top_k_hand_computed():
    scores = [[0.1, 5.0, 3.0], [4.0, 2.0, 9.0]]
    eligible = [[True, True, True], [True, True, False]]
    np.testing.assert_array_equal(
        _top_k(scores, eligible, 2), [[False, True, False], [True, False, False]]
    )
    np.testing.assert_array_equal(
        _top_k(scores, eligible, 0), np.zeros((2, 3), bool)
    )
    np.testing.assert_array_equal(
        _top_k(scores, eligible, 5), np.array(eligible)
    )


def test_select_top_k_ties_are_seeded():
    scores = np.ones(64, "float32")
    eligible = np.ones(64, bool)
    eligible[::4] = False
    picks = [tuple(_top_k(scores, eligible, 10, seed=(s, 1))) for s in range(4)]
    assert picks[0] == tuple(_top_k(scores, eligible, 10, seed=(0, 1)))
    assert len(set(picks)) > 1
    for pick in picks:
        assert sum(pick) == 10
        assert not np.any(np.array(pick) & ~eligible)


def test_select_top_k_takes_every_tie_when_all_are_needed():
    # Two positions tie at the threshold and both are needed: no draw.
    scores = [5.0, 2.0, 2.0, 1.0, 9.0]
    eligible = [True] * 5
    for seed in range(5):
        np.testing.assert_array_equal(
            _top_k(scores, eligible, 4, seed=(seed, 0)),
            [True, True, True, False, True],
        )


@pytest.mark.parametrize("eligible_fraction", [0.02, 0.2, 0.3, 0.9])
def test_select_top_k_same_with_few_or_many_eligible(eligible_fraction):
    """Gathering the eligible scores first (few eligible) changes nothing."""
    rng = np.random.default_rng(5)
    scores = rng.standard_normal(2000).astype("float32")
    eligible = rng.random(2000) < eligible_fraction
    k = int(eligible.sum() * 0.3)
    chosen = _top_k(scores, eligible, k, seed=(1, 2))
    expected = np.zeros(2000, bool)
    expected[np.flatnonzero(eligible)[np.argsort(-scores[eligible])[:k]]] = True
    np.testing.assert_array_equal(chosen, expected)


@_SETTINGS
@hypothesis.given(
    data=st.data(),
    size=st.integers(1, 400),
    seed=st.integers(0, 2**31 - 1),
)
def test_select_top_k_properties(data, size, seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, size=size).astype("float32")  # Many ties.
    eligible = rng.random(size) < data.draw(st.floats(0.0, 1.0))
    k = data.draw(st.integers(0, int(eligible.sum())))
    chosen = _top_k(scores, eligible, k, seed=(seed, 0))
    assert chosen.sum() == k
    assert not np.any(chosen & ~eligible)
    if 0 < k < eligible.sum():
        assert scores[chosen].min() >= scores[eligible & ~chosen].max()
    np.testing.assert_array_equal(chosen, _top_k(scores, eligible, k, seed=(seed, 0)))


# ---------------------------------------------------------------------------
# get and validation.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, cls", [("gradient", RigL), ("random", SET), ("momentum", SNFS)]
)
def test_get_by_name(name, cls):
    updater = updaters.get(name)
    assert type(updater) is cls
    assert updater.grow_init == "zeros"
    assert updaters.get(name, grow_init="random_normal").grow_init == "random_normal"


def test_get_passes_instances_through():
    updater = SET(grow_init="random_normal")
    assert updaters.get(updater) is updater
    assert RigL().uses_gradient and SNFS().uses_gradient and not SET().uses_gradient
    assert RigL().get_config() == {"grow_init": "zeros"}
    assert repr(SET()) == "SET(grow_init='zeros')"


@pytest.mark.parametrize("grow", ["gradients", "rigl", None, 3])
def test_get_unknown_grow(grow):
    with pytest.raises(ValueError, match="grow") as info:
        updaters.get(grow)
    assert "Received: grow=" in str(info.value)


@pytest.mark.parametrize("grow_init", ["ones", "normal", None])
def test_unknown_grow_init(grow_init):
    with pytest.raises(ValueError, match="grow_init"):
        updaters.get("gradient", grow_init=grow_init)
    with pytest.raises(ValueError, match="Received: grow_init="):
        RigL(grow_init=grow_init)


def test_base_updater_has_no_grow_rule():
    with pytest.raises(NotImplementedError):
        updaters.MaskUpdater().update(
            tf.constant(_KERNEL), tf.constant(_MASK), tf.zeros(6), 0.5, [0, 0]
        )


@pytest.mark.parametrize("module", [rigl_keras.updaters, _selection])
def test_docstring_examples(module):
    result = doctest.testmod(
        module,
        extraglobs={"np": np, "tf": tf, "keras": keras},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize(
    "fraction, count, expected",
    [(0.29, 100, 29), (0.7, 10, 7), (0.3, 10, 3), (0.5, 7, 3), (0.0, 5, 0),
     (1.0, 13, 13), (0.999, 1000, 999), (0.33, 10, 3)],
)
def test_floor_count_is_exact_floor_despite_round_off(fraction, count, expected):
    assert int(_selection.floor_count(fraction, count)) == expected
    assert int(_selection.floor_count(tf.constant(fraction, tf.float64), count)) == expected


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    values=st.lists(
        st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, -3.0, 1e-30, -1e30, 7.0]),
        min_size=1, max_size=60),
    data=st.data(),
)
def test_prefiltered_select_equals_top_k_select(values, data):
    """Both ways of finding the k-th score choose exactly the same set."""
    scores = tf.constant(values, tf.float32)
    eligible_list = data.draw(st.lists(st.booleans(), min_size=len(values),
                                       max_size=len(values)))
    eligible = tf.constant(eligible_list)
    k = data.draw(st.integers(0, sum(eligible_list)))
    seed = [3, data.draw(st.integers(0, 1000))]
    by_top_k = select_top_k(scores, eligible, tf.constant(k), seed,
                            prefilter_min_size=10**9)
    prefiltered = select_top_k(scores, eligible, tf.constant(k), seed,
                               prefilter_min_size=1)
    np.testing.assert_array_equal(by_top_k.numpy(), prefiltered.numpy())
    assert int(tf.reduce_sum(tf.cast(prefiltered, tf.int32))) == k
    assert not np.any(prefiltered.numpy() & ~np.array(eligible_list, bool))


@pytest.mark.parametrize("prefilter", [False, True])
@pytest.mark.parametrize(
    "size, k",
    [(1, 1), (50, 0), (50, 50), (5000, 1), (5000, 300), (5000, 4999), (5000, 5000)],
)
def test_kth_largest_value_is_exact(prefilter, size, k):
    # k == size makes the sampled lower bound miss (the sample's minimum is
    # rarely the global one): the whole tensor is searched instead.
    rng = np.random.default_rng(size + k)
    values = rng.standard_normal(size).astype("float32")
    values[: size // 3] = -np.inf  # ineligible positions, as select_top_k sets them
    values[size // 2 : size // 2 + 5] = 0.5  # a tie
    kth, count = _selection._kth_largest_value(tf.constant(values), tf.constant(k), prefilter)
    expected = np.inf if k == 0 else np.sort(values)[::-1][k - 1]
    assert float(kth) == expected
    assert int(count) == int(np.sum(values >= expected))
