"""Tests for rigl_keras.layers.

Every expectation comes from an independent reference: a plain
`keras.layers.Dense` / `keras.layers.Conv2D` holding the masked kernel
`W * M`, whose outputs and gradients the masked layers must reproduce.
"""

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl_keras.layers
from rigl_keras.layers import MaskedConv2D
from rigl_keras.layers import MaskedDense
from rigl_keras.layers import masked_layers


def _random_mask(layer, rng, density=0.5):
    """Gives `layer` a random 0/1 mask (at least one 0 and one 1)."""
    shape = tuple(layer.mask.shape)
    mask = (rng.random(shape) < density).astype("float32")
    flat = mask.reshape(-1)
    flat[0], flat[-1] = 1.0, 0.0
    layer.mask.assign(mask)
    layer.apply_mask()
    return mask


def _plain_twin(layer, input_shape):
    """A plain Keras layer with the same config holding `kernel * mask`.

    A channels_first conv twin computes in channels_last between two
    transposes (TensorFlow's CPU convolution takes channels_last only).
    """
    config = layer.get_config()
    config.pop("name")
    if isinstance(layer, MaskedDense):
        twin = keras.layers.Dense(**config)
        twin.build(input_shape)
        _copy_into_twin(layer, twin)
        return twin
    channels_first = config["data_format"] == "channels_first"
    config["data_format"] = "channels_last"
    twin = keras.layers.Conv2D(**config)
    if channels_first:
        input_shape = (input_shape[0],) + tuple(input_shape[2:]) + (input_shape[1],)
    twin.build(input_shape)
    _copy_into_twin(layer, twin)
    if not channels_first:
        return twin
    return lambda x: tf.transpose(twin(tf.transpose(x, (0, 2, 3, 1))), (0, 3, 1, 2))


def _copy_into_twin(layer, twin):
    kernel = layer.kernel.numpy() * layer.mask.numpy()
    weights = [kernel] + ([layer.bias.numpy()] if layer.use_bias else [])
    twin.set_weights(weights)


# ---------------------------------------------------------------------------
# Fresh state.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, x_shape",
    [
        (lambda: MaskedDense(4), (2, 3)),
        (lambda: MaskedConv2D(4, 3), (2, 5, 5, 2)),
    ],
)
def test_fresh_mask_is_ones_and_not_trainable(layer, x_shape):
    layer = layer()
    layer(np.ones(x_shape, "float32"))
    np.testing.assert_array_equal(layer.mask.numpy(), np.ones(layer.kernel.shape))
    assert layer.mask.dtype == "float32"
    assert not layer.mask.trainable
    assert layer.kernel.trainable and layer.bias.trainable
    assert [id(w) for w in layer.trainable_weights] == [id(layer.kernel), id(layer.bias)]
    assert [id(w) for w in layer.non_trainable_weights] == [id(layer.mask)]
    assert layer.sparsity == 0.0


def test_sparsity_property():
    layer = MaskedDense(5)
    layer(np.ones((1, 4), "float32"))
    mask = np.zeros((4, 5), "float32")
    mask[:, :2] = 1.0  # 8 of 20 active.
    layer.mask.assign(mask)
    assert layer.sparsity == pytest.approx(0.6)


# ---------------------------------------------------------------------------
# Output equals the plain layer holding W * M.
# ---------------------------------------------------------------------------

_DENSE_CASES = [
    dict(units=4),
    dict(units=3, activation="relu", bias_initializer="random_normal"),
    dict(units=5, use_bias=False, activation="tanh"),
]

_CONV_CASES = [
    dict(filters=4, kernel_size=3),
    dict(filters=4, kernel_size=(3, 2), strides=2, padding="same"),
    dict(filters=4, kernel_size=3, dilation_rate=2, activation="relu"),
    dict(filters=6, kernel_size=3, groups=2),
    dict(filters=4, kernel_size=3, data_format="channels_first", padding="same"),
    dict(filters=4, kernel_size=2, data_format="channels_first", groups=2, use_bias=False),
]


def _conv_input_shape(config):
    if config.get("data_format") == "channels_first":
        return (2, 4, 7, 7)
    return (2, 7, 7, 4)


