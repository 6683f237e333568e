"""Tests for rigl_keras.flops, against hand-computed FLOP counts.

`inference_flops` is keyed by variable path; `by_layer` re-keys it by layer
name where each layer has one counted weight.
"""

import doctest
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl_keras
from _helpers import by_layer  # tests/_helpers.py
from _helpers import keep_first
from _helpers import small_transformer
from rigl_keras import flops

# LeNet-300-100: 784-300-100-10.
#   fc1: 784 * 300 = 235,200 weights -> 2 * 235,200 = 470,400 FLOPs
#   fc2: 300 * 100 =  30,000 weights -> 2 *  30,000 =  60,000 FLOPs
#   fc3: 100 *  10 =   1,000 weights -> 2 *   1,000 =   2,000 FLOPs
#   total dense                                      = 532,400 FLOPs
LENET300_DENSE = {"fc1": 470_400, "fc2": 60_000, "fc3": 2_000}
LENET300_DENSE_TOTAL = 532_400
# The known mask used below keeps 23,520 (10%) of fc1, 3,000 (10%) of fc2
# and all 1,000 of fc3:
#   2 * 23,520 = 47,040; 2 * 3,000 = 6,000; 2 * 1,000 = 2,000
#   total sparse = 55,040 FLOPs
LENET300_SPARSE = {"fc1": 47_040, "fc2": 6_000, "fc3": 2_000}
LENET300_SPARSE_TOTAL = 55_040

# LeNet-5 (Caffe variant) on 28x28x1:
#   conv1: 20 filters 5x5x1, 'valid' -> 24x24x20
#          2 * (5*5*1*20 = 500) * (24*24 = 576)       =   576,000
#   pool 2 -> 12x12x20
#   conv2: 50 filters 5x5x20 -> 8x8x50
#          2 * (5*5*20*50 = 25,000) * (8*8 = 64)     = 3,200,000
#   pool 2 -> 4x4x50 = 800
#   fc1:   2 * (800 * 500 = 400,000)                  =   800,000
#   fc2:   2 * (500 * 10 = 5,000)                     =    10,000
#   total dense                                       = 4,586,000
LENET5_DENSE = {"conv1": 576_000, "conv2": 3_200_000, "fc1": 800_000, "fc2": 10_000}
LENET5_DENSE_TOTAL = 4_586_000


def _lenet300(masked=True):
    dense = rigl_keras.MaskedDense if masked else keras.layers.Dense
    return keras.Sequential(
        [
            keras.Input((784,)),
            dense(300, activation="relu", name="fc1"),
            dense(100, activation="relu", name="fc2"),
            dense(10, name="fc3"),
        ]
    )


def _mask_with_ones(shape, n_ones, seed):
    mask = np.zeros(int(np.prod(shape)), np.float32)
    mask[np.random.default_rng(seed).permutation(mask.size)[:n_ones]] = 1.0
    return mask.reshape(shape)


def _lenet300_known_mask():
    model = _lenet300()
    ones = {"fc1": 23_520, "fc2": 3_000, "fc3": 1_000}
    for i, layer in enumerate(model.layers):
        layer.mask.assign(_mask_with_ones(layer.mask.shape, ones[layer.name], i))
        layer.apply_mask()
    return model


def _lenet5(masked=True):
    conv = rigl_keras.MaskedConv2D if masked else keras.layers.Conv2D
    dense = rigl_keras.MaskedDense if masked else keras.layers.Dense
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            conv(20, 5, name="conv1"),
            keras.layers.MaxPooling2D(2),
            conv(50, 5, name="conv2"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            dense(500, activation="relu", name="fc1"),
            dense(10, name="fc2"),
        ]
    )


# ---------------------------------------------------------------------------
# inference_flops
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [True, False])
def test_lenet300_dense_inference_flops(masked):
    model = _lenet300(masked)
    assert by_layer(flops.inference_flops(model, sparse=False)) == LENET300_DENSE
    # All weights active (fresh masks / glorot kernels): sparse == dense.
    assert by_layer(flops.inference_flops(model, sparse=True)) == LENET300_DENSE
    assert sum(LENET300_DENSE.values()) == LENET300_DENSE_TOTAL


def test_lenet300_known_mask():
    model = _lenet300_known_mask()
    assert by_layer(flops.inference_flops(model)) == LENET300_SPARSE
    assert by_layer(flops.inference_flops(model, sparse=False)) == LENET300_DENSE


