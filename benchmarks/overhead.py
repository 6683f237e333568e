r"""Times `model.fit` with plain Keras, masked layers, `sparsify` and RigL.

Models (10 classes, synthetic data so that it runs offline; batch 128):

* `lenet300_100`: LeNet-300-100 on 784 features (MNIST shapes);
* `cnn`: a small CNN on 28x28x1 images;
* `mobilenetv2`: `keras.applications.MobileNetV2(weights=None,
  input_shape=(32, 32, 3), classes=10, alpha=0.35)` producing logits
  (`_common.mobilenet_v2`);
* `transformer`: a small functional transformer, `Embedding(1000, 64)` over
  32 tokens, two blocks of `MultiHeadAttention(4 heads)`, `Dense` feed-forward
  (128) and `LayerNormalization`, pooled `Dense` classifier
  (`_common.small_transformer`).

Variants (sparse ones: 90% ERK, `RigLCallback(distribution="erk")`):

* `plain`: plain Keras layers, no callback;
* `sparsify_static`: the plain model after `rigl_keras.sparsify(model)`,
  with `RigLCallback(update_freq=None)` (static sparse training);
* `sparsify_rigl`: the same with `RigLCallback(update_freq=100)` (RigL; an
  update every 100 optimizer steps until 75% of the `fit` call);
* `sparsify_snfs` (optional): the same with `grow="momentum"` (SNFS);
* `static`, `rigl` (`lenet300_100` and `cnn` only, which are built here from
  layers): the model built from `rigl_keras.MaskedDense` / `MaskedConv2D`
  with the static / RigL callback: the masked layers, against which
  `sparsify` is checked on LeNet-300-100;
* `plain_sync` (optional): `plain` plus a callback with an
  empty `on_train_batch_end`. Any such callback (`RigLCallback` has one)
  turns off Keras' asynchronous batch-callback dispatch; this variant
  measures that effect alone.
* `rezero` (optional; `lenet300_100` and `cnn` only): the design the masked
  layers did not take, measured beside the one they did. Plain Keras layers,
  each kernel with a `keras.constraints.Constraint` that multiplies it by a
  fixed 0/1 mask (the same ERK 90% counts as `static`, zeroed before
  training). The forward pass and the gradient are those of plain Keras (the
  optimizer sees the dense gradient) and the zeros are restored after every
  optimizer step (Keras applies constraints right after the update), where
  the other sparse variants mask the gradient before the update instead.

A variant that does not apply to a model (`static` on `mobilenetv2`) is
skipped for that model and listed under `skipped_variants`.

For each model and variant
the benchmark builds and compiles a fresh model (same seed for all), runs a
short warm-up `fit` (traces the train function) and then times one `fit` of
`--steps` optimizer steps. The variants are interleaved within each
repetition (their order rotates by one from one repetition to the next, so
none always runs first), all in one process; the reported numbers are
medians over `--repeats` repetitions. On a shared machine absolute times
drift; the ratios to `plain` (median of the per-repetition ratios) are what
the targets are checked against: `static` / `sparsify_static` <= 1.05x and
`rigl` / `sparsify_rigl` <= 1.10x the plain `fit` time. Where a model has
both, `sparsify_static` and `sparsify_rigl` are also paired with the masked
layers' `static` and `rigl`; on LeNet-300-100 the target is "no slower than
the masked layers" (paired ratio <= 1.00).

Three numbers are recorded for each timed `fit`:

* `fit`: wall time per step from the start of training to its end (timing
  callbacks first and last in the list: `on_train_begin` ..
  `on_train_end`). This is what a user pays, including per-`fit` set-up:
  RigL retraces the train function at the start of every `fit` (to attach
  its gradient recorders) and traces its update function at the first
  update. It leaves out the creation and destruction of the `tf.data`
  iterator, the same for every variant (with tf.data autotuning on, the
  destruction was seen to wait 0.1 s to 10 s for the autotuner's next
  wake-up; the dataset here has autotuning off); the whole call is kept as
  `outer_seconds`.
* `steady`: wall time of epochs 2..E per step (an epoch-level timing
  callback, which leaves Keras' callback dispatch as it is): the per-step
  cost of a long run, where per-`fit` set-up is amortized. With the default
  flags RigL's first update (and its tracing) falls in epoch 1 and two
  ordinary updates fall in epochs 2..E.
* `cpu`: process CPU time (all threads) per step over the same span as
  `fit`, less sensitive than wall time to other processes on a shared
  machine.

`per-fit set-up` in the table is the median of `fit` time minus `steps`
times the steady step time: add it once per `fit` call to extrapolate to
longer runs.

Memory. For each model, `plain` and each sparse variant (`--memory_variants`)
also get one untimed `fit` of 6 steps at batch 8 (RigL and SNFS with ΔT = 2,
so that the mask update and whatever it creates have run) in which every
`tf.Variable` alive in the process is listed before the model is built and
again at the end of the last batch (`gc.get_objects()`): the variables
created in between, less the optimizer's (`model.optimizer.variables`), the
metrics' and the model weights the plain model has too (same path), are
what `sparsify`, the masked layers and the callback add: masks, recorded
dense gradients, ever-active flags, counters. Their bytes (elements times
dtype size, of each variable's value at that moment) over the number of
masked parameters are the persistent extra memory per masked parameter;
variables of one element (step counters) are reported apart, as
`fixed_bytes`. `plain` is the control: it must add nothing. The same count
is also taken at the end of the first step whose dense gradient holds a
value, before the update uses it (`update_step`): RigL in `fit` holds its
float32 gradient only then. At commit 32e4e4c (before the one-mask-engine
change) this measured 5 B per masked parameter for static training (a
float32 mask and a bool ever-active flag) and 9 B for RigL and SNFS (plus a
float32 copy of the dense gradient, or its moving average), on every model
here, with the masked layers as with `sparsify`; the targets are that it
must not grow and the aim is <= 5 B.

Usage:

    python -m benchmarks.overhead --repeats 7
    python -m benchmarks.overhead --models lenet300_100,mobilenetv2,transformer \
        --variants plain,static,rigl,sparsify_static,sparsify_rigl \
        --memory_variants plain,sparsify_static,sparsify_rigl,sparsify_snfs \
        --repeats 7 --warmup_steps 200 \
        --output benchmarks/results/overhead_sparsify.json
    python -m benchmarks.overhead --models cnn --steps 200 --epochs 2 \
        --variants plain,plain_sync,static,rigl --output /tmp/overhead.json
    python -m benchmarks.overhead --models lenet300_100 \
        --variants plain,static,rezero --output /tmp/rezero.json
    python -m benchmarks.overhead --jit_compile true --output /tmp/xla.json
    python -m benchmarks.overhead --compare benchmarks/results/overhead_rezero.json

The JSON written to `--output` (default `benchmarks/results/overhead.json`)
holds the command, the date, machine facts (with load averages, as the
machine may be shared), digests of the library files, every repetition's
times, medians, ratios, the targets with pass/fail, the memory figures, and
the markdown tables that are also printed to stdout.
"""

import argparse
import gc
import json
import math
import pathlib
import platform
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks import _common
import rigl_keras
from rigl_keras.masking import random_mask

