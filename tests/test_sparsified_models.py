"""Training and exporting models made sparse by `rigl_keras.sparsify`.

Two models built from plain Keras layers, not `MaskedDense`/`MaskedConv2D`
(tests/_helpers.py): `small_conv_net` (Conv2D, DepthwiseConv2D,
SeparableConv2D with its two kernels, Dense) and `small_transformer`
(Embedding, MultiHeadAttention, Dense feed-forward). Each is sparsified and

* pruned by `GradualPruningCallback` in `fit`: after every step each
  masked weight holds exactly the zeros of the schedule, and 0.0 in its
  inactive entries;
* trained with RigL by `CustomLoop` in a `tf.GradientTape` loop: exact
  counts at every step, masks rewired; under `MirroredStrategy` on two
  logical CPU devices the masks and weights are the same on both replicas;
* interrupted and resumed with `keras.callbacks.BackupAndRestore`: the
  resumed run ends with exactly the weights, masks and optimizer state of
  the uninterrupted one (as tests/test_resume.py checks for masked layers);
* exported with `export_saved_model` and `export_tflite` after RigL
  training: the exported model computes the Keras model's outputs and its
  weights are `W * M`.

The MirroredStrategy and resume scenarios need a fresh process (logical
devices must be set before TensorFlow starts; exact equality needs
`tf.config.experimental.enable_op_determinism()`, which is process-wide):
this file runs as a script, `python tests/test_sparsified_models.py MODE
OUT_DIR`, and the tests read what it writes.
"""

import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile

import tensorflow as tf

if __name__ == "__main__" and sys.argv[1:2] == ["mirrored"]:
    # Before TensorFlow starts: two logical CPU devices for two replicas.
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2)

# pylint: disable=wrong-import-position
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rigl_keras  # noqa: E402
from _helpers import as_numpy  # noqa: E402  (tests/_helpers.py)
from _helpers import python_env  # noqa: E402
from _helpers import run_python  # noqa: E402
from _helpers import small_conv_net  # noqa: E402
from _helpers import small_transformer  # noqa: E402
from rigl_keras import distributions  # noqa: E402

_BATCH = 4
_EXAMPLES = 16  # 4 steps per epoch
_KINDS = ("convnet", "transformer")


# ---------------------------------------------------------------------------
# Shared by the tests and the script.
# ---------------------------------------------------------------------------


def _make(kind, seed=0):
    """A sparsified `small_conv_net` or `small_transformer`."""
    keras.utils.set_random_seed(seed)
    model = small_conv_net() if kind == "convnet" else small_transformer()
    rigl_keras.sparsify(model)
    return model


def _data(kind, n=_EXAMPLES, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "convnet":
        return rng.random((n, 12, 12, 3)).astype("float32"), rng.integers(0, 4, n)
    return rng.integers(0, 50, (n, 8)).astype("int32"), rng.integers(0, 10, n)


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _expected_zeros(model, sparsities):
    """`floor(s * N)` zeros per masked weight for `{path: s}`."""
    shapes = {w.key: w.shape for w in rigl_keras.masked_weights(model)}
    return distributions.layer_zero_counts(shapes, sparsities)


def _zeros(masks):
    return {key: int(np.sum(mask == 0)) for key, mask in masks.items()}


def _check_masks(model, expected):
    """Problems found: wrong zero counts, non-binary masks, inactive non-zeros."""
    problems = []
    masks = rigl_keras.get_masks(model)
    for w in rigl_keras.masked_weights(model):
        mask = masks[w.key]
        if int(np.sum(mask == 0)) != expected[w.key]:
            problems.append((w.key, "zeros", int(np.sum(mask == 0)), expected[w.key]))
        if not np.all((mask == 0) | (mask == 1)):
            problems.append((w.key, "mask values"))
        if np.any(as_numpy(w.variable)[mask == 0] != 0.0):
            problems.append((w.key, "inactive entry not 0.0"))
    return problems


def _custom_loop_train_step(model, optimizer, strategy=None, global_batch=_BATCH):
    """A traced `GradientTape` step (per replica under `strategy`)."""

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(
                y, logits, from_logits=True)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)

    @tf.function
    def step(x, y):
        if strategy is None:
            replica_step(x, y)
        else:
            strategy.run(replica_step, args=(x, y))

    return step


# ---------------------------------------------------------------------------
# The script's scenarios (fresh process).
# ---------------------------------------------------------------------------


