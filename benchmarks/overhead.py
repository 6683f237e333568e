r"""Times `model.fit` with plain Keras layers, static masks and RigL.

For each model (LeNet-300-100 on 784 features, a small CNN on 28x28x1
images; 10 classes, synthetic data of MNIST shapes so it runs offline; batch
128) and each variant

* `plain`: `keras.layers.Dense` / `keras.layers.Conv2D`, no callback;
* `static`: `rigl_keras.MaskedDense` / `MaskedConv2D` and
  `RigLCallback(update_freq=None)` (static sparse training, ERK, 90%);
* `rigl`: the masked model and `RigLCallback(update_freq=100)` (RigL, ERK,
  90%; an update every 100 optimizer steps until 75% of the `fit` call);
* `plain_sync` (optional, `--variants`): `plain` plus a callback with an
  empty `on_train_batch_end`. Any such callback (`RigLCallback` has one)
  turns off Keras' asynchronous batch-callback dispatch; this variant
  measures that effect alone.
* `rezero` (optional, `--variants`): the design the masked layers did not
  take, measured beside the one they did. Plain Keras layers, each kernel
  with a `keras.constraints.Constraint` that multiplies it by a fixed 0/1
  mask (the same ERK 90% counts as `static`, zeroed before training). The
  forward pass and the gradient are those of plain Keras (the optimizer sees
  the dense gradient) and the zeros are restored after every optimizer step
  (Keras applies constraints right after the update), where `static` masks
  the gradient in the backward pass instead.

the benchmark builds and compiles a fresh model (same seed for all), runs a
short warm-up `fit` (traces the train function) and then times one `fit` of
`--steps` optimizer steps. The variants are interleaved within each
repetition (their order rotates by one from one repetition to the next, so
none always runs first), all in one process; the reported numbers are
medians over `--repeats` repetitions. On a shared machine absolute times
drift; the ratios to `plain` (median of the per-repetition ratios) are what
the targets are checked against: `static` <= 1.05x and `rigl` <= 1.10x the
plain `fit` time.

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

Usage:

    python benchmarks/overhead.py --repeats 7
    python benchmarks/overhead.py --models cnn --steps 200 --epochs 2 \
        --variants plain,plain_sync,static,rigl --output /tmp/overhead.json
    python benchmarks/overhead.py --models lenet300_100 \
        --variants plain,static,rezero --output /tmp/rezero.json
    python benchmarks/overhead.py --jit_compile true --output /tmp/xla.json
    python benchmarks/overhead.py --compare benchmarks/results/overhead_rezero.json

The JSON written to `--output` (default `benchmarks/results/overhead.json`)
holds the command, the date, machine facts (with load averages, as the
machine may be shared), digests of the library files, every repetition's
times, medians, ratios, the targets with pass/fail, and the markdown table
that is also printed to stdout.
"""

import argparse
import gc
import json
import os
import pathlib
import platform
import sys
import time

import keras
import numpy as np
import tensorflow as tf

try:
    import rigl_keras
except ImportError:  # Run from a checkout: `python benchmarks/overhead.py`.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    import rigl_keras
from rigl_keras.masking import random_mask

try:
    import _common
except ImportError:  # Loaded by path (as the tests do): benchmarks/ is not on sys.path.
    sys.path.append(str(pathlib.Path(__file__).resolve().parent))
    import _common

_MODELS = ("lenet300_100", "cnn")
_VARIANTS = ("plain", "plain_sync", "static", "rigl", "rezero")
_DEFAULT_VARIANTS = ("plain", "static", "rigl")
_TARGETS = {"static": 1.05, "rigl": 1.10}
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


def build_model(name, variant):
    """Builds one benchmark model.

    Args:
        name: `"lenet300_100"` or `"cnn"`.
        variant: `"plain"` / `"plain_sync"` / `"rezero"` (Keras layers) or
            `"static"` / `"rigl"` (masked layers).

    Returns:
        An uncompiled `keras.Sequential` producing 10 logits.

    Raises:
        ValueError: For an unknown `name` or `variant`.
    """
    if variant not in _VARIANTS:
        raise ValueError(f"`variant` must be one of {_VARIANTS}. Received: variant={variant!r}")
    if variant.startswith("plain") or variant == "rezero":
        dense, conv = keras.layers.Dense, keras.layers.Conv2D
    else:
        dense, conv = rigl_keras.MaskedDense, rigl_keras.MaskedConv2D
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
    if name == "cnn":
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
    raise ValueError(f"`name` must be one of {_MODELS}. Received: name={name!r}")


def make_dataset(name, num_examples, batch_size, seed):
    """An endless batched dataset of synthetic MNIST-shaped examples.

    Args:
        name: Model name; `"lenet300_100"` gets flat 784-feature inputs,
            `"cnn"` gets 28x28x1 images.
        num_examples: Number of distinct examples (cycled).
        batch_size: Batch size (the last partial batch is dropped).
        seed: NumPy seed of the data.

    Returns:
        A `tf.data.Dataset` of `(x, y)` batches with integer labels in
        [0, 10), prefetching 2 batches, with tf.data autotuning off.
    """
    rng = np.random.default_rng(seed)
    shape = (784,) if name == "lenet300_100" else (28, 28, 1)
    x = rng.random((num_examples,) + shape, dtype=np.float32)
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


