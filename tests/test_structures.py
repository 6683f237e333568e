"""Tests for rigl_keras.structures, structured_masks and matrix_views."""

import doctest
import json
import math

import hypothesis
from hypothesis import strategies as st
import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl_keras
from rigl_keras import matrix_views
from rigl_keras import structured_masks
from rigl_keras import structure_arguments
from rigl_keras import structures
from rigl_keras import _selection
from rigl_keras.structures import NM
from rigl_keras.structures import Block
from rigl_keras.structures import MatrixView
from rigl_keras.updaters import SET
from rigl_keras.updaters import SNFS
from rigl_keras.updaters import RigL

L = keras.layers

_SETTINGS = hypothesis.settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)


def _np(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor))


def _unit_counts(structure, active):
    """Active units of a boolean matrix: per block, or per N:M group."""
    if isinstance(structure, Block):
        a, b = structure.shape
        return active.reshape(active.shape[0] // a, a, active.shape[1] // b, b).all(axis=(1, 3))
    return active.reshape(active.shape[0] // structure.m, structure.m, -1).sum(axis=1)


def _has_structure(structure, active):
    return structure.matrix_violation(active) is None


def _update(updater, kernel, mask, gradient, drop_fraction, seed, structure, view=None):
    result = updater.update(
        kernel=tf.constant(kernel, tf.float32),
        mask=tf.constant(mask, tf.float32),
        gradient=tf.constant(gradient, tf.float32),
        drop_fraction=drop_fraction,
        seed=tf.constant(seed, tf.int32),
        structure=structure,
        view=view,
    )
    return tuple(_np(t) for t in result)


# ---------------------------------------------------------------------------
# Construction, validation and bad inputs.


@pytest.mark.parametrize("shape", [(0, 1), (4,), (4, 1, 1), "4,1", (4.0, 1), (True, 1), (-1, 2), 4, None])
def test_block_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"`shape` must be two positive integers.*Received: shape="):
        Block(shape)


@pytest.mark.parametrize(
    "n, m, argument",
    [(0, 4, "n"), (2, 0, "m"), (-1, 4, "n"), (2.0, 4, "n"), (2, 4.5, "m"), (True, 4, "n"), ("2", 4, "n")],
)
def test_nm_rejects_non_positive_and_non_integer(n, m, argument):
    with pytest.raises(ValueError, match=f"`{argument}` must be a positive integer. Received: {argument}="):
        NM(n, m)


def test_nm_rejects_n_above_m():
    with pytest.raises(ValueError, match=r"`n` must be at most `m`. Received: n=5, m=4"):
        NM(5, 4)


def test_numpy_integers_are_accepted():
    assert Block((np.int64(4), np.int32(1))) == Block((4, 1))
    assert NM(np.int64(2), 4) == NM(2, 4)


def test_block_not_dividing_a_shape_names_the_weight_and_shape():
    with pytest.raises(ValueError, match=r"'mlp/fc/kernel' of shape \(10, 3\).*4 must divide its 10 rows"):
        Block((4, 1)).validate((10, 3), name="mlp/fc/kernel")
    with pytest.raises(ValueError, match=r"'w' of shape \(8, 3\)"):
        Block((2, 2)).validate((8, 3), name="w")
    # A conv kernel is seen as (3 * 3 * 5, 8) = (45, 8): 4 does not divide 45.
    with pytest.raises(ValueError, match=r"matrix view \(45, 8\)"):
        Block((4, 1)).validate((3, 3, 5, 8), name="conv/kernel")
    assert Block((4, 1)).validate((3, 3, 4, 8)).matrix_shape == (36, 8)


def test_nm_input_dim_not_divisible_names_the_weight():
    with pytest.raises(ValueError, match=r"'fc/kernel' of shape \(6, 4\).*m=4 must divide its 6 inputs"):
        NM(2, 4).validate((6, 4), name="fc/kernel")
    NM(2, 4).validate((8, 3))  # any number of outputs


def test_validate_a_masked_weight_names_it_by_its_key():
    model = keras.Sequential([keras.Input((6,)), L.Dense(4, name="fc")], name="net")
    rigl_keras.sparsify(model)
    (weight,) = rigl_keras.masked_weights(model)
    with pytest.raises(ValueError, match="'net/fc/kernel' of shape"):
        NM(2, 4).validate(weight)


def test_nm_sparsity_must_agree():
    assert NM(2, 4).check_sparsity(0.5) == 0.5
    assert NM(1, 3).check_sparsity(2 / 3 + 1e-9) == 1 - 1 / 3
    assert NM(2, 4).check_sparsity(np.float32(0.5), key="fc") == 0.5
    with pytest.raises(ValueError, match=r"`sparsity` of weight 'fc/kernel' disagrees with NM\(n=2, m=4\).*0.5.*Received: sparsity=0.9"):
        NM(2, 4).check_sparsity(0.9, key="fc/kernel")
    with pytest.raises(ValueError, match="disagrees"):
        NM(2, 4).zero_units((8, 2), 0.75)
    with pytest.raises(ValueError, match=r"`sparsity` of weight None must be a number in \[0, 1\]"):
        Block((4, 1)).check_sparsity(1.5)
    with pytest.raises(ValueError, match="`sparsity`"):
        Block((4, 1)).check_sparsity("0.5")


def test_unit_counts():
    assert Block((4, 1)).num_units((8, 3)) == 6
    assert Block((4, 1)).zero_units((8, 3), 0.5) == 3
    assert Block((4, 1)).zero_units((40, 10), 0.29) == 29  # 0.29 * 100 blocks, not 28
    assert Block((2, 3)).num_units((3, 3, 2, 6)) == 18 // 2 * 2
    assert NM(2, 4).num_units((8, 3)) == 24
    assert NM(2, 4).zero_units((8, 3), 0.5) == 12
    assert NM(1, 4).zero_units((8, 3), 0.75) == 18


def test_num_zero_units_out_of_range_or_disagreeing():
    with pytest.raises(ValueError, match=r"`num_zero_units` must be in \[0, 8\].*Received: num_zero_units=9"):
        structures.initial_mask((8, 2), Block((2, 1)), 9, seed=0)
    with pytest.raises(ValueError, match="`num_zero_units` must be in"):
        structures.initial_mask((8, 2), None, -1, seed=0)
    with pytest.raises(ValueError, match=r"`num_zero_units` disagrees with NM\(n=2, m=4\), which has 8 zeros of 16"):
        structures.initial_mask((8, 2), NM(2, 4), 3, seed=0)
    with pytest.raises(ValueError, match="`num_zero_units` disagrees"):
        structures.prune_mask(tf.ones((8, 2)), tf.ones((8, 2)), NM(2, 4), 3, seed=0)
    # The structure's own count, or None, is accepted.
    structures.initial_mask((8, 2), NM(2, 4), 8, seed=0)


def test_tensor_counts_are_clipped():
    mask = structures.initial_mask((8, 2), Block((2, 1)), tf.constant(100), seed=0)
    assert _np(mask).sum() == 0.0
    mask = structures.initial_mask((8, 2), Block((2, 1)), tf.constant(-3), seed=0)
    assert _np(mask).sum() == 16.0


def test_get_rejects_other_identifiers():
    for bad in ("4,1", 4, (4, 1), Block):
        with pytest.raises(ValueError, match="`identifier` must be a Structure, its config dict, or None"):
            structures.get(bad)
    with pytest.raises(ValueError, match="`config` must describe a rigl_keras structure"):
        structures.deserialize(keras.saving.serialize_keras_object(keras.initializers.Zeros()))


@pytest.mark.parametrize(
    "shape, axes", [((2, 0), None), ((2, 3), (2,)), ((2, 3), (0, 0)), ("ab", None), ((2, 3), "x")]
)
def test_matrix_view_rejects_bad_arguments(shape, axes):
    with pytest.raises(ValueError, match="`shape` must|`input_axes` must"):
        MatrixView(shape, axes)


# ---------------------------------------------------------------------------
# Serialization.

_STRUCTURES = [Block((4, 1)), Block((1, 4)), Block((2, 3)), NM(2, 4), NM(1, 1), NM(3, 8)]


@pytest.mark.parametrize("structure", _STRUCTURES, ids=repr)
def test_config_round_trips(structure):
    config = structure.get_config()
    assert type(structure).from_config(config) == structure
    assert type(structure).from_config(json.loads(json.dumps(config))) == structure
    serialized = keras.saving.serialize_keras_object(structure)
    assert serialized["registered_name"] == f"rigl_keras>{type(structure).__name__}"
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert restored == structure and type(restored) is type(structure)
    assert structures.deserialize(structures.serialize(structure)) == structure
    assert structures.get(json.loads(json.dumps(structures.serialize(structure)))) == structure
    assert structures.get(structure) is structure
    assert eval(repr(structure), {"Block": Block, "NM": NM}) == structure  # pylint: disable=eval-used
    assert hash(type(structure).from_config(config)) == hash(structure)


def test_equality_and_none():
    assert Block((4, 1)) != Block((1, 4))
    assert NM(2, 4) != NM(1, 2)  # same sparsity, another structure
    assert Block((1, 1)) != NM(1, 1)
    assert structures.get(None) is None
    assert structures.serialize(None) is None and structures.deserialize(None) is None
    assert structures.get({"class_name": "Block", "config": {"shape": [4, 1]}}) == Block((4, 1))
    assert len({Block((4, 1)), Block((4, 1)), NM(2, 4)}) == 2


# ---------------------------------------------------------------------------
# Matrix views: a plain reshape or a transpose, and inputs x outputs for real.


def _layer_weights(layer, input_shape):
    inputs = keras.Input(input_shape)
    model = keras.Model(inputs, layer(inputs))
    rigl_keras.sparsify(model)
    return rigl_keras.masked_weights(model)


@pytest.mark.parametrize(
    "make_layer, input_shape",
    [
        (lambda: L.Dense(3), (5,)),
        (lambda: L.Conv2D(4, 1), (2, 2, 6)),
        (lambda: L.Conv2DTranspose(4, 1), (2, 2, 6)),
        (lambda: L.Conv1DTranspose(4, 1), (3, 6)),
        (lambda: L.EinsumDense("ab,cb->ac", output_shape=3), (5,)),
        (lambda: L.EinsumDense("ab,bc->ac", output_shape=3), (5,)),
        (lambda: L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 3)), (4, 5)),
        (lambda: L.EinsumDense("abcd,cde->abe", output_shape=(None, 3)), (4, 2, 5)),
        (lambda: L.EinsumDense("abc,dce->abde", output_shape=(None, 2, 3)), (4, 5)),
    ],
)
def test_matrix_view_is_the_inputs_by_outputs_matrix(make_layer, input_shape):
    """y = x @ view.to_matrix(kernel) for the layer's own kernel, per position."""
    layer = make_layer()
    (weight,) = _layer_weights(layer, input_shape)
    view = structures.matrix_view(weight)
    assert view.matrix_shape == structures.matrix_shape(weight) == structures.matrix_shape(weight.fan_shape)
    rng = np.random.default_rng(0)
    weight.variable.assign(rng.normal(size=weight.shape).astype("float32"))
    x = rng.normal(size=(2,) + input_shape).astype("float32")
    y = _np(layer(x)).reshape(-1, view.matrix_shape[1])
    # Flatten the input axes the kernel contracts into the rows.
    rows = view.matrix_shape[0]
    expected = x.reshape(-1, rows) @ _np(view.to_matrix(weight.variable))
    if getattr(layer, "bias", None) is not None:
        expected += _np(layer.bias).reshape(-1)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_depthwise_view_is_one_input_tap_per_output_channel():
    layer = L.DepthwiseConv2D(1, depth_multiplier=2, use_bias=False)
    (weight,) = _layer_weights(layer, (2, 2, 3))
    view = structures.matrix_view(weight)
    assert view.matrix_shape == (1, 6) == structures.matrix_shape(weight)
    weight.variable.assign(np.arange(1, 7, dtype="float32").reshape(1, 1, 3, 2))
    x = np.random.default_rng(0).normal(size=(1, 2, 2, 3)).astype("float32")
    # Output channel c * 2 + j is input channel c times matrix entry c * 2 + j.
    expected = np.repeat(x, 2, axis=-1) * _np(view.to_matrix(weight.variable)).ravel()
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-6)