def _mirrored(out):
    """RigL in a CustomLoop under MirroredStrategy on 2 logical CPUs."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    arrays, summary = {}, {"num_replicas_in_sync": strategy.num_replicas_in_sync}
    global_batch = 2 * _BATCH
    for kind in _KINDS:
        with strategy.scope():
            model = _make(kind)
            optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
        loop = rigl_keras.CustomLoop(
            rigl_keras.RigLCallback(sparsity=0.9, distribution="erk", update_freq=2,
                                    end_step=8, seed=0),
            model, optimizer)
        loop.begin()
        initial = rigl_keras.get_masks(model)
        step = _custom_loop_train_step(model, optimizer, strategy, global_batch)
        x, y = _data(kind, n=4 * global_batch)
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(global_batch)
        problems = []
        expected = _expected_zeros(
            model, rigl_keras.sparsity_distribution(model, 0.9, "erk"))
        for _ in range(3):  # 12 steps: updates at 2, 4, 6, 8
            for batch in strategy.experimental_distribute_dataset(dataset):
                step(*batch)
                loop.step()
                problems += _check_masks(model, expected)
        loop.end()
        for w in rigl_keras.masked_weights(model):
            arrays[f"{kind}|{w.key}|initial"] = initial[w.key]
            for name, variable in (("mask", w.mask), ("variable", w.variable)):
                for r, value in enumerate(
                        strategy.experimental_local_results(variable.value)):
                    arrays[f"{kind}|{w.key}|{name}@{r}"] = np.asarray(value)
        summary[kind] = {
            "expected_zeros": expected,
            "problems": [list(map(str, p)) for p in problems],
            "iterations": int(np.asarray(optimizer.iterations.value)),
        }
    np.savez(os.path.join(out, "mirrored.npz"), **arrays)
    with open(os.path.join(out, "mirrored.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f)


def _resume(out):
    """BackupAndRestore: interrupted + resumed vs uninterrupted `fit`."""
    tf.config.experimental.enable_op_determinism()
    epochs, interrupt = 4, (2, 1)  # stop after step 2 * 4 + 2 = 10

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if (self.epoch, batch) == interrupt:
                raise KeyboardInterrupt("simulated interruption")

    class AtBackup(keras.callbacks.Callback):
        """The masks at the end of epoch 1, where the backup is taken."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch == interrupt[0] - 1:
                self.masks = rigl_keras.get_masks(self.model)

    def new_model(kind, seed):
        model = _make(kind, seed)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), _loss())
        return model

    def rigl():
        # Half the entries active, so that the updates after the backup
        # (steps 10, 12, 14) drop and grow some.
        return rigl_keras.RigLCallback(sparsity=0.5, update_freq=2, end_step=16,
                                       drop_fraction=0.3, seed=1)

    def fit(model, x, y, callbacks):
        model.fit(x, y, batch_size=_BATCH, epochs=epochs, shuffle=False, verbose=0,
                  callbacks=callbacks)

    def state(model):
        """Weights, masks and optimizer variables, by path, as arrays."""
        found = {f"weight:{v.path}": as_numpy(v) for v in model.weights}
        found.update({f"mask:{k}": v for k, v in rigl_keras.get_masks(model).items()})
        for v in model.optimizer.variables:
            # Without the optimizer's own name (`sgd`, `sgd_1`, ...).
            found[f"optimizer:{v.path.split('/', 1)[-1]}"] = as_numpy(v)
        return found

    def compare(run, reference):
        return {
            "same_keys": sorted(run) == sorted(reference),
            "different": sorted(k for k in reference
                                if k not in run or not np.array_equal(run[k], reference[k])),
            "digest": hashlib.sha256(
                b"".join(run[k].tobytes() for k in sorted(run))).hexdigest(),
        }

    summary = {}
    work = tempfile.mkdtemp(prefix="rigl_sparsified_resume_")
    for kind in _KINDS:
        x, y = _data(kind)
        reference, at_backup = new_model(kind, 0), AtBackup()
        fit(reference, x, y, [rigl(), at_backup])
        ref_state = state(reference)
        backup = os.path.join(work, kind)
        first = new_model(kind, 0)
        try:
            fit(first, x, y, [keras.callbacks.BackupAndRestore(backup), rigl(),
                              Interrupt()])
            stopped = None
        except KeyboardInterrupt:
            stopped = int(as_numpy(first.optimizer.iterations))
        for name in ("backup_first", "rigl_first", "reversed_data"):
            shutil.copytree(backup, os.path.join(work, f"{kind}_{name}"))
        result = {
            "stopped_at": stopped,
            "changed_after_backup": int(sum(
                np.sum(m != at_backup.masks[k])
                for k, m in rigl_keras.get_masks(reference).items())),
            "reference_digest": compare(ref_state, ref_state)["digest"],
        }
        for name in ("backup_first", "rigl_first", "reversed_data"):
            model = new_model(kind, 5)  # other initial weights: all restored
            restore = keras.callbacks.BackupAndRestore(os.path.join(work, f"{kind}_{name}"))
            callbacks = [rigl(), restore] if name == "rigl_first" else [restore, rigl()]
            if name == "reversed_data":  # control: the comparison can fail
                fit(model, x[::-1], y[::-1], callbacks)
            else:
                fit(model, x, y, callbacks)
            result[name] = compare(state(model), ref_state)
            result[name]["iterations"] = int(as_numpy(model.optimizer.iterations))
        summary[kind] = result
    shutil.rmtree(work, ignore_errors=True)
    with open(os.path.join(out, "resume.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f)


# ---------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", _KINDS)
def test_gradual_pruning_reaches_exact_counts_at_every_step(kind):
    model = _make(kind)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), _loss())
    final = rigl_keras.sparsity_distribution(model, 0.8, "erk")
    pruning_steps = (2, 4, 6, 8)  # begin_step=2, update_freq=2, end_step=8

    def expected_at(step):
        done = [u for u in pruning_steps if u <= step]
        if not done:
            return {k: 0.0 for k in final}
        p = (done[-1] - 2) / (8 - 2)
        # s_t = s_f + (s_i - s_f) * (1 - p) ** 3 with s_i = 0.
        return {k: s + (0.0 - s) * (1.0 - p) ** 3 for k, s in final.items()}

    seen = []

    class Check(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            expected = _expected_zeros(self.model, expected_at(step))
            seen.append((step, _check_masks(self.model, expected)))
            masks = rigl_keras.get_masks(self.model)
            if hasattr(self, "previous"):  # masks only shrink
                for key, mask in masks.items():
                    if (mask > self.previous[key]).any():
                        seen.append((step, [(key, "regrown")]))
            self.previous = masks

    x, y = _data(kind)
    history = model.fit(x, y, batch_size=_BATCH, epochs=3, verbose=0, callbacks=[
        rigl_keras.GradualPruningCallback(0.8, distribution="erk", begin_step=2,
                                          end_step=8, update_freq=2),
        Check(),
    ])
    assert [step for step, _ in seen] == list(range(1, 13))
    assert [problems for _, problems in seen] == [[]] * 12
    zeros = _zeros(rigl_keras.get_masks(model))
    assert zeros == _expected_zeros(model, final)
    assert all(n > 0 for n in zeros.values())
    # The log is the fraction of zeros over all the masks.
    sizes = {w.key: w.size for w in rigl_keras.masked_weights(model)}
    assert history.history["sparsity"][-1] == sum(zeros.values()) / sum(sizes.values())


@pytest.mark.parametrize("kind", _KINDS)
def test_custom_loop_rigl_keeps_exact_counts_and_rewires(kind):
    model = _make(kind)
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    loop = rigl_keras.CustomLoop(
        rigl_keras.RigLCallback(sparsity=0.9, distribution="erk", update_freq=2,
                                end_step=8, seed=0),
        model, optimizer)
    loop.begin()
    expected = _expected_zeros(model, rigl_keras.sparsity_distribution(model, 0.9, "erk"))
    assert _check_masks(model, expected) == []
    initial = rigl_keras.get_masks(model)
    step = _custom_loop_train_step(model, optimizer)
    x, y = _data(kind)
    problems = []
    for _ in range(3):  # 12 steps: updates at 2, 4, 6, 8
        for start in range(0, _EXAMPLES, _BATCH):
            step(x[start:start + _BATCH], y[start:start + _BATCH])
            loop.step()
            problems += _check_masks(model, expected)
    assert int(optimizer.iterations.numpy()) == 12
    assert problems == []
    final = rigl_keras.get_masks(model)
    changed = {k: int(np.sum(final[k] != initial[k])) for k in final}
    # Every weight (9 or more active entries each) was rewired.
    assert all(n > 0 for n in changed.values()), changed
    masked = {w.key: w for w in rigl_keras.masked_weights(model)}
    logs = loop.logs()
    assert logs["sparsity"] == pytest.approx(
        sum(expected.values()) / sum(w.size for w in masked.values()), abs=1e-12)
    loop.end()


def _run_script(mode, out, timeout=600):
    """Runs this file as a script in a fresh process (it finds _helpers)."""
    script = pathlib.Path(__file__).resolve()
    result = run_python(
        [str(script), mode, str(out)], cwd=str(script.parent),
        env=python_env(TF_CONFIG=None, TF_CPP_MIN_LOG_LEVEL="2"), timeout=timeout)
    assert result.returncode == 0, result.stderr[-6000:]


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored")
    _run_script("mirrored", out)
    with np.load(out / "mirrored.npz") as loaded:
        arrays = dict(loaded)
    return json.loads((out / "mirrored.json").read_text()), arrays


@pytest.mark.slow
@pytest.mark.parametrize("kind", _KINDS)
def test_mirrored_strategy_masks_are_identical_on_every_replica(mirrored, kind):
    summary, arrays = mirrored
    assert summary["num_replicas_in_sync"] == 2
    run = summary[kind]
    assert run["iterations"] == 12
    assert run["problems"] == []  # exact counts, zeros held, at every step
    keys = sorted({k.split("|")[1] for k in arrays if k.startswith(kind + "|")})
    assert keys == sorted(run["expected_zeros"])
    rewired = 0
    for key in keys:
        for name in ("mask", "variable"):
            np.testing.assert_array_equal(
                arrays[f"{kind}|{key}|{name}@0"], arrays[f"{kind}|{key}|{name}@1"],
                err_msg=f"{key} {name}")
        mask = arrays[f"{kind}|{key}|mask@0"]
        assert int(np.sum(mask == 0)) == run["expected_zeros"][key], key
        rewired += int(np.sum(mask != arrays[f"{kind}|{key}|initial"]))
    assert rewired > 0


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume")
    _run_script("resume", out)
    return json.loads((out / "resume.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("kind", _KINDS)
def test_backup_and_restore_resume_is_bit_identical(resumed, kind):
    run = resumed[kind]
    assert run["stopped_at"] == 10  # after the backup of epoch 1 (step 8)
    assert run["changed_after_backup"] > 0  # updates 10, 12, 14 are to redo
    for name in ("backup_first", "rigl_first"):
        assert run[name]["iterations"] == 16
        assert run[name]["same_keys"], name
        assert run[name]["different"] == [], name
        assert run[name]["digest"] == run["reference_digest"], name
    # Control: other data after the restore ends elsewhere.
    assert run["reversed_data"]["different"]


def _stored_tensors(saved_model_dir):
    reader = tf.train.load_checkpoint(os.path.join(saved_model_dir, "variables", "variables"))
    return [
        reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
        if key != "_CHECKPOINTABLE_OBJECT_GRAPH"
    ]


@pytest.fixture(scope="module", params=_KINDS)
def rigl_trained(request):
    """A sparsified model after 12 RigL steps (last update at step 6)."""
    kind = request.param
    model = _make(kind)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), _loss())
    x, y = _data(kind)
    model.fit(x, y, batch_size=_BATCH, epochs=3, verbose=0, callbacks=[
        rigl_keras.RigLCallback(sparsity=0.9, update_freq=2, end_step=6, seed=0)])
    return kind, model, _data(kind, n=5, seed=3)[0]


def test_export_saved_model_of_a_sparsified_model(rigl_trained, tmp_path):
    kind, model, x = rigl_trained
    path = rigl_keras.export_saved_model(model, tmp_path / kind)
    loaded = tf.saved_model.load(path)  # kept: its variables live as long
    served = loaded.serve(tf.constant(x)).numpy()
    np.testing.assert_allclose(served, model(x, training=False).numpy(), rtol=1e-6, atol=1e-6)
    tensors = _stored_tensors(path)
    masks = rigl_keras.get_masks(model)
    for w in rigl_keras.masked_weights(model):
        baked = as_numpy(w.variable) * masks[w.key]
        assert np.sum(baked == 0) >= np.sum(masks[w.key] == 0) > 0, w.key
        assert any(t.shape == baked.shape and np.array_equal(t, baked) for t in tensors), w.key
    # No mask was exported: the stored entries are the model's parameters.
    assert sum(t.size for t in tensors) == rigl_keras.sparsity_report(model).total_params


@pytest.mark.parametrize("sparse", [False, True])
def test_export_tflite_of_a_sparsified_model(rigl_trained, tmp_path, sparse):
    interpreter_lib = pytest.importorskip(
        "ai_edge_litert.interpreter",
        reason="pip install ai-edge-litert (the rigl_keras[tflite] extra)")
    kind, model, x = rigl_trained
    path = rigl_keras.export_tflite(model, tmp_path / f"{kind}.tflite", sparse=sparse)
    interpreter = interpreter_lib.Interpreter(model_path=path)
    runner = interpreter.get_signature_runner("serving_default")
    (name,) = runner.get_input_details()
    outputs = runner(**{name: x})["output_0"]
    np.testing.assert_allclose(outputs, model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
    if sparse:
        return  # weights may be stored in a compressed sparse format
    reader = interpreter_lib.Interpreter(model_path=path)
    reader.allocate_tensors()
    constants = []
    for detail in reader.get_tensor_details():
        try:
            value = reader.get_tensor(detail["index"])
        except ValueError:
            continue
        if value.dtype == np.float32:
            constants.append(value)
    masks = rigl_keras.get_masks(model)
    for w in rigl_keras.masked_weights(model):
        baked = as_numpy(w.variable) * masks[w.key]
        # The converter may transpose a kernel or fold a scale into it:
        # its size and its zeros stay.
        zeros = int(np.sum(baked == 0))
        assert any(c.size == baked.size and int(np.sum(c == 0)) == zeros
                   for c in constants), w.key


if __name__ == "__main__":
    {"mirrored": _mirrored, "resume": _resume}[sys.argv[1]](sys.argv[2])
