"""Tests for `rigl_keras.distributions`.

Expected numbers are computed by hand in the comments. For ERK with power 1,
`r_l * N_l = sum(shape_l)`, which keeps the arithmetic short.
"""

import math

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from rigl_keras.distributions import distribute_sparsity
from rigl_keras.distributions import layer_zero_counts
from rigl_keras.distributions import sparsity_distribution

# LeNet-300-100 kernels.
#   fc1 (784, 300): N = 235200, sum = 1084, r = 1084 / 235200
#   fc2 (300, 100): N =  30000, sum =  400, r =  400 / 30000 = 1 / 75
#   fc3 (100,  10): N =   1000, sum =  110, r =  110 / 1000  = 0.11
#   total N = 266200, sum_l r_l N_l = 1084 + 400 + 110 = 1594
LENET = {"fc1": (784, 300), "fc2": (300, 100), "fc3": (100, 10)}
LENET_TOTAL = 266200

# Small conv net (LeNet-5 like).
#   conv1 (5, 5, 1, 20):  N =    500, ERK sum =   31, ER (1+20)/(1*20) = 1.05
#   conv2 (5, 5, 20, 50): N =  25000, ERK sum =   80, ER 70/1000      = 0.07
#   fc1   (800, 500):     N = 400000, sum     = 1300, r = 0.00325
#   fc2   (500, 10):      N =   5000, sum     =  510, r = 0.102
#   total N = 430500
CONVNET = {
    "conv1": (5, 5, 1, 20),
    "conv2": (5, 5, 20, 50),
    "fc1": (800, 500),
    "fc2": (500, 10),
}
CONVNET_TOTAL = 430500


def _by_layer(mapping):
    """`{"model/layer/kernel": v}` -> `{"layer": v}`."""
    return {key.split("/")[-2]: value for key, value in mapping.items()}


def _n(shape):
    return math.prod(shape)


def _nonzeros(shapes, sparsities):
    return sum((1.0 - sparsities[k]) * _n(s) for k, s in shapes.items())


def _assert_budget(shapes, sparsities, sparsity, dense=()):
    """Non-zeros of the layers not in `dense` are (1 - S) of theirs."""
    counted = {name: shape for name, shape in shapes.items() if name not in dense}
    expected = (1.0 - sparsity) * sum(_n(s) for s in counted.values())
    got = _nonzeros(counted, {name: sparsities[name] for name in counted})
    assert got == pytest.approx(expected, rel=1e-6)


def _reference_erdos_renyi(shapes, sparsity, custom_dense, erk_power_scale=1.0):
    """google-research/rigl `get_sparsities_erdos_renyi`, ported line by line.

    Layers in `custom_dense` are the reference's `custom_sparsity_map`
    entries of sparsity 0: "ignored in erdos-renyi calculations".
    """
    dense_layers = set()
    while True:
        divisor, rhs, raw = 0.0, 0.0, {}
        for name, shape in shapes.items():
            n_param = np.prod(shape)
            n_zeros = n_param * sparsity
            n_ones = n_param * (1 - sparsity)
            if name in dense_layers:
                rhs -= n_zeros
            elif name in custom_dense:
                pass
            else:
                rhs += n_ones
                raw[name] = (np.sum(shape) / np.prod(shape)) ** erk_power_scale
                divisor += raw[name] * n_param
        eps = rhs / divisor
        max_prob = max(raw.values())
        if max_prob * eps > 1:
            dense_layers.update(n for n, p in raw.items() if p == max_prob)
        else:
            break
    result = {}
    for name in shapes:
        if name in custom_dense or name in dense_layers:
            result[name] = 0.0
        else:
            result[name] = 1.0 - eps * raw[name]
    return result


