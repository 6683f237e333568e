"""The configuration of one training run, checked without TensorFlow.

`TrainConfig` holds everything `rigl_keras.experiments.train.train` needs,
one field per command line flag; creating one checks every field (ranges,
choices, `dense_layers` names, the structure flags) and raises a
`UsageError` worded for Python callers and, in `flag_message`, for the
command line. `check_before_training` checks the outputs (existing files,
directories) before any work. Nothing here imports TensorFlow, so a bad
flag fails in well under a second.

Example:

>>> config = TrainConfig(sparsity=0.8, method="set")
>>> config.peak_learning_rate
0.1
>>> TrainConfig(sparsity=1.5)
Traceback (most recent call last):
...
rigl_keras.experiments.config.UsageError: `sparsity` must be in [0, 1). Received: sparsity=1.5
"""

import dataclasses
import importlib.util
import os

from rigl_keras import _checks

__all__ = [
    "DISTRIBUTIONS",
    "LR_SCHEDULES",
    "METHODS",
    "MODELS",
    "OPTIMIZERS",
    "TrainConfig",
    "UsageError",
    "check_before_training",
    "kernel_layer_names",
    "results_path",
]


class UsageError(ValueError):
    """A problem the user can fix by changing the configuration.

    `str(error)` words it for Python callers (`sparsity=1.5`);
    `error.flag_message` words it for the command line (`--sparsity`).
    """

    def __init__(self, message, flag_message=None):
        super().__init__(message)
        self.flag_message = flag_message or message


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


@dataclasses.dataclass(frozen=True)
class _Optimizer:
    keras_class: str  # A class name in `keras.optimizers`.
    default_learning_rate: float
    takes_momentum: bool


OPTIMIZERS = {
    "sgd": _Optimizer("SGD", 0.1, takes_momentum=True),
    "adam": _Optimizer("Adam", 1e-3, takes_momentum=False),
}

LR_SCHEDULES = ("cosine", "step", "constant")