_MODELS = ("lenet300_100", "cnn", "mobilenetv2", "transformer")
# Built here from layers: they have masked-layer and `rezero` variants.
_LAYER_MODELS = ("lenet300_100", "cnn")
_VARIANTS = (
    "plain", "plain_sync", "static", "rigl", "rezero",
    "sparsify_static", "sparsify_rigl", "sparsify_snfs", "sparsify_rigl_one_function",
)
_MASKED_VARIANTS = ("static", "rigl")  # rigl_keras.MaskedDense / MaskedConv2D
_SPARSIFY_VARIANTS = (
    "sparsify_static", "sparsify_rigl", "sparsify_snfs", "sparsify_rigl_one_function")
_SPARSE_VARIANTS = _MASKED_VARIANTS + _SPARSIFY_VARIANTS  # with a RigLCallback
_LAYER_ONLY_VARIANTS = _MASKED_VARIANTS + ("rezero",)
_DEFAULT_VARIANTS = ("plain", "static", "rigl", "sparsify_static", "sparsify_rigl")
_TARGETS = {"static": 1.05, "rigl": 1.10, "sparsify_static": 1.05, "sparsify_rigl": 1.10}
# `sparsify` against the masked layers, where a model has both; the target
# "no slower than the masked layers" is the for LeNet-300-100.
_VERSUS = {"sparsify_static": "static", "sparsify_rigl": "rigl",
           "sparsify_rigl_one_function": "sparsify_rigl"}
_VERSUS_TARGETS = {"lenet300_100": 1.00}
_MEMORY_VARIANTS = ("plain",) + _SPARSE_VARIANTS
# Bytes per masked parameter that must not be exceeded: a float32 mask and
# a bool ever-active flag (5 B); SNFS and RigL with one train function
# (it decides in the graph) keep a float32 gradient buffer too (9 B, what
# every sparse training with a gradient kept at commit 32e4e4c). The aim is 5 B.
_MEMORY_LIMITS = {
    "static": 5.0, "rigl": 5.0,
    "sparsify_static": 5.0, "sparsify_rigl": 5.0, "sparsify_snfs": 9.0,
    "sparsify_rigl_one_function": 9.0,
}
_MEMORY_AIM = 5.0
_MEMORY_STEPS = 6
_MEMORY_BATCH_SIZE = 8
_MEMORY_UPDATE_FREQ = 2
_INPUT_SHAPES = {"lenet300_100": (784,), "cnn": (28, 28, 1), "mobilenetv2": (32, 32, 3)}
_TRANSFORMER = {"vocab_size": 1000, "length": 32}
_MODEL_DEFINITIONS = {
    "lenet300_100": "Dense 784-300-100-10 (relu), Sequential",
    "cnn": "Conv2D 32 3x3, maxpool, Conv2D 64 3x3, maxpool, Dense 128, Dense 10; Sequential",
    "mobilenetv2": "keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), "
                   "classes=10, alpha=0.35, classifier_activation=None)",
    "transformer": "_common.small_transformer(vocab_size=1000, length=32, dim=64, heads=4, "
                   "ff_dim=128, blocks=2, classes=10): Embedding, 2 x (MultiHeadAttention, "
                   "LayerNormalization, Dense-relu, Dense, LayerNormalization), "
                   "GlobalAveragePooling1D, Dense",
}
_VARIANT_DEFINITIONS = {
    "plain": "plain Keras layers, no callback",
    "plain_sync": "plain plus a no-op on_train_batch_end callback",
    "static": "rigl_keras.MaskedDense/MaskedConv2D + RigLCallback(update_freq=None)",
    "rigl": "rigl_keras.MaskedDense/MaskedConv2D + RigLCallback(update_freq=ΔT)",
    "rezero": "plain layers, kernel constraint re-applying a fixed ERK mask after each step",
    "sparsify_static": "rigl_keras.sparsify(model) + RigLCallback(update_freq=None)",
    "sparsify_rigl": "rigl_keras.sparsify(model) + RigLCallback(update_freq=ΔT)",
    "sparsify_snfs": "rigl_keras.sparsify(model) + RigLCallback(update_freq=ΔT, grow='momentum')",
    "sparsify_rigl_one_function": "sparsify_rigl with one train function that decides in the "
                                  "graph whether to record (the design the per-step choice "
                                  "of two train functions is measured against)",
}
_DEFAULT_OUTPUT = pathlib.Path(__file__).resolve().parent / "results" / "overhead.json"
_ENV_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_CPP_MIN_LOG_LEVEL",
    "CUDA_VISIBLE_DEVICES",
)


# ----------------------------------------------------------------------
# Models and data.


def variant_applies(name, variant):
    """Whether `variant` exists for model `name`.

    The masked-layer variants (`static`, `rigl`) and `rezero` need a model
    built here from layers (`lenet300_100`, `cnn`); the others apply to
    every model.

    Example:

    >>> variant_applies("mobilenetv2", "sparsify_rigl"), variant_applies("mobilenetv2", "rigl")
    (True, False)
    """
    return variant not in _LAYER_ONLY_VARIANTS or name in _LAYER_MODELS


def build_model(name, variant):
    """Builds one benchmark model (before any `sparsify`).

    Args:
        name: One of `_MODELS`.
        variant: One of `_VARIANTS`: `"static"` / `"rigl"` get masked
            layers, every other variant plain Keras layers.

    Returns:
        An uncompiled, built `keras.Model` producing 10 logits.

    Raises:
        ValueError: For an unknown `name` or `variant`, or a variant that
            does not apply to the model (`variant_applies`).
    """
    if variant not in _VARIANTS:
        raise ValueError(f"`variant` must be one of {_VARIANTS}. Received: variant={variant!r}")
    if name not in _MODELS:
        raise ValueError(f"`name` must be one of {_MODELS}. Received: name={name!r}")
    if not variant_applies(name, variant):
        raise ValueError(
            f"Variant {variant!r} needs a model built from layers here "
            f"({', '.join(_LAYER_MODELS)}). Received: name={name!r}, variant={variant!r}"
        )
    if name == "mobilenetv2":
        return _common.mobilenet_v2(input_shape=_INPUT_SHAPES[name], classes=10, alpha=0.35)
    if name == "transformer":
        return _common.small_transformer(classes=10, **_TRANSFORMER)
    if variant in _MASKED_VARIANTS:
        dense, conv = rigl_keras.MaskedDense, rigl_keras.MaskedConv2D
    else:
        dense, conv = keras.layers.Dense, keras.layers.Conv2D
    if name == "lenet300_100":
        return keras.Sequential(
            [
                keras.Input((784,)),
                dense(300, activation="relu", name="fc1"),
                dense(100, activation="relu", name="fc2"),
                dense(10, name="fc3"),
            ],
            name=f"lenet300_100_{variant}",
        )
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            conv(32, 3, activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(2),
            conv(64, 3, activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            dense(128, activation="relu", name="fc1"),
            dense(10, name="fc2"),
        ],
        name=f"cnn_{variant}",
    )