def _resnet50_like():
    """Conv kernels of a ResNet-50-like stack (stem, 16 bottlenecks, fc)."""
    shapes = {"stem": (7, 7, 3, 64)}
    width_in = 64
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)]):
        for block in range(blocks):
            prefix = f"s{stage}b{block}"
            shapes[f"{prefix}_a"] = (1, 1, width_in, width)
            shapes[f"{prefix}_b"] = (3, 3, width, width)
            shapes[f"{prefix}_c"] = (1, 1, width, 4 * width)
            if block == 0:
                shapes[f"{prefix}_proj"] = (1, 1, width_in, 4 * width)
            width_in = 4 * width
    shapes["fc"] = (2048, 1000)
    return shapes


# --------------------------------------------------------------------------
# Uniform.


@pytest.mark.parametrize("sparsity", [0.9, 0.98])
def test_uniform_lenet(sparsity):
    result = distribute_sparsity(LENET, sparsity, method="uniform")
    assert result == {"fc1": sparsity, "fc2": sparsity, "fc3": sparsity}
    assert list(result) == list(LENET)


def test_uniform_dense_layers_get_zero():
    result = distribute_sparsity(
        LENET, 0.9, method="uniform", dense_layers=("fc3",)
    )
    assert result == {"fc1": 0.9, "fc2": 0.9, "fc3": 0.0}


@pytest.mark.parametrize("method", ["uniform", "er", "erk"])
def test_zero_sparsity_is_dense_everywhere(method):
    result = distribute_sparsity(CONVNET, 0.0, method=method)
    assert result == {name: 0.0 for name in CONVNET}
    # All layers dense is fine when nothing has to be pruned.
    result = distribute_sparsity(
        CONVNET, 0.0, method=method, dense_layers=tuple(CONVNET)
    )
    assert result == {name: 0.0 for name in CONVNET}


# --------------------------------------------------------------------------
# ERK / ER on LeNet-300-100 (2-D kernels: ER == ERK).


@pytest.mark.parametrize("method", ["erk", "er"])
def test_lenet_090_fc3_dense_and_resolved(method):
    # Pass 1: eps = 0.1 * 266200 / 1594 = 26620 / 1594 = 16.7001...
    #   eps * r_fc3 = 16.7001 * 0.11 = 1.837 > 1  -> fc3 dense.
    # Pass 2: eps = (26620 - 1000) / (1084 + 400) = 25620 / 1484
    #             = 17.264150943...
    #   eps * r_fc2 = eps / 75 = 0.230188679  (<= 1, valid)
    #   eps * r_fc1 = eps * 1084 / 235200 = 0.079567770
    eps = 25620 / 1484
    assert eps == pytest.approx(17.264150943396228, abs=1e-9)
    result = distribute_sparsity(LENET, 0.9, method=method)
    assert result["fc3"] == 0.0
    assert result["fc2"] == pytest.approx(1 - eps / 75, abs=1e-6)
    assert result["fc2"] == pytest.approx(0.769811320754717, abs=1e-6)
    assert result["fc1"] == pytest.approx(1 - eps * 1084 / 235200, abs=1e-6)
    assert result["fc1"] == pytest.approx(0.9204322294955718, abs=1e-6)
    # Every sparse layer shares the same eps = density / r.
    assert (1 - result["fc2"]) / (400 / 30000) == pytest.approx(eps)
    assert (1 - result["fc1"]) / (1084 / 235200) == pytest.approx(eps)
    # Non-zeros: eps * 1484 + 1000 = 25620 + 1000 = 26620 = 0.1 * 266200.
    assert _nonzeros(LENET, result) == pytest.approx(26620, rel=1e-6)
    _assert_budget(LENET, result, 0.9)