def test_masked_layer_counts_mask_not_kernel_zeros():
    # A connection just grown by RigL holds 0.0 but is active: it counts.
    model = _lenet300()
    fc3 = model.get_layer("fc3")
    kernel = fc3.kernel.numpy()
    kernel[:50] = 0.0  # 50 rows * 10 = 500 zero but active entries.
    fc3.kernel.assign(kernel)
    assert by_layer(flops.inference_flops(model))["fc3"] == 2 * 1_000


def test_plain_layer_counts_non_zero_kernel_entries():
    model = _lenet300(masked=False)
    fc3 = model.get_layer("fc3")
    kernel = fc3.kernel.numpy()
    kernel[:50] = 0.0  # 500 of 1,000 entries zero -> 2 * 500 FLOPs.
    fc3.kernel.assign(kernel)
    assert by_layer(flops.inference_flops(model))["fc3"] == 1_000
    assert by_layer(flops.inference_flops(model, sparse=False))["fc3"] == 2_000


@pytest.mark.parametrize("masked", [True, False])
def test_lenet5_dense_inference_flops(masked):
    model = _lenet5(masked)
    assert by_layer(flops.inference_flops(model, sparse=False)) == LENET5_DENSE
    assert sum(LENET5_DENSE.values()) == LENET5_DENSE_TOTAL


def test_lenet5_known_mask():
    model = _lenet5()
    # conv1 keeps 100 of 500 weights: 2 * 100 * 576 = 115,200
    # conv2 keeps 2,500 of 25,000:     2 * 2,500 * 64 = 320,000
    # fc1 keeps 40,000 of 400,000:     2 * 40,000     =  80,000
    # fc2 keeps all 5,000:             2 * 5,000      =  10,000
    ones = {"conv1": 100, "conv2": 2_500, "fc1": 40_000, "fc2": 5_000}
    for i, layer in enumerate(rigl_keras.masked_layers(model)):
        layer.mask.assign(_mask_with_ones(layer.mask.shape, ones[layer.name], i))
        layer.apply_mask()
    assert by_layer(flops.inference_flops(model)) == {
        "conv1": 115_200,
        "conv2": 320_000,
        "fc1": 80_000,
        "fc2": 10_000,
    }


def test_conv_strides_same_padding_and_channels_first():
    # 'same' with stride 2 on 28x28 -> 14x14; kernel 3*3*3*8 = 216 weights:
    # 2 * 216 * 196 = 84,672 FLOPs, whatever the data format.
    for data_format, shape in (
        ("channels_last", (28, 28, 3)),
        ("channels_first", (3, 28, 28)),
    ):
        model = keras.Sequential(
            [
                keras.Input(shape),
                rigl_keras.MaskedConv2D(
                    8, 3, strides=2, padding="same", data_format=data_format,
                    name="c",
                ),
            ]
        )
        assert by_layer(flops.inference_flops(model)) == {"c": 84_672}


def test_dense_on_sequences_counts_every_position():
    # Dense(4) on (5, 8): 2 * (8 * 4) * 5 positions = 320.
    model = keras.Sequential([keras.Input((5, 8)), keras.layers.Dense(4, name="d")])
    assert by_layer(flops.inference_flops(model)) == {"d": 320}


def test_depthwise_is_counted_normalization_is_not():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.DepthwiseConv2D(3, name="dw"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, name="d"),
        ]
    )
    # dw: 3*3*2*1 = 18 weights at 6*6 = 36 output positions: 2 * 18 * 36 =
    # 1,296. d: 6*6*2 = 72 inputs -> 2 * 72 * 3 = 432.
    assert by_layer(flops.inference_flops(model)) == {"dw": 1_296, "d": 432}


def test_embedding_transposed_conv_and_rnn_are_not_counted():
    tokens = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(20, 4, name="embed")(tokens)
    h = keras.layers.LSTM(3, return_sequences=True, name="lstm")(h)
    h = keras.layers.Conv1DTranspose(2, 3, name="up")(h)
    outputs = keras.layers.Dense(5, name="d")(h)
    model = keras.Model(tokens, outputs)
    # d on (8, 2): 2 * (2 * 5) * 8 positions = 160.
    assert by_layer(flops.inference_flops(model)) == {"d": 160}


def test_nested_model_layers_are_counted():
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="inner_d")], name="inner"
    )
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2, name="outer_d")(inner(inputs))
    model = keras.Model(inputs, outputs)
    # inner_d: 2 * 4 * 3 = 24; outer_d: 2 * 3 * 2 = 12.
    assert by_layer(flops.inference_flops(model)) == {"inner_d": 24, "outer_d": 12}


