"""Checkpoint and resume: an interrupted RigL run ends where an uninterrupted one does.

A run of 4 epochs of 8 steps (`update_freq=2`, `end_step=None`, cosine drop
fraction) is interrupted by an exception at batch 3 of epoch 2 (after
optimizer step 20) and resumed

* with `keras.callbacks.BackupAndRestore` (per-epoch backups; the backup of
  the end of epoch 1, step 16, is restored, with the optimizer's state and
  step counter), in a new model with a new `RigLCallback` of the same config
  and seed, with the callback after and before `BackupAndRestore`;
* from a `ModelCheckpoint` `.keras` file of each epoch:
  `keras.models.load_model` and `fit(initial_epoch=2)` with a new callback;
* in the same process with the same model and callback objects, the
  interruption falling between a gradient-recording step and its update;

and must end with exactly the same masks, weights and optimizer state as the
uninterrupted run, updating at the same absolute steps with the same drop
fractions. Mid-epoch backups (`save_freq=3`) replay the batches since the
backup (Keras 3 restores only the epoch): the run is then not identical, but
every mask keeps exactly its target count. SNFS restarts the moving average
of its dense gradient (not checkpointed): same steps, exact counts.

Exact equality needs `tf.config.experimental.enable_op_determinism()`, which
is process-wide and cannot be turned off again, and the same data in every
epoch: the scenarios therefore run in a fresh process (this file run as a
script, printing one `RESULT {json}` line), with a dataset whose shuffle is
keyed by the epoch number Keras passes to `on_epoch_begin`.
"""

import hashlib
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

_EXAMPLES, _BATCH, _EPOCHS = 256, 32, 4
_STEPS = _EXAMPLES // _BATCH  # 8 steps per epoch, 32 in all.
_END_STEP = 24  # int(0.75 * 32): the default end_step of the full run.
_UPDATE_FREQ = 2
_DROP_FRACTION = 0.3
_INTERRUPT = (2, 3)  # (epoch, batch): after optimizer step 2 * 8 + 4 = 20.


# ---------------------------------------------------------------------------
# The scenarios (run in a subprocess: `python tests/test_resume.py`).
# ---------------------------------------------------------------------------


