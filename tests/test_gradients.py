"""Tests for rigl_keras.gradients: the optimizer hook and the recorder.

The reference for every gradient is a plain copy of the model holding the
masked weights `W * M`: its gradient is the dense gradient `dL/d(W * M)`
that RigL ranks inactive positions by.
"""

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl_keras
from rigl_keras import gradients
from rigl_keras.gradients import DenseGradientRecorder

L = keras.layers

# (name, builder of the layer stack, input maker).
_FLOAT = lambda shape: lambda rng: rng.normal(size=shape).astype("float32")
_CASES = {
    "Dense": (lambda: [L.Dense(5, activation="tanh")], _FLOAT((4, 6))),
    "EinsumDense": (lambda: [L.EinsumDense("ab,bcd->acd", (3, 2))], _FLOAT((4, 6))),
    "MultiHeadAttention": (None, _FLOAT((2, 5, 6))),
    "Conv1D": (lambda: [L.Conv1D(3, 3, padding="same")], _FLOAT((2, 7, 4))),
    "Conv2D": (lambda: [L.Conv2D(3, 3)], _FLOAT((2, 6, 6, 2))),
    "Conv3D": (lambda: [L.Conv3D(2, 2)], _FLOAT((2, 4, 4, 4, 2))),
    "Conv1DTranspose": (lambda: [L.Conv1DTranspose(3, 3)], _FLOAT((2, 5, 4))),
    "Conv2DTranspose": (lambda: [L.Conv2DTranspose(3, 3, strides=2)], _FLOAT((2, 4, 4, 2))),
    "Conv3DTranspose": (lambda: [L.Conv3DTranspose(2, 2)], _FLOAT((2, 3, 3, 3, 2))),
    "DepthwiseConv1D": (lambda: [L.DepthwiseConv1D(3, depth_multiplier=2)], _FLOAT((2, 7, 3))),
    "DepthwiseConv2D": (lambda: [L.DepthwiseConv2D(3, depth_multiplier=2)], _FLOAT((2, 6, 6, 3))),
    "SeparableConv1D": (lambda: [L.SeparableConv1D(4, 3, depth_multiplier=2)], _FLOAT((2, 7, 3))),
    "SeparableConv2D": (lambda: [L.SeparableConv2D(4, 3)], _FLOAT((2, 6, 6, 3))),
    "Embedding": (
        lambda: [L.Embedding(11, 4), L.Flatten()],
        lambda rng: rng.integers(0, 11, size=(6, 5)).astype("int32"),
    ),
    "SimpleRNN": (lambda: [L.SimpleRNN(4)], _FLOAT((3, 5, 2))),
    "LSTM": (lambda: [L.LSTM(4)], _FLOAT((3, 5, 2))),
    "GRU": (lambda: [L.GRU(4)], _FLOAT((3, 5, 2))),
    "MaskedDense": (lambda: [rigl_keras.MaskedDense(5)], _FLOAT((4, 6))),
    "MaskedConv2D": (lambda: [rigl_keras.MaskedConv2D(3, 3)], _FLOAT((2, 6, 6, 2))),
}


def _model(name, x):
    """A functional model around the case's layers, built on `x`."""
    build, _ = _CASES[name]
    inputs = keras.Input(x.shape[1:], dtype=x.dtype)
    if name == "MultiHeadAttention":
        h = L.MultiHeadAttention(2, 3)(inputs, inputs)
    else:
        h = inputs
        for layer in build():
            h = layer(h)
    return keras.Model(inputs, h)


def _randomize_masks(model, rng):
    for weight in rigl_keras.masked_weights(model):
        mask = (rng.random(weight.shape) < 0.5).astype("float32")
        mask.reshape(-1)[0] = 0.0
        weight.mask.assign(mask)
        weight.apply_mask()


def _loss(outputs):
    return tf.reduce_sum(tf.square(tf.cast(outputs, tf.float32) - 0.3))


