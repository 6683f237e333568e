"""Determinism of RigL training: masks are a function of the seed only.

* In one process, two runs with the same seed give bit-identical masks after
  every update; another seed gives other masks; `seed=None` after
  `keras.utils.set_random_seed` is reproducible too.
* Python's `hash()` is salted per process (`PYTHONHASHSEED`), so a seed
  derived from it would make workers of one job disagree: the package source
  must not call it, and two separate processes with different
  `PYTHONHASHSEED` and the same seed must produce the same masks (compared
  by SHA-256 digest).
"""

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import rigl_keras

import _helpers  # tests/_helpers.py

_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
_PACKAGE = _REPO_ROOT / "rigl_keras"
_BATCH = 16


def _hash_calls(source):
    """Line numbers of `hash(...)` calls outside `__hash__` methods.

    Python's `hash` is salted per process, so a seed drawn from it differs
    between workers; a `__hash__` method may use it (in-process only).
    """
    import ast  # pylint: disable=import-outside-toplevel

    lines = []

    def visit(node, in_dunder_hash):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_dunder_hash = node.name == "__hash__"
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "hash" and not in_dunder_hash):
            lines.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, in_dunder_hash)

    visit(ast.parse(source), False)
    return lines


def test_package_never_calls_python_hash():
    sources = sorted(_PACKAGE.rglob("*.py"))
    assert len(sources) > 5, sources
    offenders = [
        f"{path.relative_to(_REPO_ROOT)}:{number}"
        for path in sources
        for number in _hash_calls(path.read_text())
    ]
    assert offenders == [], offenders


def test_hash_call_finder_sees_seeds_but_not_dunder_hash():
    source = ("seed = hash(name)\n"
              "class A:\n"
              "    def __hash__(self):\n"
              "        return hash(self.key)\n"
              "    def seed(self):\n"
              "        return hash(self.key) % 7\n")
    assert _hash_calls(source) == [1, 6]


class _MaskHistory(keras.callbacks.Callback):
    """Masks at train begin and after every batch at which one changed."""

    def on_train_begin(self, logs=None):
        self.layers = rigl_keras.masked_layers(self.model)
        self.history = [(0, self._masks())]

    def _masks(self):
        return [np.array(keras.ops.convert_to_numpy(l.mask)) for l in self.layers]

    def on_train_batch_end(self, batch, logs=None):
        masks = self._masks()
        if any(not np.array_equal(a, b) for a, b in zip(masks, self.history[-1][1])):
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            self.history.append((step, masks))


def _run(seed, global_seed=0):
    """Trains the MLP (model init from `global_seed`), returns mask history."""
    model = _helpers.compiled_mlp(
        keras.optimizers.SGD(0.05, momentum=0.9), seed=global_seed
    )
    x, y = _helpers.regression_data()
    history = _MaskHistory()
    rigl = rigl_keras.RigLCallback(sparsity=0.8, update_freq=4, end_step=16,
                                   drop_fraction_schedule="constant", seed=seed)
    model.fit(x, y, batch_size=_BATCH, epochs=2, shuffle=False, verbose=0,
              callbacks=[rigl, history])
    return history.history


def _assert_same(history_a, history_b):
    assert [s for s, _ in history_a] == [s for s, _ in history_b]
    for (step, masks_a), (_, masks_b) in zip(history_a, history_b):
        for a, b in zip(masks_a, masks_b):
            assert a.tobytes() == b.tobytes(), f"masks differ at step {step}"


def test_same_seed_same_masks_other_seed_other_masks():
    first, again, other = _run(seed=7), _run(seed=7), _run(seed=8)
    assert [s for s, _ in first] == [0, 4, 8, 12, 16]
    _assert_same(first, again)
    # Another seed: other initial masks, other masks after the last update.
    for index in (0, -1):
        for a, b in zip(first[index][1], other[index][1]):
            assert not np.array_equal(a, b)


def test_seed_none_follows_keras_global_seed():
    _assert_same(_run(seed=None, global_seed=3), _run(seed=None, global_seed=3))


_SCRIPT = r"""
import hashlib, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras, numpy as np, tensorflow as tf
import rigl_keras
keras.utils.set_random_seed(0)
tf.config.experimental.enable_op_determinism()
model = keras.Sequential([
    keras.Input((12,)),
    rigl_keras.MaskedDense(24, activation="relu", name="encoder_dense"),
    rigl_keras.MaskedDense(3, name="classifier_head"),
])
model.compile(keras.optimizers.Adam(0.01), "mse")
rng = np.random.default_rng(0)
x = rng.standard_normal((96, 12)).astype("float32")
y = rng.standard_normal((96, 3)).astype("float32")
rigl = rigl_keras.RigLCallback(sparsity=0.7, update_freq=3, end_step=9,
                               drop_fraction_schedule="constant", seed=11)
model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
          callbacks=[rigl])
digest = hashlib.sha256()
for layer in rigl_keras.masked_layers(model):
    digest.update(layer.name.encode())
    digest.update(np.asarray(layer.mask).astype(np.float32).tobytes())
print("MASKS", int(model.optimizer.iterations), rigl.current_sparsity(),
      digest.hexdigest())
"""


def test_separate_processes_with_different_hash_salt_agree():
    processes = []
    for hash_seed in ("1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, TF_CPP_MIN_LOG_LEVEL="2")
        processes.append(subprocess.Popen(
            [sys.executable, "-c", _SCRIPT], cwd=str(_REPO_ROOT), env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        lines = [l for l in stdout.splitlines() if l.startswith("MASKS ")]
        assert len(lines) == 1, stdout
        outputs.append(lines[0].split())
    (_, steps, sparsity, digest), (_, steps_b, sparsity_b, digest_b) = outputs
    assert steps == steps_b == "12"
    assert float(sparsity) == pytest.approx(0.7, abs=0.01)
    assert sparsity == sparsity_b
    assert digest == digest_b
