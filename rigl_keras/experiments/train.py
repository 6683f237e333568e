"""Trains one sparse model on a TFDS image dataset from the command line.

`python -m rigl_keras.experiments.train` (or the console script
`rigl-train`) trains one model on one TFDS image classification dataset
with one sparse training method, evaluates it on the test split and prints
an aligned summary. With no flags it trains LeNet-300-100 on MNIST at 90%
sparsity (ERK distribution) with RigL:

    python -m rigl_keras.experiments.train
    python -m rigl_keras.experiments.train --dataset=cifar10 --model=wrn_22_2 \\
        --augment --epochs=200 --weight_decay=5e-4 --lr_schedule=step
    python -m rigl_keras.experiments.train --method=prune --sparsity=0.95 \\
        --logdir=/tmp/run1 --export_dir=/tmp/run1/saved_model

Methods (`--method`):

* `dense`: the full model with plain Keras layers, no callback.
* `small_dense`: a plain model whose widths are scaled (one multiplier found
  by bisection, see `rigl_keras.experiments.models.small_dense_widths`)
  so that its kernel weights number `(1 - sparsity)` times the full
  model's, i.e. as many as the sparse model has non-zeros.
* `static`: `RigLCallback(update_freq=None)`, a fixed random sparse mask.
* `set`, `snfs`, `rigl`: `RigLCallback` with `grow="random"`, `"momentum"`,
  `"gradient"`.
* `prune`: `GradualPruningCallback`, dense-to-sparse magnitude pruning.

Mask updates (and pruning) stop at `end_step = end_fraction * total steps`.
Weight decay is an L2 kernel regularizer `L2(weight_decay / 2)`, which
adds `weight_decay * w` to the gradient (see `rigl_keras.experiments.models`).

The learning rate schedules: `cosine` decays to 0 over training; `step`
multiplies by 0.2 at 30%, 60% and 80% of training (the Wide ResNet
schedule); `constant`.

Library use: `train(TrainConfig(...))` runs the same thing and returns the
results dict; it never reads command line flags.

Outputs: nothing is written unless asked for.

* `--results_json=PATH` writes the results JSON (below) to `PATH`. Without
  it the JSON goes to `<logdir>/results.json` when `--logdir` is given, and
  is not written otherwise (the summary is printed either way).
* `--logdir`, `--export_dir` and `--tflite_path` write TensorBoard logs, a
  SavedModel and a TFLite file.

None of them replaces what is already there: an existing results JSON or
TFLite file, or a non-empty `--export_dir`, is an error unless `--overwrite`
is given. This is checked before training starts.

Results JSON: every flag value under `"flags"`; at the top level
`test_accuracy`, `test_loss`, `sparsity` (`rigl_keras.sparsity_report`'s:
the fraction of zeros over the masks, as the callbacks log it; for the
dense baselines, which have no masks, the exact zeros of their kernels),
`layer_sparsity` (the same per weight, keyed by variable path),
`train_flops` and `inference_flops` (theoretical FLOPs relative to dense
training / inference of the full-size model, as in the RigL paper's
tables; `rigl_keras.flops`), `flops` (the full
`rigl_keras.flops.flops_report`), `wall_seconds`, `train_seconds`,
`history` (the per-epoch logs) and more.

TensorBoard (`--logdir`): Keras' `TensorBoard` callback writes every epoch
log, including the `sparsity` and `drop_fraction` the sparse training
callbacks add (it runs after them), under `logdir/train`. The final test
loss and accuracy go under `logdir/test`, with the same tags as the
training ones (`epoch_loss`, `epoch_accuracy`) at the last epoch's step, so
TensorBoard draws them on the training curves.

Errors: a bad flag (`--sparsity=1.5`, an unknown `--method`, a
`--dense_layers` name the model does not have, an output that exists)
prints one line, `rigl_keras.experiments.train: error: ...`, on stderr
and exits with status 2, before this module imports TensorFlow. A
`ValueError` of the library while setting up (a dataset that is not there,
...) is reported the same way. Errors during training keep their traceback.

Logging: `--verbose` is Keras' progress output (0 silent, 1 progress bar, 2
one line per epoch). TensorFlow's start-up messages are hidden: unless
absl's `--verbosity` flag (`-v`) is given, the command line sets
`TF_CPP_MIN_LOG_LEVEL=2` if it is not set, logs absl messages from WARNING
up, and of the lines TensorFlow prints while this module imports it and
probes for GPUs drops those below `TF_CPP_MIN_LOG_LEVEL` (counting the CUDA
probing of a machine without GPU, `failed call to cuInit`, ..., as INFO)
and repeats. `-v 0` shows them all.
"""