@pytest.mark.parametrize("name", sorted(_CASES))
def test_hook_records_dense_gradient_and_masks_the_step(name):
    rng = np.random.default_rng(0)
    x = _CASES[name][1](rng)
    model, plain = _model(name, x), _model(name, x)
    rigl_keras.sparsify(model)
    _randomize_masks(model, rng)
    plain.set_weights(model.get_weights())  # the same W * M
    for w in rigl_keras.masked_weights(plain):  # MaskedDense/MaskedConv2D
        w.mask.assign(np.ones(w.shape, "float32"))
    weights = rigl_keras.masked_weights(model)
    assert weights
    optimizer = keras.optimizers.SGD(1.0)
    optimizer.build(model.trainable_variables)
    record_step = tf.Variable(1, dtype=tf.int64)
    recorders = {
        w.key: DenseGradientRecorder(w.shape, optimizer.iterations, record_step)
        for w in weights
    }
    gradients.attach(optimizer, weights, recorders)
    before = {w.key: keras.ops.convert_to_numpy(w.variable) for w in weights}

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = _loss(model(x, training=True))
        variables = model.trainable_variables
        optimizer.apply(tape.gradient(loss, variables), variables)

    with tf.GradientTape() as tape:
        loss = _loss(plain(x, training=True))
    plain_grads = dict(zip(
        [v.path for v in plain.trainable_variables],
        tape.gradient(loss, plain.trainable_variables),
    ))
    step()
    plain_by_position = list(plain_grads.values())
    positions = {id(v): i for i, v in enumerate(model.trainable_variables)}
    for w in weights:
        dense = tf.convert_to_tensor(plain_by_position[positions[id(w.variable)]]).numpy()
        mask = keras.ops.convert_to_numpy(w.mask)
        # The dense gradient is non-zero at inactive entries: RigL ranks them by it.
        assert np.any(dense[mask == 0] != 0), w.key
        np.testing.assert_allclose(
            recorders[w.key].gradient.numpy(), dense, rtol=1e-5, atol=1e-5
        )
        after = keras.ops.convert_to_numpy(w.variable)
        np.testing.assert_array_equal(after[mask == 0], 0.0)
        np.testing.assert_allclose(
            after, before[w.key] - dense * mask, rtol=1e-5, atol=1e-5
        )
    gradients.detach(optimizer, weights)
    assert not gradients.attached_optimizer(optimizer)


def _shared_model():
    shared = L.Dense(4, activation="tanh", name="shared")
    inputs = keras.Input((4,))
    return keras.Model(inputs, shared(shared(inputs))), shared


def test_hook_sees_the_sum_over_call_sites_of_a_shared_layer():
    rng = np.random.default_rng(1)
    model, shared = _shared_model()
    rigl_keras.sparsify(model)
    _randomize_masks(model, rng)
    first, second = L.Dense(4, activation="tanh"), L.Dense(4, activation="tanh")
    for twin in (first, second):
        twin.build((None, 4))
        twin.set_weights(shared.get_weights())
    x = tf.constant(rng.normal(size=(5, 4)), tf.float32)
    with tf.GradientTape() as tape:
        loss = _loss(second(first(x)))
    expected = sum(g.numpy() for g in tape.gradient(loss, [first.kernel, second.kernel]))
    (weight,) = rigl_keras.masked_weights(model)
    optimizer = keras.optimizers.SGD(0.0)
    optimizer.build(model.trainable_variables)
    recorder = DenseGradientRecorder(weight.shape, optimizer.iterations, tf.Variable(1, dtype=tf.int64))
    gradients.attach(optimizer, [weight], {weight.key: recorder})
    with tf.GradientTape() as tape:
        loss = _loss(model(x, training=True))
    optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    np.testing.assert_allclose(recorder.gradient.numpy(), expected, rtol=1e-5, atol=1e-6)


def _one_dense(rng):
    model = keras.Sequential([keras.Input((4,)), L.Dense(3)])
    rigl_keras.sparsify(model)
    _randomize_masks(model, rng)
    (weight,) = rigl_keras.masked_weights(model)
    return model, weight