@pytest.mark.parametrize("method", ["erk", "er"])
def test_lenet_098_no_layer_saturates(method):
    # eps = 0.02 * 266200 / 1594 = 5324 / 1594 = 3.340025094...
    #   eps * r_fc3 = 3.34 * 0.11 = 0.3674 <= 1 -> nothing dense.
    eps = 5324 / 1594
    result = distribute_sparsity(LENET, 0.98, method=method)
    assert result["fc3"] == pytest.approx(1 - eps * 0.11, abs=1e-6)
    assert result["fc3"] == pytest.approx(0.6325972396486825, abs=1e-6)
    assert result["fc2"] == pytest.approx(0.9554663320786282, abs=1e-6)
    assert result["fc1"] == pytest.approx(0.9846063469302401, abs=1e-6)
    # Non-zeros: eps * 1594 = 5324 = 0.02 * 266200.
    assert _nonzeros(LENET, result) == pytest.approx(5324, rel=1e-6)


def test_lenet_fc3_saturation_threshold():
    # fc3 saturates iff eps * 0.11 > 1 with eps = (1 - S) * 266200 / 1594,
    # i.e. 1 - S > 1594 / 29282 = 797 / 14641 = 0.0544362...
    # i.e. S < 13844 / 14641 = 0.9455638...
    below = distribute_sparsity(LENET, 0.945, method="erk")
    assert below["fc3"] == 0.0
    # Re-solved: eps = (0.055 * 266200 - 1000) / 1484 = 13641 / 1484.
    eps = (0.055 * 266200 - 1000) / 1484
    assert eps == pytest.approx(13641 / 1484)
    assert below["fc2"] == pytest.approx(1 - eps / 75, abs=1e-6)
    assert below["fc1"] == pytest.approx(1 - eps * 1084 / 235200, abs=1e-6)
    _assert_budget(LENET, below, 0.945)

    above = distribute_sparsity(LENET, 0.946, method="erk")
    # eps = 0.054 * 266200 / 1594 = 14374.8 / 1594; eps * 0.11 = 0.99198.
    eps = 0.054 * 266200 / 1594
    assert above["fc3"] == pytest.approx(1 - eps * 0.11, abs=1e-6)
    assert 0.0 < above["fc3"] < 0.01
    _assert_budget(LENET, above, 0.946)


def test_lenet_er_equals_erk_for_2d():
    for sparsity in (0.5, 0.9, 0.98):
        erk = distribute_sparsity(LENET, sparsity, method="erk")
        er = distribute_sparsity(LENET, sparsity, method="er")
        assert er == pytest.approx(erk, abs=1e-12)


# --------------------------------------------------------------------------
# ERK vs ER on a conv net.


def test_convnet_erk_090():
    # Pass 1: eps = 43050 / (31 + 80 + 1300 + 510) = 43050 / 1921 = 22.41
    #   max r = fc2 (0.102): 2.286 > 1 -> fc2 dense.
    # Pass 2: eps = (43050 - 5000) / 1411 = 38050 / 1411 = 26.967
    #   max r = conv1 (0.062): 1.672 > 1 -> conv1 dense.
    # Pass 3: eps = (38050 - 500) / 1380 = 37550 / 1380 = 27.2101449...
    #   conv2: 1 - eps * 80 / 25000    = 0.912927536
    #   fc1:   1 - eps * 1300 / 400000 = 0.911567029
    eps = 37550 / 1380
    result = distribute_sparsity(CONVNET, 0.9, method="erk")
    assert result["conv1"] == 0.0
    assert result["fc2"] == 0.0
    assert result["conv2"] == pytest.approx(1 - eps * 0.0032, abs=1e-6)
    assert result["conv2"] == pytest.approx(0.912927536231884, abs=1e-6)
    assert result["fc1"] == pytest.approx(1 - eps * 0.00325, abs=1e-6)
    assert result["fc1"] == pytest.approx(0.9115670289855072, abs=1e-6)
    _assert_budget(CONVNET, result, 0.9)
    assert list(result) == list(CONVNET)