def _callbacks(variant, sparsity, update_freq, seed):
    if variant in ("plain", "rezero"):
        return []
    if variant == "plain_sync":
        return [_NoOpBatchCallback()]
    return [
        rigl_keras.RigLCallback(
            sparsity=sparsity,
            distribution="erk",
            update_freq=None if variant == "static" else update_freq,
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
        variant: One of `"plain"`, `"plain_sync"`, `"static"`, `"rigl"`.
        dataset: The dataset from `make_dataset`.
        config: The `argparse.Namespace` of the run.

    Returns:
        A dict with `fit_seconds` and `cpu_seconds` (from `on_train_begin`
        to `on_train_end` of the timed fit), `outer_seconds` (the whole
        `model.fit` call), `epoch_seconds` (list), `warmup_seconds`,
        `sparsity` (the final fraction of zeros of the masks: the masked
            layers' or the `rezero` variant's fixed masks; 0.0 for plain),
        `jit_compile`, `num_params` and `load_average` (1 minute, at the end
        of the timed fit).
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
    masks = [l.mask for l in rigl_keras.masked_layers(model)] + [
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
        "jit_compile": bool(model.jit_compile),
        "num_params": int(model.count_params()),
        "load_average": (_common.load_average() or [None])[0],
    }


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


def summarize(runs, steps_per_epoch, targets=None):
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
            (`static` <= 1.05, `rigl` <= 1.10).

    Returns:
        A JSON-serializable dict with `num_params`, `variants` (every
        repetition, the median ms/step per kind and, with two or more epochs,
        `median_setup_seconds`: the fit's time beyond as many steady-state
        steps), `ratios` and `targets` (`max_ratio`, the measured `ratio` and
        `pass` per kind).
    """
    targets = _TARGETS if targets is None else targets
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
            measured = {k: r["paired_median"] for k, r in ratios[variant].items()}
            checks[variant] = {
                "max_ratio": targets[variant],
                "ratio": measured,
                "pass": {k: r <= targets[variant] for k, r in measured.items()},
            }
    first = next(iter(runs.values()))[0]
    return {
        "num_params": first.get("num_params"),
        "variants": variants,
        "ratios": ratios,
        "targets": checks,
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


def _code_digests():
    """Short SHA-256 digests of the library files the timings depend on."""
    root = pathlib.Path(rigl_keras.__file__).resolve().parent
    return _common.file_digests(sorted(root.glob("*.py")), root.parent)


# ----------------------------------------------------------------------
# Driver.


def _name_list(allowed):
    def parse(text):
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in allowed]
        if not names or unknown or len(set(names)) != len(names):
            raise argparse.ArgumentTypeError(
                "must be a comma-separated list of distinct names from "
                f"{','.join(allowed)}; got {text!r}"
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
                        + " (plain_sync: plain Keras plus a no-op batch "
                        "callback, which turns off Keras' asynchronous "
                        "callback dispatch as RigLCallback does; rezero: "
                        "plain Keras layers whose kernel constraint restores "
                        "a fixed mask's zeros after every optimizer step)")
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
    config = parser.parse_args(argv)
    if config.steps < config.epochs:
        parser.error(f"--steps ({config.steps}) must be >= --epochs ({config.epochs})")
    if not 0.0 <= config.sparsity < 1.0:
        parser.error(f"--sparsity must be in [0, 1), got {config.sparsity}")
    config.jit_compile = {"auto": "auto", "true": True, "false": False}[config.jit_compile]
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
    runs = {name: {variant: [] for variant in variants} for name in config.models}
    load_before = _common.load_average()
    started = time.perf_counter()
    for name in config.models:
        dataset = make_dataset(name, config.num_examples, config.batch_size, config.seed)
        for rep in range(config.repeats):
            shift = rep % len(variants)
            order = variants[shift:] + variants[:shift]
            for variant in order:
                result = time_variant(name, variant, dataset, config)
                result["position"] = order.index(variant)
                runs[name][variant].append(result)
                print(
                    f"{name} rep {rep + 1}/{config.repeats} {variant:10s}: "
                    f"{1e3 * result['fit_seconds'] / steps:7.2f} ms/step "
                    f"(fit {result['fit_seconds']:.2f} s, load "
                    f"{result['load_average']})",
                    file=sys.stderr,
                    flush=True,
                )
    results = {name: summarize(runs[name], steps_per_epoch) for name in config.models}
    passed = all(
        check["pass"]["fit"]
        for summary in results.values()
        for check in summary["targets"].values()
    )
    return {
        "benchmark": "overhead",
        "command": _common.command_line("benchmarks/overhead.py", config.argv),
        "date": _common.utc_timestamp(),
        "duration_seconds": round(time.perf_counter() - started, 1),
        "config": {
            "models": list(config.models),
            "variants": variants,
            "repeats": config.repeats,
            "steps": steps,
            "epochs": config.epochs,
            "steps_per_epoch": steps_per_epoch,
            "warmup_steps": config.warmup_steps,
            "batch_size": config.batch_size,
            "num_examples": config.num_examples,
            "data": "synthetic, uniform [0, 1) inputs of MNIST shapes, 10 classes; "
                    "tf.data prefetch(2), autotune off",
            "optimizer": f"SGD(learning_rate={config.learning_rate}, momentum=0.9)",
            "sparsity": config.sparsity,
            "distribution": "erk",
            "update_freq": config.update_freq,
            "first_update_in_first_epoch": _first_update_in_first_epoch(config),
            "seed": config.seed,
            "jit_compile": config.jit_compile,
            "order": "variants interleaved within each repetition, order rotated "
                     "by one per repetition",
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
        "passed": passed,
        "results": results,
        "markdown": markdown_table(results),
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
    if config.output:
        output = _common.write_json(config.output, report)
        print(f"Wrote {output}")
    return report


if __name__ == "__main__":
    main()