def test_unbuilt_model_raises():
    model = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="not built"):
        flops.inference_flops(model)


# Sparsified models: every counted weight by its mask.
#
# small_transformer(): 8 tokens of width 16, MHA of 2 heads x 8.
#   mha/query, key, value: kernel 16x2x8 = 256 at 8 positions -> 4,096 each
#   mha/attention_output: kernel 2x8x16 = 256 at 8 positions  -> 4,096
#   ff1: 16x32 = 512 at 8 positions                           -> 8,192
#   ff2: 32x16 = 512 at 8 positions                           -> 8,192
#   head: 16x10 = 160 on the pooled vector                    ->   320
#   embed: a lookup, not counted; total dense                 = 33,088
TRANSFORMER_DENSE = {
    "mha/query/kernel": 4_096, "mha/key/kernel": 4_096,
    "mha/value/kernel": 4_096, "mha/attention_output/kernel": 4_096,
    "ff1/kernel": 8_192, "ff2/kernel": 8_192, "head/kernel": 320,
}


def test_transformer_dense_flops_hand_computed():
    model = small_transformer()
    assert flops.inference_flops(model, sparse=False) == TRANSFORMER_DENSE
    assert sum(TRANSFORMER_DENSE.values()) == 33_088
    rigl_keras.sparsify(model)  # all-ones masks: the same counts
    assert flops.inference_flops(model) == TRANSFORMER_DENSE


def test_sparsified_transformer_counts_its_masks():
    model = small_transformer()
    rigl_keras.sparsify(model)
    active = {
        "mha/query/kernel": 32, "mha/key/kernel": 0, "mha/value/kernel": 256,
        "mha/attention_output/kernel": 100, "ff1/kernel": 51,
        "ff2/kernel": 1, "head/kernel": 16,
    }
    weights = {w.key: w for w in rigl_keras.masked_weights(model)}
    for key, n in active.items():
        keep_first(weights[key], n)
    # 2 * active * positions (8 for all but head).
    assert flops.inference_flops(model) == {
        "mha/query/kernel": 512, "mha/key/kernel": 0, "mha/value/kernel": 4_096,
        "mha/attention_output/kernel": 1_600, "ff1/kernel": 816,
        "ff2/kernel": 16, "head/kernel": 32,
    }
    # A weight grown at 0.0 is active: the mask counts, not the values.
    weights["head/kernel"].variable.assign(np.zeros((16, 10), "float32"))
    assert flops.inference_flops(model)["head/kernel"] == 32
    assert flops.inference_flops(model, sparse=False) == TRANSFORMER_DENSE


def test_cross_attention_counts_query_and_source_positions():
    query, source = keras.Input((8, 16)), keras.Input((5, 12))
    outputs = keras.layers.MultiHeadAttention(2, 4, name="mha")(query, source)
    model = keras.Model([query, source], outputs)
    # query 16x2x4 = 128 and attention_output 2x4x16 = 128 at the 8 query
    # positions; key and value 12x2x4 = 96 at the 5 source positions.
    assert flops.inference_flops(model, sparse=False) == {
        "mha/query/kernel": 2 * 128 * 8, "mha/key/kernel": 2 * 96 * 5,
        "mha/value/kernel": 2 * 96 * 5, "mha/attention_output/kernel": 2 * 128 * 8,
    }


def test_einsum_dense_with_an_ellipsis():
    model = keras.Sequential([
        keras.Input((3, 5, 6)),
        keras.layers.EinsumDense("...c,cd->...d", output_shape=4, name="e"),
    ])
    # 6x4 = 24 weights used at 3 * 5 = 15 positions: 2 * 24 * 15 = 720.
    assert by_layer(flops.inference_flops(model)) == {"e": 720}


def test_separable_conv_counts_both_kernels():
    model = keras.Sequential([
        keras.Input((9, 9, 4)),
        keras.layers.SeparableConv2D(6, 3, strides=2, padding="valid", name="sep"),
    ], name="m")
    rigl_keras.sparsify(model)
    weights = {w.key: w for w in rigl_keras.masked_weights(model)}
    keep_first(weights["m/sep/depthwise_kernel"], 10)
    # Output 4x4 = 16 positions. depthwise 3x3x4x1 = 36 (10 active),
    # pointwise 1x1x4x6 = 24: 2 * 36 * 16 = 1,152 dense, 2 * 10 * 16 = 320
    # sparse; 2 * 24 * 16 = 768.
    assert flops.inference_flops(model, sparse=False) == {
        "m/sep/depthwise_kernel": 1_152, "m/sep/pointwise_kernel": 768}
    assert flops.inference_flops(model) == {
        "m/sep/depthwise_kernel": 320, "m/sep/pointwise_kernel": 768}