def test_matrix_views_of_many_layers_agree_with_the_fan_shape():
    inputs = keras.Input((6, 6, 4))
    x = L.Conv2D(8, 3, name="conv")(inputs)
    x = L.Conv2DTranspose(4, 3, name="tconv")(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
    x = L.SeparableConv2D(8, 3, name="sep")(x)
    x = L.Reshape((-1, 8))(x)
    x = L.MultiHeadAttention(2, 4, name="mha")(x, x)
    x = L.LSTM(4, name="lstm")(x)
    outputs = L.Dense(3, name="fc")(x)
    model = keras.Model(inputs, outputs)
    rigl_keras.sparsify(model)
    views = {}
    for weight in rigl_keras.masked_weights(model):
        view = structures.matrix_view(weight)
        assert view.matrix_shape == structures.matrix_shape(weight.fan_shape), weight.key
        x = np.arange(math.prod(weight.shape), dtype="float32").reshape(weight.shape)
        np.testing.assert_array_equal(_np(view.from_matrix(view.to_matrix(x))), x)
        views[weight.key] = view
    assert not views["tconv/kernel"].plain and views["conv/kernel"].plain
    assert views["mha/query/kernel"].matrix_shape == (8, 8)  # (d, heads * head_dim)
    assert views["dw/kernel"].matrix_shape == (9, 8)  # (3 * 3, c_in * multiplier)


def test_unknown_fan_view_is_refused():
    model = keras.Sequential([keras.Input((4,)), L.Dense(6, name="fc")])
    rigl_keras.sparsify(model)
    (weight,) = rigl_keras.masked_weights(model)
    weight.fan_shape = (2, 12)  # Not what a reshape of (4, 6) gives.
    with pytest.raises(ValueError, match="no matrix view"):
        structures.matrix_view(weight)


# ---------------------------------------------------------------------------
# Hand-computed cases.


def test_block_initial_mask_hand_sized():
    mask = _np(structures.initial_mask((4, 2), Block((2, 1)), 2, seed=3))
    assert mask.dtype == np.float32 and set(np.unique(mask)) == {0.0, 1.0}
    units = _unit_counts(Block((2, 1)), mask > 0)
    assert units.shape == (2, 2) and units.sum() == 2
    assert _has_structure(Block((2, 1)), mask > 0)


def test_block_update_hand_computed():
    # Block (2, 1) on a (4, 2) kernel: four blocks, three of them active.
    # |W| sums: b00 = 0.9, b10 = 0.2, b01 = 0.6; f = 0.5 of 3 -> 1 block:
    # b10 is dropped. Grow among b10, b11 by sum |grad|: b11 (1.0) > b10.
    kernel = [[0.5, 0.3], [0.4, -0.3], [0.1, 0.0], [-0.1, 0.0]]
    mask = [[1, 1], [1, 1], [1, 0], [1, 0]]
    gradient = [[9.0, 9.0], [9.0, 9.0], [0.1, 0.5], [0.1, -0.5]]
    new_mask, new_kernel, grown, dropped = _update(
        RigL(), kernel, mask, gradient, 0.5, (0, 0), Block((2, 1))
    )
    np.testing.assert_array_equal(new_mask, [[1, 1], [1, 1], [0, 1], [0, 1]])
    np.testing.assert_array_equal(new_kernel, np.float32([[0.5, 0.3], [0.4, -0.3], [0, 0], [0, 0]]))
    np.testing.assert_array_equal(grown, [[0, 0], [0, 0], [0, 1], [0, 1]])
    np.testing.assert_array_equal(dropped, [[0, 0], [0, 0], [1, 0], [1, 0]])


def test_block_14_on_dense_kernel_is_four_consecutive_inputs_of_one_unit():
    mask = _np(structures.initial_mask((16, 3), Block((4, 1)), 6, seed=5))
    for unit in range(3):
        column = mask[:, unit].reshape(4, 4)  # 4 groups of 4 consecutive inputs
        assert np.all(column.min(axis=1) == column.max(axis=1))
    assert (mask == 0).sum() == 6 * 4


def test_nm_update_hand_computed_regrows_within_groups():
    # NM(2, 4), one output: groups are rows 0-3 and 4-7. nnz = 4, f = 0.5:
    # drop the 2 lowest |W| over the weight: rows 1 (0.1) and 5 (0.7), one
    # per group. Group 0 regrows row 1 (|grad| 0.3, the just-dropped one,
    # keeping its value); group 1 regrows row 7 (0.03): row 4's 5.0 is kept
    # already and rows outside the group do not compete.
    kernel = [[0.9], [0.1], [0.0], [0.0], [0.8], [-0.7], [0.0], [0.0]]
    mask = [[1], [1], [0], [0], [1], [1], [0], [0]]
    gradient = [[0.0], [0.3], [0.2], [0.1], [5.0], [0.01], [0.02], [-0.03]]
    new_mask, new_kernel, grown, dropped = _update(
        RigL(), kernel, mask, gradient, 0.5, (0, 0), NM(2, 4)
    )
    np.testing.assert_array_equal(new_mask.ravel(), [1, 1, 0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(new_kernel.ravel(), np.float32([0.9, 0.1, 0, 0, 0.8, 0, 0, 0]))
    np.testing.assert_array_equal(grown.ravel(), [0, 0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(dropped.ravel(), [0, 0, 0, 0, 0, 1, 0, 0])


def test_nm_drop_is_global_and_a_group_may_lose_all_its_entries():
    # Both lowest |W| are in group 0: it regrows 2 of its 4 entries (the
    # two largest |grad| there: rows 2 and 3), group 1 is untouched.
    kernel = [[0.1], [0.2], [0.0], [0.0], [0.8], [0.9], [0.0], [0.0]]
    mask = [[1], [1], [0], [0], [1], [1], [0], [0]]
    gradient = [[0.0], [0.0], [0.5], [0.6], [0.0], [0.0], [9.0], [9.0]]
    new_mask, _, grown, dropped = _update(RigL(), kernel, mask, gradient, 0.5, (0, 0), NM(2, 4))
    np.testing.assert_array_equal(new_mask.ravel(), [0, 0, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(grown.ravel(), [0, 0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(dropped.ravel(), [1, 1, 0, 0, 0, 0, 0, 0])


def test_prune_mask_hand_computed():
    scores = tf.constant([[3.0], [1.0], [2.0], [4.0]])
    # Block (2, 1): block sums 4 and 6; one zero block -> the first.
    mask = _np(structures.prune_mask(scores, tf.ones((4, 1)), Block((2, 1)), 1, seed=0))
    np.testing.assert_array_equal(mask.ravel(), [0, 0, 1, 1])
    # NM(1, 2): the larger of each pair.
    mask = _np(structures.prune_mask(scores, tf.ones((4, 1)), NM(1, 2), None, seed=0))
    np.testing.assert_array_equal(mask.ravel(), [1, 0, 0, 1])
    # Inactive entries stay inactive, whatever their score: group 0 has one
    # active entry and keeps it, group 1 keeps its better active one.
    scores = tf.constant([[0.0], [9.0], [9.0], [1.0], [2.0], [9.0], [3.0], [0.5]])
    active = tf.constant([[1.0], [0.0], [0.0], [0.0], [1.0], [0.0], [1.0], [1.0]])
    mask = _np(structures.prune_mask(scores, active, NM(1, 4), None, seed=0))
    np.testing.assert_array_equal(mask.ravel(), [1, 0, 0, 0, 0, 0, 1, 0])
    # Block: inactive blocks are never revived, even below the asked count.
    mask = _np(structures.prune_mask(tf.ones((4, 1)), [[0.0], [0.0], [1.0], [1.0]], Block((2, 1)), 0, seed=0))
    np.testing.assert_array_equal(mask.ravel(), [0, 0, 1, 1])
    # A partly active block counts as inactive: pruning never revives an entry.
    mask = _np(structures.prune_mask(tf.ones((4, 1)), [[1.0], [0.0], [1.0], [1.0]], Block((2, 1)), 0, seed=0))
    np.testing.assert_array_equal(mask.ravel(), [0, 0, 1, 1])


def test_unstructured_prune_mask_is_the_pruning_callbacks_selection():
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(6, 5)).astype("float32")
    kernel[rng.random((6, 5)) < 0.3] = 0.0
    mask = (kernel != 0).astype("float32")
    seed = tf.constant([7, 11], tf.int64)
    nnz = int(mask.sum())
    for keep in (0, 5, nnz, 30):
        expected = _selection.select_top_k(np.abs(kernel), mask > 0, min(keep, nnz), seed)
        got = structures.prune_mask(np.abs(kernel), mask, None, 30 - keep, seed)
        np.testing.assert_array_equal(_np(got) > 0, _np(expected))


def test_group_ranks_break_ties_by_seed_and_prefer():
    ranks = structured_masks.group_ranks(tf.zeros((1, 6)), seed=[0, 0])
    assert sorted(_np(ranks).ravel().tolist()) == list(range(6))
    seen = {tuple(_np(structured_masks.group_ranks(tf.zeros((1, 6)), seed=[s, 0])).ravel()) for s in range(8)}
    assert len(seen) > 1
    ranks = structured_masks.group_ranks(
        tf.constant([[5.0, 1.0, 3.0, 2.0]]), [0, 0], preferred=tf.constant([[False, True, False, True]])
    )
    np.testing.assert_array_equal(_np(ranks), [[2, 1, 3, 0]])


# ---------------------------------------------------------------------------
# Properties: the structure and the counts hold, for every method.


@st.composite
def _cases(draw, kind=None):
    """A structure, a variable shape with its view, and a structured mask."""
    kind = kind or draw(st.sampled_from(["block", "nm"]))
    if kind == "block":
        structure = Block((draw(st.integers(1, 4)), draw(st.integers(1, 3))))
        rows = structure.shape[0] * draw(st.integers(1, 4))
        cols = structure.shape[1] * draw(st.integers(1, 4))
    else:
        m = draw(st.integers(1, 6))
        structure = NM(draw(st.integers(1, m)), m)
        rows, cols = m * draw(st.integers(1, 4)), draw(st.integers(1, 5))
    # The plain view of (rows, cols), or a transposed one ("ab,cb->ac").
    if draw(st.booleans()):
        view = MatrixView((rows, cols))
    else:
        view = MatrixView((cols, rows), input_axes=(1,))
    num_units = structure.num_units(view)
    if kind == "block":
        zeros = structure.zero_units(view, draw(st.floats(0.0, 1.0)))
    else:
        zeros = None
    seed = draw(st.integers(0, 2**31 - 1))
    mask = _np(structures.initial_mask(view.shape, structure, zeros, seed, view=view))
    return structure, view, mask, zeros, num_units, seed


def _matrix(view, x):
    return _np(view.to_matrix(x))


@_SETTINGS
@hypothesis.given(case=_cases())
def test_initial_mask_has_the_structure_and_exact_count(case):
    structure, view, mask, zeros, num_units, seed = case
    assert mask.shape == view.shape and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    active = _matrix(view, mask) > 0
    assert _has_structure(structure, active)
    counts = _unit_counts(structure, active)
    if isinstance(structure, Block):
        assert counts.size == num_units and int((~counts).sum()) == zeros
    else:
        assert np.all(counts == structure.n)
    again = _np(structures.initial_mask(view.shape, structure, zeros, seed, view=view))
    np.testing.assert_array_equal(again, mask)


@_SETTINGS
@hypothesis.given(
    case=_cases(),
    updater=st.sampled_from([RigL(), SET(), SNFS(), RigL(grow_init="random_normal")]),
    drop_fraction=st.floats(0.0, 1.0),
    data_seed=st.integers(0, 2**31 - 1),
    tied=st.booleans(),
)
def test_update_keeps_the_structure_and_counts(case, updater, drop_fraction, data_seed, tied):
    structure, view, mask, _, _, seed = case
    rng = np.random.default_rng(data_seed)
    kernel = rng.normal(size=view.shape).astype("float32")
    gradient = rng.normal(size=view.shape).astype("float32")
    if tied:  # Many equal scores: the tie-breaks must keep the counts exact.
        kernel, gradient = np.sign(kernel), np.round(gradient)
    kernel *= mask
    new_mask, new_kernel, grown, dropped = _update(
        updater, kernel, mask, gradient, drop_fraction, (seed % 1000, 7), structure, view
    )
    before, after = _matrix(view, mask) > 0, _matrix(view, new_mask) > 0
    assert _has_structure(structure, after)
    counts_before, counts_after = _unit_counts(structure, before), _unit_counts(structure, after)
    if isinstance(structure, Block):
        assert counts_after.sum() == counts_before.sum()
        n_replace = int(_selection.floor_count(drop_fraction, int(counts_before.sum())))
        dropped_units = _unit_counts(structure, _matrix(view, dropped))
        assert dropped_units.sum() <= n_replace
        assert _has_structure(structure, _matrix(view, grown)) and _has_structure(structure, _matrix(view, dropped))
    else:
        np.testing.assert_array_equal(counts_after, structure.n)
        n_replace = int(_selection.floor_count(drop_fraction, int(before.sum())))
        assert dropped.sum() <= n_replace
        grown_per_group = _unit_counts(structure, _matrix(view, grown))
        np.testing.assert_array_equal(grown_per_group, _unit_counts(structure, _matrix(view, dropped)))
    assert grown.sum() == dropped.sum()
    assert not (grown & dropped).any()
    np.testing.assert_array_equal(grown, (new_mask > 0) & ~(mask > 0))
    np.testing.assert_array_equal(dropped, (mask > 0) & ~(new_mask > 0))
    np.testing.assert_array_equal(new_kernel[new_mask == 0], 0.0)
    stays = (new_mask > 0) & (mask > 0)
    np.testing.assert_array_equal(new_kernel[stays], kernel[stays])
    if updater.grow_init == "zeros":
        np.testing.assert_array_equal(new_kernel[grown], 0.0)


def _reference_update(structure, kernel, mask, gradient, drop_fraction):
    """A NumPy RigL update of a matrix, for scores without ties."""
    drop, grow, active = np.abs(kernel), np.abs(gradient), mask > 0
    if isinstance(structure, Block):
        a, b = structure.shape
        pool = lambda x: x.reshape(x.shape[0] // a, a, x.shape[1] // b, b).sum(axis=(1, 3))
        unit_active = _unit_counts(structure, active)
        n = int(_selection.floor_count(drop_fraction, int(unit_active.sum())))
        drop_u = np.where(unit_active, pool(drop), np.inf).ravel()
        kept = unit_active.ravel().copy()
        kept[np.argsort(drop_u)[:n]] = False
        grow_u = np.where(kept, -np.inf, pool(grow).ravel())
        new = kept.copy()
        new[np.argsort(-grow_u)[:n]] = True
        return np.repeat(np.repeat(new.reshape(unit_active.shape), a, axis=0), b, axis=1)
    m = structure.m
    to_groups = lambda x: x.reshape(x.shape[0] // m, m, -1).transpose(0, 2, 1).reshape(-1, m)
    g_drop, g_grow, g_active = to_groups(drop), to_groups(grow), to_groups(active)
    n = int(_selection.floor_count(drop_fraction, int(g_active.sum())))
    flat = np.where(g_active, g_drop, np.inf).ravel()
    kept = g_active.ravel().copy()
    kept[np.argsort(flat)[:n]] = False
    kept = kept.reshape(g_active.shape)
    lost = g_active.sum(axis=1) - kept.sum(axis=1)
    new = kept.copy()
    for g in range(new.shape[0]):
        order = np.argsort(-np.where(kept[g], -np.inf, g_grow[g]))
        new[g, order[: lost[g]]] = True
    rows, cols = active.shape
    return new.reshape(rows // m, cols, m).transpose(0, 2, 1).reshape(rows, cols)


@_SETTINGS
@hypothesis.given(case=_cases(), drop_fraction=st.floats(0.05, 1.0), data_seed=st.integers(0, 2**31 - 1))
def test_rigl_update_matches_a_numpy_reference(case, drop_fraction, data_seed):
    structure, view, mask, _, _, seed = case
    rng = np.random.default_rng(data_seed)
    kernel = rng.normal(size=view.shape).astype("float32") * mask
    kernel[(mask > 0) & (kernel == 0)] = 1.0
    gradient = rng.normal(size=view.shape).astype("float32")
    new_mask, *_ = _update(RigL(), kernel, mask, gradient, drop_fraction, (seed % 1000, 0), structure, view)
    expected = _reference_update(
        structure, _matrix(view, kernel), _matrix(view, mask), _matrix(view, gradient), drop_fraction
    )
    np.testing.assert_array_equal(_matrix(view, new_mask) > 0, expected)


@_SETTINGS
@hypothesis.given(
    shape=st.sampled_from([(4, 3), (8, 8), (2, 3, 4), (16, 2)]),
    updater=st.sampled_from([RigL(), SET(), SNFS()]),
    drop_fraction=st.floats(0.0, 1.0),
    data_seed=st.integers(0, 2**31 - 1),
)
def test_one_by_one_block_is_the_unstructured_update_bit_for_bit(shape, updater, drop_fraction, data_seed):
    rng = np.random.default_rng(data_seed)
    mask = (rng.random(shape) < 0.5).astype("float32")
    kernel = np.round(rng.normal(size=shape), 1).astype("float32") * mask
    gradient = np.round(rng.normal(size=shape), 1).astype("float32")
    plain = _update(updater, kernel, mask, gradient, drop_fraction, (3, 4), None)
    block = _update(updater, kernel, mask, gradient, drop_fraction, (3, 4), Block((1, 1)))
    for a, b in zip(plain, block):
        np.testing.assert_array_equal(a, b)


@_SETTINGS
@hypothesis.given(case=_cases(), fraction=st.floats(0.0, 1.0), data_seed=st.integers(0, 2**31 - 1))
def test_prune_mask_keeps_structure_and_counts(case, fraction, data_seed):
    structure, view, mask, zeros, num_units, seed = case
    scores = np.abs(np.random.default_rng(data_seed).normal(size=view.shape)).astype("float32")
    if isinstance(structure, Block):
        # Prune further, from the structured mask: keep the best active blocks.
        more = zeros + int(fraction * (num_units - zeros))
        pruned = _np(structures.prune_mask(scores, mask, structure, more, seed, view=view))
        assert not ((pruned > 0) & (mask == 0)).any()  # nothing revived
        kept = _unit_counts(structure, _matrix(view, pruned) > 0)
        assert int(kept.sum()) == num_units - more
        a, b = structure.shape
        sums = _matrix(view, scores).reshape(kept.shape[0], a, kept.shape[1], b).sum(axis=(1, 3))
        was_active = _unit_counts(structure, _matrix(view, mask) > 0)
        if kept.any() and (was_active & ~kept).any():
            assert sums[kept].min() >= sums[was_active & ~kept].max() - 1e-5
    else:
        # From a dense mask, every group keeps exactly its n best entries.
        dense = np.ones(view.shape, "float32")
        pruned = _np(structures.prune_mask(scores, dense, structure, None, seed, view=view))
        np.testing.assert_array_equal(_unit_counts(structure, _matrix(view, pruned) > 0), structure.n)
        groups = lambda x: _matrix(view, x).reshape(-1, structure.m, view.matrix_shape[1])
        kept = groups(pruned) > 0
        if not kept.all():
            assert np.all(np.where(kept, groups(scores), np.inf).min(axis=1)
                          >= np.where(kept, -np.inf, groups(scores)).max(axis=1))
        # From a mask with the structure already, it changes nothing.
        again = _np(structures.prune_mask(scores, mask, structure, None, seed, view=view))
        np.testing.assert_array_equal(again, mask)
    assert _has_structure(structure, _matrix(view, pruned) > 0)


def test_update_is_deterministic_and_seeds_break_ties():
    mask = _np(structures.initial_mask((16, 4), Block((4, 1)), 8, seed=0))
    kernel, gradient = mask.copy(), np.zeros((16, 4), "float32")  # all tied
    results = {
        tuple(_update(SET(), kernel, mask, gradient, 0.5, (s, 0), Block((4, 1)))[0].ravel())
        for s in range(6)
    }
    assert len(results) > 1
    first = _update(SET(), kernel, mask, gradient, 0.5, (1, 0), Block((4, 1)))
    again = _update(SET(), kernel, mask, gradient, 0.5, (1, 0), Block((4, 1)))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_update_rejects_a_structure_that_does_not_fit():
    with pytest.raises(ValueError, match=r"of shape \(6, 2\).*m=4 must divide"):
        _update(RigL(), np.ones((6, 2)), np.ones((6, 2)), np.ones((6, 2)), 0.5, (0, 0), NM(2, 4))


@pytest.mark.parametrize("structure", [Block((2, 2)), NM(2, 4)], ids=repr)
@pytest.mark.parametrize("jit_compile", [False, True])
def test_functions_trace_in_tf_function_and_xla(structure, jit_compile):
    view = MatrixView((6, 8), input_axes=(1,))
    zeros = 4 if isinstance(structure, Block) else None

    @tf.function(jit_compile=jit_compile)
    def run(kernel, gradient, seed):
        mask = structures.initial_mask((6, 8), structure, zeros, seed, view=view)
        result = RigL().update(kernel * mask, mask, gradient, 0.5, seed, structure=structure, view=view)
        pruned = structures.prune_mask(tf.abs(result.kernel), result.mask, structure, zeros and zeros + 2, seed, view=view)
        return mask, result.mask, pruned

    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.normal(size=(6, 8)), tf.float32)
    gradient = tf.constant(rng.normal(size=(6, 8)), tf.float32)
    seed = tf.constant([5, 6], tf.int32)
    traced = [_np(t) for t in run(kernel, gradient, seed)]
    for result, again in zip(traced, run(kernel, gradient, seed)):
        np.testing.assert_array_equal(result, _np(again))
        assert _has_structure(structure, _matrix(view, result) > 0)
    counts = [_unit_counts(structure, _matrix(view, t) > 0).sum() for t in traced]
    if isinstance(structure, Block):
        assert counts == [12 - 4, 12 - 4, 12 - 6]
    else:
        assert counts == [24, 24, 24]
    if not jit_compile:  # XLA draws other random numbers from a seed.
        mask = _np(structures.initial_mask((6, 8), structure, zeros, seed, view=view))
        eager = _update(RigL(), _np(kernel) * mask, mask, _np(gradient), 0.5, (5, 6), structure, view)[0]
        np.testing.assert_array_equal(traced[0], mask)
        np.testing.assert_array_equal(traced[1], eager)


# ---------------------------------------------------------------------------
# check(model, structure).


def _mlp():
    model = keras.Sequential(
        [keras.Input((8,)), L.Dense(8, name="fc1"), L.Dense(4, name="fc2")], name="mlp"
    )
    rigl_keras.sparsify(model)
    return model


def _set_masks(model, structure, seed=0):
    for i, weight in enumerate(rigl_keras.masked_weights(model)):
        zeros = structure.zero_units(weight, 0.5) if isinstance(structure, Block) else None
        weight.mask.assign(
            structures.initial_mask(weight.shape, structure, zeros, seed + i, view=structures.matrix_view(weight))
        )
        weight.apply_mask()


@pytest.mark.parametrize("structure", [Block((4, 1)), Block((2, 2)), NM(2, 4), NM(1, 2)], ids=repr)
def test_check_a_good_model(structure):
    model = _mlp()
    _set_masks(model, structure)
    result = structures.check(model, structure)
    assert result and not result.violations
    assert list(result.structures) == ["mlp/fc1/kernel", "mlp/fc2/kernel"]
    assert str(result) == "All 2 checked masked weights have their structure."
    assert structures.check(model, structures.serialize(structure))


@pytest.mark.parametrize("structure", [Block((4, 1)), NM(2, 4)], ids=repr)
def test_check_a_bad_model_names_the_offending_weight(structure):
    model = _mlp()
    _set_masks(model, structure)
    rng = np.random.default_rng(0)
    fc2 = rigl_keras.masked_weights(model)[1]
    fc2.mask.assign((rng.random(fc2.shape) < 0.5).astype("float32"))
    result = structures.check(model, structure)
    assert not result
    assert list(result.violations) == ["mlp/fc2/kernel"]
    reason = result.violations["mlp/fc2/kernel"]
    assert ("partly active" in reason) if isinstance(structure, Block) else ("groups of 4" in reason)
    text = str(result)
    assert text.startswith("1 of 2 checked masked weights violate their structure:")
    assert "mlp/fc2/kernel" in text and repr(structure) in text
    assert "violations" in repr(result)


def test_check_per_weight_dict_and_unfitting_shapes():
    model = _mlp()
    _set_masks(model, NM(2, 4))
    # By layer name and by path; None and missing weights are not checked.
    assert structures.check(model, {"fc1": NM(2, 4), "mlp/fc2/kernel": None})
    result = structures.check(model, {"fc1": NM(2, 4)})
    assert list(result.structures) == ["mlp/fc1/kernel"]
    # A block that does not divide (8, 4) is a violation with the shape.
    result = structures.check(model, {"fc2": Block((3, 1)), "fc1": NM(2, 4)})
    assert list(result.violations) == ["mlp/fc2/kernel"]
    assert "of shape (8, 4)" in result.violations["mlp/fc2/kernel"]
    with pytest.raises(ValueError, match="`structure` names 'nope'"):
        structures.check(model, {"nope": NM(2, 4)})
    with pytest.raises(ValueError, match="`identifier` must be"):
        structures.check(model, {"fc1": "2,4"})


def test_check_uses_the_weights_matrix_view():
    """An EinsumDense kernel (out, in) is checked on its (in, out) view."""
    inputs = keras.Input((8,))
    model = keras.Model(inputs, L.EinsumDense("ab,cb->ac", output_shape=4, name="ein")(inputs))
    rigl_keras.sparsify(model)
    (weight,) = rigl_keras.masked_weights(model)
    assert weight.shape == (4, 8)
    view = structures.matrix_view(weight)
    weight.mask.assign(structures.initial_mask(weight.shape, NM(2, 4), None, 0, view=view))
    assert structures.check(model, NM(2, 4))
    # Each output (a row of the variable) has 2 of every 4 consecutive inputs.
    assert np.all(_np(weight.mask).reshape(4, 2, 4).sum(axis=-1) == 2)
    # Two of every four *outputs* active for each input is N:M on the plain
    # reshape of the (4, 8) variable, not on the weight's matrix view.
    plain = np.zeros((4, 8), "float32")
    plain[:2] = 1.0
    assert NM(2, 4).matrix_violation(plain > 0) is None
    weight.mask.assign(plain)
    result = structures.check(model, NM(2, 4))
    assert not result and "groups of 4" in result.violations[weight.key]


# ---------------------------------------------------------------------------
# Docstrings and exports.


def test_docstring_examples():
    for module in (structures, structure_arguments, structured_masks, matrix_views):
        results = doctest.testmod(
            module,
            extraglobs={"keras": keras, "np": np, "tf": tf, "rigl_keras": rigl_keras},
            optionflags=doctest.ELLIPSIS,
        )
        assert results.attempted > 0, module.__name__
        assert results.failed == 0, module.__name__


@pytest.mark.parametrize("argument", [
    None, Block((4, 1)), NM(2, 4), {"fc1": NM(2, 4), "mlp/fc2/kernel": None},
    {"fc1": Block((2, 2))},
])
def test_structure_argument_round_trips(argument):
    structure_arguments.validate_argument(argument)
    config = structure_arguments.serialize_argument(argument)
    assert structure_arguments.deserialize_argument(config) == argument
    # A config of one structure is not read as a dict per weight.
    assert structures.is_per_weight(config) == isinstance(argument, dict)


@pytest.mark.parametrize("argument, match", [
    ("2,4", r"`structure` must be None.*Received: structure='2,4'"),
    ({"fc1": "2,4"}, r"Every value of a `structure` dict.*Received: structure\['fc1'\]='2,4'"),
])
def test_structure_argument_rejects_other_values(argument, match):
    with pytest.raises(ValueError, match=match):
        structure_arguments.validate_argument(argument)


def test_exported_as_a_submodule():
    assert rigl_keras.structures is structures
    assert "structures" in rigl_keras.__all__
    for name in structures.__all__:
        assert hasattr(structures, name), name
