"""Tests of rigl_keras.experiments.models: parameter counts, shapes, widths."""

import math

import keras
import numpy as np
import pytest

import rigl_keras
from _helpers import by_layer  # tests/_helpers.py
from _helpers import small_conv_net
from _helpers import small_transformer
from rigl_keras.experiments import models


def _trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _layer_params(model):
    return {
        layer.name: _trainable_params(layer)
        for layer in model.layers
        if layer.trainable_weights
    }


@pytest.mark.parametrize("masked", [True, False])
def test_lenet300_100_parameter_count(masked):
    model = models.lenet300_100(masked=masked)
    # 784*300 + 300, 300*100 + 100, 100*10 + 10.
    assert _layer_params(model) == {"fc1": 235_500, "fc2": 30_100, "fc3": 1_010}
    assert _trainable_params(model) == 266_610
    expected_type = rigl_keras.MaskedDense if masked else keras.layers.Dense
    assert all(
        type(model.get_layer(name)) is expected_type for name in ("fc1", "fc2", "fc3")
    )


@pytest.mark.parametrize("masked", [True, False])
def test_lenet5_caffe_parameter_count(masked):
    model = models.lenet5(masked=masked)
    assert _layer_params(model) == {
        "conv1": 520,  # 5*5*1*20 + 20
        "conv2": 25_050,  # 5*5*20*50 + 50
        "fc1": 400_500,  # (4*4*50)*500 + 500
        "fc2": 5_010,  # 500*10 + 10
    }
    assert _trainable_params(model) == 431_080
    assert len(rigl_keras.masked_layers(model)) == (4 if masked else 0)


def test_lenet5_on_cifar_shapes():
    # 32 -> conv 28 -> pool 14 -> conv 10 -> pool 5: fc1 sees 5*5*50 inputs.
    model = models.lenet5(input_shape=(32, 32, 3))
    assert tuple(model.get_layer("conv1").kernel.shape) == (5, 5, 3, 20)
    assert tuple(model.get_layer("fc1").kernel.shape) == (1250, 500)


def test_wrn_22_2_kernel_shapes():
    model = models.wrn(depth=22, width=2)
    shapes = by_layer(models.kernel_shapes(model))
    assert shapes["conv1"] == (3, 3, 3, 16)
    # Group 1 (32 filters, stride 1): 16 -> 32 needs a projection shortcut.
    assert shapes["group1_block1_conv_a"] == (3, 3, 16, 32)
    assert shapes["group1_block1_conv_b"] == (3, 3, 32, 32)
    assert shapes["group1_block1_shortcut"] == (1, 1, 16, 32)
    assert "group1_block2_shortcut" not in shapes
    assert shapes["group2_block1_conv_a"] == (3, 3, 32, 64)
    assert shapes["group3_block1_conv_a"] == (3, 3, 64, 128)
    assert shapes["group3_block3_conv_b"] == (3, 3, 128, 128)
    assert shapes["logits"] == (128, 10)
    # Stem + 3 groups x 3 blocks x 2 convs + 3 shortcuts + classifier.
    assert len(shapes) == 1 + 18 + 3 + 1
    assert [l.name for l in rigl_keras.masked_layers(model)] == list(shapes)
    # Hand sum: 432 + 51,200 + 204,800 + 819,200 + 1,280.
    assert models.kernel_param_count(model) == 1_076_912
    # Strides 1, 2, 2: the last group works at 8x8 on 32x32 inputs.
    assert tuple(model.get_layer("group3_block3_conv_b").output.shape) == (None, 8, 8, 128)
    assert tuple(model.output.shape) == (None, 10)


def test_wrn_convolutions_have_no_bias_and_builders_run():
    model = models.wrn(depth=10, width=1)
    assert model.get_layer("conv1").bias is None
    assert model.get_layer("logits").bias is not None
    for builder, shape in ((models.lenet300_100, (28, 28, 1)),
                           (models.lenet5, (28, 28, 1)),
                           (models.wrn, (32, 32, 3))):
        net = builder(input_shape=shape, num_classes=7) if builder is not models.wrn \
            else builder(depth=10, width=1, input_shape=shape, num_classes=7)
        out = net(np.zeros((2,) + shape, "float32"), training=False)
        assert tuple(out.shape) == (2, 7)


def test_weight_decay_is_l2_of_half_the_coefficient():
    model = models.lenet300_100(weight_decay=0.2)
    _ = model(np.zeros((1, 28, 28, 1), "float32"))
    kernels = [model.get_layer(n).kernel.numpy() for n in ("fc1", "fc2", "fc3")]
    expected = 0.1 * sum(float(np.sum(k.astype(np.float64) ** 2)) for k in kernels)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-4)
    assert not models.lenet300_100(weight_decay=0.0).losses