class _Projection(keras.layers.Layer):
    """A custom layer calling a Dense sublayer: no node records its shapes."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(4, name="inner")

    def call(self, x):
        return self.dense(x)


def test_dense_inside_a_custom_layer_counts_its_positions():
    model = keras.Sequential([keras.Input((6, 3)), _Projection(name="proj")])
    # Built on (None, 6, 3): 3x4 = 12 weights at 6 positions -> 144.
    assert by_layer(flops.inference_flops(model)) == {"inner": 144}


def test_unknown_sequence_length_raises():
    tokens = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(10, 4)(tokens)
    model = keras.Model(tokens, keras.layers.Dense(3, name="d")(h))
    with pytest.raises(ValueError, match="fixed input size"):
        flops.inference_flops(model)


def _mobilenet():
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.35)


def test_mobilenet_v2_every_masked_weight_counted_by_its_mask():
    model = _mobilenet()
    rigl_keras.sparsify(model)
    weights = rigl_keras.masked_weights(model)
    dense = flops.inference_flops(model, sparse=False)
    assert list(dense) == [w.key for w in weights]  # 35 conv, 17 depthwise, 1 dense
    # Hand-computed: Conv1 16 filters 3x3x3, stride 2 -> 16x16:
    # 2 * 432 * 256; the first depthwise 3x3x16 at 16x16: 2 * 144 * 256;
    # predictions 1280x10 on a vector.
    assert dense["Conv1/kernel"] == 221_184
    assert dense["expanded_conv_depthwise/kernel"] == 73_728
    assert dense["predictions/kernel"] == 25_600
    # Every weight by the output size Keras computed for its layer.
    for w in weights:
        spatial = tuple(w.layer.output.shape)[1:-1]
        assert dense[w.key] == 2 * w.size * int(np.prod(spatial)), w.key
    for i, w in enumerate(weights):
        keep_first(w, w.size // (i + 2))
    sparse = flops.inference_flops(model)
    for w in weights:
        positions = dense[w.key] // (2 * w.size)
        assert sparse[w.key] == 2 * (w.size // (weights.index(w) + 2)) * positions


# ---------------------------------------------------------------------------
# training_flops
# ---------------------------------------------------------------------------


def test_training_flops_dense_static_set():
    model = _lenet300_known_mask()
    assert flops.training_flops(model, "dense") == 1.0
    # 3 * 55,040 / (3 * 532,400)
    expected = 55_040 / 532_400
    assert flops.training_flops(model, "static") == pytest.approx(expected, rel=1e-12)
    assert flops.training_flops(model, "set") == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.103381, abs=1e-6)


def test_training_flops_rigl_hand_computed():
    model = _lenet300_known_mask()
    # (3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1) with f_S = 55,040, f_D = 532,400,
    # ΔT = 100:
    #   3 * 55,040 * 100 = 16,512,000
    #   2 * 55,040       =    110,080
    #   f_D              =    532,400
    #   sum              = 17,154,480 ;  / 101 = 169,846.3366...
    # relative to dense training 3 * 532,400 = 1,597,200:
    expected = 17_154_480 / (101 * 1_597_200)
    assert expected == pytest.approx(0.1063400, abs=1e-6)
    assert flops.training_flops(model, "rigl", update_freq=100) == pytest.approx(
        expected, rel=1e-12
    )
    assert flops.rigl_training_flops(55_040, 532_400, 100) == pytest.approx(
        17_154_480 / 101, rel=1e-12
    )
    # ΔT = 1: (3 * 55,040 + 2 * 55,040 + 532,400) / 2 = 403,800.
    assert flops.rigl_training_flops(55_040, 532_400, 1) == 403_800.0


def test_training_flops_snfs_hand_computed():
    model = _lenet300_known_mask()
    # (2 * 55,040 + 532,400) / (3 * 532,400) = 642,480 / 1,597,200
    expected = 642_480 / 1_597_200
    assert expected == pytest.approx(0.402254, abs=1e-6)
    assert flops.training_flops(model, "snfs") == pytest.approx(expected, rel=1e-12)


def test_training_flops_small_dense():
    small = keras.Sequential(
        [keras.Input((784,)), keras.layers.Dense(30), keras.layers.Dense(10)]
    )
    # 2 * (784 * 30 + 30 * 10) = 2 * 23,820 = 47,640; relative to 532,400.
    expected = 47_640 / 532_400
    assert flops.training_flops(
        small, "small_dense", reference_flops=532_400
    ) == pytest.approx(expected, rel=1e-12)
    # The reference can be given as the big model.
    assert flops.training_flops(
        small, "small_dense", reference_flops=_lenet300(masked=False)
    ) == pytest.approx(expected, rel=1e-12)


def test_reference_flops_rescales_every_method():
    model = _lenet300_known_mask()
    ratio = flops.training_flops(model, "static", reference_flops=2 * 532_400)
    assert ratio == pytest.approx(55_040 / (2 * 532_400), rel=1e-12)


# ---------------------------------------------------------------------------
# Pruning integration.
# ---------------------------------------------------------------------------


def _brute_force_pruning(dense, final_sparse, begin, end, total, s_i, freq, power):
    """Step by step, with the callback's rule: last pruning step u <= t."""
    total_flops = 0.0
    for t in range(total):
        if t < begin:
            u = None
        elif t >= end:
            u = end
        else:
            u = begin + ((t - begin) // freq) * freq
        step_flops = 0.0
        for name, f_dense in dense.items():
            s_f = 1.0 - final_sparse[name] / f_dense
            s_init = min(s_i, s_f)
            if u is None:
                s = s_init
            else:
                p = min(max((u - begin) / (end - begin), 0.0), 1.0)
                s = s_f + (s_init - s_f) * (1.0 - p) ** power
            step_flops += 3.0 * f_dense * (1.0 - s)
        total_flops += step_flops
    return total_flops / total / (3.0 * sum(dense.values()))


@pytest.mark.parametrize(
    "begin, end, total, s_i, freq",
    [
        (0, 75, 100, 0.0, 1),
        (10, 60, 100, 0.0, 10),
        (5, 47, 80, 0.3, 10),  # end off the update_freq grid
        (0, 100, 100, 0.5, 7),  # initial_sparsity above fc3's target
    ],
)
def test_pruning_flops_match_brute_force(begin, end, total, s_i, freq):
    got = flops.pruning_training_flops(
        LENET300_DENSE,
        LENET300_SPARSE,
        begin_step=begin,
        end_step=end,
        total_steps=total,
        initial_sparsity=s_i,
        update_freq=freq,
    )
    expected = _brute_force_pruning(
        LENET300_DENSE, LENET300_SPARSE, begin, end, total, s_i, freq, 3
    )
    assert got == pytest.approx(expected, rel=1e-12)


def test_pruning_flops_hand_computed():
    # One layer, f_D = 100, final f_S = 10 (s_f = 0.9), begin 0, end 2,
    # 4 steps, pruning every step:
    #   t=0: p=0    s=0                     -> 3 * 100 = 300
    #   t=1: p=1/2  s=0.9 * (1 - 1/8)=0.7875 -> 3 * 21.25 = 63.75
    #   t=2: p=1    s=0.9                   -> 3 * 10 = 30
    #   t=3: frozen                         -> 30
    # mean = 423.75 / 4 = 105.9375; / 300 = 0.353125
    got = flops.pruning_training_flops(
        {"fc": 100}, {"fc": 10}, begin_step=0, end_step=2, total_steps=4
    )
    assert got == pytest.approx(0.353125, rel=1e-12)


def test_training_flops_pruning_uses_model_masks():
    model = _lenet300_known_mask()
    got = flops.training_flops(
        model, "pruning", update_freq=10, begin_step=10, end_step=60, total_steps=100
    )
    expected = _brute_force_pruning(
        LENET300_DENSE, LENET300_SPARSE, 10, 60, 100, 0.0, 10, 3
    )
    assert got == pytest.approx(expected, rel=1e-12)


def test_pruning_flops_match_the_callback():
    # Train with GradualPruningCallback, count the FLOPs of the masks in use
    # at every step, and compare with the formula (which ignores the floor
    # of the exact zero counts, hence the tolerance).
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16,)),
            rigl_keras.MaskedDense(64, activation="relu", name="a"),
            rigl_keras.MaskedDense(32, activation="relu", name="b"),
            rigl_keras.MaskedDense(1, name="c"),
        ]
    )
    model.compile("sgd", "mse")
    per_step = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            per_step.append(sum(flops.inference_flops(self.model).values()))

    dense_flops = flops.inference_flops(model, sparse=False)
    x = np.random.rand(160, 16).astype("float32")
    y = np.random.rand(160, 1).astype("float32")
    model.fit(
        x, y, batch_size=8, epochs=2, verbose=0, shuffle=False,
        callbacks=[
            rigl_keras.GradualPruningCallback(
                0.9, distribution="uniform", begin_step=4, end_step=30,
                update_freq=4, initial_sparsity=0.2,
            ),
            Count(),
        ],
    )
    assert len(per_step) == 40
    measured = np.mean(per_step) / sum(dense_flops.values())
    predicted = flops.training_flops(
        model, "pruning", update_freq=4, begin_step=4, end_step=30,
        total_steps=40, initial_sparsity=0.2,
    )
    assert measured == pytest.approx(predicted, rel=5e-3)