@pytest.mark.parametrize("config", _DENSE_CASES + _CONV_CASES)
@pytest.mark.parametrize("training", [False, True])
def test_output_equals_plain_layer(config, training):
    rng = np.random.default_rng(0)
    if "units" in config:
        layer = MaskedDense(**config)
        x_shape = (3, 6)
    else:
        layer = MaskedConv2D(**config)
        x_shape = _conv_input_shape(config)
    x = rng.normal(size=x_shape).astype("float32")
    layer(x)
    if layer.use_bias:
        layer.bias.assign(rng.normal(size=layer.bias.shape))
    _random_mask(layer, rng)
    twin = _plain_twin(layer, x_shape)
    got = layer(x, training=training).numpy()
    np.testing.assert_allclose(got, twin(x).numpy(), rtol=1e-6, atol=1e-6)
    assert got.shape == tuple(layer.compute_output_shape(x_shape))
    # Inactive kernel entries are exactly zero after `apply_mask`.
    assert np.all(layer.kernel.numpy()[layer.mask.numpy() == 0] == 0.0)


@pytest.mark.parametrize("config", [_DENSE_CASES[1], _CONV_CASES[1], _CONV_CASES[4]])
def test_inference_multiplies_by_mask_even_with_nonzero_inactive(config):
    rng = np.random.default_rng(1)
    if "units" in config:
        layer, x_shape = MaskedDense(**config), (3, 6)
    else:
        layer, x_shape = MaskedConv2D(**config), _conv_input_shape(config)
    x = rng.normal(size=x_shape).astype("float32")
    layer(x)
    mask = _random_mask(layer, rng)
    dense_kernel = rng.normal(size=layer.kernel.shape).astype("float32")
    layer.kernel.assign(dense_kernel)  # Non-zeros at inactive entries.
    assert np.any(layer.kernel.numpy()[mask == 0] != 0)
    twin = _plain_twin(layer, x_shape)  # Holds dense_kernel * mask.
    np.testing.assert_allclose(layer(x).numpy(), twin(x).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        layer(x, training=False).numpy(), twin(x).numpy(), rtol=1e-6, atol=1e-6
    )
    # set_weights re-zeroes the inactive entries it writes.
    layer.set_weights([dense_kernel, layer.bias.numpy(), mask])
    kernel = layer.kernel.numpy()
    np.testing.assert_array_equal(kernel[mask == 0], 0.0)
    np.testing.assert_array_equal(kernel[mask == 1], dense_kernel[mask == 1])


def test_set_weights_uses_the_new_mask():
    layer = MaskedDense(2)
    layer(np.ones((1, 2), "float32"))
    kernel = np.array([[1.0, 2.0], [3.0, 4.0]], "float32")
    mask = np.array([[0.0, 1.0], [1.0, 0.0]], "float32")
    layer.set_weights([kernel, np.zeros(2, "float32"), mask])
    np.testing.assert_array_equal(layer.kernel.numpy(), [[0.0, 2.0], [3.0, 0.0]])
    np.testing.assert_array_equal(layer.mask.numpy(), mask)


# ---------------------------------------------------------------------------
# Serialization.
# ---------------------------------------------------------------------------


def _full_kwargs():
    return dict(
        activation="relu",
        use_bias=True,
        kernel_initializer=keras.initializers.HeNormal(seed=3),
        bias_initializer=keras.initializers.Constant(0.5),
        kernel_regularizer=keras.regularizers.L2(0.01),
        bias_regularizer="l1",
        activity_regularizer=keras.regularizers.L1L2(0.1, 0.2),
        kernel_constraint=keras.constraints.MaxNorm(2.0),
        bias_constraint="non_neg",
        name="masked",
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: MaskedDense(7, **_full_kwargs()),
        lambda: MaskedDense(2, use_bias=False, dtype="float64", trainable=False),
        lambda: MaskedConv2D(6, (3, 2), **_full_kwargs()),
        lambda: MaskedConv2D(
            4, 3, strides=1, padding="SAME", data_format="channels_first",
            dilation_rate=(2, 1), groups=2, activation="gelu", use_bias=False,
        ),
        lambda: MaskedConv2D(4, 3, strides=(2, 1), data_format="channels_last"),
    ],
)
def test_config_round_trip(make):
    layer = make()
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    # Through the generic Keras (de)serializer too.
    revived = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(revived) is type(layer)
    assert revived.get_config() == config
    assert type(revived.kernel_regularizer) is type(layer.kernel_regularizer)
    assert type(revived.activity_regularizer) is type(layer.activity_regularizer)
    assert type(revived.kernel_constraint) is type(layer.kernel_constraint)


