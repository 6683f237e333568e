"""Tests for `rigl_keras.strip`, `export`, `tflite` and `report`.

Every model gets random masks (80-90% zeros), non-zero kernels and biases
and non-trivial BatchNormalization statistics, so a dropped mask, a lost
bias or a layer run in training mode changes the outputs. The SavedModels
are written once per module and reloaded in a separate Python process.
"""

import doctest
import json
import os
import shutil
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl_keras
from _helpers import keep_first  # tests/_helpers.py
from _helpers import small_transformer
from rigl_keras import masking
from rigl_keras.masking import random_mask
from rigl_keras.layers import MaskedLayer

ATOL = 1e-6  # Keras vs stripped Keras vs SavedModel: same float32 graph.
TFLITE_ATOL = 1e-5  # TFLite kernels (XNNPack) sum in another order.


# --------------------------------------------------------------------------
# Models.


def _dense_model():
    return keras.Sequential(
        [
            keras.Input((20,)),
            rigl_keras.MaskedDense(32, activation="relu", name="fc1"),
            rigl_keras.MaskedDense(16, activation="tanh", name="fc2"),
            rigl_keras.MaskedDense(4, name="fc3"),
        ],
        name="dense_only",
    )


def _conv_model():
    return keras.Sequential(
        [
            keras.Input((10, 10, 3)),
            rigl_keras.MaskedConv2D(8, 3, activation="relu", name="conv1"),
            rigl_keras.MaskedConv2D(6, 3, strides=2, padding="same", name="conv2"),
            keras.layers.Flatten(),
            rigl_keras.MaskedDense(3, name="fc"),
        ],
        name="conv",
    )


def _mixed_model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            rigl_keras.MaskedConv2D(6, 3, padding="same", use_bias=False, name="conv"),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            rigl_keras.MaskedDense(12, name="fc1"),
            keras.layers.BatchNormalization(name="bn2"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(5, name="head"),
        ],
        name="mixed",
    )


def _functional_model():
    """Two branches, a nested Sequential, BatchNormalization and Dropout."""
    inputs = keras.Input((6, 6, 3), name="image")
    x = rigl_keras.MaskedConv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.5)(x)
    tower = keras.Sequential(
        [
            keras.Input((64,)),
            rigl_keras.MaskedDense(10, activation="relu", name="tower_fc"),
            keras.layers.Dense(10, name="tower_plain"),
        ],
        name="tower",
    )
    skip = rigl_keras.MaskedDense(10, name="skip")(x)
    x = keras.layers.Add()([tower(x), skip])
    outputs = rigl_keras.MaskedDense(3, activation="softmax", name="out")(x)
    return keras.Model(inputs, outputs, name="functional")


MODELS = {
    "dense_only": (_dense_model, 0.9),
    "conv": (_conv_model, 0.8),
    "mixed": (_mixed_model, 0.8),
    "functional": (_functional_model, 0.8),
}


def _sparsify(model, sparsity, seed=0):
    """Random masks and non-zero weights; returns the mask zeros per layer."""
    rng = np.random.default_rng(seed)
    zeros = {}
    for i, layer in enumerate(rigl_keras.masked_layers(model)):
        shape = tuple(layer.mask.shape)
        num_zeros = int(round(sparsity * np.prod(shape)))
        mask = random_mask(shape, num_zeros, seed=seed + i)
        # |values| in [0.1, 1): a kept weight is never zero.
        values = rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)
        layer.mask.assign(mask)
        layer.kernel.assign((values * mask).astype("float32"))
        if layer.bias is not None:
            layer.bias.assign(rng.uniform(-0.5, 0.5, layer.bias.shape).astype("float32"))
        zeros[layer.name] = num_zeros
    for layer in model._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(size=n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(size=n).astype("float32"))
    return zeros


def _make(name, seed=0):
    build, sparsity = MODELS[name]
    keras.utils.set_random_seed(seed)
    model = build()
    zeros = _sparsify(model, sparsity, seed)
    return model, zeros


def _inputs(model, batch=5, seed=1):
    shape = (batch,) + tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _predict(model, x):
    return model(x, training=False).numpy()


def _np(variable):
    return variable.numpy()


def _state(model):
    return [v.numpy().copy() for v in model.weights]


# --------------------------------------------------------------------------
# strip_masks.


@pytest.mark.parametrize("name", sorted(MODELS))
def test_strip_masks_same_outputs_and_plain_layers(name):
    model, _ = _make(name)
    x = _inputs(model)
    stripped = rigl_keras.strip_masks(model)

    np.testing.assert_allclose(_predict(stripped, x), _predict(model, x), rtol=0, atol=ATOL)
    assert not rigl_keras.masked_layers(stripped)
    # Each masked layer became its plain twin, same name, kernel * mask baked in.
    plain = {
        layer.name: layer
        for layer in stripped._flatten_layers(include_self=False, recursive=True)  # pylint: disable=protected-access
    }
    for layer in rigl_keras.masked_layers(model):
        twin = plain[layer.name]
        expected = keras.layers.Dense if isinstance(layer, rigl_keras.MaskedDense) else keras.layers.Conv2D
        assert type(twin) is expected
        assert twin.get_config()["activation"] == layer.get_config()["activation"]
        np.testing.assert_array_equal(
            _np(twin.kernel), _np(layer.kernel) * _np(layer.mask)
        )
        if layer.use_bias:
            np.testing.assert_array_equal(_np(twin.bias), _np(layer.bias))
        else:
            assert twin.bias is None
    # Every other layer is of the same type with equal weights.
    for layer in model._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
        if isinstance(layer, (MaskedLayer, keras.layers.InputLayer)):
            continue
        twin = plain[layer.name]
        assert type(twin) is type(layer)
        if not isinstance(layer, keras.Model):
            for a, b in zip(layer.get_weights(), twin.get_weights()):
                np.testing.assert_array_equal(a, b)