def test_width_multiplier_and_explicit_widths():
    model = models.lenet300_100(width_multiplier=0.5, masked=False)
    assert models.kernel_shapes(model) == {
        "fc1/kernel": (784, 150), "fc2/kernel": (150, 50), "fc3/kernel": (50, 10)}
    model = models.wrn(depth=10, width=2, widths=(8, 9, 10, 11), masked=False)
    shapes = by_layer(models.kernel_shapes(model))
    assert shapes["conv1"] == (3, 3, 3, 8)
    assert shapes["group3_block1_conv_b"] == (3, 3, 11, 11)
    assert models.base_widths("wrn", depth=22, width=2) == (16, 32, 64, 128)
    assert models.base_widths("lenet5") == (20, 50, 500)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: models.wrn(depth=21), "depth"),
        (lambda: models.wrn(depth=22, width=0), "width"),
        (lambda: models.lenet300_100(widths=(3,)), "widths"),
        (lambda: models.lenet300_100(width_multiplier=0), "width_multiplier"),
        (lambda: models.lenet5(input_shape=(8, 8, 1)), "input_shape"),
        (lambda: models.lenet300_100(weight_decay=-1.0), "weight_decay"),
        (lambda: models.lenet300_100(num_classes=0), "num_classes"),
        (lambda: models.small_dense_widths("lenet300_100", 1.0), "sparsity"),
        (lambda: models.small_dense_widths("resnet", 0.5), "architecture"),
    ],
)
def test_bad_arguments_raise(call, message):
    with pytest.raises(ValueError, match=f"Received: {message}"):
        call()


def test_small_dense_widths_hand_computed_lenet300_100():
    solution = models.small_dense_widths("lenet300_100", 0.9)
    # Target 0.1 * 266,200 = 26,620. One multiplier gives (33, 11): 25,872 +
    # 363 + 110 = 26,345; the +-1 refinement moves fc2 to 12: 26,388.
    assert solution.widths == (33, 12)
    assert solution.kernel_params == 784 * 33 + 33 * 12 + 12 * 10 == 26_388
    assert solution.target_params == pytest.approx(26_620)
    assert models.small_dense_widths("lenet300_100", 0.0).widths == (300, 100)


@pytest.mark.parametrize(
    "architecture, kwargs, sparsity",
    [
        ("lenet300_100", {}, 0.5),
        ("lenet300_100", {}, 0.8),
        ("lenet300_100", {}, 0.9),
        ("lenet5", {}, 0.9),
        ("lenet5", {}, 0.95),
        ("lenet5", {"input_shape": (32, 32, 3)}, 0.98),
        ("wrn", {"depth": 22, "width": 2, "input_shape": (32, 32, 3)}, 0.5),
        ("wrn", {"depth": 22, "width": 2, "input_shape": (32, 32, 3)}, 0.9),
        ("wrn", {"depth": 22, "width": 2, "input_shape": (32, 32, 3)}, 0.95),
    ],
)
def test_small_dense_matches_target_within_one_percent(architecture, kwargs, sparsity):
    solution = models.small_dense_widths(architecture, sparsity, **kwargs)
    full = models.build(architecture, masked=False, **kwargs)
    assert solution.target_params == pytest.approx(
        (1 - sparsity) * models.kernel_param_count(full))
    # The solver's count is the real model's count.
    small = models.build(architecture, masked=False, widths=solution.widths, **kwargs)
    assert models.kernel_param_count(small) == solution.kernel_params
    assert abs(solution.kernel_params / solution.target_params - 1) < 0.01
    # Each width is within one unit of the uniformly scaled width.
    base = models.base_widths(architecture, **{
        k: v for k, v in kwargs.items() if k in ("depth", "width")})
    for b, w in zip(base, solution.widths):
        assert abs(w - max(1, math.floor(b * solution.width_multiplier + 0.5))) <= 1


def test_kernel_shapes_of_sparsified_models_are_the_masked_weights():
    model = small_transformer()
    plain = models.kernel_shapes(model)
    # The embeddings and the attention kernels (EinsumDense) included.
    assert plain == {
        "embed/embeddings": (50, 16), "mha/query/kernel": (16, 2, 8),
        "mha/key/kernel": (16, 2, 8), "mha/value/kernel": (16, 2, 8),
        "mha/attention_output/kernel": (2, 8, 16), "ff1/kernel": (16, 32),
        "ff2/kernel": (32, 16), "head/kernel": (16, 10),
    }
    rigl_keras.sparsify(model, filters=["mha", "head"])
    # Masked or not, the same weights; the masked ones are get_masks'.
    assert models.kernel_shapes(model) == plain
    assert set(rigl_keras.get_masks(model)) == {
        "mha/query/kernel", "mha/key/kernel", "mha/value/kernel",
        "mha/attention_output/kernel", "head/kernel"}
    convnet = small_conv_net()
    rigl_keras.sparsify(convnet)
    shapes = models.kernel_shapes(convnet)
    assert shapes == {k: v.shape for k, v in rigl_keras.get_masks(convnet).items()}
    assert shapes == {
        "conv/kernel": (3, 3, 3, 8), "dw/kernel": (3, 3, 8, 1),
        "sep/depthwise_kernel": (3, 3, 8, 1), "sep/pointwise_kernel": (1, 1, 8, 16),
        "head/kernel": (16, 4),
    }
    assert models.kernel_param_count(convnet) == 216 + 72 + 72 + 128 + 64


def test_kernel_param_count_ignores_bias_and_mask():
    assert models.kernel_param_count(models.lenet300_100()) == 266_200
    assert models.kernel_param_count(models.lenet5(masked=False)) == 430_500
