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
from rigl_keras.layers import DenseGradientRecorder
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
    """A plain Keras layer with the same config holding `kernel * mask`."""
    config = layer.get_config()
    config.pop("name")
    if isinstance(layer, MaskedDense):
        twin = keras.layers.Dense(**config)
    else:
        twin = keras.layers.Conv2D(**config)
    twin.build(input_shape)
    _copy_into_twin(layer, twin)
    return twin


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
    assert layer.recorder is None


def test_sparsity_property():
    layer = MaskedDense(5)
    layer(np.ones((1, 4), "float32"))
    mask = np.zeros((4, 5), "float32")
    mask[:, :2] = 1.0  # 8 of 20 active.
    layer.mask.assign(mask)
    assert layer.sparsity == pytest.approx(0.6)


def test_recorder_attribute_type_checked():
    layer = MaskedDense(2)
    with pytest.raises(TypeError, match="recorder"):
        layer.recorder = "not a recorder"
    layer.recorder = None


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
# Dense gradient: what the kernel receives and what the recorder stores.
# ---------------------------------------------------------------------------


def _recorder(layer, record_step=1, counter=0, momentum=None):
    recorder = DenseGradientRecorder(
        tuple(layer.kernel.shape),
        tf.Variable(counter, dtype=tf.int64),
        tf.Variable(record_step, dtype=tf.int64),
        momentum=momentum,
    )
    layer.recorder = recorder
    return recorder


def _dense_model():
    return keras.Sequential(
        [
            keras.Input((6,)),
            MaskedDense(5, activation="tanh"),
            MaskedDense(4, activation="sigmoid"),
            MaskedDense(3),
        ]
    ), keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="tanh"),
            keras.layers.Dense(4, activation="sigmoid"),
            keras.layers.Dense(3),
        ]
    ), (8, 6), (8, 3)


def _conv_model():
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            MaskedConv2D(4, 3, padding="same", activation="tanh"),
            MaskedConv2D(4, 3, strides=2, groups=2),
            keras.layers.Flatten(),
            MaskedDense(2),
        ]
    ), keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, padding="same", activation="tanh"),
            keras.layers.Conv2D(4, 3, strides=2, groups=2),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    ), (3, 6, 6, 2), (3, 2)


def _sparsify_and_copy(masked_model, plain_model, rng):
    plain = [l for l in plain_model.layers if l.weights]
    masked = masked_layers(masked_model)
    assert len(plain) == len(masked)
    for m_layer, p_layer in zip(masked, plain):
        m_layer.bias.assign(rng.normal(size=m_layer.bias.shape) * 0.1)
        _random_mask(m_layer, rng)
        _copy_into_twin(m_layer, p_layer)
    return masked, plain


def _loss(outputs, y):
    return tf.reduce_mean(tf.square(outputs - y))