def test_strip_masks_bakes_mask_over_hand_written_inactive_weights():
    # Inference output of a masked layer is W * M even with non-zeros written
    # into inactive entries; the stripped kernel must be W * M, not W.
    model = keras.Sequential([keras.Input((2,)), rigl_keras.MaskedDense(2, use_bias=False)])
    layer = model.layers[0]
    layer.mask.assign(np.array([[1.0, 0.0], [0.0, 1.0]], "float32"))
    layer.kernel.assign(np.array([[2.0, 5.0], [7.0, 3.0]], "float32"))  # no apply_mask
    stripped = rigl_keras.strip_masks(model)
    np.testing.assert_array_equal(
        _np(stripped.layers[0].kernel), [[2.0, 0.0], [0.0, 3.0]]
    )
    # x = [1, 1]: [2, 3] through the mask, [9, 8] without it.
    np.testing.assert_array_equal(_predict(stripped, np.ones((1, 2), "float32")), [[2.0, 3.0]])


def test_strip_masks_leaves_original_untouched():
    model, _ = _make("functional")
    x = _inputs(model)
    before_state, before_out = _state(model), _predict(model, x)
    before_types = [type(layer) for layer in model.layers]

    stripped = rigl_keras.strip_masks(model)
    for variable in stripped.weights:  # Scribble over the copy.
        variable.assign(np.full(variable.shape, 3.0, variable.dtype))

    assert [type(layer) for layer in model.layers] == before_types
    assert len(rigl_keras.masked_layers(model)) == 4
    for a, b in zip(_state(model), before_state):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(_predict(model, x), before_out)
    original_ids = {id(v) for v in model.weights}
    assert not original_ids & {id(v) for v in stripped.weights}


def test_strip_masks_of_model_compiled_with_custom_loss():
    # clone_model would recompile the copy from the compile config, which
    # fails for an unregistered loss; the copy comes back uncompiled instead.
    model, _ = _make("dense_only")
    model.compile("adam", loss=lambda y, p: keras.ops.mean((y - p) ** 2))
    x = _inputs(model)
    stripped = rigl_keras.strip_masks(model)
    assert model.compiled and not stripped.compiled
    np.testing.assert_allclose(_predict(stripped, x), _predict(model, x), rtol=0, atol=ATOL)


def test_strip_masks_without_masked_layers_warns_and_copies():
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="relu"),
         keras.layers.BatchNormalization(), keras.layers.Dense(2)]
    )
    x = _inputs(model)
    with pytest.warns(UserWarning, match="contains no masked weight"):
        copy = rigl_keras.strip_masks(model)
    assert copy is not model
    assert [type(layer) for layer in copy.layers] == [type(layer) for layer in model.layers]
    for a, b in zip(_state(copy), _state(model)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(_predict(copy, x), _predict(model, x))


def test_strip_masks_of_masked_model_does_not_warn():
    model, _ = _make("dense_only")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        rigl_keras.strip_masks(model)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.fc = rigl_keras.MaskedDense(2)

    def call(self, inputs):
        return self.fc(inputs)


def test_strip_masks_subclassed_model_error():
    model = _Subclassed()
    model(np.ones((1, 3), "float32"))
    with pytest.raises(ValueError, match=r"subclassed model of type '_Subclassed'.*functional model"):
        rigl_keras.strip_masks(model)


def test_strip_masks_nested_subclassed_model_with_masks_error():
    inner = _Subclassed()
    inputs = keras.Input((3,))
    model = keras.Model(inputs, inner(inputs))
    with pytest.raises(ValueError, match=r"contains masked layers.*not a Sequential or functional"):
        rigl_keras.strip_masks(model)


class _MaskedScale(MaskedLayer):
    """A masked layer type without a plain Keras twin."""

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1],), initializer="ones")
        self.bias = None
        self._build_mask()

    def call(self, inputs, training=None):
        return inputs * self._effective_kernel(training)


def test_strip_masks_unsupported_layer_error():
    model = keras.Sequential(
        [keras.Input((3,)), rigl_keras.MaskedDense(3), _MaskedScale(name="scale")]
    )
    with pytest.raises(ValueError, match=r"layer 'scale'.*_MaskedScale.*MaskedDense, MaskedConv2D"):
        rigl_keras.strip_masks(model)


def test_strip_masks_unbuilt_model_error():
    model = keras.Sequential([rigl_keras.MaskedDense(2)])
    with pytest.raises(ValueError, match="not built and has no defined inputs"):
        rigl_keras.strip_masks(model)


def test_strip_masks_model_built_without_input_layer():
    model = keras.Sequential([rigl_keras.MaskedDense(3), rigl_keras.MaskedDense(2)])
    model.build((None, 4))
    _sparsify(model, 0.5)
    x = _inputs(model)
    np.testing.assert_allclose(
        _predict(rigl_keras.strip_masks(model), x), _predict(model, x), rtol=0, atol=ATOL
    )


def test_strip_masks_not_a_model_error():
    with pytest.raises(TypeError, match="expects a `keras.Model`"):
        rigl_keras.strip_masks(rigl_keras.MaskedDense(2))


# --------------------------------------------------------------------------
# SavedModel.


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each model exported once: {name: (model, zeros, path, x)}."""
    root = tmp_path_factory.mktemp("saved_models")
    out = {}
    for name in sorted(MODELS):
        model, zeros = _make(name)
        path = str(root / name)
        assert rigl_keras.export_saved_model(model, path) == path
        out[name] = (model, zeros, path, _inputs(model, batch=7))
    return out


_LOAD_AND_RUN = """
import json, sys
import numpy as np
import tensorflow as tf
for path, x_file, y_file, serve_file in json.loads(sys.argv[1]):
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures["serving_default"]
    (name, spec), = fn.structured_input_signature[1].items()
    assert spec.shape[0] is None, spec
    x = tf.constant(np.load(x_file))
    outputs = fn(**{name: x})
    np.save(y_file, outputs["output_0"].numpy())
    np.save(serve_file, loaded.serve(x).numpy())  # As Keras' model.export.
