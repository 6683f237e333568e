"""Command line trainer: `python -m rigl_keras.train` (or `rigl-train`).

Trains one model on one TFDS image classification dataset with one sparse
training method, evaluates it on the test split, prints an aligned summary
and writes a results JSON. With no flags it trains LeNet-300-100 on MNIST at
90% sparsity (ERK distribution) with RigL:

    python -m rigl_keras.train
    python -m rigl_keras.train --dataset=cifar10 --model=wrn_22_2 \\
        --augment --epochs=200 --weight_decay=5e-4 --lr_schedule=step
    python -m rigl_keras.train --method=prune --sparsity=0.95 \\
        --logdir=/tmp/run1 --export_dir=/tmp/run1/saved_model

Methods (`--method`):

* `dense`: the full model with plain Keras layers, no callback.
* `small_dense`: a plain model whose widths are scaled (one multiplier found
  by bisection, see `rigl_keras.models.small_dense_widths`) so that its
  kernel weights number `(1 - sparsity)` times the full model's, i.e. as
  many as the sparse model has non-zeros.
* `static`: `RigLCallback(update_freq=None)`, a fixed random sparse mask.
* `set`, `snfs`, `rigl`: `RigLCallback` with `grow="random"`, `"momentum"`,
  `"gradient"`.
* `prune`: `GradualPruningCallback`, dense-to-sparse magnitude pruning.

Mask updates (and pruning) stop at `end_step = end_fraction * total steps`.
Weight decay is an L2 kernel regularizer `L2(weight_decay / 2)`, which
adds `weight_decay * w` to the gradient (see `rigl_keras.models`).

The learning rate schedules: `cosine` decays to 0 over training; `step`
multiplies by 0.2 at 30%, 60% and 80% of training (the Wide ResNet
schedule); `constant`.

Library use: `train(TrainConfig(...))` runs the same thing and returns the
results dict; it never reads command line flags.

Results JSON: every flag value under `"flags"`; at the top level
`test_accuracy`, `test_loss`, `sparsity` (the measured fraction of zeros
over all kernels: mask zeros for masked layers, exact zeros for plain ones),
`layer_sparsity`, `train_flops` and `inference_flops` (theoretical FLOPs
relative to dense training / inference of the full-size model, as in the
RigL paper's tables; `rigl_keras.flops`), `flops` (the full
`rigl_keras.flops.flops_report`), `wall_seconds`, `train_seconds`,
`history` (the per-epoch logs) and more.

TensorBoard (`--logdir`): Keras' `TensorBoard` callback writes every epoch
log, including the `sparsity` and `drop_fraction` the sparse training
callbacks add (it runs after them), under `logdir/train`.
"""

import dataclasses
import importlib.util
import json
import math
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from rigl_keras import callbacks as callbacks_lib
from rigl_keras import data
from rigl_keras import export
from rigl_keras import flops as flops_lib
from rigl_keras import layers as layers_lib
from rigl_keras import models
from rigl_keras import pruning

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


class UsageError(ValueError):
    """A problem the user can fix by changing the configuration."""


# ----------------------------------------------------------------------
# Registries: names on the command line -> objects.


@dataclasses.dataclass(frozen=True)
class _Model:
    architecture: str
    description: str


MODELS = {
    "lenet300_100": _Model("lenet300_100", "LeNet-300-100 MLP"),
    "lenet5": _Model("lenet5", "LeNet-5, Caffe variant (conv 20, 50; fc 500)"),
    "wrn_22_2": _Model("wrn", "Wide ResNet (--wrn_depth, --wrn_width)"),
}


@dataclasses.dataclass(frozen=True)
class _Method:
    masked: bool
    flops_method: str
    grow: str = None  # RigLCallback's `grow`, or None.
    static: bool = False
    prune: bool = False


METHODS = {
    "dense": _Method(masked=False, flops_method="dense"),
    "small_dense": _Method(masked=False, flops_method="small_dense"),
    "static": _Method(masked=True, flops_method="static", grow="gradient", static=True),
    "set": _Method(masked=True, flops_method="set", grow="random"),
    "snfs": _Method(masked=True, flops_method="snfs", grow="momentum"),
    "rigl": _Method(masked=True, flops_method="rigl", grow="gradient"),
    "prune": _Method(masked=True, flops_method="pruning", prune=True),
}

DISTRIBUTIONS = ("uniform", "er", "erk")

# name -> (default learning rate, factory(learning_rate, momentum)).
OPTIMIZERS = {
    "sgd": (0.1, lambda lr, momentum: keras.optimizers.SGD(lr, momentum=momentum)),
    "adam": (1e-3, lambda lr, momentum: keras.optimizers.Adam(lr)),
}