@pytest.mark.parametrize("make", [_dense_model, _conv_model])
def test_recorded_gradient_is_dense_gradient(make):
    rng = np.random.default_rng(4)
    masked_model, plain_model, x_shape, y_shape = make()
    masked, plain = _sparsify_and_copy(masked_model, plain_model, rng)
    recorders = [_recorder(layer) for layer in masked]
    x = tf.constant(rng.normal(size=x_shape), tf.float32)
    y = tf.constant(rng.normal(size=y_shape), tf.float32)

    @tf.function
    def masked_step():
        with tf.GradientTape() as tape:
            loss = _loss(masked_model(x, training=True), y)
        return loss, tape.gradient(loss, [l.kernel for l in masked])

    @tf.function
    def plain_step():
        with tf.GradientTape() as tape:
            loss = _loss(plain_model(x, training=True), y)
        return loss, tape.gradient(loss, [l.kernel for l in plain])

    masked_loss, kernel_grads = masked_step()
    plain_loss, dense_grads = plain_step()
    np.testing.assert_allclose(masked_loss.numpy(), plain_loss.numpy(), rtol=1e-6)
    for layer, recorder, kernel_grad, dense_grad in zip(
        masked, recorders, kernel_grads, dense_grads
    ):
        dense_grad = dense_grad.numpy()
        mask = layer.mask.numpy()
        recorded = recorder.gradient.numpy()
        assert recorder.gradient.dtype == tf.float32
        # The dense gradient is non-zero at inactive entries: it is what
        # RigL ranks them by.
        assert np.any(dense_grad[mask == 0] != 0)
        np.testing.assert_allclose(recorded, dense_grad, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(
            kernel_grad.numpy(), dense_grad * mask, rtol=1e-6, atol=1e-6
        )
        np.testing.assert_array_equal(kernel_grad.numpy()[mask == 0], 0.0)


def test_no_recording_off_the_record_step():
    rng = np.random.default_rng(5)
    masked_model, plain_model, x_shape, y_shape = _dense_model()
    masked, _ = _sparsify_and_copy(masked_model, plain_model, rng)
    layer = masked[1]
    x = tf.constant(rng.normal(size=x_shape), tf.float32)
    y = tf.constant(rng.normal(size=y_shape), tf.float32)
    recorder = _recorder(layer, record_step=5, counter=0)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = _loss(masked_model(x, training=True), y)
        return tape.gradient(loss, layer.kernel)

    grad = step()
    assert np.any(grad.numpy() != 0)
    np.testing.assert_array_equal(recorder.gradient.numpy(), 0.0)
    recorder.record_step.assign(-1)
    step()
    np.testing.assert_array_equal(recorder.gradient.numpy(), 0.0)
    # Counter 4 -> step 5 is being applied: recorded, by the same trace.
    recorder.step_counter.assign(4)
    recorder.record_step.assign(5)
    step()
    assert np.any(recorder.gradient.numpy() != 0)
    recorder.reset()
    np.testing.assert_array_equal(recorder.gradient.numpy(), 0.0)


def test_int32_record_step_accepted():
    layer = MaskedDense(2)
    layer(np.ones((1, 3), "float32"))
    recorder = DenseGradientRecorder(
        (3, 2), tf.Variable(0, dtype=tf.int64), tf.Variable(1)
    )
    assert bool(recorder.should_record())
    recorder.record_step.assign(3)
    assert not bool(recorder.should_record())


def test_recording_sums_over_call_sites_of_a_shared_layer():
    rng = np.random.default_rng(6)
    shared = MaskedDense(4, activation="tanh")
    inputs = keras.Input((4,))
    outputs = shared(shared(inputs))
    model = keras.Model(inputs, outputs)
    _random_mask(shared, rng)
    shared.bias.assign(rng.normal(size=4) * 0.1)
    recorder = _recorder(shared)
    # Reference: two distinct plain layers holding the same W * M.
    first, second = keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(4, activation="tanh")
    for twin in (first, second):
        twin.build((None, 4))
        _copy_into_twin(shared, twin)
    x = tf.constant(rng.normal(size=(5, 4)), tf.float32)
    y = tf.constant(rng.normal(size=(5, 4)), tf.float32)

    @tf.function
    def masked_step():
        with tf.GradientTape() as tape:
            loss = _loss(model(x, training=True), y)
        return tape.gradient(loss, shared.kernel)

    with tf.GradientTape() as tape:
        loss = _loss(second(first(x)), y)
    grad_first, grad_second = tape.gradient(loss, [first.kernel, second.kernel])
    expected = grad_first.numpy() + grad_second.numpy()
    kernel_grad = masked_step()
    np.testing.assert_allclose(recorder.gradient.numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        kernel_grad.numpy(), expected * shared.mask.numpy(), rtol=1e-6, atol=1e-6
    )
    # Neither site alone gives the sum.
    assert not np.allclose(recorder.gradient.numpy(), grad_first.numpy(), atol=1e-6)
    assert not np.allclose(recorder.gradient.numpy(), grad_second.numpy(), atol=1e-6)


def test_momentum_recorder_keeps_moving_average_every_step():
    rng = np.random.default_rng(7)
    layer = MaskedDense(3)
    layer(np.ones((1, 4), "float32"))
    _random_mask(layer, rng)
    twin = _plain_twin(layer, (None, 4))
    recorder = _recorder(layer, record_step=-1, momentum=0.75)

    @tf.function
    def masked_step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(x, training=True)))
        return tape.gradient(loss, layer.kernel)

    def dense_grad(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(twin(x)))
        return tape.gradient(loss, twin.kernel).numpy()

    expected = np.zeros((4, 3), "float32")
    for _ in range(3):
        x = tf.constant(rng.normal(size=(2, 4)), tf.float32)
        masked_step(x)
        expected = 0.75 * expected + 0.25 * dense_grad(x)
        np.testing.assert_allclose(recorder.gradient.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 2.0])
def test_recorder_momentum_validated(momentum):
    with pytest.raises(ValueError, match="momentum"):
        DenseGradientRecorder((2, 2), tf.Variable(0, dtype=tf.int64),
                              tf.Variable(1, dtype=tf.int64), momentum=momentum)


def test_recorder_in_model_fit_records_first_step():
    """Integration: step counter = optimizer.iterations, as the callback does."""
    rng = np.random.default_rng(8)
    masked_model, plain_model, x_shape, y_shape = _dense_model()
    masked, plain = _sparsify_and_copy(masked_model, plain_model, rng)
    x = rng.normal(size=x_shape).astype("float32")
    y = rng.normal(size=y_shape).astype("float32")
    with tf.GradientTape() as tape:
        loss = _loss(plain_model(x), y)
    expected = tape.gradient(loss, plain[0].kernel).numpy()
    masked_model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    masked_model.optimizer.build(masked_model.trainable_variables)
    recorder = DenseGradientRecorder(
        tuple(masked[0].kernel.shape),
        masked_model.optimizer.iterations,
        tf.Variable(1, dtype=tf.int64),
    )
    masked[0].recorder = recorder
    masked_model.fit(x, y, batch_size=len(x), epochs=2, shuffle=False, verbose=0)
    # Recorded on step 1 only (the second step's gradient differs).
    np.testing.assert_allclose(recorder.gradient.numpy(), expected, rtol=1e-5, atol=1e-6)
    for layer in masked:
        np.testing.assert_array_equal(layer.kernel.numpy()[layer.mask.numpy() == 0], 0.0)


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
        recorder = _recorder(layer)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                out = tf.cast(layer(x, training=True), tf.float32)
                loss = tf.reduce_sum(tf.square(out))
            return tape.gradient(loss, layer.kernel)

        grad = step().numpy()
        assert recorder.gradient.dtype == tf.float32
        recorded = recorder.gradient.numpy()
        assert np.all(np.isfinite(recorded)) and np.any(recorded[mask == 0] != 0)
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


def test_recording_overwrites_a_non_finite_leftover():
    """A step skipped by a LossScaleOptimizer leaves inf; the retry replaces it."""
    layer = MaskedDense(2)
    x = np.ones((1, 3), "float32")
    layer(x)
    counter = tf.Variable(0, dtype=tf.int64)
    recorder = DenseGradientRecorder((3, 2), counter, tf.Variable(1, dtype=tf.int64))
    layer.recorder = recorder
    recorder.gradient.assign(tf.fill((3, 2), float("inf")))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, training=True))
    tape.gradient(loss, layer.kernel.value)
    np.testing.assert_array_equal(recorder.gradient.numpy(), np.ones((3, 2)))