print("done")
"""


def test_saved_model_outputs_in_fresh_process(exported, tmp_path):
    jobs = []
    for name, (_, _, path, x) in exported.items():
        np.save(tmp_path / f"{name}_x.npy", x)
        jobs.append([path] + [str(tmp_path / f"{name}_{kind}.npy")
                              for kind in ("x", "y", "serve")])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_RUN, json.dumps(jobs)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name, (model, _, _, x) in exported.items():
        for kind in ("y", "serve"):
            served = np.load(tmp_path / f"{name}_{kind}.npy")
            assert served.shape[0] == 7
            np.testing.assert_allclose(
                served, _predict(model, x), rtol=0, atol=ATOL, err_msg=f"{name} {kind}")


def test_saved_model_variables_keep_the_zeros(exported):
    for name, (model, zeros, path, _) in exported.items():
        reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
        tensors = [
            reader.get_tensor(key)
            for key, shape in reader.get_variable_to_shape_map().items()
            if len(shape) >= 2
        ]
        # Every kernel (rank >= 2) is stored; the only zeros are the pruned
        # weights (kept weights and biases are drawn away from zero).
        assert sum(int((t == 0).sum()) for t in tensors) == sum(zeros.values()), name
        for layer in rigl_keras.masked_layers(model):
            expected = _np(layer.kernel) * _np(layer.mask)
            assert any(
                t.shape == expected.shape and np.array_equal(t, expected) for t in tensors
            ), (name, layer.name)
        # One stored tensor per kernel: no mask variable made it into the export.
        assert len(tensors) == len(masking.kernel_weights(model)), name
        # Every weight is stored once (keras-team/keras#23553 doubles them):
        # the masked model's parameters less the masks.
        stored = sum(
            int(np.prod(shape))
            for key, shape in reader.get_variable_to_shape_map().items()
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH"
        )
        masks = sum(int(np.prod(layer.mask.shape)) for layer in rigl_keras.masked_layers(model))
        assert stored == model.count_params() - masks, name


def test_saved_model_cli_lists_serving_signature(exported):
    path = exported["dense_only"][2]
    cli = shutil.which("saved_model_cli") or os.path.join(
        os.path.dirname(sys.executable), "saved_model_cli"
    )
    if not os.path.exists(cli):
        pytest.skip("saved_model_cli (installed with tensorflow) is not on PATH")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [cli, "show", "--dir", path, "--all"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "signature_def['serving_default']" in result.stdout
    assert "shape: (-1, 20)" in result.stdout  # Free batch dimension.
    assert "shape: (-1, 4)" in result.stdout


def test_export_saved_model_overwrite_protection(tmp_path):
    model, _ = _make("dense_only")
    path = str(tmp_path / "export")
    rigl_keras.export_saved_model(model, path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        rigl_keras.export_saved_model(model, path)

    # overwrite=True replaces the old export: the new kernels are all zero.
    for layer in rigl_keras.masked_layers(model):
        layer.mask.assign(np.zeros(layer.mask.shape, "float32"))
    (tmp_path / "export" / "stale.txt").write_text("old")
    assert rigl_keras.export_saved_model(model, path, overwrite=True) == path
    assert not (tmp_path / "export" / "stale.txt").exists()
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    kernels = [
        reader.get_tensor(key)
        for key, shape in reader.get_variable_to_shape_map().items()
        if len(shape) == 2
    ]
    assert len(kernels) == 3 and all(not k.any() for k in kernels)
    # No staging directories are left behind.
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_export_saved_model_into_empty_directory_and_custom_signature(tmp_path):
    model, _ = _make("dense_only")
    (tmp_path / "empty").mkdir()
    path = rigl_keras.export_saved_model(model, tmp_path / "empty", signature_name="predict")
    assert path == str(tmp_path / "empty")
    loaded = tf.saved_model.load(path)
    # The extra name adds to Keras' "serve" (also "serving_default").
    assert sorted(loaded.signatures) == ["predict", "serve", "serving_default"]
    x = _inputs(model)
    for served in (loaded.signatures["predict"](tf.constant(x))["output_0"],
                   loaded.predict(tf.constant(x)), loaded.serve(tf.constant(x))):
        np.testing.assert_allclose(served.numpy(), _predict(model, x), rtol=0, atol=ATOL)


def test_export_saved_model_bad_input(tmp_path):
    model, _ = _make("dense_only")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match="exists as a file"):
        rigl_keras.export_saved_model(model, a_file)
    with pytest.raises(FileExistsError, match="exists as a file"):
        rigl_keras.export_saved_model(model, a_file, overwrite=True)
    assert a_file.read_text() == "x"
    with pytest.raises(ValueError, match="signature_name"):
        rigl_keras.export_saved_model(model, tmp_path / "m", signature_name="")
    with pytest.raises(ValueError, match="not built and has no defined inputs"):
        rigl_keras.export_saved_model(keras.Sequential([rigl_keras.MaskedDense(2)]), tmp_path / "m")
    subclassed = _Subclassed()
    subclassed(np.ones((1, 3), "float32"))
    with pytest.raises(ValueError, match="subclassed model"):
        rigl_keras.export_saved_model(subclassed, tmp_path / "m")
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------
# TFLite.


def _interpreter_class():
    interpreter = pytest.importorskip(
        "ai_edge_litert.interpreter",
        reason="the LiteRT interpreter is needed to run .tflite files: "
        "pip install ai-edge-litert (the rigl_keras[tflite] extra)",
    )
    return interpreter.Interpreter


def _run_tflite(path, x):
    runner = _interpreter_class()(model_path=path).get_signature_runner("serving_default")
    (name,) = runner.get_input_details()
    return runner(**{name: x})["output_0"]


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_tflite_outputs_match(name, sparse, tmp_path):
    _interpreter_class()
    model, _ = _make(name)
    path = str(tmp_path / f"{name}.tflite")
    assert rigl_keras.export_tflite(model, path, sparse=sparse) == path
    x = _inputs(model, batch=3)
    np.testing.assert_allclose(_run_tflite(path, x), _predict(model, x), rtol=1e-5, atol=TFLITE_ATOL)


def test_tflite_sparse_encoding_is_smaller(tmp_path):
    # fc1 holds 640 of 1216 weights; at 90% sparsity the sparse encoding
    # (values plus indices) must undercut the dense float32 file clearly.
    model, _ = _make("dense_only")
    sparse = rigl_keras.export_tflite(model, tmp_path / "sparse.tflite", sparse=True)
    dense = rigl_keras.export_tflite(model, tmp_path / "dense.tflite", sparse=False)
    assert os.path.getsize(sparse) < 0.8 * os.path.getsize(dense)


def test_export_tflite_bad_input(tmp_path):
    model, _ = _make("dense_only")
    with pytest.raises(IsADirectoryError, match="exists as a directory"):
        rigl_keras.export_tflite(model, tmp_path)
    with pytest.raises(ValueError, match="not built and has no defined inputs"):
        rigl_keras.export_tflite(keras.Sequential([rigl_keras.MaskedDense(2)]), tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()


def test_export_tflite_overwrites_file(tmp_path):
    model, _ = _make("dense_only")
    path = tmp_path / "m.tflite"
    path.write_bytes(b"old")
    rigl_keras.export_tflite(model, path, sparse=False)
    assert path.stat().st_size > 1000


# Quantization and block-sparse RigL models.

BLOCK = rigl_keras.structures.Block((4, 1))
_BUILTIN = "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
_XNNPACK_FAILURE = "failed to delegate FULLY_CONNECTED node"


@pytest.fixture(scope="module")
def block_rigl():
    """A 64-48-32-8 MLP trained with RigL on 4x1 block masks (90%, uniform),
    with the training data (its first 200 inputs calibrate int8)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)),
        rigl_keras.MaskedDense(48, activation="relu", name="fc1"),
        rigl_keras.MaskedDense(32, activation="relu", name="fc2"),
        rigl_keras.MaskedDense(8, name="fc3"),
    ], name="block_mlp")
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 64)).astype("float32")
    y = np.argmax(x[:, :8], axis=1)
    def masks():
        return list(rigl_keras.get_masks(model).values())

    initial = []
    callbacks = [
        rigl_keras.RigLCallback(sparsity=0.9, distribution="uniform", structure=BLOCK,
                                update_freq=2, end_step=12, seed=0),
        # After RigL's on_train_begin: the initial block masks.
        keras.callbacks.LambdaCallback(on_train_begin=lambda logs: initial.extend(masks())),
    ]
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=callbacks)
    # RigL moved blocks, and every mask is made of 4x1 blocks at 90%.
    assert any((a != b).any() for a, b in zip(initial, masks()))
    assert rigl_keras.structures.check(model, BLOCK)
    assert rigl_keras.sparsity_report(model).sparsity == pytest.approx(0.9, abs=0.01)
    return model, x