def kernel_layer_names(model, wrn_depth, wrn_width):
    """Names of the layers with a kernel of a `MODELS` entry.

    Pure Python (the names `rigl_keras.experiments.models` gives), so that
    `dense_layers` is checked before TensorFlow loads; the tests compare
    them with the built models.
    """
    if model == "lenet300_100":
        return ("fc1", "fc2", "fc3")
    if model == "lenet5":
        return ("conv1", "conv2", "fc1", "fc2")
    names = ["conv1"]
    for group in (1, 2, 3):
        for block in range(1, (wrn_depth - 4) // 6 + 1):
            prefix = f"group{group}_block{block}"
            names += [f"{prefix}_conv_a", f"{prefix}_conv_b"]
            # A 1x1 convolution shortcut where the shape changes: group 1
            # widens (unless the width is 1), groups 2 and 3 stride.
            if block == 1 and (group > 1 or wrn_width != 1):
                names.append(f"{prefix}_shortcut")
    return tuple(names + ["logits"])


# ----------------------------------------------------------------------
# Configuration.




def _int_pair(value):
    """`(a, b)` of two integers >= 1 from `"a,b"` or a pair, else None."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    try:
        pair = tuple(int(str(v).strip()) for v in value)
    except ValueError:
        return None
    return pair if all(v >= 1 for v in pair) else None


def _as_flag_value(value):
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _bad_value(field, value, requirement, flag_requirement=None):
    """A `UsageError` for a config field, in Python and in flag wording."""
    return UsageError(
        f"`{field}` must be {requirement}. Received: {field}={value!r}",
        flag_message=(
            f"--{field} must be {flag_requirement or requirement}; "
            f"got {_as_flag_value(value)}"
        ),
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
        dense_layers: Names of masked layers to keep dense; each must be a
            layer of `model`.
        block_shape: `(a, b)` for `rigl_keras.structures.Block((a, b))`
            masks (`"4,1"` is TFLite's 1x4 block), or `None`.
        n_m: `(n, m)` for `rigl_keras.structures.NM(n, m)` masks, or
            `None`; needs `sparsity = 1 - n/m` and the uniform distribution.
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
            `<logdir>/results.json`, or for no JSON without a logdir.
        export_dir: Folder to write a SavedModel into, or `None`.
        tflite_path: File to write a TFLite model into, or `None`.
        overwrite: Replace an existing results JSON, TFLite file or
            non-empty `export_dir` (otherwise they are errors).
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
    block_shape: tuple = None
    n_m: tuple = None
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
        self._check_choices()
        self._check_numbers()
        self._check_dense_layers()
        self._check_structure()

    def _check_choices(self):
        for name, allowed in (
            ("model", tuple(MODELS)),
            ("method", tuple(METHODS)),
            ("distribution", DISTRIBUTIONS),
            ("optimizer", tuple(OPTIMIZERS)),
            ("lr_schedule", LR_SCHEDULES),
        ):
            if getattr(self, name) not in allowed:
                raise _bad_value(name, getattr(self, name), f"one of {', '.join(allowed)}")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise _bad_value("dataset", self.dataset, "a TFDS dataset name")
        if self.verbose not in (0, 1, 2):
            raise _bad_value("verbose", self.verbose, "0, 1 or 2")

    def _check_numbers(self):
        for name, low, high, interval in (
            ("sparsity", 0.0, 1.0, "[0, 1)"),
            ("momentum", 0.0, 1.0, "[0, 1)"),
        ):
            value = getattr(self, name)
            if not _checks.is_real(value) or not low <= value < high:
                raise _bad_value(name, value, f"in {interval}")
        for name in ("drop_fraction", "end_fraction"):
            value = getattr(self, name)
            if not _checks.is_real(value) or not 0.0 < value <= 1.0:
                raise _bad_value(name, value, "in (0, 1]")
        for name in ("epochs", "batch_size", "update_freq", "wrn_width"):
            value = getattr(self, name)
            if not _checks.is_int(value) or value < 1:
                raise _bad_value(name, value, "an integer >= 1")
        if self.steps_per_epoch is not None and (
            not _checks.is_int(self.steps_per_epoch) or self.steps_per_epoch < 1
        ):
            raise _bad_value("steps_per_epoch", self.steps_per_epoch,
                             "an integer >= 1 or None", "an integer >= 1")
        if not _checks.is_int(self.wrn_depth) or self.wrn_depth < 10 or (self.wrn_depth - 4) % 6:
            raise _bad_value("wrn_depth", self.wrn_depth,
                             "6 * n + 4 with n >= 1 (10, 16, 22, 28, ...)")
        if self.learning_rate is not None and (
            not _checks.is_real(self.learning_rate) or self.learning_rate <= 0
        ):
            raise _bad_value("learning_rate", self.learning_rate,
                             "a positive number or None", "a positive number")
        if not _checks.is_real(self.weight_decay) or self.weight_decay < 0:
            raise _bad_value("weight_decay", self.weight_decay, "a number >= 0")
        if not _checks.is_int(self.seed):
            raise _bad_value("seed", self.seed, "an integer")

    def _check_dense_layers(self):
        names = kernel_layer_names(self.model, self.wrn_depth, self.wrn_width)
        if not set(self.dense_layers) <= set(names):
            raise _bad_value(
                "dense_layers", self.dense_layers,
                f"names of {self.model}'s layers ({', '.join(names)})",
            )

    def _check_structure(self):
        for name, what in (("block_shape", "a,b"), ("n_m", "n,m")):
            value = getattr(self, name)
            if value is None or value == [] or value == ():
                setattr(self, name, None)
                continue
            pair = _int_pair(value)
            if pair is None:
                raise _bad_value(name, value, f"two integers >= 1 ({what})")
            setattr(self, name, pair)
        if self.block_shape and self.n_m:
            raise UsageError(
                "`block_shape` and `n_m` exclude each other. "
                f"Received: block_shape={self.block_shape!r}, n_m={self.n_m!r}",
                flag_message="--block_shape and --n_m exclude each other",
            )
        if not (self.block_shape or self.n_m):
            return
        name = "block_shape" if self.block_shape else "n_m"
        if not METHODS[self.method].masked:
            raise _bad_value("method", self.method,
                             f"a sparse method with `{name}`", f"a sparse method with --{name}")
        if self.n_m:
            n, m = self.n_m
            if n > m:
                raise _bad_value("n_m", self.n_m, "n,m with n <= m")
            if abs(self.sparsity - (1 - n / m)) > 1e-6:
                raise _bad_value("sparsity", self.sparsity,
                                 f"1 - n/m = {1 - n / m!r} with n_m={n},{m}",
                                 f"1 - n/m = {1 - n / m!r} with --n_m {n},{m}")
            if self.distribution != "uniform":
                raise _bad_value("distribution", self.distribution,
                                 "uniform with n_m", "uniform with --n_m")

    @property
    def structure(self):
        """The `rigl_keras.structures` object of `block_shape` / `n_m`."""
        from rigl_keras import structures  # pylint: disable=import-outside-toplevel

        if self.block_shape:
            return structures.Block(self.block_shape)
        if self.n_m:
            return structures.NM(*self.n_m)
        return None

    @property
    def peak_learning_rate(self):
        """`learning_rate`, or the optimizer's default when it is None."""
        if self.learning_rate is not None:
            return float(self.learning_rate)
        return OPTIMIZERS[self.optimizer].default_learning_rate

    def to_dict(self):
        """The fields as JSON-ready values."""
        values = dataclasses.asdict(self)
        values["dense_layers"] = list(self.dense_layers)
        for name in ("block_shape", "n_m"):
            values[name] = None if values[name] is None else list(values[name])
        return values


# ----------------------------------------------------------------------
# Outputs: where they go, and refusing to replace what is there.


def results_path(config):
    """The absolute path of the results JSON, or None for no JSON."""
    if config.results_json:
        return os.path.abspath(config.results_json)
    if config.logdir:
        return os.path.abspath(os.path.join(config.logdir, "results.json"))
    return None


def _exists_error(field, path, what):
    return UsageError(
        f"`{field}` would replace the existing {what} {path!r}; pass "
        "overwrite=True to replace it, or choose another path.",
        flag_message=(
            f"--{field}: {path} exists; pass --overwrite to replace it, or "
            "choose another path"
        ),
    )


def _kind_error(field, path, kind):
    return UsageError(
        f"`{field}` must be a {kind} path, but {path!r} is not a {kind}.",
        flag_message=f"--{field} must be a {kind} path; got {path}",
    )


def _check_file_output(field, path, overwrite):
    if path is None or not os.path.exists(path):
        return
    if os.path.isdir(path):
        raise _kind_error(field, path, "file")
    if not overwrite:
        raise _exists_error(field, path, "file")


def _check_outputs(config):
    """Fails if an output exists and `overwrite` is off, or has the wrong kind."""
    results_field = "results_json" if config.results_json else "logdir"
    _check_file_output(results_field, results_path(config), config.overwrite)
    _check_file_output("tflite_path", config.tflite_path, config.overwrite)
    export_dir = config.export_dir
    if export_dir and os.path.exists(export_dir):
        if not os.path.isdir(export_dir):
            raise _kind_error("export_dir", export_dir, "directory")
        if os.listdir(export_dir) and not config.overwrite:
            raise _exists_error("export_dir", export_dir, "non-empty directory")


def check_before_training(config):
    """Everything that can fail without TensorFlow, checked up front."""
    if config.logdir and importlib.util.find_spec("tensorboard") is None:
        raise UsageError(
            "`logdir` needs the `tensorboard` package, which is not "
            "installed: `pip install tensorboard`, or pass logdir=None.",
            flag_message=(
                "--logdir needs the `tensorboard` package, which is not "
                "installed: pip install tensorboard, or drop --logdir"
            ),
        )
    _check_outputs(config)