def test_convnet_er_090():
    # ER r * N: conv1 1.05 * 500 = 525, conv2 0.07 * 25000 = 1750,
    #           fc1 1300, fc2 510; sum = 4085.
    # Pass 1: eps = 43050 / 4085 = 10.539; conv1: 1.05 * eps = 11.07 > 1.
    # Pass 2: eps = (43050 - 500) / 3560 = 11.952; fc2: 0.102 * eps = 1.219.
    # Pass 3: eps = (42550 - 5000) / 3050 = 37550 / 3050 = 12.3114754...
    #   conv2: 1 - 0.07 * eps    = 0.138196721
    #   fc1:   1 - 0.00325 * eps = 0.959987705
    eps = 37550 / 3050
    result = distribute_sparsity(CONVNET, 0.9, method="er")
    assert result["conv1"] == 0.0
    assert result["fc2"] == 0.0
    assert result["conv2"] == pytest.approx(1 - 0.07 * eps, abs=1e-6)
    assert result["conv2"] == pytest.approx(0.13819672131147542, abs=1e-6)
    assert result["fc1"] == pytest.approx(1 - 0.00325 * eps, abs=1e-6)
    assert result["fc1"] == pytest.approx(0.9599877049180328, abs=1e-6)
    _assert_budget(CONVNET, result, 0.9)
    # ER ignores the spatial dims, so conv2 is far denser than under ERK.
    erk = distribute_sparsity(CONVNET, 0.9, method="erk")
    assert result["conv2"] < erk["conv2"] - 0.7


@pytest.mark.parametrize("method", ["er", "erk"])
def test_single_layer_gets_global_sparsity(method):
    # One layer: eps * r * N = (1 - S) * N, so density = 1 - S.
    result = distribute_sparsity({"w": (5, 5, 20, 50)}, 0.9, method=method)
    assert result["w"] == pytest.approx(0.9, abs=1e-12)


def test_tiny_sparsity_float_round_off():
    # 1 - 1.2e-38 == 1.0 in floats, so eps * r may land a hair above 1; this
    # is round-off, not saturation, and must not raise.
    result = distribute_sparsity(
        {"w": (15, 23, 31, 43)}, 1.175494351e-38, "erk", erk_power_scale=1.93
    )
    assert result == {"w": 0.0}


# --------------------------------------------------------------------------
# dense_layers and erk_power_scale.


def test_dense_layers_are_outside_the_budget():
    # fc3 forced dense at S = 0.98 is outside the budget, as in the
    # reference: eps = 0.02 * (235200 + 30000) / (1084 + 400) = 5304 / 1484.
    eps = 5304 / 1484
    result = distribute_sparsity(
        LENET, 0.98, method="erk", dense_layers=("fc3",)
    )
    assert result["fc3"] == 0.0
    assert result["fc2"] == pytest.approx(1 - eps / 75, abs=1e-6)
    assert result["fc1"] == pytest.approx(1 - eps * 1084 / 235200, abs=1e-6)
    _assert_budget(LENET, result, 0.98, dense=("fc3",))


@pytest.mark.parametrize("sparsity", [0.8, 0.9, 0.95])
def test_resnet50_like_dense_stem_matches_the_reference(sparsity):
    shapes = _resnet50_like()
    result = distribute_sparsity(shapes, sparsity, "erk", dense_layers=("stem",))
    expected = _reference_erdos_renyi(shapes, sparsity, custom_dense={"stem"})
    assert result == pytest.approx(expected, abs=1e-12)
    # The other layers hold exactly the budget; over all weights the
    # sparsity is below the target (the stem is dense and extra).
    _assert_budget(shapes, result, sparsity, dense=("stem",))
    overall = 1 - _nonzeros(shapes, result) / sum(_n(s) for s in shapes.values())
    assert overall < sparsity


def test_dense_layers_accepts_single_string():
    as_str = distribute_sparsity(LENET, 0.98, dense_layers="fc3")
    as_tuple = distribute_sparsity(LENET, 0.98, dense_layers=("fc3",))
    assert as_str == as_tuple


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_erk_power_scale_zero_is_uniform(sparsity):
    # All raw scores are 1, so eps = 1 - S < 1 and no layer saturates.
    erk0 = distribute_sparsity(CONVNET, sparsity, erk_power_scale=0.0)
    uniform = distribute_sparsity(CONVNET, sparsity, method="uniform")
    assert erk0 == pytest.approx(uniform, abs=1e-12)