def _litert(path, resolver=None):
    """A LiteRT interpreter of `path`: default settings, or `resolver`."""
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    kwargs = {}
    if resolver is not None:
        kwargs["experimental_op_resolver_type"] = getattr(litert.OpResolverType, resolver)
    interpreter = litert.Interpreter(model_path=str(path), **kwargs)
    interpreter.allocate_tensors()
    return interpreter


def _invoke(interpreter, x):
    """Runs `x` one example at a time (the file's batch is 1 once allocated)."""
    inputs = interpreter.get_input_details()[0]["index"]
    outputs = interpreter.get_output_details()[0]["index"]
    rows = []
    for example in x:
        interpreter.set_tensor(inputs, example[np.newaxis])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(outputs)[0])
    return np.stack(rows)


# The kernels of `block_rigl` in TFLite's layout (outputs x inputs).
_KERNELS = {(48, 64): "fc1", (32, 48): "fc2", (8, 32): "fc3"}


def _sparse_kernels(path):
    """{layer name: (dtype, sparsity_parameters)} of the sparse-encoded tensors."""
    details = _litert(path, _BUILTIN).get_tensor_details()
    return {
        _KERNELS.get(tuple(d["shape"]), d["name"]): (d["dtype"], d["sparsity_parameters"])
        for d in details
        if d["sparsity_parameters"]
    }