# TensorFlow, Keras and the rest of rigl_keras are imported inside the
# functions that use them: the command line checks its flags and answers
# --help without loading TensorFlow.
# pylint: disable=g-import-not-at-top

import dataclasses
import json
import math
import os
import sys
import time

from absl import flags
from absl import logging
import numpy as np

from rigl_keras.experiments import startup
from rigl_keras.experiments.config import DISTRIBUTIONS
from rigl_keras.experiments.config import LR_SCHEDULES
from rigl_keras.experiments.config import METHODS
from rigl_keras.experiments.config import MODELS
from rigl_keras.experiments.config import OPTIMIZERS
from rigl_keras.experiments.config import TrainConfig
from rigl_keras.experiments.config import UsageError
from rigl_keras.experiments.config import check_before_training
from rigl_keras.experiments.config import results_path


__all__ = [
    "DISTRIBUTIONS",
    "LR_SCHEDULES",
    "METHODS",
    "MODELS",
    "OPTIMIZERS",
    "TrainConfig",
    "UsageError",
    "config_from_flags",
    "define_flags",
    "format_summary",
    "main",
    "run",
    "train",
]

_PROG = "rigl_keras.experiments.train"


_STEP_BOUNDARIES = (0.3, 0.6, 0.8)
_STEP_FACTOR = 0.2


# ----------------------------------------------------------------------
# Building blocks.


def _arch_kwargs(config, info):
    kwargs = {"num_classes": info.num_classes, "input_shape": info.input_shape}
    if MODELS[config.model].architecture == "wrn":
        kwargs.update(depth=config.wrn_depth, width=config.wrn_width)
    return kwargs


def _build_model(config, info):
    """The model to train, and what was solved for small_dense."""
    from rigl_keras.experiments import models

    architecture = MODELS[config.model].architecture
    kwargs = _arch_kwargs(config, info)
    method = METHODS[config.method]
    extra = {}
    if config.method == "small_dense":
        solution = models.small_dense_widths(architecture, config.sparsity, **kwargs)
        kwargs["widths"] = solution.widths
        extra["small_dense"] = {
            "widths": list(solution.widths),
            "width_multiplier": solution.width_multiplier,
            "kernel_params": solution.kernel_params,
            "target_params": solution.target_params,
        }
    model = models.build(
        architecture, masked=method.masked, weight_decay=config.weight_decay, **kwargs
    )
    return model, extra