def test_erk_power_scale_softens_distribution():
    # With power < 1 the spread between layers shrinks but the budget holds.
    full = distribute_sparsity(LENET, 0.98, erk_power_scale=1.0)
    soft = distribute_sparsity(LENET, 0.98, erk_power_scale=0.5)
    assert soft["fc1"] - soft["fc3"] < full["fc1"] - full["fc3"]
    _assert_budget(LENET, soft, 0.98)


# --------------------------------------------------------------------------
# Properties.

_shape = st.lists(st.integers(1, 64), min_size=1, max_size=4).map(tuple)
_shapes = st.lists(_shape, min_size=1, max_size=5).map(
    lambda shapes: {f"layer{i}": s for i, s in enumerate(shapes)}
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    shapes=_shapes,
    sparsity=st.floats(0.0, 0.99),
    method=st.sampled_from(["uniform", "er", "erk"]),
    erk_power_scale=st.floats(0.0, 2.0),
)
def test_property_range_and_budget(shapes, sparsity, method, erk_power_scale):
    result = distribute_sparsity(
        shapes, sparsity, method=method, erk_power_scale=erk_power_scale
    )
    assert list(result) == list(shapes)
    assert all(isinstance(v, float) for v in result.values())
    assert all(0.0 <= v < 1.0 for v in result.values())
    if method == "uniform":
        assert all(v == sparsity for v in result.values())
        return
    _assert_budget(shapes, result, sparsity)
    # A higher raw score never gives a higher sparsity.
    if method == "erk":
        for a in shapes:
            for b in shapes:
                ra = (sum(shapes[a]) / _n(shapes[a])) ** erk_power_scale
                rb = (sum(shapes[b]) / _n(shapes[b])) ** erk_power_scale
                if ra > rb:
                    assert result[a] <= result[b]


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    shapes=_shapes,
    sparsity=st.floats(0.0, 0.99),
    method=st.sampled_from(["er", "erk"]),
    data=st.data(),
)
def test_property_dense_layers(shapes, sparsity, method, data):
    dense = data.draw(st.lists(st.sampled_from(list(shapes)), unique=True))
    achievable = sparsity == 0.0 or len(dense) < len(shapes)
    if not achievable:
        with pytest.raises(ValueError, match="Cannot reach sparsity"):
            distribute_sparsity(shapes, sparsity, method, dense_layers=dense)
        return
    result = distribute_sparsity(shapes, sparsity, method, dense_layers=dense)
    assert all(result[name] == 0.0 for name in dense)
    assert all(0.0 <= v < 1.0 for v in result.values())
    _assert_budget(shapes, result, sparsity, dense=dense)


# --------------------------------------------------------------------------
# layer_zero_counts.


@pytest.mark.parametrize(
    "shape, sparsity, expected",
    [
        ((1000,), 0.9, 900),  # 0.9 * 1000 = 900.0
        ((10,), 0.7, 7),  # 7.0
        ((100,), 0.07, 7),  # 7.000000000000001 -> 7
        ((100,), 0.29, 29),  # 28.999999999999996 -> 29, not 28
        ((10, 10), 0.57, 57),  # 56.99999999999999 -> 57
        ((100,), 0.58, 58),  # 57.99999999999999 -> 58
        ((3,), 0.1, 0),  # 0.30000000000000004 -> 0
        ((10,), 0.55, 5),  # 5.5 -> 5 (a real fraction is floored)
        ((7,), 0.99, 6),  # 6.93 -> 6
        ((5, 5), 0.0, 0),
        ((5, 5), 1.0, 25),
        ((300, 100), 0.9, 27000),  # 27000.000000000004 -> 27000
    ],
)
def test_layer_zero_counts_exact(shape, sparsity, expected):
    counts = layer_zero_counts({"w": shape}, {"w": sparsity})
    assert counts == {"w": expected}
    assert type(counts["w"]) is int