# ---------------------------------------------------------------------------
# executed_flops and flops_report.
# ---------------------------------------------------------------------------


def test_executed_flops_are_dense_whatever_the_mask():
    model = _lenet300_known_mask()
    assert flops.executed_flops(model) == {
        "inference": 532_400,
        "training": 3 * 532_400,
    }


def test_flops_report_rigl():
    model = _lenet300_known_mask()
    report = flops.flops_report(model, "rigl", update_freq=100)
    assert report["inference_flops"] == pytest.approx(55_040 / 532_400, rel=1e-12)
    assert report["train_flops"] == pytest.approx(
        17_154_480 / (101 * 1_597_200), rel=1e-12
    )
    assert report["executed_inference_flops"] == 1.0
    assert report["executed_train_flops"] == 1.0
    assert report["sparse_inference_flops_per_example"] == 55_040
    assert report["dense_inference_flops_per_example"] == 532_400
    assert report["method"] == "rigl"
    json.dumps(report)  # JSON-ready for the CLI summary.


def test_flops_report_small_dense():
    small = keras.Sequential(
        [keras.Input((784,)), keras.layers.Dense(30), keras.layers.Dense(10)]
    )
    report = flops.flops_report(small, "small_dense", reference_flops=532_400)
    assert report["inference_flops"] == pytest.approx(47_640 / 532_400)
    assert report["train_flops"] == pytest.approx(47_640 / 532_400)
    assert report["executed_inference_flops"] == pytest.approx(47_640 / 532_400)
    assert report["reference_inference_flops_per_example"] == 532_400