def test_config_matches_plain_keras_layers():
    """Every argument of Dense / Conv2D is in the config with Keras' value."""
    kwargs = _full_kwargs()
    masked = MaskedDense(3, **kwargs).get_config()
    plain = keras.layers.Dense(3, **kwargs).get_config()
    plain.pop("quantization_config")  # Always None for masked layers.
    assert masked == plain
    conv_kwargs = dict(
        kwargs, strides=1, dilation_rate=2, groups=2,
        data_format="channels_first", padding="same",
    )
    masked = MaskedConv2D(4, 3, **conv_kwargs).get_config()
    plain = keras.layers.Conv2D(4, 3, **conv_kwargs).get_config()
    assert masked == plain


def _sequential_dense():
    return keras.Sequential(
        [keras.Input((6,)), MaskedDense(5, activation="relu"), MaskedDense(3)]
    ), (4, 6)


def _functional_dense():
    inputs = keras.Input((6,))
    h = MaskedDense(5, activation="tanh")(inputs)
    h2 = keras.layers.Dense(4)(h)
    outputs = MaskedDense(3, use_bias=False)(keras.layers.Concatenate()([h, h2]))
    return keras.Model(inputs, outputs), (4, 6)


def _sequential_conv():
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            MaskedConv2D(4, 3, padding="same", activation="relu"),
            MaskedConv2D(4, 2, groups=2),
            keras.layers.Flatten(),
            MaskedDense(2),
        ]
    ), (3, 6, 6, 2)


def _functional_conv():
    inputs = keras.Input((2, 6, 6))
    h = MaskedConv2D(4, 3, data_format="channels_first", dilation_rate=2)(inputs)
    h = keras.layers.Flatten()(h)
    outputs = MaskedDense(2)(h)
    return keras.Model(inputs, outputs), (3, 2, 6, 6)


@pytest.mark.parametrize(
    "make", [_sequential_dense, _functional_dense, _sequential_conv, _functional_conv]
)
def test_save_and_load_restores_masks_and_outputs(make, tmp_path):
    rng = np.random.default_rng(2)
    model, x_shape = make()
    for layer in masked_layers(model):
        if layer.use_bias:
            layer.bias.assign(rng.normal(size=layer.bias.shape))
        _random_mask(layer, rng, density=0.4)
    x = rng.normal(size=x_shape).astype("float32")
    expected = model(x).numpy()
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # Safe mode, no custom_objects.
    old, new = masked_layers(model), masked_layers(loaded)
    assert [type(l) for l in new] == [type(l) for l in old]
    for before, after in zip(old, new):
        np.testing.assert_array_equal(after.mask.numpy(), before.mask.numpy())
        np.testing.assert_array_equal(after.kernel.numpy(), before.kernel.numpy())
        assert after.get_config() == before.get_config()
    np.testing.assert_array_equal(loaded(x).numpy(), expected)


def test_load_rezeroes_inactive_entries(tmp_path):
    rng = np.random.default_rng(3)
    model, _ = _sequential_dense()
    layer = masked_layers(model)[0]
    mask = _random_mask(layer, rng)
    layer.kernel.assign(np.full(layer.kernel.shape, 2.0, "float32"))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = masked_layers(keras.models.load_model(path))[0]
    np.testing.assert_array_equal(loaded.kernel.numpy(), 2.0 * mask)


# ---------------------------------------------------------------------------
# Argument validation.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MaskedDense(0), "units"),
        (lambda: MaskedDense(-3), "units"),
        (lambda: MaskedDense(2.5), "units"),
        (lambda: MaskedDense(True), "units"),
        (lambda: MaskedDense(4, lora_rank=2), "lora_rank"),
        (lambda: MaskedDense(4, quantization_config={"mode": "int8"}), "quantization_config"),
        (lambda: MaskedConv2D(0, 3), "filters"),
        (lambda: MaskedConv2D(-1, 3), "filters"),
        (lambda: MaskedConv2D(4, 0), "kernel_size"),
        (lambda: MaskedConv2D(4, (3,)), "kernel_size"),
        (lambda: MaskedConv2D(4, (3, 3, 3)), "kernel_size"),
        (lambda: MaskedConv2D(4, (3, 2.0)), "kernel_size"),
        (lambda: MaskedConv2D(4, 3, strides=0), "strides"),
        (lambda: MaskedConv2D(4, 3, dilation_rate=(1, 0)), "dilation_rate"),
        (lambda: MaskedConv2D(4, 3, padding="causal"), "padding"),
        (lambda: MaskedConv2D(4, 3, data_format="NHWC"), "data_format"),
        (lambda: MaskedConv2D(4, 3, groups=3), "groups"),
        (lambda: MaskedConv2D(4, 3, groups=0), "groups"),
        (lambda: MaskedConv2D(4, 3, strides=2, dilation_rate=2), "dilation_rate"),
        (lambda: MaskedConv2D(4, 3, strides=(1, 2), dilation_rate=(2, 1)), "strides"),
        (lambda: MaskedConv2D(4, 3, lora_rank=1), "lora_rank"),
    ],
)
def test_init_errors(make, match):
    with pytest.raises(ValueError, match=match) as info:
        make()
    assert "Received:" in str(info.value)