def make_dataset(name, num_examples, batch_size, seed):
    """An endless batched dataset of synthetic examples for model `name`.

    Args:
        name: Model name: `"lenet300_100"` gets flat 784-feature inputs,
            `"cnn"` 28x28x1 images, `"mobilenetv2"` 32x32x3 images (uniform
            in [0, 1)), `"transformer"` 32 int32 token ids in [0, 1000).
        num_examples: Number of distinct examples (cycled).
        batch_size: Batch size (the last partial batch is dropped).
        seed: NumPy seed of the data.

    Returns:
        A `tf.data.Dataset` of `(x, y)` batches with integer labels in
        [0, 10), prefetching 2 batches, with tf.data autotuning off.
    """
    rng = np.random.default_rng(seed)
    if name == "transformer":
        x = rng.integers(
            0, _TRANSFORMER["vocab_size"], size=(num_examples, _TRANSFORMER["length"])
        ).astype(np.int32)
    else:
        x = rng.random((num_examples,) + _INPUT_SHAPES[name], dtype=np.float32)
    y = rng.integers(0, 10, size=num_examples).astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    dataset = dataset.batch(batch_size, drop_remainder=True).repeat().prefetch(2)
    # With autotuning on, destroying the iterator at the end of `fit`
    # sometimes waits for the autotuner's next (exponentially spaced)
    # wake-up: 0.1 s to 10 s of noise in the length of a `fit` call.
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


class _NoOpBatchCallback(keras.callbacks.Callback):
    """An empty `on_train_batch_end`, for the `plain_sync` variant.

    Its mere presence turns off Keras' asynchronous batch-callback dispatch,
    as `RigLCallback`'s `on_train_batch_end` does.
    """

    def on_train_batch_end(self, batch, logs=None):
        pass


class FixedMaskConstraint(keras.constraints.Constraint):
    """Multiplies a kernel by a fixed 0/1 mask after each optimizer step.

    For the `rezero` variant: Keras applies a variable's constraint right
    after the optimizer updates it, so the kernel's inactive entries are
    back at exactly 0.0 before the next forward pass.

    Args:
        mask: A float32 `tf.Variable` of the kernel's shape.

    Example:

    >>> mask = tf.Variable([[1.0, 0.0]])
    >>> FixedMaskConstraint(mask)(tf.constant([[2.0, 3.0]])).numpy()
    array([[2., 0.]], dtype=float32)
    """

    def __init__(self, mask):
        self.mask = mask

    def __call__(self, w):
        return w * tf.cast(self.mask, w.dtype)


def attach_fixed_masks(model, sparsity, seed):
    """Gives each Dense/Conv2D kernel of `model` a `FixedMaskConstraint`.

    The masks have exactly the zero counts `RigLCallback` gives the masked
    model (ERK over the same kernels, `floor(s_l * N_l)` zeros, random
    positions), and the kernels are zeroed outside them.

    Args:
        model: A built model of plain Keras layers (`build_model(name,
            "rezero")`).
        sparsity: Overall fraction of zeros.
        seed: Integer seed of the mask positions.
    """
    layers = [
        l for l in model.layers
        if isinstance(l, (keras.layers.Dense, keras.layers.Conv2D))
    ]
    shapes = {l.name: tuple(l.kernel.shape) for l in layers}
    zeros = rigl_keras.distributions.layer_zero_counts(
        shapes, rigl_keras.distributions.distribute_sparsity(shapes, sparsity, "erk")
    )
    for index, layer in enumerate(layers):
        mask = tf.Variable(
            random_mask(shapes[layer.name], zeros[layer.name], seed + index),
            trainable=False,
            name=f"{layer.name}_fixed_mask",
        )
        layer.kernel.assign(layer.kernel * mask)
        layer.kernel.constraint = FixedMaskConstraint(mask)