def _scenarios():  # pylint: disable=too-many-locals,too-many-statements
    """Runs every scenario and returns a JSON-serializable dict."""
    # pylint: disable=g-import-not-at-top,import-outside-toplevel
    import warnings

    import keras
    import numpy as np
    import tensorflow as tf

    import rigl_keras
    from rigl_keras import distributions

    import _helpers  # tests/_helpers.py (the script's own directory)

    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((_EXAMPLES, 16)).astype("float32")
    y = rng.standard_normal((_EXAMPLES, 4)).astype("float32")
    epoch_key = tf.Variable(0, dtype=tf.int64, trainable=False)

    def dataset():
        """Batches in an order that depends only on `epoch_key`."""

        def order(_):
            seed = tf.stack([tf.constant(7, tf.int64), epoch_key.read_value()])
            return tf.random.experimental.stateless_shuffle(
                tf.range(_EXAMPLES, dtype=tf.int64), seed=seed
            )

        examples = tf.data.Dataset.from_tensors(0).map(order).unbatch()
        examples = examples.map(lambda i: (tf.gather(x, i), tf.gather(y, i)))
        return examples.batch(_BATCH, drop_remainder=True)

    class SetEpoch(keras.callbacks.Callback):
        """Keys the data order by the epoch (Keras makes the epoch's
        iterator after `on_epoch_begin`); `offset` breaks that on purpose."""

        def __init__(self, offset=0):
            super().__init__()
            self.offset = offset

        def on_epoch_begin(self, epoch, logs=None):
            epoch_key.assign(epoch + self.offset)

    class Probe(keras.callbacks.Callback):
        """Records the first epoch and optimizer step a fit starts from."""

        def on_epoch_begin(self, epoch, logs=None):
            if not hasattr(self, "start"):
                self.start = (epoch, int(self.model.optimizer.iterations.numpy()))

    class Interrupt(keras.callbacks.Callback):
        def __init__(self, epoch, batch):
            super().__init__()
            self.at = (epoch, batch)
            self.epoch = None

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if (self.epoch, batch) == self.at:
                raise KeyboardInterrupt("simulated interruption")

    class Spy(_helpers.SpiedRigL):
        """RigLCallback that records (step, drop fraction) of each update."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.events = []

        def after_update(self, step):
            self.events.append([step, self.engine.logs()["drop_fraction"]])

    def rigl(**kwargs):
        config = dict(sparsity=0.8, update_freq=_UPDATE_FREQ,
                      drop_fraction=_DROP_FRACTION, seed=1)
        config.update(kwargs)
        return Spy(**config)

    def new_model(init_seed):
        keras.utils.set_random_seed(init_seed)
        model = keras.Sequential([
            keras.Input((16,)),
            rigl_keras.MaskedDense(32, activation="relu", name="fc1"),
            rigl_keras.MaskedDense(4, name="out"),
        ], name="mlp")
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
        return model

    def fit(model, callbacks, **kwargs):
        kwargs.setdefault("epochs", _EPOCHS)
        model.fit(dataset(), verbose=0, callbacks=callbacks, **kwargs)

    def interrupted_fit(model, callbacks):
        try:
            fit(model, callbacks)
        except KeyboardInterrupt:
            return int(model.optimizer.iterations.numpy())
        raise AssertionError("the run was not interrupted")

    def arrays(model):
        """Model and optimizer variables as NumPy arrays, by name.

        Names are `layer/variable` and `optimizer/variable` without the
        model's and optimizer's own names (a model loaded from a `.keras`
        file has variable paths without the model name).
        """
        found = {
            f"{layer.name}/{v.name}": np.asarray(v)
            for layer in model.layers
            for v in layer.weights
        }
        for v in model.optimizer.variables:
            name = v.name[len("mlp_"):] if v.name.startswith("mlp_") else v.name
            found["optimizer/" + name] = np.asarray(v)
        return found

    def describe(model, callback, probe=None, reference=None):
        layers = rigl_keras.masked_layers(model)
        shapes = {l.name: tuple(l.mask.shape) for l in layers}
        targets = {k.split("/")[-2]: v for k, v in callback.target_sparsities.items()}
        expected = distributions.layer_zero_counts(shapes, targets)
        state = arrays(model)
        result = {
            "end_step": callback.resolved_end_step,  # pylint: disable=protected-access
            "events": callback.events,
            "iterations": int(model.optimizer.iterations.numpy()),
            "start": list(probe.start) if probe is not None else None,
            "zeros": {l.name: int(np.sum(np.asarray(l.mask) == 0)) for l in layers},
            "expected_zeros": {k: int(v) for k, v in expected.items()},
            "mask_values": sorted(
                {float(v) for l in layers for v in np.unique(np.asarray(l.mask))}
            ),
            "digests": {
                k: hashlib.sha256(v.tobytes()).hexdigest()[:16] for k, v in state.items()
            },
        }
        if reference is not None:
            ref_layers = {l.name: l for l in rigl_keras.masked_layers(reference)}
            result["same_masks"] = all(
                np.array_equal(np.asarray(l.mask), np.asarray(ref_layers[l.name].mask))
                for l in layers
            )
            ref_state = arrays(reference)
            result["same_paths"] = sorted(state) == sorted(ref_state)
            result["max_abs_diff"] = {
                k: float(np.max(np.abs(v - ref_state[k]), initial=0.0))
                for k, v in state.items()
                if k in ref_state
            }
            result["identical"] = result["same_paths"] and all(
                np.array_equal(v, ref_state[k]) for k, v in state.items()
            )
        return result

    out = {}
    work = tempfile.mkdtemp(prefix="rigl_resume_")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        # The uninterrupted run; its masks after epoch 1 (the backup point).
        reference, ref_rigl = new_model(0), rigl()
        at_backup = {}

        class Snapshot(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == _INTERRUPT[0] - 1:
                    for layer in rigl_keras.masked_layers(self.model):
                        at_backup[layer.name] = np.asarray(layer.mask).copy()

        fit(reference, [SetEpoch(), ref_rigl, Snapshot()])
        out["reference"] = describe(reference, ref_rigl)
        out["changed_after_backup"] = {
            l.name: int(np.sum(np.asarray(l.mask) != at_backup[l.name]))
            for l in rigl_keras.masked_layers(reference)
        }

        # One interrupted run writes both a per-epoch backup and .keras files.
        backup = os.path.join(work, "backup")
        checkpoints = os.path.join(work, "checkpoints")
        first, first_rigl = new_model(0), rigl()
        stopped = interrupted_fit(first, [
            SetEpoch(),
            keras.callbacks.BackupAndRestore(backup),
            keras.callbacks.ModelCheckpoint(
                os.path.join(checkpoints, "epoch{epoch:02d}.keras")),
            first_rigl,
            Interrupt(*_INTERRUPT),
        ])
        out["interrupted"] = {
            "iterations": stopped,
            "events": first_rigl.events,
            "metadata": json.loads(
                pathlib.Path(backup, "training_metadata.json").read_text()),
            "checkpoints": sorted(os.listdir(checkpoints)),
        }
        for name in ("backup_after_rigl", "backup_before_rigl", "wrong_data_order"):
            shutil.copytree(backup, os.path.join(work, name))

        # Resume in a new model (other initial weights) with a new callback.
        for name, rigl_first, offset in (
            ("backup_after_rigl", False, 0),
            ("backup_before_rigl", True, 0),
            ("wrong_data_order", False, -_INTERRUPT[0]),
        ):
            model, callback, probe = new_model(5), rigl(), Probe()
            restore = keras.callbacks.BackupAndRestore(os.path.join(work, name))
            order = [callback, restore] if rigl_first else [restore, callback]
            fit(model, [SetEpoch(offset)] + order + [probe])
            out[name] = describe(model, callback, probe, reference)

        # From the .keras file of epoch 2 (index 1) with initial_epoch=2.
        model = keras.models.load_model(
            os.path.join(checkpoints, f"epoch{_INTERRUPT[0]:02d}.keras"))
        callback, probe = rigl(), Probe()
        fit(model, [SetEpoch(), callback, probe], initial_epoch=_INTERRUPT[0])
        out["model_checkpoint"] = describe(model, callback, probe, reference)

        # Same process, same objects; interrupted after step 20 recorded its
        # dense gradient but before the callback's update consumed it.
        model, callback = new_model(0), rigl()
        restore = keras.callbacks.BackupAndRestore(os.path.join(work, "retry"))
        interrupted_fit(model, [SetEpoch(), restore, Interrupt(*_INTERRUPT), callback])
        out["stale_gradient_norm"] = float(sum(
            np.abs(np.asarray(g)).sum()
            for g in callback.dense_gradients.values()))
        callback.events = []
        probe = Probe()
        fit(model, [SetEpoch(), restore, callback, probe])
        out["retry_same_objects"] = describe(model, callback, probe, reference)

        # Mid-epoch backups: batches since the backup are replayed.
        mid = os.path.join(work, "mid")
        model, callback = new_model(0), rigl()
        out["mid_interrupted"] = interrupted_fit(model, [
            SetEpoch(),
            keras.callbacks.BackupAndRestore(mid, save_freq=3),
            callback,
            Interrupt(_INTERRUPT[0], 5),
        ])
        out["mid_metadata"] = json.loads(
            pathlib.Path(mid, "training_metadata.json").read_text())
        shutil.copytree(mid, mid + "_pinned")
        for name, directory, kwargs in (
            ("mid_epoch", mid, {}),
            ("mid_epoch_pinned", mid + "_pinned", {"end_step": _END_STEP}),
        ):
            model, callback, probe = new_model(5), rigl(**kwargs), Probe()
            restore = keras.callbacks.BackupAndRestore(directory, save_freq=3)
            fit(model, [SetEpoch(), restore, callback, probe])
            out[name] = describe(model, callback, probe, reference)

        # SNFS: the moving average of the dense gradient restarts.
        snfs_reference, snfs_rigl = new_model(0), rigl(grow="momentum")
        fit(snfs_reference, [SetEpoch(), snfs_rigl])
        out["snfs_reference"] = describe(snfs_reference, snfs_rigl)
        snfs_backup = os.path.join(work, "snfs")
        interrupted_fit(new_model(0), [
            SetEpoch(),
            keras.callbacks.BackupAndRestore(snfs_backup),
            rigl(grow="momentum"),
            Interrupt(*_INTERRUPT),
        ])
        model, callback, probe = new_model(5), rigl(grow="momentum"), Probe()
        fit(model, [SetEpoch(), keras.callbacks.BackupAndRestore(snfs_backup),
                    callback, probe])
        out["snfs_resumed"] = describe(model, callback, probe, snfs_reference)
    shutil.rmtree(work, ignore_errors=True)
    out["warnings"] = sorted({
        str(w.message) for w in caught if "rigl_keras" in str(w.filename)
    })
    return out


# ---------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------


def _cosine(step):
    """The drop fraction at `step`, by hand: 0.3 * (1 + cos(pi * t / 24)) / 2."""
    return _DROP_FRACTION * 0.5 * (1.0 + math.cos(math.pi * step / _END_STEP))


def _steps(events):
    return [step for step, _ in events]


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, str(pathlib.Path(__file__).resolve())],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_reference_run_updates_on_the_hand_computed_schedule(results):
    ref = results["reference"]
    assert ref["iterations"] == _EPOCHS * _STEPS == 32
    assert ref["end_step"] == _END_STEP
    assert _steps(ref["events"]) == list(range(2, _END_STEP + 1, 2))
    for step, fraction in ref["events"]:
        assert fraction == pytest.approx(_cosine(step), abs=1e-12)
    assert ref["zeros"] == ref["expected_zeros"]
    assert ref["mask_values"] == [0.0, 1.0]
    # Updates after the backup point changed masks: resuming has work to do.
    assert all(n > 0 for n in results["changed_after_backup"].values())


def test_the_run_was_interrupted_after_step_20_with_backups_of_epoch_1(results):
    info = results["interrupted"]
    assert info["iterations"] == _INTERRUPT[0] * _STEPS + _INTERRUPT[1] + 1 == 20
    assert _steps(info["events"]) == list(range(2, 21, 2))
    assert info["metadata"]["epoch"] == _INTERRUPT[0]
    assert info["checkpoints"] == ["epoch01.keras", "epoch02.keras"]


@pytest.mark.parametrize(
    "scenario",
    ["backup_after_rigl", "backup_before_rigl", "model_checkpoint",
     "retry_same_objects"],
)
def test_resumed_run_is_identical_to_the_uninterrupted_run(results, scenario):
    ref, run = results["reference"], results[scenario]
    # Restarted at epoch 2 from the optimizer step of its end, 16.
    assert run["start"] == [_INTERRUPT[0], _INTERRUPT[0] * _STEPS]
    assert run["end_step"] == ref["end_step"] == _END_STEP
    # The same absolute update steps and drop fractions as the reference.
    assert run["events"] == [e for e in ref["events"] if e[0] > 16]
    assert _steps(run["events"]) == [18, 20, 22, 24]
    assert run["iterations"] == 32
    assert run["same_paths"]
    assert run["same_masks"]
    assert run["identical"], {k: v for k, v in run["max_abs_diff"].items() if v}
    assert run["digests"] == ref["digests"]


def test_retry_had_a_stale_gradient_to_discard(results):
    # Without the reset on reattach this gradient was added to step 18's.
    assert results["stale_gradient_norm"] > 0


def test_wrong_data_order_is_detected(results):
    """Control: the comparison is sensitive to what the resumed run sees."""
    run = results["wrong_data_order"]
    assert run["end_step"] == _END_STEP
    assert _steps(run["events"]) == [18, 20, 22, 24]
    assert not run["identical"]
    assert run["zeros"] == run["expected_zeros"]


def test_mid_epoch_backup_replays_batches_but_keeps_exact_counts(results):
    ref = results["reference"]
    assert results["mid_interrupted"] == _INTERRUPT[0] * _STEPS + 5 + 1 == 22
    meta = results["mid_metadata"]
    assert meta["epoch"] == _INTERRUPT[0]
    for name in ("mid_epoch", "mid_epoch_pinned"):
        run = results[name]
        epoch, restored = run["start"]
        # Keras restores the epoch only: it restarts at batch 0 of epoch 2
        # with the optimizer at the step of the mid-epoch backup.
        assert epoch == _INTERRUPT[0]
        replayed = restored - _INTERRUPT[0] * _STEPS
        assert 0 < replayed <= 6
        assert run["iterations"] == 32 + replayed
        assert run["zeros"] == run["expected_zeros"] == ref["expected_zeros"]
        assert run["mask_values"] == [0.0, 1.0]
        end_step = run["end_step"]
        first = restored + _UPDATE_FREQ - restored % _UPDATE_FREQ
        assert _steps(run["events"]) == list(range(first, end_step + 1, 2))
    # end_step=None counts from epoch 0 of the resumed fit: the replayed
    # batches move it; an explicit end_step pins it.
    run = results["mid_epoch"]
    assert run["end_step"] == _END_STEP + run["start"][1] - _INTERRUPT[0] * _STEPS
    pinned = results["mid_epoch_pinned"]
    assert pinned["end_step"] == _END_STEP
    for step, fraction in pinned["events"]:
        assert fraction == pytest.approx(_cosine(step), abs=1e-12)


def test_snfs_resumes_at_the_same_steps_with_exact_counts(results):
    ref, run = results["snfs_reference"], results["snfs_resumed"]
    assert ref["end_step"] == run["end_step"] == _END_STEP
    assert run["start"] == [_INTERRUPT[0], _INTERRUPT[0] * _STEPS]
    assert run["events"] == [e for e in ref["events"] if e[0] > 16]
    assert run["zeros"] == run["expected_zeros"] == ref["zeros"]
    # The moving average restarted at step 16, so the masks may differ; the
    # README says so. (Not asserted either way.)


def test_no_warnings_from_rigl_keras(results):
    assert results["warnings"] == []


if __name__ == "__main__":
    print("RESULT " + json.dumps(_scenarios()), flush=True)