def test_layer_zero_counts_lenet_uniform():
    # 0.9 * 235200 = 211680, 0.9 * 30000 = 27000, 0.9 * 1000 = 900.
    sparsities = distribute_sparsity(LENET, 0.9, method="uniform")
    assert layer_zero_counts(LENET, sparsities) == {
        "fc1": 211680,
        "fc2": 27000,
        "fc3": 900,
    }


def test_layer_zero_counts_match_erk_budget():
    # Flooring loses less than one zero per layer.
    sparsities = distribute_sparsity(CONVNET, 0.9, method="erk")
    counts = layer_zero_counts(CONVNET, sparsities)
    assert counts["conv1"] == 0 and counts["fc2"] == 0
    assert 0 <= 0.9 * CONVNET_TOTAL - sum(counts.values()) < len(CONVNET)


def test_layer_zero_counts_errors():
    with pytest.raises(ValueError, match="sparsities.*'nope'"):
        layer_zero_counts({"w": (2, 2)}, {"nope": 0.5})
    with pytest.raises(ValueError, match="sparsities"):
        layer_zero_counts({"w": (2, 2)}, {"w": 1.5})
    with pytest.raises(ValueError, match="shapes"):
        layer_zero_counts({"w": (0, 2)}, {"w": 0.5})


# --------------------------------------------------------------------------
# Validation errors.


@pytest.mark.parametrize(
    "bad, received",
    [
        (1.0, "sparsity=1.0"),
        (-0.1, "sparsity=-0.1"),
        (1.5, "sparsity=1.5"),
        (float("nan"), "sparsity=nan"),
        ("0.5", "sparsity='0.5'"),
        (None, "sparsity=None"),
        (True, "sparsity=True"),
    ],
)
def test_invalid_sparsity(bad, received):
    with pytest.raises(ValueError, match=r"`sparsity`.*\[0, 1\)") as info:
        distribute_sparsity(LENET, bad)
    assert f"Received: {received}" in str(info.value)


def test_numpy_sparsity_accepted():
    assert distribute_sparsity(LENET, np.float32(0.5), "uniform")["fc1"] == 0.5


def test_invalid_method():
    with pytest.raises(ValueError, match="`method`") as info:
        distribute_sparsity(LENET, 0.9, method="random")
    message = str(info.value)
    assert '"uniform", "er", "erk"' in message
    assert "Received: method='random'" in message


def test_method_is_case_insensitive():
    assert distribute_sparsity(LENET, 0.9, "ERK") == distribute_sparsity(
        LENET, 0.9, "erk"
    )


def test_unknown_dense_layer():
    with pytest.raises(ValueError, match="`dense_layers`.*'fc9'"):
        distribute_sparsity(LENET, 0.9, dense_layers=("fc1", "fc9"))


@pytest.mark.parametrize("bad", [{}, None, [(2, 2)]])
def test_empty_or_invalid_shapes(bad):
    with pytest.raises(ValueError, match="`shapes`.*non-empty"):
        distribute_sparsity(bad, 0.9)


@pytest.mark.parametrize("bad_shape", [(0, 3), (-1, 3), (), (2.5, 3), None])
def test_invalid_shape_dims(bad_shape):
    with pytest.raises(ValueError, match=r"`shapes`.*shapes\['w'\]"):
        distribute_sparsity({"ok": (2, 2), "w": bad_shape}, 0.5)


@pytest.mark.parametrize("bad", [-1.0, -1e-9, float("inf"), "1"])
def test_invalid_erk_power_scale(bad):
    with pytest.raises(ValueError, match="`erk_power_scale`.*Received"):
        distribute_sparsity(LENET, 0.9, erk_power_scale=bad)


@pytest.mark.parametrize("method", ["er", "erk"])
def test_all_layers_dense_cannot_meet_budget(method):
    with pytest.raises(ValueError, match="Cannot reach sparsity.*dense"):
        distribute_sparsity(LENET, 0.5, method, dense_layers=tuple(LENET))