def test_no_recording_off_the_record_step():
    rng = np.random.default_rng(2)
    model, weight = _one_dense(rng)
    optimizer = keras.optimizers.SGD(0.0)
    optimizer.build(model.trainable_variables)
    recorder = DenseGradientRecorder(weight.shape, optimizer.iterations, tf.Variable(5, dtype=tf.int64))
    gradients.attach(optimizer, [weight], {weight.key: recorder})
    x = tf.constant(rng.normal(size=(3, 4)), tf.float32)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = _loss(model(x, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    for _ in range(3):  # steps 1-3
        step()
    np.testing.assert_array_equal(recorder.gradient.numpy(), 0.0)
    step()  # step 4
    np.testing.assert_array_equal(recorder.gradient.numpy(), 0.0)
    step()  # step 5: recorded by the same trace
    assert np.any(recorder.gradient.numpy() != 0)
    recorder.reset()
    np.testing.assert_array_equal(recorder.gradient.numpy(), 0.0)


def test_momentum_recorder_keeps_moving_average_every_step():
    rng = np.random.default_rng(3)
    model, weight = _one_dense(rng)
    optimizer = keras.optimizers.SGD(0.0)
    optimizer.build(model.trainable_variables)
    recorder = DenseGradientRecorder(
        weight.shape, optimizer.iterations, tf.Variable(-1, dtype=tf.int64), momentum=0.75
    )
    gradients.attach(optimizer, [weight], {weight.key: recorder})
    expected = np.zeros(weight.shape, "float32")
    for _ in range(3):
        x = tf.constant(rng.normal(size=(2, 4)), tf.float32)
        with tf.GradientTape() as tape:
            loss = _loss(model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        expected = 0.75 * expected + 0.25 * grads[0].numpy()
        optimizer.apply(grads, model.trainable_variables)
        np.testing.assert_allclose(recorder.gradient.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_loss_scale_optimizer_hook_sees_unscaled_gradients():
    rng = np.random.default_rng(4)
    model, weight = _one_dense(rng)
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.0), initial_scale=1024.0)
    optimizer.build(model.trainable_variables)
    recorder = DenseGradientRecorder(weight.shape, optimizer.iterations, tf.Variable(1, dtype=tf.int64))
    gradients.attach(optimizer, [weight], {weight.key: recorder})
    assert gradients.attached_optimizer(optimizer)
    x = tf.constant(rng.normal(size=(3, 4)), tf.float32)
    with tf.GradientTape() as tape:
        loss = _loss(model(x, training=True))
        scaled = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    np.testing.assert_allclose(
        recorder.gradient.numpy(), grads[0].numpy() / 1024.0, rtol=1e-5, atol=1e-6
    )


def test_attach_reports_changes():
    rng = np.random.default_rng(5)
    model, weight = _one_dense(rng)
    optimizer = keras.optimizers.SGD(0.1)
    assert gradients.attach(optimizer, [weight])
    assert not gradients.attach(optimizer, [weight])
    recorder = DenseGradientRecorder(weight.shape, optimizer.iterations, tf.Variable(1, dtype=tf.int64))
    assert gradients.attach(optimizer, [weight], {weight.key: recorder})


def test_recording_overwrites_a_non_finite_leftover():
    """A step skipped by a LossScaleOptimizer leaves inf; the retry replaces it."""
    recorder = DenseGradientRecorder((3, 2), tf.Variable(0, dtype=tf.int64), tf.Variable(1, dtype=tf.int64))
    recorder.gradient.assign(tf.fill((3, 2), float("inf")))
    recorder.maybe_record(tf.ones((3, 2)))
    np.testing.assert_array_equal(recorder.gradient.numpy(), np.ones((3, 2)))


def test_int32_record_step_accepted():
    recorder = DenseGradientRecorder((3, 2), tf.Variable(0, dtype=tf.int64), tf.Variable(1))
    assert bool(recorder.should_record())
    recorder.record_step.assign(3)
    assert not bool(recorder.should_record())


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 2.0])
def test_recorder_momentum_validated(momentum):
    with pytest.raises(ValueError, match="momentum"):
        DenseGradientRecorder((2, 2), tf.Variable(0, dtype=tf.int64),
                              tf.Variable(1, dtype=tf.int64), momentum=momentum)


def _lazy_recorder():
    return DenseGradientRecorder(
        (3, 2), tf.Variable(0, dtype=tf.int64), tf.Variable(1, dtype=tf.int64), lazy=True)


def test_lazy_recorder_holds_its_gradient_from_allocate_to_reset():
    recorder = _lazy_recorder()
    assert recorder.gradient.numpy().shape == (0,)
    recorder.allocate()
    np.testing.assert_array_equal(recorder.value().numpy(), np.zeros((3, 2)))
    recorder.mode = "always"

    @tf.function
    def record(grad):
        return recorder.maybe_record(grad)

    grad = np.arange(6, dtype="float32").reshape(3, 2)
    record(tf.constant(grad))
    np.testing.assert_array_equal(recorder.value().numpy(), grad)
    recorder.reset()
    assert recorder.gradient.numpy().shape == (0,)
    # The traced function records again after the next allocate().
    recorder.allocate()
    record(tf.constant(2 * grad))
    np.testing.assert_array_equal(recorder.value().numpy(), 2 * grad)


def test_lazy_recorder_refuses_to_decide_in_the_graph():
    recorder = _lazy_recorder()
    recorder.allocate()
    with pytest.raises(ValueError, match="mode='step'"):
        recorder.maybe_record(tf.ones((3, 2)))


def test_lazy_recorder_keeps_no_moving_average():
    with pytest.raises(ValueError, match="momentum=0.9"):
        DenseGradientRecorder((2, 2), tf.Variable(0, dtype=tf.int64),
                              tf.Variable(1, dtype=tf.int64), momentum=0.9, lazy=True)


def test_docstring_examples():
    failures, _ = doctest.testmod(
        gradients, extraglobs={"tf": tf, "keras": keras}, optionflags=doctest.ELLIPSIS
    )
    assert failures == 0