def _learning_rate(config, total_steps):
    import keras

    peak = config.peak_learning_rate
    if config.lr_schedule == "constant":
        return peak
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps=total_steps)
    boundaries = [max(1, int(round(f * total_steps))) for f in _STEP_BOUNDARIES]
    values = [peak * _STEP_FACTOR**i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def _optimizer(config, total_steps):
    import keras

    entry = OPTIMIZERS[config.optimizer]
    kwargs = {"momentum": config.momentum} if entry.takes_momentum else {}
    optimizer_class = getattr(keras.optimizers, entry.keras_class)
    return optimizer_class(_learning_rate(config, total_steps), **kwargs)


def _end_step(config, total_steps):
    return max(1, int(round(config.end_fraction * total_steps)))


def _sparse_callback(config, total_steps):
    """The method's callback (or None), from the registry entry."""
    from rigl_keras import callbacks as callbacks_lib

    method = METHODS[config.method]
    if not method.masked:
        return None
    end_step = _end_step(config, total_steps)
    if method.prune:
        return callbacks_lib.GradualPruningCallback(
            sparsity=config.sparsity,
            distribution=config.distribution,
            begin_step=0,
            end_step=end_step,
            update_freq=config.update_freq,
            initial_sparsity=0.0,
            dense_layers=config.dense_layers,
            structure=config.structure,
        )
    return callbacks_lib.RigLCallback(
        sparsity=config.sparsity,
        distribution=config.distribution,
        update_freq=None if method.static else config.update_freq,
        drop_fraction=config.drop_fraction,
        end_step=end_step,
        grow=method.grow,
        seed=config.seed,
        dense_layers=config.dense_layers,
        structure=config.structure,
    )


def _layer_sparsity(model):
    """`{weight path: sparsity}` and the overall sparsity of `sparsity_report`."""
    from rigl_keras import report as report_lib

    report = report_lib.sparsity_report(model)
    return {row["name"]: row["sparsity"] for row in report[:-1]}, report.sparsity


def _flops(config, model, info, total_steps):
    from rigl_keras import flops as flops_lib
    from rigl_keras.experiments import models

    method = METHODS[config.method]
    kwargs = {}
    reference = None
    if config.method == "small_dense":
        reference = models.build(
            MODELS[config.model].architecture, masked=False, **_arch_kwargs(config, info)
        )
    if method.prune:
        kwargs = {
            "begin_step": 0,
            "end_step": _end_step(config, total_steps),
            "total_steps": total_steps,
            "initial_sparsity": 0.0,
        }
    return flops_lib.flops_report(
        model,
        method.flops_method,
        update_freq=config.update_freq,
        reference_flops=reference,
        **kwargs,
    )


def _write_test_summaries(logdir, step, test_loss, test_accuracy):
    """The final test metrics under `logdir/test`, tagged like Keras' epochs."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(os.path.join(logdir, "test"))
    with writer.as_default():
        tf.summary.scalar("epoch_loss", test_loss, step=step)
        tf.summary.scalar("epoch_accuracy", test_accuracy, step=step)
    writer.close()


def _number(value):
    """A float for scalar logs; other values as JSON-ready as possible."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return _to_json(value)


def _to_json(value):
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


# ----------------------------------------------------------------------
# Training: set up (data, model, callbacks), then fit and report.


@dataclasses.dataclass
class _Setup:
    """What `_prepare` built for `_fit_and_report`."""

    config: TrainConfig
    start: float  # time.perf_counter() when set-up began.
    info: object  # rigl_keras.experiments.data.DatasetInfo
    num_train: int
    steps_per_epoch: int
    total_steps: int
    train_ds: object
    eval_ds: object
    model: object
    callbacks: list
    extra: dict


def _prepare(config):
    """Checks the config, loads the data, builds and compiles the model.

    Everything that can fail because of the configuration fails here,
    before training starts.
    """
    import keras
    from rigl_keras.experiments import data

    start = time.perf_counter()
    check_before_training(config)
    keras.utils.set_random_seed(config.seed)

    info = data.dataset_info(config.dataset, config.data_dir)
    num_train = data.num_examples(
        config.dataset, config.train_split, config.data_dir, config.download
    )
    steps_per_epoch = max(1, math.ceil(num_train / config.batch_size))
    if config.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    total_steps = steps_per_epoch * config.epochs
    train_ds = data.load_dataset(
        config.dataset, config.train_split, config.batch_size,
        data_dir=config.data_dir, augment=config.augment, shuffle=True,
        seed=config.seed, repeat=True, download=config.download,
        drop_remainder=True,
        # A cache is complete only once a whole pass went through it; a
        # shorter run would leave it partial (and TensorFlow warns).
        cache=total_steps * config.batch_size >= num_train,
    )
    eval_ds = data.load_dataset(
        config.dataset, config.eval_split, config.batch_size,
        data_dir=config.data_dir, shuffle=False, download=config.download,
        cache=False,  # Read once.
    )

    model, extra = _build_model(config, info)
    model.compile(
        optimizer=_optimizer(config, total_steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    callbacks = []
    sparse_callback = _sparse_callback(config, total_steps)
    _check_structure_fits(config, model)
    if sparse_callback is not None:
        callbacks.append(sparse_callback)
    if config.logdir:
        # After the sparse training callback, so that the epoch logs it
        # writes (sparsity, drop_fraction, ...) reach TensorBoard.
        callbacks.append(keras.callbacks.TensorBoard(config.logdir))
    return _Setup(config, start, info, num_train, steps_per_epoch, total_steps,
                  train_ds, eval_ds, model, callbacks, extra)


def _check_structure_fits(config, model):
    """Raises a `UsageError` naming the flag if a weight does not fit it."""
    structure = config.structure
    if structure is None:
        return
    from rigl_keras import masking  # pylint: disable=import-outside-toplevel

    name = "block_shape" if config.block_shape else "n_m"
    for weight in masking.masked_weights(model):
        if weight.layer.name in config.dense_layers:
            continue
        try:
            structure.validate(weight)
        except ValueError as error:
            raise UsageError(str(error), flag_message=f"--{name}: {error}") from None


def _fit_and_report(setup):
    """Trains, evaluates, exports and writes the results JSON."""
    config = setup.config
    train_start = time.perf_counter()
    history = setup.model.fit(
        setup.train_ds,
        epochs=config.epochs,
        steps_per_epoch=setup.steps_per_epoch,
        callbacks=setup.callbacks,
        verbose=config.verbose,
        shuffle=False,  # The dataset is shuffled; Keras cannot shuffle it.
    )
    train_seconds = time.perf_counter() - train_start
    test_loss, test_accuracy = setup.model.evaluate(setup.eval_ds, verbose=0)
    times = {"wall_seconds": time.perf_counter() - setup.start,
             "train_seconds": train_seconds}
    if config.logdir:
        _write_test_summaries(config.logdir, config.epochs - 1, test_loss, test_accuracy)
    results = _results(setup, history.history, test_loss, test_accuracy)
    results.update(times)
    results.update(_export(setup.model, config))
    results = _to_json(results)
    if results["results_json"]:
        _write_json(results, results["results_json"])
    return results


def _results(setup, history, test_loss, test_accuracy):
    """The results dict (without times and exports) of a finished run."""
    import keras
    import tensorflow as tf
    from rigl_keras.experiments import models

    config, model, info = setup.config, setup.model, setup.info
    layer_sparsity, sparsity = _layer_sparsity(model)
    flops = _flops(config, model, info, setup.total_steps)
    return {
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "sparsity": float(sparsity),
        "layer_sparsity": layer_sparsity,
        "train_flops": float(flops["train_flops"]),
        "inference_flops": float(flops["inference_flops"]),
        "flops": flops,
        "steps": setup.total_steps,
        "steps_per_epoch": setup.steps_per_epoch,
        "end_step": (_end_step(config, setup.total_steps)
                     if METHODS[config.method].masked else None),
        "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "kernel_params": models.kernel_param_count(model),
        "dataset": {
            "name": info.name,
            "input_shape": list(info.input_shape),
            "num_classes": info.num_classes,
            "train_examples": setup.num_train,
        },
        "history": {k: [_number(v) for v in vs] for k, vs in history.items()},
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": sys.version.split()[0],
        },
        "results_json": results_path(config),
        "flags": config.to_dict(),
        "structure": _structure_result(config, model),
        **setup.extra,
    }


def _structure_result(config, model):
    """`{"structure": repr, "holds": bool}` of the trained masks, or None."""
    structure = config.structure
    if structure is None:
        return None
    from rigl_keras import masking  # pylint: disable=import-outside-toplevel
    from rigl_keras import structures  # pylint: disable=import-outside-toplevel

    sparse = {
        w.key: structure for w in masking.masked_weights(model)
        if w.layer.name not in config.dense_layers
    }
    result = structures.check(model, sparse)
    return {"structure": repr(structure), "holds": bool(result),
            "violations": dict(result.violations)}


def _export(model, config):
    """Writes the SavedModel and TFLite exports asked for; their paths."""
    from rigl_keras import export
    from rigl_keras import tflite

    paths = {}
    if config.export_dir:
        paths["export_dir"] = export.export_saved_model(
            model, config.export_dir, overwrite=config.overwrite
        )
    if config.tflite_path:
        paths["tflite_path"] = tflite.export_tflite(model, config.tflite_path, sparse=True)
    return paths


def _write_json(results, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")


def train(config):
    """Trains and evaluates one model as `config` says.

    Args:
        config: A `TrainConfig`.

    Returns:
        The results dict, also written to the results JSON if `config`
        names one (see the module docstring for its keys and location).

    Raises:
        rigl_keras.experiments.data.DatasetUnavailableError: If the dataset is not in
            the data folder (and not downloaded).
        rigl_keras.experiments.data.DatasetError: For an unknown dataset or split.
        UsageError: For a configuration that cannot run here (`logdir`
            without TensorBoard installed, an output that exists and
            `overwrite=False`, ...).

    Example:

    ```python
    results = train(TrainConfig(epochs=1, steps_per_epoch=50, verbose=0))
    print(results["test_accuracy"], results["sparsity"])
    ```
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(
            f"`config` must be a TrainConfig. Received: config={config!r}"
        )
    return _fit_and_report(_prepare(config))


def _plural(count, noun):
    return f"{count} {noun}" + ("" if count == 1 else "s")


def format_summary(results):
    """The aligned end-of-run summary of a results dict, as a string.

    Example:

    ```python
    print(format_summary(train(TrainConfig(epochs=1))))
    ```
    """
    cfg = results["flags"]
    method = cfg["method"]
    if method in ("dense",):
        what = "dense"
    elif method == "small_dense":
        what = f"small_dense (matches sparsity {cfg['sparsity']:g})"
    else:
        what = f"{method}, {cfg['distribution']} at sparsity {cfg['sparsity']:g}"
    rows = [
        ("run", f"{cfg['model']} on {cfg['dataset']}, {what}"),
        ("steps", f"{results['steps']} ({_plural(cfg['epochs'], 'epoch')} x "
                  f"{results['steps_per_epoch']}, batch {cfg['batch_size']})"),
        ("test accuracy", f"{results['test_accuracy']:.4f}"),
        ("test loss", f"{results['test_loss']:.4f}"),
        ("sparsity", f"{results['sparsity']:.4f}"),
    ]
    names = list(results["layer_sparsity"])
    width = max((len(n) for n in names), default=0)
    for name in names:
        rows.append(("", f"  {name:<{width}}  {results['layer_sparsity'][name]:.4f}"))
    rows += [
        ("train FLOPs", f"{results['train_flops']:.4f} x dense"),
        ("inference FLOPs", f"{results['inference_flops']:.4f} x dense"),
        ("wall time", f"{results['wall_seconds']:.1f} s "
                      f"(training {results['train_seconds']:.1f} s)"),
    ]
    if results.get("results_json"):
        rows.append(("results JSON", results["results_json"]))
    if results.get("export_dir"):
        rows.append(("SavedModel", results["export_dir"]))
    if results.get("tflite_path"):
        rows.append(("TFLite", results["tflite_path"]))
    if cfg.get("logdir"):
        rows.append(("TensorBoard", f"tensorboard --logdir {cfg['logdir']}"))
    label_width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{label_width}}  {value}" for label, value in rows]
    rule = "-" * max(len(line) for line in lines)
    return "\n".join([rule] + lines + [rule])


# ----------------------------------------------------------------------
# Command line.


def define_flags(flag_values=flags.FLAGS):
    """Defines the trainer's flags in `flag_values` (once).

    Defaults come from `TrainConfig`, which also checks the values. Called
    by `run`; not at import, so importing this module has no side effect.

    Args:
        flag_values: An `absl.flags.FlagValues`.
    """
    if "method" in flag_values:
        return
    d = TrainConfig()
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("dataset", d.dataset, "TFDS image classification dataset "
                        "with `image` and `label` features (mnist, cifar10, ...).", **fv)
    flags.DEFINE_string("data_dir", d.data_dir, "TFDS data folder (default: TFDS's "
                        "own, which the TFDS_DATA_DIR environment variable sets).", **fv)
    flags.DEFINE_bool("download", d.download, "Let TFDS download a missing dataset "
                      "(needs internet).", **fv)
    flags.DEFINE_string("train_split", d.train_split, "TFDS split to train on.", **fv)
    flags.DEFINE_string("eval_split", d.eval_split, "TFDS split to evaluate on.", **fv)
    flags.DEFINE_enum("model", d.model, list(MODELS), "Model to train.", **fv)
    flags.DEFINE_integer("wrn_depth", d.wrn_depth, "Depth of wrn_22_2 (6n + 4).", **fv)
    flags.DEFINE_integer("wrn_width", d.wrn_width, "Widening factor of wrn_22_2 (>= 1).", **fv)
    flags.DEFINE_enum("method", d.method, list(METHODS), "Training method.", **fv)
    flags.DEFINE_float("sparsity", d.sparsity, "Overall sparsity in [0, 1).", **fv)
    flags.DEFINE_enum("distribution", d.distribution, list(DISTRIBUTIONS),
                      "How the sparsity is spread over layers.", **fv)
    flags.DEFINE_list("block_shape", d.block_shape,
                      "Block structure a,b of the masks (4,1: TFLite's 1x4 "
                      "blocks), or unset for unstructured masks.", **fv)
    flags.DEFINE_list("n_m", d.n_m, "N:M structure n,m of the masks (2,4); "
                      "needs --sparsity 1-n/m and --distribution uniform.", **fv)
    flags.DEFINE_list("dense_layers", list(d.dense_layers),
                      "Comma-separated names of the model's layers to keep dense.", **fv)
    flags.DEFINE_integer("epochs", d.epochs, "Number of epochs (>= 1).", **fv)
    flags.DEFINE_integer("steps_per_epoch", d.steps_per_epoch,
                         "Optional cap on the steps of an epoch (>= 1).", **fv)
    flags.DEFINE_integer("batch_size", d.batch_size, "Batch size (>= 1).", **fv)
    flags.DEFINE_enum("optimizer", d.optimizer, list(OPTIMIZERS),
                      "sgd (with --momentum) or adam.", **fv)
    flags.DEFINE_float("momentum", d.momentum, "SGD momentum in [0, 1).", **fv)
    flags.DEFINE_float("learning_rate", d.learning_rate, "Peak learning rate "
                       "(default: 0.1 for sgd, 0.001 for adam).", **fv)
    flags.DEFINE_enum("lr_schedule", d.lr_schedule, list(LR_SCHEDULES),
                      "cosine (to 0), step (x0.2 at 30/60/80%), constant.", **fv)
    flags.DEFINE_float("weight_decay", d.weight_decay,
                       "Weight decay, as L2(weight_decay / 2) on kernels.", **fv)
    flags.DEFINE_integer("update_freq", d.update_freq,
                         "Steps between mask updates (or pruning steps).", **fv)
    flags.DEFINE_float("drop_fraction", d.drop_fraction,
                       "Initial drop fraction (cosine-annealed), in (0, 1].", **fv)
    flags.DEFINE_float("end_fraction", d.end_fraction,
                       "Mask updates stop at this fraction of training, in (0, 1].", **fv)
    flags.DEFINE_bool("augment", d.augment, "Random crop (pad 4) and flip.", **fv)
    flags.DEFINE_integer("seed", d.seed, "Random seed.", **fv)
    flags.DEFINE_string("logdir", d.logdir, "TensorBoard log folder.", **fv)
    flags.DEFINE_string("results_json", d.results_json, "Results JSON path "
                        "(default: <logdir>/results.json, or none without --logdir).", **fv)
    flags.DEFINE_string("export_dir", d.export_dir, "Write a SavedModel here.", **fv)
    flags.DEFINE_string("tflite_path", d.tflite_path, "Write a TFLite model here.", **fv)
    flags.DEFINE_bool("overwrite", d.overwrite, "Replace an existing results JSON, "
                      "TFLite file or non-empty --export_dir.", **fv)
    flags.DEFINE_integer("verbose", d.verbose, "Keras fit verbosity: 0, 1 (progress "
                         "bar) or 2 (one line per epoch).", **fv)


def _flag_names():
    return [field.name for field in dataclasses.fields(TrainConfig)]


def config_from_flags(flag_values=flags.FLAGS):
    """A `TrainConfig` from parsed flags (one flag per field).

    Raises:
        UsageError: For a bad value (`flag_message` names the flag).
    """
    return TrainConfig(**{name: flag_values[name].value for name in _flag_names()})


def _usage_exit(message):
    """Prints `message` as one line on stderr and exits with status 2."""
    print(f"{_PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


_HELP_ARGS = ("-h", "-help", "--help", "--helpshort", "--helpfull", "-?")


def _help_text(flag_values):
    """The first paragraph of the module docstring, usage and the flags."""
    description = __doc__.split("\n\n", 1)[0].strip()
    module = flag_values.find_module_defining_flag("method")
    flag_lines = flag_values.module_help(module).strip().splitlines()[1:]  # No module line.
    return "\n".join([
        description,
        "",
        "usage: rigl-train [flags]  (or: python -m rigl_keras.experiments.train [flags])",
        "",
        "flags:",
        *flag_lines,
        "",
        "absl's --verbosity (-v 0) shows TensorFlow's start-up logs.",
        "Outputs, results JSON, TensorBoard: python -m pydoc rigl_keras.experiments.train",
    ])


def _parse_flags(argv):
    """Parses `argv` into `flags.FLAGS`; --help exits 0, a bad flag exits 2.

    Not `absl.app.run`: its start-up initializes TensorFlow's devices when
    TensorFlow is loaded, and its --help exits with status 1.

    Returns:
        The arguments that are not flags, program name first.
    """
    arguments = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    if any(arg in _HELP_ARGS for arg in arguments):
        print(_help_text(flags.FLAGS))
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        _usage_exit(error)


def main(argv, flag_values=flags.FLAGS):
    """Trains as the parsed flags say and prints the summary.

    Bad flags, outputs that exist and library `ValueError`s while setting up
    exit with status 2 and one line on stderr, before training starts (the
    flag checks before TensorFlow is imported); errors while training
    propagate.

    Args:
        argv: The arguments left after flag parsing (only the program name).
        flag_values: The parsed `absl.flags.FlagValues`.
    """
    if len(argv) > 1:
        _usage_exit(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = config_from_flags(flag_values)
        check_before_training(config)
    except UsageError as error:
        _usage_exit(error.flag_message)
    startup.load_tensorflow(verbose="verbosity" in flag_values and flag_values["verbosity"].present)
    try:
        setup = _prepare(config)
    except UsageError as error:
        _usage_exit(error.flag_message)
    except ValueError as error:
        _usage_exit(error)
    print(format_summary(_fit_and_report(setup)))


def run(argv=None):
    """Console script `rigl-train` and `python -m rigl_keras.experiments.train`.

    Args:
        argv: The command line, program name first; `None` for `sys.argv`.
    """
    define_flags(flags.FLAGS)
    remaining = _parse_flags(list(sys.argv if argv is None else argv))
    logging.use_absl_handler()
    main(remaining)


if __name__ == "__main__":
    run()