# ---------------------------------------------------------------------------
# Bad inputs.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, kwargs, match",
    [
        ("magic", {}, "method"),
        ("small_dense", {}, "reference_flops"),
        ("rigl", {"end_step": 3}, "only used with method='pruning'"),
        ("rigl", {"update_freq": 0}, "update_freq"),
        ("pruning", {"total_steps": 10}, "end_step"),
        ("pruning", {"end_step": 5, "total_steps": 10, "bogus": 1}, "bogus"),
        ("pruning", {"end_step": 0, "total_steps": 10}, "end_step"),
        ("static", {"reference_flops": -1}, "reference_flops"),
    ],
)
def test_training_flops_bad_inputs(method, kwargs, match):
    model = _lenet300_known_mask()
    with pytest.raises(ValueError, match=match):
        flops.training_flops(model, method, **kwargs)


def test_pruning_training_flops_bad_inputs():
    with pytest.raises(ValueError, match="total_steps"):
        flops.pruning_training_flops({"a": 10}, {"a": 5}, 0, 5, 0)
    with pytest.raises(ValueError, match="final_sparse_flops"):
        flops.pruning_training_flops({"a": 10}, {"b": 5}, 0, 5, 10)
    with pytest.raises(ValueError, match="dense FLOPs"):
        flops.pruning_training_flops({"a": 10}, {"a": 50}, 0, 5, 10)
    with pytest.raises(ValueError, match="initial_sparsity"):
        flops.pruning_training_flops({"a": 10}, {"a": 5}, 0, 5, 10, initial_sparsity=1.0)


def test_model_without_counted_layers_raises():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Flatten()])
    with pytest.raises(ValueError, match="no layer whose FLOPs are counted"):
        flops.training_flops(model, "dense")


def test_docstring_examples():
    result = doctest.testmod(
        flops,
        extraglobs={"np": np, "tf": tf, "keras": keras},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.attempted > 0
    assert result.failed == 0