LR_SCHEDULES = ("cosine", "step", "constant")

_STEP_BOUNDARIES = (0.3, 0.6, 0.8)
_STEP_FACTOR = 0.2


# ----------------------------------------------------------------------
# Configuration.


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value):
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


@dataclasses.dataclass
class TrainConfig:
    """Everything `train` needs; each field is a command line flag.

    Attributes:
        dataset: TFDS image classification dataset (`image`/`label`).
        data_dir: TFDS data folder; `None` for TFDS's default, which the
            `TFDS_DATA_DIR` environment variable overrides.
        download: Let TFDS download a missing dataset.
        train_split: TFDS split to train on.
        eval_split: TFDS split to evaluate on.
        model: One of `MODELS`.
        wrn_depth: Depth of `wrn_22_2` (6n + 4).
        wrn_width: Widening factor of `wrn_22_2`.
        method: One of `METHODS`.
        sparsity: Overall sparsity in `[0, 1)` (target of the sparse
            methods; sets the size of `small_dense`; unused by `dense`).
        distribution: One of `DISTRIBUTIONS`.
        dense_layers: Names of masked layers to keep dense.
        epochs: Number of epochs (>= 1).
        steps_per_epoch: Optional cap on the steps of an epoch (one epoch is
            otherwise `ceil(examples / batch_size)` steps).
        batch_size: Training and evaluation batch size.
        optimizer: One of `OPTIMIZERS`.
        momentum: SGD momentum in `[0, 1)`.
        learning_rate: Peak learning rate; `None` for the optimizer's
            default (0.1 for SGD, 1e-3 for Adam).
        lr_schedule: One of `LR_SCHEDULES`.
        weight_decay: `wd >= 0`, applied as `L2(wd / 2)` on every kernel.
        update_freq: Steps between mask updates (and pruning steps).
        drop_fraction: Initial drop fraction (cosine-annealed).
        end_fraction: Mask updates / pruning end at this fraction of the
            training steps, in `(0, 1]`.
        augment: Random crop (pad 4) and horizontal flip.
        seed: Integer seed of initialization, masks and data order.
        logdir: TensorBoard folder, or `None`.
        results_json: Path of the results JSON; `None` for
            `<logdir>/results.json`, or `results.json` without a logdir.
        export_dir: Folder to write a SavedModel into, or `None`.
        tflite_path: File to write a TFLite model into, or `None`.
        overwrite: Replace an existing non-empty `export_dir`.
        verbose: Keras `fit` verbosity: 0 silent, 1 progress bar, 2 one
            line per epoch.
    """

    dataset: str = "mnist"
    data_dir: str = None
    download: bool = False
    train_split: str = "train"
    eval_split: str = "test"
    model: str = "lenet300_100"
    wrn_depth: int = 22
    wrn_width: int = 2
    method: str = "rigl"
    sparsity: float = 0.9
    distribution: str = "erk"
    dense_layers: tuple = ()
    epochs: int = 20
    steps_per_epoch: int = None
    batch_size: int = 128
    optimizer: str = "sgd"
    momentum: float = 0.9
    learning_rate: float = None
    lr_schedule: str = "cosine"
    weight_decay: float = 1e-4
    update_freq: int = 100
    drop_fraction: float = 0.3
    end_fraction: float = 0.75
    augment: bool = False
    seed: int = 0
    logdir: str = None
    results_json: str = None
    export_dir: str = None
    tflite_path: str = None
    overwrite: bool = False
    verbose: int = 1

    def __post_init__(self):
        self.dense_layers = tuple(self.dense_layers or ())
        for name, allowed in (
            ("model", tuple(MODELS)),
            ("method", tuple(METHODS)),
            ("distribution", DISTRIBUTIONS),
            ("optimizer", tuple(OPTIMIZERS)),
            ("lr_schedule", LR_SCHEDULES),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"`{name}` must be one of {allowed}. Received: {name}={value!r}"
                )
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(
                f"`dataset` must be a TFDS dataset name. Received: dataset={self.dataset!r}"
            )
        if not _is_real(self.sparsity) or not 0.0 <= self.sparsity < 1.0:
            raise ValueError(
                "`sparsity` must be a number in [0, 1) (the fraction of "
                f"zero weights). Received: sparsity={self.sparsity!r}"
            )
        for name, low in (("epochs", 1), ("batch_size", 1), ("update_freq", 1),
                          ("wrn_width", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ValueError(
                    f"`{name}` must be an integer >= {low}. Received: {name}={value!r}"
                )
        if self.steps_per_epoch is not None and (
            not _is_int(self.steps_per_epoch) or self.steps_per_epoch < 1
        ):
            raise ValueError(
                "`steps_per_epoch` must be an integer >= 1 or None. "
                f"Received: steps_per_epoch={self.steps_per_epoch!r}"
            )
        if not _is_int(self.wrn_depth) or self.wrn_depth < 10 or (self.wrn_depth - 4) % 6:
            raise ValueError(
                "`wrn_depth` must be 6 * n + 4 with n >= 1 (10, 16, 22, 28, "
                f"...). Received: wrn_depth={self.wrn_depth!r}"
            )
        if not _is_real(self.momentum) or not 0.0 <= self.momentum < 1.0:
            raise ValueError(
                f"`momentum` must be a number in [0, 1). Received: momentum={self.momentum!r}"
            )
        if self.learning_rate is not None and (
            not _is_real(self.learning_rate) or self.learning_rate <= 0
        ):
            raise ValueError(
                "`learning_rate` must be a positive number or None. "
                f"Received: learning_rate={self.learning_rate!r}"
            )
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(
                "`weight_decay` must be a number >= 0. "
                f"Received: weight_decay={self.weight_decay!r}"
            )
        if not _is_real(self.drop_fraction) or not 0.0 < self.drop_fraction <= 1.0:
            raise ValueError(
                "`drop_fraction` must be a number in (0, 1]. "
                f"Received: drop_fraction={self.drop_fraction!r}"
            )
        if not _is_real(self.end_fraction) or not 0.0 < self.end_fraction <= 1.0:
            raise ValueError(
                "`end_fraction` must be a number in (0, 1]. "
                f"Received: end_fraction={self.end_fraction!r}"
            )
        if not _is_int(self.seed):
            raise ValueError(f"`seed` must be an integer. Received: seed={self.seed!r}")
        if self.verbose not in (0, 1, 2):
            raise ValueError(f"`verbose` must be 0, 1 or 2. Received: verbose={self.verbose!r}")

    @property
    def peak_learning_rate(self):
        """`learning_rate`, or the optimizer's default when it is None."""
        if self.learning_rate is not None:
            return float(self.learning_rate)
        return OPTIMIZERS[self.optimizer][0]

    def to_dict(self):
        """The fields as JSON-ready values."""
        values = dataclasses.asdict(self)
        values["dense_layers"] = list(self.dense_layers)
        return values


# ----------------------------------------------------------------------
# Building blocks.


def _arch_kwargs(config, info):
    kwargs = {"num_classes": info.num_classes, "input_shape": info.input_shape}
    if MODELS[config.model].architecture == "wrn":
        kwargs.update(depth=config.wrn_depth, width=config.wrn_width)
    return kwargs


def _build_model(config, info):
    """The model to train, and what was solved for small_dense."""
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
    peak = config.peak_learning_rate
    if config.lr_schedule == "constant":
        return peak
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps=total_steps)
    boundaries = [max(1, int(round(f * total_steps))) for f in _STEP_BOUNDARIES]
    values = [peak * _STEP_FACTOR**i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def _end_step(config, total_steps):
    return max(1, int(round(config.end_fraction * total_steps)))


def _sparse_callback(config, total_steps):
    """The method's callback (or None), from the registry entry."""
    method = METHODS[config.method]
    if not method.masked:
        return None
    end_step = _end_step(config, total_steps)
    if method.prune:
        return pruning.GradualPruningCallback(
            sparsity=config.sparsity,
            distribution=config.distribution,
            begin_step=0,
            end_step=end_step,
            update_freq=config.update_freq,
            initial_sparsity=0.0,
            dense_layers=config.dense_layers,
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
    )


def _layer_sparsity(model):
    """`{name: sparsity}` and the overall sparsity over all kernels."""
    per_layer, zeros, total = {}, 0, 0
    masked = {id(layer) for layer in layers_lib.masked_layers(model)}
    for layer in model._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
        if not (id(layer) in masked or isinstance(
                layer, (keras.layers.Dense, keras.layers.Conv2D))):
            continue
        if id(layer) in masked:
            values = keras.ops.convert_to_numpy(layer.mask)
        else:
            values = keras.ops.convert_to_numpy(layer.kernel)
        layer_zeros = int(np.sum(values == 0))
        per_layer[layer.name] = layer_zeros / values.size
        zeros += layer_zeros
        total += values.size
    return per_layer, (zeros / total if total else 0.0)


def _flops(config, model, info, total_steps):
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


def _check_before_training(config):
    if config.logdir and importlib.util.find_spec("tensorboard") is None:
        raise UsageError(
            "--logdir (`logdir`) needs the `tensorboard` package, which is "
            "not installed: `pip install tensorboard`, or drop --logdir."
        )
    if config.export_dir and not config.overwrite and os.path.isdir(
        config.export_dir
    ) and os.listdir(config.export_dir):
        raise UsageError(
            f"--export_dir {config.export_dir!r} exists and is not empty; "
            "pass --overwrite (`overwrite=True`) to replace it or choose "
            "another folder."
        )


def _results_path(config):
    if config.results_json:
        return os.path.abspath(config.results_json)
    return os.path.abspath(os.path.join(config.logdir or ".", "results.json"))


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
# Training.


def train(config):
    """Trains and evaluates one model as `config` says.

    Args:
        config: A `TrainConfig`.

    Returns:
        The results dict that is also written to the results JSON (see the
        module docstring for its keys).

    Raises:
        rigl_keras.data.DatasetUnavailableError: If the dataset is not in
            the data folder (and not downloaded).
        rigl_keras.data.DatasetError: For an unknown dataset or split.
        UsageError: For a configuration that cannot run here (`--logdir`
            without TensorBoard installed, an existing `export_dir`, ...).

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
    start = time.perf_counter()
    _check_before_training(config)
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
    )
    eval_ds = data.load_dataset(
        config.dataset, config.eval_split, config.batch_size,
        data_dir=config.data_dir, shuffle=False, download=config.download,
    )

    model, extra = _build_model(config, info)
    optimizer = OPTIMIZERS[config.optimizer][1](
        _learning_rate(config, total_steps), config.momentum
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    fit_callbacks = []
    sparse_callback = _sparse_callback(config, total_steps)
    if sparse_callback is not None:
        fit_callbacks.append(sparse_callback)
    if config.logdir:
        # After the sparse training callback, so that the epoch logs it
        # writes (sparsity, drop_fraction, ...) reach TensorBoard.
        fit_callbacks.append(keras.callbacks.TensorBoard(config.logdir))

    train_start = time.perf_counter()
    history = model.fit(
        train_ds,
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=fit_callbacks,
        verbose=config.verbose,
        shuffle=False,  # The dataset is shuffled; Keras cannot shuffle it.
    )
    train_seconds = time.perf_counter() - train_start
    test_loss, test_accuracy = model.evaluate(eval_ds, verbose=0)
    wall_seconds = time.perf_counter() - start

    layer_sparsity, sparsity = _layer_sparsity(model)
    flops = _flops(config, model, info, total_steps)
    results_path = _results_path(config)
    results = {
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "sparsity": float(sparsity),
        "layer_sparsity": layer_sparsity,
        "train_flops": float(flops["train_flops"]),
        "inference_flops": float(flops["inference_flops"]),
        "wall_seconds": wall_seconds,
        "train_seconds": train_seconds,
        "flops": flops,
        "steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "end_step": _end_step(config, total_steps) if METHODS[config.method].masked else None,
        "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "kernel_params": models.kernel_param_count(model),
        "dataset": {
            "name": info.name,
            "input_shape": list(info.input_shape),
            "num_classes": info.num_classes,
            "train_examples": num_train,
        },
        "history": {k: [_number(v) for v in vs] for k, vs in history.history.items()},
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": sys.version.split()[0],
        },
        "results_json": results_path,
        "flags": config.to_dict(),
        **extra,
    }
    if config.export_dir:
        results["export_dir"] = export.export_saved_model(
            model, config.export_dir, overwrite=config.overwrite
        )
    if config.tflite_path:
        results["tflite_path"] = export.export_tflite(
            model, config.tflite_path, sparse=True
        )
    results = _to_json(results)
    os.makedirs(os.path.dirname(results_path), exist_ok=True)
    with open(results_path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    return results


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
        ("steps", f"{results['steps']} ({cfg['epochs']} epochs x "
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
        ("results JSON", results["results_json"]),
    ]
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

    Defaults come from `TrainConfig`. Called by `run`; not at import, so
    importing this module has no side effect.

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
    flags.DEFINE_integer("wrn_width", d.wrn_width, "Widening factor of wrn_22_2.",
                         lower_bound=1, **fv)
    flags.DEFINE_enum("method", d.method, list(METHODS), "Training method.", **fv)
    flags.DEFINE_float("sparsity", d.sparsity, "Overall sparsity in [0, 1).", **fv)
    flags.DEFINE_enum("distribution", d.distribution, list(DISTRIBUTIONS),
                      "How the sparsity is spread over layers.", **fv)
    flags.DEFINE_list("dense_layers", list(d.dense_layers),
                      "Comma-separated names of masked layers to keep dense.", **fv)
    flags.DEFINE_integer("epochs", d.epochs, "Number of epochs.", lower_bound=1, **fv)
    flags.DEFINE_integer("steps_per_epoch", d.steps_per_epoch,
                         "Optional cap on the steps of an epoch.", lower_bound=1, **fv)
    flags.DEFINE_integer("batch_size", d.batch_size, "Batch size.", lower_bound=1, **fv)
    flags.DEFINE_enum("optimizer", d.optimizer, list(OPTIMIZERS),
                      "sgd (with --momentum) or adam.", **fv)
    flags.DEFINE_float("momentum", d.momentum, "SGD momentum.", **fv)
    flags.DEFINE_float("learning_rate", d.learning_rate, "Peak learning rate "
                       "(default: 0.1 for sgd, 0.001 for adam).", **fv)
    flags.DEFINE_enum("lr_schedule", d.lr_schedule, list(LR_SCHEDULES),
                      "cosine (to 0), step (x0.2 at 30/60/80%), constant.", **fv)
    flags.DEFINE_float("weight_decay", d.weight_decay,
                       "Weight decay, as L2(weight_decay / 2) on kernels.", **fv)
    flags.DEFINE_integer("update_freq", d.update_freq,
                         "Steps between mask updates (or pruning steps).",
                         lower_bound=1, **fv)
    flags.DEFINE_float("drop_fraction", d.drop_fraction,
                       "Initial drop fraction (cosine-annealed).", **fv)
    flags.DEFINE_float("end_fraction", d.end_fraction,
                       "Mask updates stop at this fraction of training.", **fv)
    flags.DEFINE_bool("augment", d.augment, "Random crop (pad 4) and flip.", **fv)
    flags.DEFINE_integer("seed", d.seed, "Random seed.", **fv)
    flags.DEFINE_string("logdir", d.logdir, "TensorBoard log folder.", **fv)
    flags.DEFINE_string("results_json", d.results_json, "Results JSON path "
                        "(default: <logdir>/results.json, or ./results.json).", **fv)
    flags.DEFINE_string("export_dir", d.export_dir, "Write a SavedModel here.", **fv)
    flags.DEFINE_string("tflite_path", d.tflite_path, "Write a TFLite model here.", **fv)
    flags.DEFINE_bool("overwrite", d.overwrite, "Replace a non-empty --export_dir.", **fv)
    flags.DEFINE_integer("verbose", d.verbose,
                         "Keras fit verbosity: 0, 1 (progress bar) or 2.", **fv)
    flags.register_validator(
        "sparsity", lambda v: v is not None and 0.0 <= v < 1.0,
        message="--sparsity must be in [0, 1), e.g. --sparsity=0.9.", flag_values=flag_values,
    )
    flags.register_validator(
        "drop_fraction", lambda v: v is not None and 0.0 < v <= 1.0,
        message="--drop_fraction must be in (0, 1].", flag_values=flag_values,
    )
    flags.register_validator(
        "end_fraction", lambda v: v is not None and 0.0 < v <= 1.0,
        message="--end_fraction must be in (0, 1].", flag_values=flag_values,
    )


def _flag_names():
    return [field.name for field in dataclasses.fields(TrainConfig)]


def config_from_flags(flag_values=flags.FLAGS):
    """A `TrainConfig` from parsed flags (one flag per field)."""
    return TrainConfig(**{name: flag_values[name].value for name in _flag_names()})


def main(argv):
    """absl entry point: trains, prints the summary, exits 1 on user errors."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        # Keep TFDS's and TensorFlow's INFO lines out of the progress bars.
        logging.set_verbosity(logging.WARNING)
    try:
        config = config_from_flags(flags.FLAGS)
    except ValueError as error:
        sys.exit(f"rigl_keras.train: error: {error}")
    try:
        results = train(config)
    except (data.DatasetError, UsageError) as error:
        sys.exit(f"rigl_keras.train: error: {error}")
    print(format_summary(results))


def run():
    """Console script `rigl-train`: defines the flags and runs `main`."""
    define_flags(flags.FLAGS)
    # `--help` lists the main module's key flags; under the console script
    # the main module is the `rigl-train` wrapper, not this one.
    for name in _flag_names():
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
    app.run(main)


if __name__ == "__main__":
    run()