def test_build_errors():
    with pytest.raises(ValueError, match="groups"):
        MaskedConv2D(4, 3, groups=2).build((None, 5, 5, 3))  # 3 % 2 != 0.
    with pytest.raises(ValueError, match="groups"):
        MaskedConv2D(4, 1, data_format="channels_first").build((None, None, 5, 5))
    with pytest.raises(ValueError, match="input_shape"):
        MaskedDense(2).build((None, None))


def test_padding_case_insensitive():
    assert MaskedConv2D(2, 3, padding="SAME").padding == "same"


# ---------------------------------------------------------------------------
# masked_layers.
# ---------------------------------------------------------------------------


def test_masked_layers_nested_shared_and_ordered():
    a, b = MaskedDense(4, name="a"), MaskedDense(4, name="b")
    inner = keras.Sequential([keras.Input((4,)), a, keras.layers.Dense(4), b], name="inner")
    shared = MaskedDense(4, name="shared")
    last = MaskedDense(2, name="last")
    inputs = keras.Input((4,))
    h = inner(inputs)
    h = shared(h)
    h = keras.layers.ReLU()(h)
    h = shared(h)
    outputs = last(h)
    outer = keras.Model(inputs, outputs)
    wrapper = keras.Sequential([keras.Input((4,)), outer, keras.layers.Dense(1)])
    assert [l.name for l in masked_layers(outer)] == ["a", "b", "shared", "last"]
    assert [l.name for l in masked_layers(wrapper)] == ["a", "b", "shared", "last"]
    assert masked_layers(inner) == [a, b]
    assert masked_layers(a) == [a]
    assert masked_layers(keras.layers.Dense(3)) == []


def test_masked_layers_inside_custom_layer():
    class Block(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.first = MaskedDense(3)
            self.plain = keras.layers.Dense(3)
            self.second = MaskedConv2D(2, 1)

        def call(self, x):
            return self.plain(self.first(x))

    block = Block()
    assert masked_layers(block) == [block.first, block.second]


# ---------------------------------------------------------------------------
# Mixed precision.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, x_shape",
    [(lambda: MaskedDense(3), (2, 4)), (lambda: MaskedConv2D(3, 2), (2, 4, 4, 2))],
)
def test_mixed_bfloat16_smoke(make, x_shape):
    rng = np.random.default_rng(9)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        layer = make()
        x = rng.normal(size=x_shape).astype("float32")
        assert layer(x).dtype == "bfloat16"
        assert layer.kernel.dtype == "float32"
        assert layer.mask.dtype == "float32"
        mask = _random_mask(layer, rng)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                out = tf.cast(layer(x, training=True), tf.float32)
                loss = tf.reduce_sum(tf.square(out))
            return tape.gradient(loss, layer.kernel)

        grad = step().numpy()
        assert np.all(np.isfinite(grad)) and np.any(grad[mask == 1] != 0)
        np.testing.assert_array_equal(grad[mask == 0], 0.0)
        np.testing.assert_array_equal(layer.mask.numpy(), mask)
        assert set(np.unique(layer.mask.numpy())) == {0.0, 1.0}
        assert layer(x, training=False).dtype == "bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ---------------------------------------------------------------------------
# Docstring examples.
# ---------------------------------------------------------------------------


def test_docstring_examples():
    result = doctest.testmod(
        rigl_keras.layers,
        extraglobs={"np": np, "tf": tf, "keras": keras},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.attempted > 0
    assert result.failed == 0