class _OneTrainFunctionRigL(rigl_keras.RigLCallback):
    """RigL that keeps one train function recording in-graph on update steps.

    The engine picks one of two traced train functions per step where it
    can; this variant turns that off to measure the choice (an internal
    design decision, so it overrides the engine's private hook).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.engine._can_swap_train_functions = lambda: False  # pylint: disable=protected-access


def _callbacks(variant, sparsity, update_freq, seed):
    if variant in ("plain", "rezero"):
        return []
    if variant == "plain_sync":
        return [_NoOpBatchCallback()]
    if variant == "sparsify_rigl_one_function":
        return [_OneTrainFunctionRigL(sparsity=sparsity, distribution="erk",
                                      update_freq=update_freq, seed=seed)]
    return [
        rigl_keras.RigLCallback(
            sparsity=sparsity,
            distribution="erk",
            update_freq=None if variant in ("static", "sparsify_static") else update_freq,
            grow="momentum" if variant == "sparsify_snfs" else "gradient",
            seed=seed,
        )
    ]


class _TrainStart(keras.callbacks.Callback):
    """Placed first in the callback list: clocks the start of training."""

    def on_train_begin(self, logs=None):
        self.wall, self.cpu = time.perf_counter(), time.process_time()


class _TrainTimer(keras.callbacks.Callback):
    """Placed last: clocks each epoch and the end of training.

    Epoch and train hooks only, so Keras' callback dispatch stays as it is.
    """

    def __init__(self):
        super().__init__()
        self.epoch_seconds = []
        self._epoch_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start)

    def on_train_end(self, logs=None):
        self.wall, self.cpu = time.perf_counter(), time.process_time()


def _compiled_model(name, variant, learning_rate, seed, jit_compile="auto",
                    sparsity=0.9):
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = build_model(name, variant)
    if variant == "rezero":
        attach_fixed_masks(model, sparsity, seed)
    if variant in _SPARSIFY_VARIANTS:
        rigl_keras.sparsify(model)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


def time_variant(name, variant, dataset, config):
    """Builds, warms up and times one variant once.

    Args:
        name: Model name.
        variant: One of `_VARIANTS` that applies to the model.
        dataset: The dataset from `make_dataset`.
        config: The `argparse.Namespace` of the run.

    Returns:
        A dict with `fit_seconds` and `cpu_seconds` (from `on_train_begin`
        to `on_train_end` of the timed fit), `outer_seconds` (the whole
        `model.fit` call), `epoch_seconds` (list), `warmup_seconds`,
        `sparsity` (the final fraction of zeros of the masks: those of
            `rigl_keras.masked_weights` or the `rezero` variant's fixed
            masks; 0.0 for plain), `masked_params` (entries under those
            masks), `jit_compile`, `num_params` and `load_average` (1
            minute, at the end of the timed fit).
    """
    model = _compiled_model(
        name, variant, config.learning_rate, config.seed, config.jit_compile,
        config.sparsity,
    )
    # The same callback object serves the warm-up and the timed fit, as in a
    # user's repeated `fit` calls; its masks are set in the warm-up.
    callbacks = _callbacks(variant, config.sparsity, config.update_freq, config.seed)
    warmup = time.perf_counter()
    model.fit(
        dataset,
        epochs=1,
        steps_per_epoch=config.warmup_steps,
        callbacks=callbacks,
        shuffle=False,
        verbose=0,
    )
    warmup = time.perf_counter() - warmup
    start, timer = _TrainStart(), _TrainTimer()
    steps_per_epoch = config.steps // config.epochs
    gc.collect()
    outer = time.perf_counter()
    model.fit(
        dataset,
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=[start] + callbacks + [timer],
        shuffle=False,
        verbose=0,
    )
    outer = time.perf_counter() - outer
    constraints = [getattr(getattr(l, "kernel", None), "constraint", None) for l in model.layers]
    masks = [w.mask for w in rigl_keras.masked_weights(model)] + [
        c.mask for c in constraints if isinstance(c, FixedMaskConstraint)
    ]
    zeros = sum(float(np.sum(np.asarray(m) == 0)) for m in masks)
    total = sum(int(np.prod(m.shape)) for m in masks)
    return {
        "fit_seconds": timer.wall - start.wall,
        "cpu_seconds": timer.cpu - start.cpu,
        "outer_seconds": outer,
        "epoch_seconds": list(timer.epoch_seconds),
        "warmup_seconds": warmup,
        "sparsity": zeros / total if total else 0.0,
        "masked_params": total,
        "jit_compile": bool(model.jit_compile),
        "num_params": int(model.count_params()),
        "load_average": (_common.load_average() or [None])[0],
    }


# ----------------------------------------------------------------------
# Persistent memory: the variables a variant adds.


def live_variables():
    """Every `tf.Variable` alive in the process, after a garbage collection.

    Found with `gc.get_objects()`, so that variables held anywhere (a layer,
    a callback, an optimizer hook, a traced function) are seen. A Keras
    variable is seen through the `tf.Variable` it holds; the components of
    a distributed variable are listed, the distributed wrapper is not.

    Returns:
        A list of `tf.Variable`.
    """
    gc.collect()
    found = []
    for obj in gc.get_objects():
        try:
            if isinstance(obj, tf.Variable) and not isinstance(
                obj, tf.distribute.DistributedValues
            ):
                found.append(obj)
        except ReferenceError:  # a dead weak proxy
            continue
    return found


class VariableCensus:
    """The `tf.Variable`s created since the census was made.

    It holds the variables alive at its creation, so that none of them can
    be freed and its `id` reused by a new one; `close()` lets them go.

    Example:

    >>> census = VariableCensus()
    >>> v = tf.Variable(tf.zeros((3, 4)))
    >>> [tuple(x.shape) for x in census.new_variables()]
    [(3, 4)]
    >>> census.close()
    """

    def __init__(self):
        self._before = {id(v): v for v in live_variables()}

    def new_variables(self):
        """The variables alive now that were not when the census was made."""
        return [v for v in live_variables() if id(v) not in self._before]

    def close(self):
        """Drops the references to the variables alive at the start."""
        self._before = {}


class _CensusProbe(keras.callbacks.Callback):
    """Placed last: takes the census at the end of the fit's last batch.

    That is still inside training (before any `on_train_end`), after every
    callback's `on_train_batch_end` of that batch.
    """

    def __init__(self, census):
        super().__init__()
        self.census = census
        self.variables = None

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.params["steps"]:
            self.variables = self.census.new_variables()


class _UpdateStepProbe(keras.callbacks.Callback):
    """Placed first: lists the extra variables at the end of the first
    batch whose dense gradients hold a value, before any callback's
    `on_train_batch_end` (and so RigL's update) has run for that batch.

    For RigL in `fit`, whose dense gradient is empty between updates, that
    is the first update step; for SNFS, which keeps a moving average, the
    first batch; for variants without a dense gradient, never.

    Args:
        census: The `VariableCensus` made before the model was built.
        callbacks: The variant's callbacks.
        plain_paths: As for `extra_variables`.
    """

    def __init__(self, census, callbacks, plain_paths):
        super().__init__()
        self.census = census
        self.callbacks = callbacks
        self.plain_paths = plain_paths
        self.rows = None

    def on_train_batch_end(self, batch, logs=None):
        if self.rows is not None:
            return
        held = [
            g for c in self.callbacks for g in getattr(c, "dense_gradients", {}).values()
        ]
        if any(int(tf.size(g)) > 0 for g in held):
            self.rows = extra_variables(
                self.model, self.callbacks, self.census.new_variables(), self.plain_paths
            )


def variable_shape(variable):
    """A variable's shape now, as a list of ints.

    A variable made with an unknown shape (RigL's dense gradient, empty
    between updates) has the shape of its current value.

    Example:

    >>> variable_shape(tf.Variable(tf.zeros((0,)), shape=tf.TensorShape(None)))
    [0]
    """
    if variable.shape.is_fully_defined():
        return [int(d) for d in variable.shape]
    return [int(d) for d in tf.shape(variable).numpy()]


def variable_bytes(variable):
    """Bytes of a variable's elements now: element count times dtype size.

    Example:

    >>> variable_bytes(tf.Variable(tf.zeros((3, 4), tf.bool)))
    12
    """
    return math.prod(variable_shape(variable)) * variable.dtype.size


def _tf_variable(variable):
    """The `tf.Variable` behind a Keras variable (or the argument itself)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _relative_path(path, model):
    prefix = f"{model.name}/"
    return path[len(prefix):] if path.startswith(prefix) else path


def extra_variables(model, callbacks, new_variables, plain_paths):
    """The new variables a plain model under the same optimizer lacks.

    Args:
        model: The trained model of the variant.
        callbacks: Its callbacks (a `RigLCallback`'s `dense_gradients` are
            its dense-gradient variables).
        new_variables: The `tf.Variable`s created since before the model
            was built (`VariableCensus.new_variables`).
        plain_paths: The paths, below the model, of the plain model's
            weights (`"fc1/kernel"`, ...).

    Returns:
        One dict per extra variable, in `new_variables` order: `name` (the
        `tf.Variable`'s), `kind` (`"mask"` for a mask of
        `rigl_keras.masked_weights`, `"dense_gradient"` for one of
        `dense_gradients`, else the variable's name without `:0`), `shape`, `dtype`
        and `bytes`. Left out: the optimizer's variables, the metrics'
        variables and the model weights whose path the plain model has.
    """
    ignored = {id(_tf_variable(v)) for v in model.optimizer.variables}
    ignored |= {id(_tf_variable(v)) for m in model.metrics for v in m.variables}
    ignored |= {
        id(_tf_variable(v)) for v in model.weights
        if _relative_path(v.path, model) in plain_paths
    }
    masks = {id(_tf_variable(w.mask)) for w in rigl_keras.masked_weights(model)}
    recorded = {
        id(_tf_variable(g))
        for c in callbacks
        for g in getattr(c, "dense_gradients", {}).values()
    }
    rows = []
    for v in new_variables:
        if id(v) in ignored:
            continue
        if id(v) in masks:
            kind = "mask"
        elif id(v) in recorded:
            kind = "dense_gradient"
        else:
            kind = v.name.rsplit(":", 1)[0]
        rows.append({
            "name": v.name,
            "kind": kind,
            "shape": variable_shape(v),
            "dtype": v.dtype.name,
            "bytes": variable_bytes(v),
        })
    return rows


def summarize_memory(rows, masked_params):
    """Bytes per masked parameter from `extra_variables` rows.

    Variables of more than one element hold per-entry state (a mask, a
    gradient copy, flags): their bytes over `masked_params` are
    `bytes_per_masked_param`. Variables of one element (counters) are
    `fixed_bytes`.

    Args:
        rows: The `extra_variables` dicts.
        masked_params: Entries of the masked weights.

    Returns:
        `{"masked_params", "extra_bytes", "fixed_bytes", "variables",
        "bytes_per_masked_param", "by_kind": {kind: {"variables", "bytes",
        "dtypes", "fixed", "bytes_per_masked_param"}}}`; the per-parameter
        figures are None without masked parameters, and for a kind whose
        variables all have one element (`fixed`).

    Example:

    >>> rows = [{"kind": "mask", "shape": [2, 3], "dtype": "float32", "bytes": 24},
    ...         {"kind": "step", "shape": [], "dtype": "int64", "bytes": 8}]
    >>> m = summarize_memory(rows, 6)
    >>> m["bytes_per_masked_param"], m["fixed_bytes"], m["extra_bytes"]
    (4.0, 8, 32)
    """
    def per_param(nbytes):
        return nbytes / masked_params if masked_params else None

    by_kind = {}
    for row in rows:
        kind = by_kind.setdefault(
            row["kind"], {"variables": 0, "bytes": 0, "dtypes": [], "fixed": True}
        )
        kind["variables"] += 1
        kind["bytes"] += row["bytes"]
        kind["fixed"] = kind["fixed"] and math.prod(row["shape"]) == 1
        if row["dtype"] not in kind["dtypes"]:
            kind["dtypes"].append(row["dtype"])
    for kind in by_kind.values():
        kind["bytes_per_masked_param"] = None if kind["fixed"] else per_param(kind["bytes"])
    fixed = sum(r["bytes"] for r in rows if math.prod(r["shape"]) == 1)
    total = sum(r["bytes"] for r in rows)
    return {
        "masked_params": masked_params,
        "extra_bytes": total,
        "fixed_bytes": fixed,
        "variables": len(rows),
        "bytes_per_masked_param": per_param(total - fixed),
        "by_kind": by_kind,
    }


def measure_memory(name, variant, config):
    """The persistent variables one variant adds to the plain model.

    Builds the variant (after listing the variables alive), trains it for
    `_MEMORY_STEPS` steps of batch `_MEMORY_BATCH_SIZE` with its callback
    (ΔT = `_MEMORY_UPDATE_FREQ`, so that RigL's updates run) and lists the
    variables again at the end of the last batch (module docstring).

    Args:
        name: Model name.
        variant: `"plain"` or a sparse variant that applies to the model.
        config: The `argparse.Namespace` of the run (`sparsity`,
            `learning_rate`, `seed`, `jit_compile`).

    Returns:
        `summarize_memory(...)` of the extra variables, with the key
        `"update_step"`: `summarize_memory(...)` of the extra variables at
        the end of the first step whose dense gradient holds a value
        (`_UpdateStepProbe`), or of the persistent ones if none does.
    """
    keras.backend.clear_session()
    reference = build_model(name, "plain")
    plain_paths = {_relative_path(v.path, reference) for v in reference.weights}
    del reference
    dataset = make_dataset(
        name, _MEMORY_BATCH_SIZE * _MEMORY_STEPS, _MEMORY_BATCH_SIZE, config.seed
    )
    census = VariableCensus()
    try:
        model = _compiled_model(
            name, variant, config.learning_rate, config.seed, config.jit_compile,
            config.sparsity,
        )
        callbacks = _callbacks(variant, config.sparsity, _MEMORY_UPDATE_FREQ, config.seed)
        probe = _CensusProbe(census)
        update_probe = _UpdateStepProbe(census, callbacks, plain_paths)
        model.fit(
            dataset,
            epochs=1,
            steps_per_epoch=_MEMORY_STEPS,
            callbacks=[update_probe] + callbacks + [probe],
            shuffle=False,
            verbose=0,
        )
        rows = extra_variables(model, callbacks, probe.variables, plain_paths)
    finally:
        census.close()
    masked = sum(w.size for w in rigl_keras.masked_weights(model))
    summary = summarize_memory(rows, masked)
    summary["update_step"] = summarize_memory(
        rows if update_probe.rows is None else update_probe.rows, masked
    )
    return summary


def memory_checks(memory):
    """The memory targets, for the variants that have one.

    Args:
        memory: `{variant: measure_memory(...)}`.

    Returns:
        `{variant: {"bytes_per_masked_param", "max_bytes_per_masked_param",
        "not_grown", "aim_bytes_per_masked_param", "aim_met"}}`, and for
        `plain`, if measured, `{"extra_bytes", "pass"}` (the control: it must
        add nothing).
    """
    checks = {}
    for variant, measured in memory.items():
        if variant == "plain":
            checks[variant] = {
                "extra_bytes": measured["extra_bytes"],
                "pass": measured["extra_bytes"] == 0,
            }
            continue
        value = measured["bytes_per_masked_param"]
        if variant not in _MEMORY_LIMITS or value is None:
            continue
        checks[variant] = {
            "bytes_per_masked_param": value,
            "max_bytes_per_masked_param": _MEMORY_LIMITS[variant],
            "not_grown": value <= _MEMORY_LIMITS[variant],
            "aim_bytes_per_masked_param": _MEMORY_AIM,
            "aim_met": value <= _MEMORY_AIM,
        }
    return checks


# ----------------------------------------------------------------------
# Machine facts.


def _memory_gib():
    total = _common.meminfo_gib("MemTotal")
    return None if total is None else round(total, 1)


def machine_facts():
    """Facts about the machine and software that affect the timings.

    Returns:
        A JSON-serializable dict.
    """
    return {
        **_common.cpu_facts(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "rigl_keras": rigl_keras.__version__,
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "env": _common.env_vars(_ENV_VARS),
    }


# ----------------------------------------------------------------------
# Statistics and report.

_KINDS = ("fit", "steady", "cpu")


def per_step_seconds(run, steps_per_epoch):
    """The `fit`, `steady` and `cpu` seconds per step of one timed fit.

    Args:
        run: A dict from `time_variant` (`fit_seconds`, `cpu_seconds`,
            `epoch_seconds`).
        steps_per_epoch: Steps of each epoch of the timed fit.

    Returns:
        `{"fit": s, "steady": s or None, "cpu": s}`; `steady` (epochs after
        the first) is None for a one-epoch fit.

    Example:

    >>> per_step_seconds({"fit_seconds": 3.0, "cpu_seconds": 6.0,
    ...                   "epoch_seconds": [1.5, 1.0, 0.5]}, 10)
    {'fit': 0.1, 'steady': 0.075, 'cpu': 0.2}
    """
    epochs = run["epoch_seconds"]
    steps = steps_per_epoch * len(epochs)
    later = epochs[1:]
    return {
        "fit": run["fit_seconds"] / steps,
        "steady": sum(later) / (len(later) * steps_per_epoch) if later else None,
        "cpu": run["cpu_seconds"] / steps,
    }


def _paired_ratio(values, base):
    """Median over repetitions of `values[i] / base[i]`, with its 95%
    bootstrap interval, and the per-repetition ratios."""
    paired = [v / b for v, b in zip(values, base)]
    return {
        "paired_median": _common.median(paired),
        "paired_median_ci95": _common.bootstrap_median_interval(paired),
        "paired": paired,
    }


def summarize(runs, steps_per_epoch, targets=None, versus=None):
    """Medians, ratios to `plain` and target checks for one model.

    A variant's ratio is the median over repetitions of the paired ratio
    `variant_time / plain_time` within the same repetition (interleaving
    makes the pair share the machine's state, which cancels slow drift);
    `ratio_of_medians` is also given, and `paired_median_ci95`: a 95%
    percentile-bootstrap interval of that median (how far the noise of the
    repetitions leaves it uncertain).

    Args:
        runs: `{variant: [run dict per repetition]}` from `time_variant`,
            with the same number of repetitions for every variant.
        steps_per_epoch: Steps of each epoch of the timed fits.
        targets: `{variant: max_ratio}`; defaults to the issue's targets
            (`static` and `sparsify_static` <= 1.05, `rigl` and
            `sparsify_rigl` <= 1.10).
        versus: `{variant: (baseline, max_ratio or None)}`: further paired
            ratios `variant / baseline` (both in `runs`), checked against
            `max_ratio` unless it is None.

    Returns:
        A JSON-serializable dict with `num_params`, `variants` (every
        repetition, the median ms/step per kind and, with two or more epochs,
        `median_setup_seconds`: the fit's time beyond as many steady-state
        steps), `ratios`, `versus` (`{"variant/baseline": {kind: ratio}}`)
        and `targets` (`max_ratio`, the measured `ratio` and `pass` per kind;
        keyed by variant, or by `"variant/baseline"` for `versus`).
    """
    targets = _TARGETS if targets is None else targets
    versus = versus or {}
    per_step = {}
    variants = {}
    for variant, reps in runs.items():
        rows = [per_step_seconds(r, steps_per_epoch) for r in reps]
        series = {
            kind: [row[kind] for row in rows]
            for kind in _KINDS
            if all(row[kind] is not None for row in rows)
        }
        per_step[variant] = series
        variants[variant] = {
            "repetitions": reps,
            "ms_per_step": {k: [1e3 * x for x in v] for k, v in series.items()},
            "median_ms_per_step": {k: 1e3 * _common.median(v) for k, v in series.items()},
        }
        if "steady" in series:
            # What the fit cost beyond `steps` steady-state steps: per-fit
            # set-up (tracing, first update), to extrapolate to longer fits.
            steps = steps_per_epoch * len(reps[0]["epoch_seconds"])
            variants[variant]["median_setup_seconds"] = _common.median(
                [r["fit_seconds"] - steps * row["steady"] for r, row in zip(reps, rows)]
            )
    ratios = {}
    checks = {}
    base = per_step.get("plain")
    for variant in runs:
        if variant == "plain" or base is None:
            continue
        ratios[variant] = {}
        for kind, values in per_step[variant].items():
            ratios[variant][kind] = {
                **_paired_ratio(values, base[kind]),
                "ratio_of_medians": _common.median(values) / _common.median(base[kind]),
            }
        if variant in targets:
            checks[variant] = _check(ratios[variant], targets[variant])
    pairs = {}
    for variant, (baseline, max_ratio) in versus.items():
        key = f"{variant}/{baseline}"
        pairs[key] = {
            kind: _paired_ratio(values, per_step[baseline][kind])
            for kind, values in per_step[variant].items()
            if kind in per_step[baseline]
        }
        if max_ratio is not None:
            checks[key] = _check(pairs[key], max_ratio)
    first = next(iter(runs.values()))[0]
    return {
        "num_params": first.get("num_params"),
        "variants": variants,
        "ratios": ratios,
        "versus": pairs,
        "targets": checks,
    }


def _check(ratios, max_ratio):
    """`{"max_ratio", "ratio", "pass"}` of `{kind: paired ratio}`."""
    measured = {k: r["paired_median"] for k, r in ratios.items()}
    return {
        "max_ratio": max_ratio,
        "ratio": measured,
        "pass": {k: r <= max_ratio for k, r in measured.items()},
    }


def compare_variants(report, kind="fit"):
    """Paired ratios between every two variants of a stored report.

    Re-reads the repetitions of a report written by this script (no timing
    is run) and, for each model and each ordered pair of variants, takes
    the median over repetitions of `time(variant) / time(baseline)` within
    the same repetition, with its 95% bootstrap interval: how two variants
    compare when neither is plain Keras (for example `rezero` against
    `static`).

    Args:
        report: A report dict (the JSON this script writes).
        kind: `"fit"`, `"steady"` or `"cpu"`.

    Returns:
        `{model: {"variant/baseline": {"paired_median": r,
        "paired_median_ci95": [low, high], "paired": [per repetition]}}}`.

    Raises:
        ValueError: For an unknown `kind`, or one the report lacks.
    """
    if kind not in _KINDS:
        raise ValueError(f"`kind` must be one of {_KINDS}. Received: kind={kind!r}")
    steps_per_epoch = report["config"]["steps_per_epoch"]
    comparisons = {}
    for name, summary in report["results"].items():
        times = {
            variant: [per_step_seconds(r, steps_per_epoch)[kind] for r in data["repetitions"]]
            for variant, data in summary["variants"].items()
        }
        if any(None in values for values in times.values()):
            raise ValueError(
                f"The report has no `{kind}` times (one-epoch fits). "
                f"Received: kind={kind!r}"
            )
        comparisons[name] = {
            f"{variant}/{baseline}": _paired_ratio(values, base)
            for variant, values in times.items()
            for baseline, base in times.items()
            if variant != baseline
        }
    return comparisons


def markdown_table(results):
    """A markdown table of median ms/step and paired ratios to plain Keras.

    Args:
        results: `{model: summarize(...)}`.

    Returns:
        The table as a string.
    """
    lines = [
        "| model | variant | fit ms/step | steady ms/step | CPU ms/step "
        "| fit ratio | steady ratio | CPU ratio | per-fit set-up s "
        "| target (fit ratio) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, summary in results.items():
        for variant, data in summary["variants"].items():
            med = data["median_ms_per_step"]
            cells = [name, variant]
            cells += [f"{med[k]:.2f}" if k in med else "n/a" for k in _KINDS]
            ratio = summary["ratios"].get(variant, {})
            for kind in _KINDS:
                if variant == "plain":
                    cells.append("1.00")
                elif kind in ratio:
                    cells.append(f"{ratio[kind]['paired_median']:.2f}")
                else:
                    cells.append("n/a")
            setup = data.get("median_setup_seconds")
            cells.append("n/a" if setup is None else f"{setup:.2f}")
            target = summary["targets"].get(variant)
            if target is None:
                cells.append("")
            else:
                ok = target["pass"].get("fit")
                cells.append(
                    f"<= {target['max_ratio']:.2f}: {'pass' if ok else 'FAIL'}"
                )
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ci(ratio):
    low, high = ratio["paired_median_ci95"]
    return f"{ratio['paired_median']:.3f} [{low:.3f}, {high:.3f}]"


def versus_table(results):
    """A markdown table of the `versus` ratios (`sparsify_*` / masked layers).

    Args:
        results: `{model: summarize(...)}`.

    Returns:
        The table as a string, or `""` if no model has such a pair.
    """
    lines = [
        "| model | variant / baseline | fit ratio [95% CI] | steady ratio [95% CI] "
        "| CPU ratio [95% CI] | target (fit ratio) |",
        "|---|---|---|---|---|---|",
    ]
    for name, summary in results.items():
        for pair, ratios in summary.get("versus", {}).items():
            cells = [name, pair.replace("/", " / ")]
            cells += [_ci(ratios[k]) if k in ratios else "n/a" for k in _KINDS]
            target = summary["targets"].get(pair)
            if target is None:
                cells.append("")
            else:
                ok = target["pass"].get("fit")
                cells.append(f"<= {target['max_ratio']:.2f}: {'pass' if ok else 'FAIL'}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def memory_table(memory):
    """A markdown table of the persistent extra memory per masked parameter.

    Args:
        memory: `{model: {"variants": {variant: measure_memory(...)},
            "checks": memory_checks(...)}}`.

    Returns:
        The table as a string, or `""` if nothing was measured.
    """
    lines = [
        "| model | variant | masked params | extra bytes | B / masked param "
        "| by kind (B / masked param) | fixed bytes | must not grow | aim <= 5 B "
        "| B / masked param on an update step |",
        "|---|---|---:|---:|---:|---|---:|---|---|---:|",
    ]
    for name, entry in memory.items():
        for variant, m in entry["variants"].items():
            per = m["bytes_per_masked_param"]
            kinds = ", ".join(
                f"{kind} {'/'.join(k['dtypes'])} "
                + (f"{k['bytes_per_masked_param']:.2f}" if k["bytes_per_masked_param"] is not None
                   else f"{k['bytes']} B")
                for kind, k in m["by_kind"].items()
            ) or "none"
            check = entry["checks"].get(variant, {})
            if variant == "plain":
                grown = "control: " + ("adds nothing" if check.get("pass") else "FAIL")
                aim = ""
            elif "not_grown" in check:
                grown = (f"<= {check['max_bytes_per_masked_param']:.0f} B: "
                         + ("pass" if check["not_grown"] else "FAIL"))
                aim = "met" if check["aim_met"] else "not met"
            else:
                grown = aim = ""
            update_per = m.get("update_step", m)["bytes_per_masked_param"]
            cells = [
                name, variant, str(m["masked_params"]), str(m["extra_bytes"]),
                "n/a" if per is None else f"{per:.2f}", kinds, str(m["fixed_bytes"]),
                grown, aim, "n/a" if update_per is None else f"{update_per:.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _code_digests():
    """Short SHA-256 digests of the library files the timings depend on,
    and of this script and its helpers."""
    root = pathlib.Path(rigl_keras.__file__).resolve().parent
    here = pathlib.Path(__file__).resolve().parent
    files = sorted(root.glob("*.py")) + [here / "overhead.py", here / "_common.py"]
    return _common.file_digests(files, root.parent)


# ----------------------------------------------------------------------
# Driver.


def _name_list(allowed, allow_none=False):
    def parse(text):
        if allow_none and text.strip() == "none":
            return []
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in allowed]
        if not names or unknown or len(set(names)) != len(names):
            raise argparse.ArgumentTypeError(
                "must be a comma-separated list of distinct names from "
                f"{','.join(allowed)}{' (or none)' if allow_none else ''}; got {text!r}"
            )
        return names

    return parse


def parse_args(argv=None):
    """Parses the command line.

    Args:
        argv: Arguments without the program name; `None` reads `sys.argv`.

    Returns:
        An `argparse.Namespace`.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", type=_name_list(_MODELS), default=list(_MODELS),
                        help="comma-separated subset of: " + ",".join(_MODELS))
    parser.add_argument("--variants", type=_name_list(_VARIANTS),
                        default=list(_DEFAULT_VARIANTS),
                        help="comma-separated subset of: " + ",".join(_VARIANTS)
                        + " (static, rigl: rigl_keras.MaskedDense/MaskedConv2D; "
                        "sparsify_*: rigl_keras.sparsify on the plain model; "
                        "plain_sync: plain Keras plus a no-op batch "
                        "callback, which turns off Keras' asynchronous "
                        "callback dispatch as RigLCallback does; rezero: "
                        "plain Keras layers whose kernel constraint restores "
                        "a fixed mask's zeros after every optimizer step). "
                        "static, rigl and rezero exist for "
                        + ",".join(_LAYER_MODELS) + " only; other models skip them")
    parser.add_argument("--memory_variants", type=_name_list(_MEMORY_VARIANTS, allow_none=True),
                        default=None,
                        help="variants whose persistent extra memory is measured "
                             "(untimed): comma-separated subset of "
                             + ",".join(_MEMORY_VARIANTS) + ", or none; default: "
                             "plain (the control) and the sparse ones among --variants")
    parser.add_argument("--repeats", type=_common.positive_int, default=7,
                        help="repetitions (medians are taken over them)")
    parser.add_argument("--steps", type=_common.positive_int, default=400,
                        help="optimizer steps of each timed fit (rounded down "
                             "to a multiple of --epochs)")
    parser.add_argument("--epochs", type=_common.positive_int, default=4,
                        help="epochs the timed steps are split into (>= 2 for "
                             "the steady-state number)")
    parser.add_argument("--warmup_steps", type=_common.positive_int, default=10,
                        help="steps of the warm-up fit (traces the train step)")
    parser.add_argument("--batch_size", type=_common.positive_int, default=128)
    parser.add_argument("--num_examples", type=_common.positive_int, default=128 * 200,
                        help="distinct synthetic examples (cycled)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--update_freq", type=_common.positive_int, default=100,
                        help="RigL's ΔT in optimizer steps")
    parser.add_argument("--learning_rate", type=float, default=0.01)
    parser.add_argument("--jit_compile", choices=("auto", "true", "false"),
                        default="auto",
                        help="model.compile(jit_compile=...); Keras' 'auto' "
                             "means no XLA on a CPU-only machine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", default="",
                        help="instead of timing, read this stored report and "
                             "print the paired fit ratio (median, 95%% "
                             "bootstrap interval) of every two variants")
    parser.add_argument("--output", default=str(_DEFAULT_OUTPUT),
                        help="JSON file to write; '' to write none")
    parser.add_argument("--note", default="",
                        help="free text stored in the report's `note` (e.g. "
                             "'preliminary: other jobs shared the CPUs')")
    config = parser.parse_args(argv)
    if config.steps < config.epochs:
        parser.error(f"--steps ({config.steps}) must be >= --epochs ({config.epochs})")
    if not 0.0 <= config.sparsity < 1.0:
        parser.error(f"--sparsity must be in [0, 1), got {config.sparsity}")
    config.jit_compile = {"auto": "auto", "true": True, "false": False}[config.jit_compile]
    if config.memory_variants is None:
        sparse = [v for v in config.variants if v in _SPARSE_VARIANTS]
        config.memory_variants = ["plain"] + sparse if sparse else []
    return config


def _first_update_in_first_epoch(config):
    """Whether RigL's first update (which traces its update function) falls
    in the first epoch of the timed fit, outside the `steady` epochs."""
    first_update = config.update_freq * (config.warmup_steps // config.update_freq + 1)
    return first_update <= config.warmup_steps + config.steps // config.epochs


def run(config):
    """Runs the benchmark described by `config`.

    Args:
        config: An `argparse.Namespace` from `parse_args`, plus `argv` (the
            arguments, recorded in the report's `command`).

    Returns:
        The report dict (see the module docstring).
    """
    steps_per_epoch = config.steps // config.epochs
    steps = steps_per_epoch * config.epochs
    variants = list(config.variants)
    applicable = {
        name: [v for v in variants if variant_applies(name, v)] for name in config.models
    }
    skipped = {
        name: {
            v: f"needs a model built from layers here ({', '.join(_LAYER_MODELS)})"
            for v in variants if not variant_applies(name, v)
        }
        for name in config.models
    }
    runs = {name: {variant: [] for variant in applicable[name]} for name in config.models}
    memory = {}
    load_before = _common.load_average()
    started = time.perf_counter()
    for name in config.models:
        for variant in skipped[name]:
            print(f"{name}: variant {variant} skipped: {skipped[name][variant]}",
                  file=sys.stderr, flush=True)
        dataset = make_dataset(name, config.num_examples, config.batch_size, config.seed)
        model_variants = applicable[name]
        for rep in range(config.repeats):
            shift = rep % len(model_variants)
            order = model_variants[shift:] + model_variants[:shift]
            for variant in order:
                result = time_variant(name, variant, dataset, config)
                result["position"] = order.index(variant)
                runs[name][variant].append(result)
                print(
                    f"{name} rep {rep + 1}/{config.repeats} {variant:15s}: "
                    f"{1e3 * result['fit_seconds'] / steps:7.2f} ms/step "
                    f"(fit {result['fit_seconds']:.2f} s, load "
                    f"{result['load_average']})",
                    file=sys.stderr,
                    flush=True,
                )
        del dataset
        measured = {}
        for variant in config.memory_variants:
            if not variant_applies(name, variant):
                continue
            measured[variant] = measure_memory(name, variant, config)
            per = measured[variant]["bytes_per_masked_param"]
            print(
                f"{name} memory {variant:15s}: {measured[variant]['extra_bytes']} extra "
                f"bytes, {'n/a' if per is None else f'{per:.3f}'} B / masked param",
                file=sys.stderr,
                flush=True,
            )
        if measured:
            memory[name] = {"variants": measured, "checks": memory_checks(measured)}
    duration = time.perf_counter() - started
    results = {}
    for name in config.models:
        versus = {
            variant: (baseline, _VERSUS_TARGETS.get(name) if baseline in _MASKED_VARIANTS else None)
            for variant, baseline in _VERSUS.items()
            if variant in runs[name] and baseline in runs[name]
        }
        results[name] = summarize(runs[name], steps_per_epoch, versus=versus)
        results[name]["skipped_variants"] = skipped[name]
        if name in memory:
            results[name]["memory"] = memory[name]
    passed = all(
        check["pass"]["fit"]
        for summary in results.values()
        for check in summary["targets"].values()
    )
    memory_checked = [
        check for entry in memory.values() for check in entry["checks"].values()
    ]
    tables = [markdown_table(results), versus_table(results), memory_table(memory)]
    return {
        "benchmark": "overhead",
        "note": config.note,
        "command": _common.command_line("benchmarks.overhead", config.argv),
        "date": _common.utc_timestamp(),
        "duration_seconds": round(duration, 1),
        "config": {
            "models": list(config.models),
            "variants": variants,
            "memory_variants": list(config.memory_variants),
            "model_definitions": {n: _MODEL_DEFINITIONS[n] for n in config.models},
            "variant_definitions": {v: _VARIANT_DEFINITIONS[v] for v in variants},
            "repeats": config.repeats,
            "steps": steps,
            "epochs": config.epochs,
            "steps_per_epoch": steps_per_epoch,
            "warmup_steps": config.warmup_steps,
            "batch_size": config.batch_size,
            "num_examples": config.num_examples,
            "data": "synthetic, 10 classes: uniform [0, 1) inputs (784 features, "
                    "28x28x1 or 32x32x3 images), int32 token ids in [0, 1000) for the "
                    "transformer; tf.data prefetch(2), autotune off",
            "optimizer": f"SGD(learning_rate={config.learning_rate}, momentum=0.9)",
            "sparsity": config.sparsity,
            "distribution": "erk",
            "update_freq": config.update_freq,
            "first_update_in_first_epoch": _first_update_in_first_epoch(config),
            "seed": config.seed,
            "jit_compile": config.jit_compile,
            "order": "variants interleaved within each repetition, order rotated "
                     "by one per repetition",
            "memory": {
                "steps": _MEMORY_STEPS,
                "batch_size": _MEMORY_BATCH_SIZE,
                "update_freq": _MEMORY_UPDATE_FREQ,
                "method": "tf.Variables alive (gc.get_objects) at the end of the last "
                          "batch of an untimed fit, less those alive before the model "
                          "was built, the optimizer's, the metrics' and the model "
                          "weights the plain model has; bytes = elements x dtype size; "
                          "one-element variables counted apart as fixed_bytes",
            },
        },
        "machine": {
            **machine_facts(),
            "load_average_before": load_before,
            "load_average_after": _common.load_average(),
        },
        "code": _code_digests(),
        "targets": {
            variant: f"fit ratio <= {ratio:.2f}x plain Keras"
            for variant, ratio in _TARGETS.items()
            if variant in variants
        },
        "memory_targets": {
            variant: f"bytes per masked parameter <= {limit:.0f} (must not grow); "
                     f"aim <= {_MEMORY_AIM:.0f}"
            for variant, limit in _MEMORY_LIMITS.items()
            if variant in config.memory_variants
        },
        "passed": passed,
        "memory_not_grown": (
            all(c.get("not_grown", c.get("pass")) for c in memory_checked)
            if memory_checked else None
        ),
        "memory_aim_met": (
            all(c["aim_met"] for c in memory_checked if "aim_met" in c)
            if any("aim_met" in c for c in memory_checked) else None
        ),
        "results": results,
        "markdown": "\n\n".join(t for t in tables if t),
    }


def main(argv=None):
    """Command line entry point.

    Args:
        argv: Arguments without the program name; `None` reads `sys.argv`.

    Returns:
        The report dict, also written to `--output` unless that is empty;
        with `--compare`, the `compare_variants` dict of the stored report.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config = parse_args(argv)
    config.argv = argv
    if config.compare:
        report = json.loads(pathlib.Path(config.compare).read_text(encoding="utf-8"))
        comparisons = compare_variants(report)
        for name, pairs in comparisons.items():
            for pair, ratio in pairs.items():
                low, high = ratio["paired_median_ci95"]
                print(f"{name} {pair}: {ratio['paired_median']:.4f} [{low:.4f}, {high:.4f}]")
        return comparisons
    report = run(config)
    print(report["markdown"])
    print(f"\nTargets met (fit ratio): {report['passed']}")
    if report["memory_not_grown"] is not None:
        print(f"Memory per masked parameter not grown: {report['memory_not_grown']}; "
              f"aim (<= {_MEMORY_AIM:.0f} B) met: {report['memory_aim_met']}")
    if config.output:
        output = _common.write_json(config.output, report)
        print(f"Wrote {output}")
    return report


if __name__ == "__main__":
    main()