def _export(model, path, **kwargs):
    """`export_tflite`, returning the path and the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rigl_keras.export_tflite(model, path, **kwargs)
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def _run_both_ways(path, x):
    """Outputs with the documented setting, and with the default settings
    when those run (else the XNNPack failure the warning names)."""
    documented = _invoke(_litert(path, _BUILTIN), x)
    try:
        default = _invoke(_litert(path), x)
    except RuntimeError as error:
        assert _XNNPACK_FAILURE in str(error)
        default = None
    return documented, default


def test_tflite_of_block_rigl_model_has_1x4_block_encoded_kernels(block_rigl, tmp_path):
    model, x = block_rigl
    path = tmp_path / "block.tflite"
    assert _export(model, path) == []
    kernels = _sparse_kernels(path)
    assert sorted(kernels) == ["fc1", "fc2", "fc3"]
    for dtype, params in kernels.values():
        # Rows (outputs) dense, columns (inputs) compressed, blocks of 1x4.
        assert dtype == np.float32
        assert list(params["block_map"]) == [1]
        assert [d["format"] for d in params["dim_metadata"]] == [0, 1, 0]
        assert params["dim_metadata"][2]["dense_size"] == 4
    # Block-encoded: the sparse FULLY_CONNECTED reads them, no DENSIFY.
    ops = [op["op_name"] for op in _litert(path, _BUILTIN)._get_ops_details()]  # pylint: disable=protected-access
    assert ops == ["FULLY_CONNECTED"] * 3
    expected = _predict(model, x[:16])
    for interpreter in (_litert(path), _litert(path, _BUILTIN)):
        np.testing.assert_allclose(_invoke(interpreter, x[:16]), expected, rtol=1e-5, atol=TFLITE_ATOL)


def test_tflite_dynamic_range_of_block_rigl_model(block_rigl, tmp_path):
    model, x = block_rigl
    path = tmp_path / "dynamic.tflite"
    messages = _export(model, path, quantize="dynamic")
    kernels = _sparse_kernels(path)
    # The converter quantizes weights of 1024 entries or more: fc3 (8x32)
    # stays float32.
    assert {name: dtype for name, (dtype, _) in kernels.items()} == {
        "fc1": np.int8, "fc2": np.int8, "fc3": np.float32}
    (message,) = messages
    assert "2 sparse-encoded int8 weight(s)" in message and "48x64" in message
    assert _BUILTIN in message and "sparse=False" in message
    expected = _predict(model, x[:32])
    scale = np.abs(expected).max()
    documented, default = _run_both_ways(path, x[:32])
    # int8 weights: errors of a few percent of the output range, not more.
    assert np.abs(documented - expected).max() < 0.05 * scale
    assert np.abs(documented - expected).max() > 0  # quantized indeed
    if default is not None:
        np.testing.assert_allclose(default, documented, atol=1e-6 * scale)


@pytest.mark.parametrize("calibration", ["array", "callable"])
def test_tflite_int8_of_block_rigl_model(block_rigl, tmp_path, calibration):
    model, x = block_rigl
    if calibration == "array":
        data = x[:200]
    else:
        def data():
            for i in range(200):
                yield [x[i:i + 1]]
    path = tmp_path / "int8.tflite"
    (message,) = _export(model, path, quantize="int8", representative_dataset=data)
    assert "sparse-encoded int8" in message and _BUILTIN in message
    interpreter = _litert(path, _BUILTIN)
    # Full integer: int8 kernels, float32 input and output at the edges.
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    ops = [op["op_name"] for op in interpreter._get_ops_details()]  # pylint: disable=protected-access
    assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE"
    assert all(dtype == np.int8 for dtype, _ in _sparse_kernels(path).values())
    expected = _predict(model, x[:64])
    documented, default = _run_both_ways(path, x[:64])
    assert np.abs(documented - expected).max() < 0.1 * np.abs(expected).max()
    assert (documented.argmax(1) == expected.argmax(1)).mean() >= 0.9
    if default is not None:
        np.testing.assert_array_equal(default, documented)


def test_tflite_int8_dense_encoding_runs_in_xnnpack_without_warning(block_rigl, tmp_path):
    model, x = block_rigl
    path = tmp_path / "int8_dense.tflite"
    assert _export(model, path, sparse=False, quantize="int8", representative_dataset=x[:200]) == []
    assert _sparse_kernels(path) == {}
    expected = _predict(model, x[:64])
    out = _invoke(_litert(path), x[:64])  # default settings: XNNPack
    assert np.abs(out - expected).max() < 0.1 * np.abs(expected).max()


def test_tflite_quantized_dense_model_does_not_warn(tmp_path):
    # Nothing sparse to encode: no sparse quantized weight, no warning.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, name="fc1")])
    assert _export(model, tmp_path / "m.tflite", quantize="dynamic") == []
    assert _sparse_kernels(tmp_path / "m.tflite") == {}


def test_export_tflite_bad_quantize_arguments(block_rigl, tmp_path):
    model, x = block_rigl
    path = tmp_path / "m.tflite"
    for bad in ("int4", "INT8", "float16", True, ["int8"]):
        with pytest.raises(ValueError, match=r"`quantize` must be one of None.*'dynamic'.*'int8'"):
            rigl_keras.export_tflite(model, path, quantize=bad)
    with pytest.raises(ValueError, match=r"needs `representative_dataset`"):
        rigl_keras.export_tflite(model, path, quantize="int8")
    for quantize in (None, "dynamic"):
        with pytest.raises(ValueError, match=r"`representative_dataset` is used only with quantize='int8'"):
            rigl_keras.export_tflite(model, path, quantize=quantize, representative_dataset=x)
    with pytest.raises(ValueError, match=r"`representative_dataset` must be a NumPy array .* type list"):
        rigl_keras.export_tflite(model, path, quantize="int8", representative_dataset=list(x))
    assert not path.exists()


# --------------------------------------------------------------------------
# sparsity_report.


def _report_model():
    """Hand-countable: masked 4x3 kernel with 3 active entries, a plain 3x2."""
    model = keras.Sequential(
        [
            keras.Input((4,)),
            rigl_keras.MaskedDense(3, name="masked"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(2, name="plain"),
        ],
        name="m",
    )
    masked = model.get_layer("masked")
    mask = np.zeros((4, 3), "float32")
    mask[0, 0] = mask[1, 1] = mask[2, 2] = 1.0
    masked.mask.assign(mask)
    # Non-zeros written into inactive entries too: the mask decides.
    masked.kernel.assign(np.arange(1, 13, dtype="float32").reshape(4, 3))
    plain = np.ones((3, 2), "float32")
    plain[2, 1] = 0.0
    model.get_layer("plain").kernel.assign(plain)
    return model


def test_sparsity_report_hand_counts():
    report = rigl_keras.sparsity_report(_report_model())
    assert isinstance(report, list)
    # Only the masked weight is a row: the plain layer is not masked.
    assert report == [
        {"name": "m/masked/kernel", "layer": "masked", "shape": (4, 3),
         "params": 12, "active": 3, "sparsity": 0.75,
         "structure": None, "structure_holds": None},
        {"name": "total", "layer": None, "shape": None, "params": 12,
         "active": 3, "sparsity": 0.75, "structure": None, "structure_holds": None},
    ]
    assert report.basis == "masks" and report.sparsity == 0.75
    # masked 12 + 3, bn 4 x 3, plain 6 + 2 (the mask is not a parameter);
    # 9 inactive entries.
    assert report.total_params == 35
    assert report.params_sparsity == pytest.approx(9 / 35)


def test_sparsity_report_of_stripped_model_counts_zeros():
    model, zeros = _make("functional")
    report = rigl_keras.sparsity_report(model)
    stripped = rigl_keras.sparsity_report(rigl_keras.strip_masks(model))
    assert [row["layer"] for row in report[:-1]] == ["conv", "tower_fc", "skip", "out"]
    for row in report[:-1]:
        assert row["params"] - row["active"] == zeros[row["layer"]]
    # No masks: every kernel, its non-zeros active (kept weights are
    # drawn away from zero), the plain tower_plain included.
    assert stripped.basis == "zeros"
    assert [row["layer"] for row in stripped[:-1]] == [
        "conv", "tower_fc", "tower_plain", "skip", "out"]
    by_layer = {row["layer"]: row for row in stripped}
    for row in report[:-1]:
        assert by_layer[row["layer"]]["active"] == row["active"]
    assert by_layer["tower_plain"]["sparsity"] == 0.0
    # conv 3x3x3x4, tower_fc 64x10, skip 64x10, out 10x3 masked.
    assert report[-1]["params"] == 108 + 640 + 640 + 30
    assert report[-1]["active"] == report[-1]["params"] - sum(zeros.values())
    # Of all parameters, both count the same zeros over the same total.
    assert stripped.total_params == report.total_params
    assert stripped.params_sparsity == report.params_sparsity
    assert report.params_sparsity == pytest.approx(sum(zeros.values()) / report.total_params)


def test_sparsity_report_prints_aligned_table_and_both_sparsities():
    text = str(rigl_keras.sparsity_report(_report_model()))
    lines = text.splitlines()
    assert lines[0].split() == ["Weight", "Shape", "Params", "Active", "Sparsity"]
    assert lines[2].split() == ["m/masked/kernel", "4x3", "12", "3", "75.00%"]
    assert lines[4].split() == ["total", "12", "3", "75.00%"]
    # Right-aligned numeric columns: every table line ends at the same column.
    assert len({len(line) for line in lines[:5]}) == 1
    assert lines[5] == "Sparsity of masked weights: 75.00% (9 of 12 entries inactive)"
    assert lines[6] == "Sparsity of all parameters: 25.71% (9 of 35 parameters inactive)"


def test_sparsity_report_of_a_sparsified_transformer_hand_counts():
    model = small_transformer()
    # embed 50x16; mha query/key/value 16x2x8 + 2x8, output 2x8x16 + 16;
    # ln 2 x 16; ff1 16x32 + 32; ff2 32x16 + 16; head 16x10 + 10.
    assert model.count_params() == 800 + 3 * 272 + 272 + 32 + 544 + 528 + 170 == 3_162
    rigl_keras.sparsify(model)
    active = {"embed/embeddings": 80, "mha/query/kernel": 25, "mha/key/kernel": 26,
              "mha/value/kernel": 27, "mha/attention_output/kernel": 28,
              "ff1/kernel": 51, "ff2/kernel": 52, "head/kernel": 16}
    for weight in rigl_keras.masked_weights(model):
        keep_first(weight, active[weight.key])
    report = rigl_keras.sparsity_report(model)
    assert {row["name"]: row["active"] for row in report[:-1]} == active
    # Masked entries: 800 + 4 x 256 + 512 + 512 + 160 = 3,008; 305 active.
    assert report[-1]["params"] == 3_008 and report[-1]["active"] == 305
    assert report.sparsity == 2_703 / 3_008
    assert report.total_params == 3_162
    assert report.params_sparsity == 2_703 / 3_162


def test_sparsity_report_equals_the_callbacks_sparsity_log():
    keras.utils.set_random_seed(0)
    model = small_transformer()
    # ff2 stays dense: neither the log nor the report counts it.
    rigl_keras.sparsify(model, filters=["embed", "mha", "ff1", "head"])
    model.compile(keras.optimizers.SGD(0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 50, (16, 8)).astype("int32")
    y = rng.integers(0, 10, 16)
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[
        rigl_keras.RigLCallback(sparsity=0.9, update_freq=2, end_step=4, seed=0)])
    logs = {k: v[-1] for k, v in history.history.items()}
    report = rigl_keras.sparsity_report(model)
    assert report.sparsity == logs["sparsity"]  # the same float
    assert len(report) - 1 == len(rigl_keras.get_masks(model)) == 7
    for row in report[:-1]:
        assert row["sparsity"] == pytest.approx(logs[f"sparsity/{row['name']}"], abs=1e-12)


def test_sparsity_report_of_a_sparsified_mobilenet_v2():
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.35)
    params = model.count_params()
    rigl_keras.sparsify(model)
    weights = rigl_keras.masked_weights(model)
    for weight in weights:
        keep_first(weight, weight.size // 10)
    report = rigl_keras.sparsity_report(model)
    # 35 convolutions, 17 depthwise convolutions, the classifier.
    assert [row["name"] for row in report[:-1]] == [w.key for w in weights]
    assert len(weights) == 53
    assert sum(isinstance(w.layer, keras.layers.DepthwiseConv2D) for w in weights) == 17
    size = sum(w.size for w in weights)
    inactive = sum(w.size - w.size // 10 for w in weights)
    assert report[-1]["params"] == size
    assert report.sparsity == inactive / size
    # The masks are not parameters: the count of the unsparsified model.
    assert report.total_params == params
    assert report.params_sparsity == inactive / params


def test_strip_docstring_examples():
    from rigl_keras import strip as strip_lib  # pylint: disable=import-outside-toplevel

    results = doctest.testmod(
        strip_lib, extraglobs={"keras": keras, "MaskedDense": rigl_keras.MaskedDense})
    assert results.attempted > 0 and results.failed == 0


def test_sparsity_report_docstring_examples():
    from rigl_keras import report as report_lib  # pylint: disable=import-outside-toplevel

    results = doctest.testmod(
        report_lib, extraglobs={"keras": keras, "np": np, "rigl_keras": rigl_keras})
    assert results.attempted > 0 and results.failed == 0


def _structured_report_model():
    """fc1 (8x4): 4x1 blocks, 2 of 8 active; fc2 (4x4): 2 of every 4 inputs
    active in columns 0-2, 3 in column 3; fc3 (4x2): unstructured."""
    model = keras.Sequential([
        keras.Input((8,)),
        rigl_keras.MaskedDense(4, name="fc1"),
        rigl_keras.MaskedDense(4, name="fc2"),
        rigl_keras.MaskedDense(2, name="fc3"),
    ], name="s")
    fc1 = np.zeros((8, 4), "float32")
    fc1[0:4, 1] = fc1[4:8, 2] = 1.0
    fc2 = np.zeros((4, 4), "float32")
    fc2[[0, 1], 0] = fc2[[1, 3], 1] = fc2[[0, 2], 2] = fc2[[0, 1, 2], 3] = 1.0
    fc3 = np.zeros((4, 2), "float32")
    fc3[0, 0] = fc3[3, 1] = 1.0
    rng = np.random.default_rng(0)
    for name, mask in (("fc1", fc1), ("fc2", fc2), ("fc3", fc3)):
        layer = model.get_layer(name)
        layer.mask.assign(mask)
        layer.kernel.assign(rng.uniform(0.5, 1.0, mask.shape).astype("float32") * mask)
    return model


def test_sparsity_report_structure_per_weight():
    model = _structured_report_model()
    block, nm = rigl_keras.structures.Block((4, 1)), rigl_keras.structures.NM(2, 4)
    report = rigl_keras.sparsity_report(model, structure={"fc1": block, "s/fc2/kernel": nm})
    rows = {row["layer"]: row for row in report[:-1]}
    assert (rows["fc1"]["structure"], rows["fc1"]["structure_holds"]) == (block, True)
    # Column 3 of fc2 has 3 active of 4: the 2:4 structure does not hold.
    assert (rows["fc2"]["structure"], rows["fc2"]["structure_holds"]) == (nm, False)
    assert (rows["fc3"]["structure"], rows["fc3"]["structure_holds"]) == (None, None)
    assert report[-1]["structure_holds"] is False
    assert report.structure_check.violations == {
        "s/fc2/kernel": "1 of 4 groups of 4 do not have 2 active (they have [3])."}
    # The counts are the ones without `structure`.
    plain = rigl_keras.sparsity_report(model)
    assert [r["active"] for r in report] == [r["active"] for r in plain] == [8, 9, 2, 19]
    assert plain.structure_check is None


def test_sparsity_report_structure_for_every_weight_agrees_with_check():
    model = _structured_report_model()
    for structure in (rigl_keras.structures.Block((4, 1)), rigl_keras.structures.Block((2, 1)),
                      rigl_keras.structures.NM(2, 4), rigl_keras.structures.NM(1, 4)):
        report = rigl_keras.sparsity_report(model, structure=structure)
        check = rigl_keras.structures.check(model, structure)
        assert {row["name"]: row["structure_holds"] for row in report[:-1]} == {
            w.key: w.key not in check.violations for w in rigl_keras.masked_weights(model)}
        assert report[-1]["structure_holds"] == bool(check)
    # fc1's 4x1 blocks are 2x1 blocks too; fc3 has 1 of 4 active per
    # column (1:4), each in a partly active 2x1 block.
    holds = lambda s: [r["structure_holds"] for r in rigl_keras.sparsity_report(model, structure=s)[:-1]]
    assert holds(rigl_keras.structures.Block((4, 1))) == [True, False, False]
    assert holds(rigl_keras.structures.Block((2, 1))) == [True, False, False]
    assert holds(rigl_keras.structures.NM(1, 4)) == [False, False, True]


def test_sparsity_report_prints_the_structure_column():
    model = _structured_report_model()
    report = rigl_keras.sparsity_report(
        model, structure={"fc1": rigl_keras.structures.Block((4, 1)),
                          "fc2": rigl_keras.structures.NM(2, 4)})
    lines = str(report).splitlines()
    assert lines[0].split() == ["Weight", "Shape", "Params", "Active", "Sparsity", "Structure"]
    assert lines[2].split() == ["s/fc1/kernel", "8x4", "32", "8", "75.00%", "4x1", "blocks:", "yes"]
    assert lines[3].split() == ["s/fc2/kernel", "4x4", "16", "9", "43.75%", "2:4:", "NO"]
    assert lines[4].split() == ["s/fc3/kernel", "4x2", "8", "2", "75.00%", "-"]
    assert lines[6].split() == ["total", "56", "19", "66.07%", "1", "of", "2", "hold"]
    assert lines[-2] == "1 of 2 checked masked weights violate their structure:"
    assert lines[-1].startswith("  s/fc2/kernel (NM(n=2, m=4)): 1 of 4 groups")
    # Without `structure`, no column.
    assert "Structure" not in str(rigl_keras.sparsity_report(model))


def test_sparsity_report_structure_of_a_stripped_model_reads_the_non_zeros():
    model = _structured_report_model()
    block = rigl_keras.structures.Block((4, 1))
    stripped = rigl_keras.strip_masks(model)
    report = rigl_keras.sparsity_report(stripped, structure={"fc1": block, "fc3": block})
    assert report.basis == "zeros"
    assert [r["structure_holds"] for r in report[:-1]] == [True, None, False]
    # A zero written into an active block breaks the blocks of the copy.
    kernel = stripped.get_layer("fc1").kernel
    values = keras.ops.convert_to_numpy(kernel)
    values[0, 1] = 0.0  # in the active block rows 0-3 of column 1
    kernel.assign(values)
    report = rigl_keras.sparsity_report(stripped, structure={"fc1": block})
    assert report[0]["structure_holds"] is False


def test_sparsity_report_of_the_block_rigl_model(block_rigl):
    model, _ = block_rigl
    report = rigl_keras.sparsity_report(model, structure=BLOCK)
    assert [r["structure_holds"] for r in report] == [True, True, True, True]
    assert "3 of 3 hold" in str(report)


def test_sparsity_report_bad_structure():
    model = _structured_report_model()
    with pytest.raises(ValueError, match="`structure` must be None"):
        rigl_keras.sparsity_report(model, structure="4x1")
    with pytest.raises(ValueError, match=r"structure\['fc1'\]"):
        rigl_keras.sparsity_report(model, structure={"fc1": (4, 1)})
    with pytest.raises(ValueError, match="nope"):
        rigl_keras.sparsity_report(model, structure={"nope": rigl_keras.structures.NM(2, 4)})


def test_sparsity_report_unbuilt_model_error():
    with pytest.raises(ValueError, match="not built"):
        rigl_keras.sparsity_report(keras.Sequential([keras.layers.Dense(2)]))


# --------------------------------------------------------------------------
# benchmarks.export, end to end with a tiny configuration.


def _export_benchmark():
    from benchmarks import export  # pylint: disable=import-outside-toplevel
    return export


def test_export_benchmark_tiny_run(tmp_path):
    _interpreter_class()
    bench = _export_benchmark()
    output = tmp_path / "export.json"
    result = bench.main([
        "--data", "synthetic", "--steps", "30", "--update_freq", "5",
        "--variants", "dense,block4x1",
        "--formats", "float32,int8,int8_dense", "--eval_examples", "100",
        "--rounds", "2", "--runs", "5", "--output", str(output),
    ])
    assert json.loads(output.read_text()) == json.loads(json.dumps(result))
    assert result["command"].startswith("python -m benchmarks.export --data synthetic")
    markdown = (tmp_path / "export.md").read_text()
    assert result["command"] in markdown and result["table"] in markdown
    dense, block = result["models"]
    assert (dense["variant"], dense["sparsity"]) == ("dense", 0.0)
    assert block["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert block["structure"] == rigl_keras.structures.serialize(BLOCK)
    assert block["structure_holds"] is True
    # RigL rewired: more entries were active at some point than are now.
    assert block["final_train_logs"]["itop_rate"] > 0.1 + 0.01
    files = {(f["variant"], f["format"]): f for f in result["files"]}
    # The dense model has no sparse=False twin: it is the same file.
    assert list(files) == [("dense", "float32"), ("dense", "int8"), ("block4x1", "float32"),
                           ("block4x1", "int8"), ("block4x1", "int8_dense")]
    assert files["dense", "float32"]["sparse_tensors"] == []
    # fc1 and fc2 in 1x4 blocks (ERK keeps fc3 dense), read by the sparse kernel.
    block_f32 = files["block4x1", "float32"]
    assert [(t["shape"], t["dtype"], t["block"]) for t in block_f32["sparse_tensors"]] == [
        ([300, 784], "float32", [1, 4]), ([100, 300], "float32", [1, 4])]
    assert block_f32["ops"]["FULLY_CONNECTED[sparse]"] == 2 and "DENSIFY" not in block_f32["ops"]
    assert block_f32["bytes"] < 0.2 * files["dense", "float32"]["bytes"]
    for f in (block_f32, files["dense", "float32"]):
        assert f["max_abs_diff_to_keras"] < 1e-4
        assert f["export_warnings"] == []
    # Sparse int8: warned about; runs with builtin kernels; XNNPack either
    # runs it or fails as the warning says.
    block_int8 = files["block4x1", "int8"]
    (warning,) = block_int8["export_warnings"]
    assert "BUILTIN_WITHOUT_DEFAULT_DELEGATES" in warning
    assert all(t["dtype"] == "int8" for t in block_int8["sparse_tensors"])
    if not block_int8["xnnpack"]["runs"]:
        assert "failed to delegate FULLY_CONNECTED node" in block_int8["xnnpack"]["error"]
    dense_int8 = files["block4x1", "int8_dense"]
    assert dense_int8["sparse_tensors"] == [] and dense_int8["export_warnings"] == []
    assert dense_int8["xnnpack"]["runs"]
    for f in files.values():
        assert f["builtin"]["runs"] and f["builtin"]["samples"] == 10
        if f["xnnpack"]["runs"]:
            assert f["xnnpack"]["samples"] == 10
    speed = [c for c in result["targets"] if "speedup" in c]
    assert [c["speedup"] for c in speed] == [
        files["dense", "float32"][s]["median_us"] / block_f32[s]["median_us"]
        for s in ("xnnpack", "builtin")]
    assert result["targets"][-1]["pass"] is True
    assert result["table"].count("\n") == 6  # Header, rule, five files.


def test_export_benchmark_targets_on_hand_made_rows():
    bench = _export_benchmark()

    def row(variant, fmt, xnnpack_us, builtin_us, warned=False):
        cell = lambda us: {"runs": False, "error": "RuntimeError"} if us is None else {
            "runs": True, "error": None, "median_us": us}
        return {"variant": variant, "format": fmt, "xnnpack": cell(xnnpack_us),
                "builtin": cell(builtin_us), "export_warnings": ["w"] if warned else []}

    rows = [row("dense", "float32", 20.0, 16.0), row("block4x1", "float32", 5.0, 10.0),
            row("block4x1", "int8", None, 30.0, warned=True)]
    xnnpack, builtin, runs = bench.check_targets(rows)
    assert (xnnpack["speedup"], xnnpack["pass"]) == (4.0, True)
    assert (builtin["speedup"], builtin["pass"]) == (1.6, False)
    assert runs["pass"] is True
    # A failure nobody was warned about, and a file that runs nowhere.
    rows[2]["export_warnings"] = []
    rows.append(row("unstructured", "int8", None, None, warned=True))
    runs = bench.check_targets(rows)[-1]
    assert runs["failing_without_warning"] == ["block4x1 int8 (xnnpack)"]
    assert runs["running_nowhere"] == ["unstructured int8"]
    assert runs["pass"] is False


def test_export_benchmark_bad_flags():
    bench = _export_benchmark()
    for argv in (["--variants", "sparse"], ["--formats", "int4"], ["--sparsity", "1"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
