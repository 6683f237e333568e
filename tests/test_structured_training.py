"""Structured sparsity in training: `structure=` of the mask callbacks.

Every method (RigL, SET, SNFS, static, gradual pruning) with `Block` and
`NM` masks, on a sparsified model of Dense, Conv2D and EinsumDense layers:
the structure holds after initialization and after every optimizer step,
the counts are exact in whole units, and inactive entries are 0.0.
"""

import math
import warnings

import hypothesis
import hypothesis.strategies as st
import keras
import numpy as np
import pytest

import rigl_keras
from rigl_keras import structures
from _helpers import as_numpy  # tests/_helpers.py

_METHODS = ("rigl", "set", "snfs", "static", "prune")
_GROW = {"rigl": "gradient", "set": "random", "snfs": "momentum", "static": "gradient"}


def _model(seed=0):
    """Conv2D (3x3x4 -> 8), EinsumDense (32 -> 2x8) and Dense (16 -> 4)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 4))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(32, activation="relu", name="fc")(h)
    h = keras.layers.EinsumDense("ab,bcd->acd", output_shape=(2, 8), name="einsum")(h)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(4, name="out")(h)
    model = keras.Model(inputs, outputs)
    rigl_keras.sparsify(model)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
    return model


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 6, 6, 4)).astype("float32"),
            rng.standard_normal((n, 4)).astype("float32"))


def _callback(method, structure, sparsity, distribution, seed=0):
    if method == "prune":
        return rigl_keras.GradualPruningCallback(
            sparsity, distribution=distribution, update_freq=2, end_step=12,
            structure=structure)
    return rigl_keras.RigLCallback(
        sparsity=sparsity, distribution=distribution,
        update_freq=None if method == "static" else 2, end_step=None if method == "static" else 12,
        drop_fraction=0.5, drop_fraction_schedule="constant",
        grow=_GROW[method], seed=seed, structure=structure)


def _expected_zeros(model, structure, targets):
    """Zero entries per weight: whole blocks, or 1 - n/m of the entries."""
    expected = {}
    for w in rigl_keras.masked_weights(model):
        target = targets[w.key]
        if target == 0:
            expected[w.key] = 0
        elif isinstance(structure, structures.NM):
            expected[w.key] = w.size * (structure.m - structure.n) // structure.m
        else:
            view = structures.matrix_view(w)
            rows, cols = view.matrix_shape
            a, b = structure.shape
            blocks = (rows // a) * (cols // b)
            expected[w.key] = math.floor(target * blocks + 1e-9) * a * b
    return expected


class _Checker(keras.callbacks.Callback):
    """After the mask callback: checks the structure and counts every step."""

    def __init__(self, mask_callback, structure):
        super().__init__()
        self.mask_callback = mask_callback
        self.structure = structure
        self.problems = []
        self.changes = 0

    def _check(self, when):
        weights = rigl_keras.masked_weights(self.model)
        # Gradual pruning starts from all-ones masks, before its first step.
        sparse = {w.key: self.structure for w in weights
                  if self.mask_callback.target_sparsities[w.key] > 0
                  and np.any(as_numpy(w.mask) == 0)}
        result = structures.check(self.model, sparse)
        if not result:
            self.problems.append((when, "structure", result.violations))
        masks = {w.key: as_numpy(w.mask) for w in weights}
        for w in weights:
            mask = masks[w.key]
            if not np.all((mask == 0) | (mask == 1)):
                self.problems.append((when, w.key, "mask values"))
            if np.any(as_numpy(w.variable)[mask == 0] != 0.0):
                self.problems.append((when, w.key, "inactive entry not 0.0"))
            zeros = int(np.sum(mask == 0))
            if self.expected is not None and zeros != self.expected[w.key]:
                self.problems.append((when, w.key, f"{zeros} zeros, not {self.expected[w.key]}"))
        if self.previous is not None:
            self.changes += sum(
                int(np.any(masks[k] != self.previous[k])) for k in masks)
        self.previous = masks

    def on_train_begin(self, logs=None):
        self.previous = None
        targets = self.mask_callback.target_sparsities
        final = isinstance(self.mask_callback, rigl_keras.RigLCallback)
        self.expected = _expected_zeros(self.model, self.structure, targets) if final else None
        self._check("begin")

    def on_train_batch_end(self, batch, logs=None):
        self._check(f"batch {batch}")

    def on_train_end(self, logs=None):
        targets = self.mask_callback.target_sparsities
        self.expected = _expected_zeros(self.model, self.structure, targets)
        self._check("end")


_STRUCTURES = {
    "block4x1": (structures.Block((4, 1)), 0.8, "erk"),
    "block2x2": (structures.Block((2, 2)), 0.7, "uniform"),
    "nm2of4": (structures.NM(2, 4), 0.5, "uniform"),
    "nm1of4": (structures.NM(1, 4), 0.75, "uniform"),
}


@hypothesis.settings(max_examples=12, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(method=st.sampled_from(_METHODS),
                  structure=st.sampled_from(sorted(_STRUCTURES)),
                  seed=st.integers(0, 3))
def test_structure_and_counts_hold_at_every_step(method, structure, seed):
    structure, sparsity, distribution = _STRUCTURES[structure]
    model = _model(seed)
    callback = _callback(method, structure, sparsity, distribution, seed)
    checker = _Checker(callback, structure)
    x, y = _data(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[callback, checker])
    assert checker.problems == []
    if method not in ("static",):
        assert checker.changes > 0  # The masks did change (updates, pruning).


def test_block_erk_counts_whole_blocks_of_the_erk_targets():
    model = _model()
    block = structures.Block((4, 1))
    callback = _callback("static", block, 0.8, "erk")
    model.fit(*_data(), batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    erk = rigl_keras.sparsity_distribution(model, 0.8, method="erk")
    assert callback.target_sparsities == pytest.approx(erk)
    for w in rigl_keras.masked_weights(model):
        rows, cols = structures.matrix_view(w).matrix_shape
        blocks = rows // 4 * cols
        zero_blocks = math.floor(erk[w.key] * blocks + 1e-9)
        assert int(np.sum(as_numpy(w.mask) == 0)) == 4 * zero_blocks, w.key


def test_a_dict_structures_only_the_weights_it_names():
    model = _model()
    callback = rigl_keras.RigLCallback(
        sparsity=0.5, distribution="uniform", update_freq=2, end_step=10, seed=0,
        structure={"fc": structures.NM(2, 4), "conv": None})
    model.fit(*_data(), batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    assert structures.check(model, {"fc": structures.NM(2, 4)})
    # conv is unstructured: 2:4 does not hold there (by chance it could, but
    # a random 50% mask of 288 entries in 72 groups is 2:4 with odds ~1e-20).
    assert not structures.check(model, {"conv": structures.NM(2, 4)})


def test_nm_with_a_disagreeing_sparsity_is_a_value_error():
    model = _model()
    callback = rigl_keras.RigLCallback(sparsity=0.9, structure=structures.NM(2, 4))
    with pytest.raises(ValueError, match=r"disagrees with NM\(n=2, m=4\).*distribution='uniform'"):
        model.fit(*_data(), batch_size=16, epochs=1, verbose=0, callbacks=[callback])


def test_block_that_does_not_divide_a_weight_is_a_value_error_naming_it():
    model = _model()
    callback = rigl_keras.RigLCallback(sparsity=0.5, structure=structures.Block((3, 1)))
    with pytest.raises(ValueError, match=r"Block\(shape=\(3, 1\)\) does not fit weight '.*fc/kernel' of shape \(8, 32\)"):
        model.fit(*_data(), batch_size=16, epochs=1, verbose=0, callbacks=[callback])


def test_bad_structure_argument_is_a_value_error():
    with pytest.raises(ValueError, match="`structure` must be None"):
        rigl_keras.RigLCallback(structure="4x1")
    with pytest.raises(ValueError, match=r"structure\['fc'\]"):
        rigl_keras.GradualPruningCallback(0.5, structure={"fc": (4, 1)})


def test_a_mask_without_the_structure_is_refused():
    model = _model()
    unstructured = rigl_keras.RigLCallback(
        sparsity=0.5, distribution="uniform", update_freq=None, seed=0)
    model.fit(*_data(), batch_size=16, epochs=1, verbose=0, callbacks=[unstructured])
    structured = rigl_keras.RigLCallback(
        sparsity=0.5, distribution="uniform", seed=0, structure=structures.NM(2, 4))
    with pytest.raises(ValueError, match="already has a mask without the structure"):
        model.fit(*_data(), batch_size=16, epochs=1, verbose=0, callbacks=[structured])


@pytest.mark.parametrize("cls", [rigl_keras.RigLCallback, rigl_keras.GradualPruningCallback])
@pytest.mark.parametrize("structure", [
    None, structures.Block((4, 1)), structures.NM(2, 4),
    {"fc": structures.NM(2, 4), "out": None}])
def test_config_round_trip_keeps_the_structure(cls, structure):
    callback = cls(sparsity=0.5, structure=structure)
    config = callback.get_config()
    clone = cls.from_config(config)
    assert clone.structure == structure
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(callback))
    assert revived.structure == structure