def test_large_dense_layer_does_not_eat_the_budget():
    # fc1 holds 400000 weights, more than 0.1 * 430500 non-zeros allowed in
    # all: outside the budget, the other layers still reach 90% together.
    result = distribute_sparsity(CONVNET, 0.9, "erk", dense_layers=("fc1",))
    assert result["fc1"] == 0.0
    _assert_budget(CONVNET, result, 0.9, dense=("fc1",))


# --------------------------------------------------------------------------
# sparsity_distribution on Keras models (needs rigl_keras.layers).


@pytest.fixture(scope="module")
def keras_and_layers():
    import keras

    from rigl_keras import layers as rigl_layers

    return keras, rigl_layers


def test_model_mlp_erk(keras_and_layers):
    keras, rl = keras_and_layers
    model = keras.Sequential(
        [
            keras.Input((784,)),
            rl.MaskedDense(300, name="fc1"),
            rl.MaskedDense(100, name="fc2"),
            keras.layers.Dense(10, name="head"),  # outside the budget
        ]
    )
    result = sparsity_distribution(model, 0.9, method="erk")
    assert list(result) == [f"{model.name}/fc1/kernel", f"{model.name}/fc2/kernel"]
    result = _by_layer(result)
    # Only fc1, fc2 count: total = 265200, sum r N = 1084 + 400 = 1484.
    # eps = 0.1 * 265200 / 1484 = 26520 / 1484 = 17.870620
    #   fc2: 1 - eps / 75 = 0.761725; fc1: 1 - eps * 1084 / 235200.
    eps = 26520 / 1484
    assert result["fc2"] == pytest.approx(1 - eps / 75, abs=1e-6)
    assert result["fc1"] == pytest.approx(1 - eps * 1084 / 235200, abs=1e-6)
    assert result == distribute_sparsity(
        {"fc1": (784, 300), "fc2": (300, 100)}, 0.9, method="erk"
    )


def test_model_convnet_matches_shapes(keras_and_layers):
    keras, rl = keras_and_layers
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            rl.MaskedConv2D(20, 5, name="conv1"),
            keras.layers.MaxPooling2D(2),
            rl.MaskedConv2D(50, 5, name="conv2"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),  # 4 * 4 * 50 = 800
            rl.MaskedDense(500, name="fc1"),
            rl.MaskedDense(10, name="fc2"),
        ]
    )
    for method in ("uniform", "er", "erk"):
        result = _by_layer(sparsity_distribution(model, 0.9, method=method))
        assert result == distribute_sparsity(CONVNET, 0.9, method=method)
    result = _by_layer(sparsity_distribution(
        model, 0.98, dense_layers=("conv1",), erk_power_scale=0.5
    ))
    assert result["conv1"] == 0.0
    _assert_budget(CONVNET, result, 0.98, dense=("conv1",))


def test_model_without_masked_layer(keras_and_layers):
    keras, _ = keras_and_layers
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no masked weight.*rigl_keras.sparsify"):
        sparsity_distribution(model, 0.9)


def test_model_not_built(keras_and_layers):
    keras, rl = keras_and_layers
    model = keras.Sequential([rl.MaskedDense(4), rl.MaskedDense(2)])
    with pytest.raises(ValueError, match="not built.*call it on data"):
        sparsity_distribution(model, 0.9)


def test_model_argument_errors(keras_and_layers):
    keras, rl = keras_and_layers
    model = keras.Sequential(
        [keras.Input((8,)), rl.MaskedDense(4, name="a"), rl.MaskedDense(2)]
    )
    with pytest.raises(ValueError, match="`sparsity`"):
        sparsity_distribution(model, 1.0)
    with pytest.raises(ValueError, match="`dense_layers`.*'zzz'"):
        sparsity_distribution(model, 0.5, dense_layers=("zzz",))
