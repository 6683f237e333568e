r"""Accuracy of the sparse training methods on MNIST: a resumable sweep.

Trains, with the command line trainer `python -m rigl_keras.experiments.train`
(one subprocess per run, which isolates memory and TensorFlow state):

* LeNet-300-100 at 90%, 95% and 98% sparsity (ERK distribution) with every
  method of the CLI: `dense` (once per seed: it has no sparsity),
  `small_dense`, `static`, `set`, `snfs`, `rigl` and `prune`, plus the peer
  baseline `tfmot`: TensorFlow Model Optimization's `prune_low_magnitude`
  with the same per-layer ERK targets and schedule, run by
  `python -m benchmarks.accuracy_tfmot` in its own process with
  `TF_USE_LEGACY_KERAS=1` (it needs `pip install tf_keras
  tensorflow-model-optimization`; without them those runs fail and are
  retried on the next invocation, the others go on);
* LeNet-300-100 with RigL and structured masks (`--structures`):
  `block4x1` (`--block_shape 4,1`: `rigl_keras.structures.Block((4, 1))`,
  TFLite's 1x4 blocks; ERK) at 90% and 95% (`--block_sparsities`), and
  `nm2of4` (`--n_m 2,4`: `NM(2, 4)`, which fixes the sparsity at 50% and
  needs `--distribution uniform`);
* LeNet-5 at 95% with the seven CLI methods;

three seeds each (`--seeds 0,1,2`). All runs of a model share the number of
epochs (`--epochs` for LeNet-300-100, `--lenet5_epochs` for LeNet-5: a
LeNet-5 epoch costs ~5x a LeNet-300-100 epoch on CPU, so it gets fewer to
keep the whole sweep near two hours on 2 cores) and the training flags,
which are the CLI's defaults (`rigl_keras.experiments.train.TrainConfig`) passed
explicitly to both trainers: batch 128, SGD with momentum 0.9, peak
learning rate 0.1 with cosine decay to 0, weight decay 1e-4, mask updates
(or pruning steps) every 100 steps until 75% of training, initial drop
fraction 0.3.

Resumable: each run writes `<runs_dir>/<key>.json` (e.g.
`lenet300_100_rigl_s98_seed0_e20.json`; a structured run names its
structure: `lenet300_100_rigl_block4x1_s90_seed0_e20.json`,
`lenet300_100_rigl_nm2of4_s50_seed0_e20.json`) only when it has finished
(the trainer writes `<key>.partial.json`, which is then annotated, trimmed
and renamed). A run whose JSON exists with the planned training flags
(shared flags, distribution, `block_shape` and `n_m`) is skipped; a failed
or interrupted run is simply run again next time. The runs are ordered by
priority: LeNet-300-100 seed 0 (all methods and sparsities, TFMOT
included, then the structured runs), then seeds 1 and 2, then LeNet-5; so
a sweep stopped early still has complete comparisons for the first seeds.

After every finished run (and with `--only_aggregate`) all run JSONs in
`--runs_dir` are aggregated into `<output_dir>/accuracy.json` (every run's
flags, test accuracy, measured sparsity, train/inference FLOPs relative to
dense, wall time; per (model, epochs, method, structure, sparsity) the mean,
sample standard deviation, min and max over seeds; the targets below; the
progress of the plan), `accuracy.md` (one table per model: methods x
sparsities, mean ± std (seeds), with FLOPs columns; a table of the
structured runs, each next to its reference: unstructured RigL at the same
sparsity for blocks, dense for 2:4, with how many runs' trained masks hold
the structure; the targets) and `accuracy.png` (test accuracy vs sparsity
per method and structure, dense as a horizontal line with its ± std band).

Targets (LeNet-300-100, mean over seeds, accuracy in percentage points):
RigL > SET > static at 98%; RigL >= SET >= static at 95%; RigL at 90%
within 0.4 points of dense; RigL at 98% within 1.0 point of dense; our
`prune` within 0.3 points of TFMOT's at each sparsity; RigL with 4x1 blocks
at 90% within 0.3 points of unstructured RigL at 90%; RigL with 2:4 within
0.2 points of dense. Each is reported as `met`, `missed` (with the numbers)
or `pending` (a needed run is missing).

Usage:

    export TFDS_DATA_DIR=/path/to/tfds   # holds mnist/
    python -m benchmarks.accuracy                       # the whole sweep
    python -m benchmarks.accuracy --only_aggregate      # tables and plot only
    python -m benchmarks.accuracy --dry_run             # the plan and its status
    python -m benchmarks.accuracy --models lenet300_100 --methods rigl,set \
        --sparsities 0.98 --seeds 0

Time (2 CPU cores): a LeNet-300-100 run of 20 epochs takes ~1 min on a
quiet machine (~2.5 s per epoch plus start-up and tracing) and 1.5-2.5 min
when other jobs share the cores; a LeNet-5 run of 10 epochs ~2.5 min (quiet)
to ~5 min. The default plan (75 LeNet-300-100 runs including 9 TFMOT runs
and 9 structured runs, 21 LeNet-5 runs) takes about two hours on a quiet
machine, three or more on a busy one: hence the resumability.
"""

import argparse
import dataclasses
import json
import math
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import _common
from rigl_keras import distributions
from rigl_keras import masking
from rigl_keras.experiments import data as data_lib
from rigl_keras.experiments import models as models_lib
from rigl_keras.experiments import train as train_lib

_ROOT = pathlib.Path(__file__).resolve().parent.parent

_RESULTS_DIR = _ROOT / "benchmarks" / "results"
_DEFAULT_RUNS_DIR = _RESULTS_DIR / "accuracy_runs"
_TFMOT_SCRIPT = _ROOT / "benchmarks" / "accuracy_tfmot.py"
_TFMOT_MODULE = "benchmarks.accuracy_tfmot"

MODELS = ("lenet300_100", "lenet5")
# Table and plot order.
METHODS = ("dense", "small_dense", "static", "set", "snfs", "rigl", "prune", "tfmot")
# Run order within a seed: the methods the targets compare first.
_RUN_ORDER = ("dense", "rigl", "set", "static", "prune", "tfmot", "snfs", "small_dense")
LABELS = {
    "dense": "Dense",
    "small_dense": "Small dense",
    "static": "Static",
    "set": "SET",
    "snfs": "SNFS",
    "rigl": "RigL",
    "prune": "Pruning (ours)",
    "tfmot": "Pruning (TFMOT)",
}
_MODEL_LABELS = {"lenet300_100": "LeNet-300-100", "lenet5": "LeNet-5"}


@dataclasses.dataclass(frozen=True)
class Structure:
    """A mask structure of the sweep: the CLI flag that trains it.

    Attributes:
        label: Name in tables and plots.
        flag: `block_shape` or `n_m` (the `rigl_keras.experiments.train` flag).
        value: Its two integers.
        distribution: The distribution of its runs.
        sparsity: The sparsity the structure fixes (N:M), or None.
        reference: What its runs are compared with in the table:
            `"unstructured"` (the same method and sparsity without
            structure) or `"dense"`.
    """

    label: str
    flag: str
    value: tuple
    distribution: str
    sparsity: float = None
    reference: str = "unstructured"

    @property
    def flag_values(self):
        """`{"block_shape": ..., "n_m": ...}` as the trainer's JSON has them."""
        values = {"block_shape": None, "n_m": None}
        values[self.flag] = list(self.value)
        return values


# Structured runs (LeNet-300-100, methods in `_STRUCTURED_METHODS`), by the
# name used in run keys and in `--structures`; table and plot order.
STRUCTURES = {
    "block4x1": Structure("4×1 blocks", "block_shape", (4, 1), "erk"),
    "nm2of4": Structure("2:4", "n_m", (2, 4), "uniform", sparsity=0.5, reference="dense"),
}
_STRUCTURED_METHODS = ("rigl",)
_STRUCTURED_MODELS = ("lenet300_100",)
_DEFAULTS = {
    "sparsities": (0.9, 0.95, 0.98),
    "epochs": 20,
    "lenet5_sparsities": (0.95,),
    "lenet5_epochs": 10,
    "lenet5_methods": ("dense", "small_dense", "static", "set", "snfs", "rigl", "prune"),
    "structures": tuple(STRUCTURES),
    "block_sparsities": (0.9, 0.95),
    "seeds": (0, 1, 2),
}
# Training flags shared by every run, passed explicitly to both trainers:
# the values of `rigl_keras.experiments.train.TrainConfig`'s defaults. A run JSON whose
# flags differ from these is not "finished" (it is run again).
_SHARED_FLAGS = (
    "batch_size", "learning_rate", "momentum", "lr_schedule", "weight_decay",
    "update_freq", "end_fraction",
)
_CLI_ONLY_FLAGS = ("optimizer", "drop_fraction", "distribution")
_HISTORY_KEEP = ("loss", "accuracy", "sparsity", "drop_fraction", "itop_rate")
_DATASET = "mnist"
# Comparisons of means in percentage points ignore float round-off below this.
_EPS = 1e-9
# The plot's y axis reaches at most this many points below dense.
_PLOT_SPAN = 6.0


# ----------------------------------------------------------------------
# The plan.


def shared_flags():
    """The training flags of every run: the CLI's defaults, made explicit.

    Returns:
        A dict with the keys of `_SHARED_FLAGS` and `_CLI_ONLY_FLAGS`; the
        learning rate is the optimizer's default peak rate.

    Example:

    >>> shared_flags()["batch_size"]
    128
    """
    config = train_lib.TrainConfig()
    values = {name: getattr(config, name) for name in _SHARED_FLAGS + _CLI_ONLY_FLAGS}
    values["learning_rate"] = config.peak_learning_rate
    return values


def _percent(sparsity):
    return f"{round(100 * sparsity, 4):g}"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run of the sweep.

    Attributes:
        model: A name in `MODELS`.
        method: A name in `METHODS`.
        sparsity: Target sparsity; 0.0 for `dense`.
        seed: Integer seed.
        epochs: Number of epochs.
        steps_per_epoch: Optional cap on the steps of an epoch (tests).
        structure: A name in `STRUCTURES`, or None for unstructured masks.
    """

    model: str
    method: str
    sparsity: float
    seed: int
    epochs: int
    steps_per_epoch: int = None
    structure: str = None

    @property
    def key(self):
        """File stem of the run, e.g. `lenet300_100_rigl_s98_seed0_e20`.

        A structured run has its structure after the method:
        `lenet300_100_rigl_block4x1_s90_seed0_e20`.
        """
        parts = [self.model, self.method]
        if self.structure is not None:
            parts.append(self.structure)
        if self.method != "dense":
            parts.append(f"s{_percent(self.sparsity)}")
        parts += [f"seed{self.seed}", f"e{self.epochs}"]
        if self.steps_per_epoch is not None:
            parts.append(f"spe{self.steps_per_epoch}")
        return "_".join(parts)

    @property
    def setting(self):
        """`(model, epochs, steps_per_epoch)`: runs comparable in a table."""
        return (self.model, self.epochs, self.steps_per_epoch)

    @property
    def distribution(self):
        """The sparsity distribution of the run: ERK unless the structure says."""
        if self.structure is None:
            return shared_flags()["distribution"]
        return STRUCTURES[self.structure].distribution

    @property
    def structure_flags(self):
        """`{"block_shape": ..., "n_m": ...}` of the run (None when unset)."""
        if self.structure is None:
            return {"block_shape": None, "n_m": None}
        return STRUCTURES[self.structure].flag_values


def plan_runs(models, methods, sparsities, epochs, seeds, lenet5_methods=None,
              lenet5_sparsities=None, lenet5_epochs=None, steps_per_epoch=None,
              structures=None, block_sparsities=None):
    """The runs of a sweep, in priority order.

    LeNet-300-100 comes first, seed by seed (all its methods and sparsities
    for seed 0, then seed 1, ...), then LeNet-5 in the same way. Within a
    seed, `dense` runs once and the other methods run at every sparsity;
    then, for LeNet-300-100, each method of `_STRUCTURED_METHODS` in
    `methods` runs with each structure: a block structure at every
    sparsity of `block_sparsities`, an N:M structure at the sparsity it
    fixes.

    Args:
        models: Subset of `MODELS`.
        methods: Methods for LeNet-300-100 (and, filtered by
            `lenet5_methods`, for LeNet-5).
        sparsities: Sparsities of LeNet-300-100.
        epochs: Epochs of LeNet-300-100.
        seeds: Seeds.
        lenet5_methods: Methods allowed for LeNet-5 (default: all but
            `tfmot`).
        lenet5_sparsities: Sparsities of LeNet-5 (default `(0.95,)`).
        lenet5_epochs: Epochs of LeNet-5 (default 10).
        steps_per_epoch: Optional cap on the steps of an epoch.
        structures: Names in `STRUCTURES` (default: all of them; `()` for
            none).
        block_sparsities: Sparsities of the block structures (default
            `(0.9, 0.95)`).

    Returns:
        A list of `RunSpec`, without duplicates.

    Example:

    >>> [s.key for s in plan_runs(["lenet300_100"], ["dense", "rigl"], [0.9],
    ...                           epochs=20, seeds=[0])]
    ['lenet300_100_dense_seed0_e20', 'lenet300_100_rigl_s90_seed0_e20']
    """
    lenet5_methods = _DEFAULTS["lenet5_methods"] if lenet5_methods is None else lenet5_methods
    lenet5_sparsities = (_DEFAULTS["lenet5_sparsities"] if lenet5_sparsities is None
                         else lenet5_sparsities)
    lenet5_epochs = _DEFAULTS["lenet5_epochs"] if lenet5_epochs is None else lenet5_epochs
    structures = _DEFAULTS["structures"] if structures is None else structures
    block_sparsities = (_DEFAULTS["block_sparsities"] if block_sparsities is None
                        else block_sparsities)
    settings = {
        "lenet300_100": (list(methods), list(sparsities), epochs),
        "lenet5": ([m for m in methods if m in lenet5_methods], list(lenet5_sparsities),
                   lenet5_epochs),
    }
    plan = []
    for model in MODELS:
        if model not in models:
            continue
        model_methods, model_sparsities, model_epochs = settings[model]
        ordered = [m for m in _RUN_ORDER if m in model_methods]
        for seed in seeds:
            for method in ordered:
                for sparsity in ([0.0] if method == "dense" else model_sparsities):
                    spec = RunSpec(model, method, float(sparsity), int(seed),
                                   int(model_epochs), steps_per_epoch)
                    if spec not in plan:
                        plan.append(spec)
            if model not in _STRUCTURED_MODELS:
                continue
            for method in [m for m in ordered if m in _STRUCTURED_METHODS]:
                for name in [n for n in STRUCTURES if n in structures]:
                    fixed = STRUCTURES[name].sparsity
                    for sparsity in (block_sparsities if fixed is None else [fixed]):
                        spec = RunSpec(model, method, float(sparsity), int(seed),
                                       int(model_epochs), steps_per_epoch, name)
                        if spec not in plan:
                            plan.append(spec)
    return plan


def erk_targets(model, sparsity, data_dir=None):
    """Per-layer ERK sparsities of a model, as `rigl_keras` distributes them.

    Keyed by layer name, as the TFMOT script (Keras 2) prunes layers: each
    of the paper's layers has one kernel.
    """
    info = data_lib.dataset_info(_DATASET, data_dir)
    plain = models_lib.build(
        model, masked=False, input_shape=info.input_shape, num_classes=info.num_classes
    )
    targets = distributions.distribute_sparsity(
        models_lib.kernel_shapes(plain), sparsity, method="erk"
    )
    return {w.layer.name: targets[w.key] for w in masking.kernel_weights(plain)}


def run_command(spec, results_json, data_dir=None, python=None):
    """The argv that trains `spec` and writes `results_json`.

    Args:
        spec: A `RunSpec`.
        results_json: Path the trainer writes its results to.
        data_dir: TFDS folder, or `None` for `TFDS_DATA_DIR`/TFDS's default.
        python: Interpreter (default `sys.executable`).

    Returns:
        A list of strings: `python -m rigl_keras.experiments.train ...` (with
        `--block_shape` or `--n_m` and the structure's distribution for a
        structured run), or `python -m benchmarks.accuracy_tfmot ...` for
        `tfmot`.
    """
    python = python or sys.executable
    shared = shared_flags()
    if spec.method == "tfmot":
        argv = [python, "-m", _TFMOT_MODULE, f"--model={spec.model}"]
        names = _SHARED_FLAGS
    else:
        argv = [python, "-m", "rigl_keras.experiments.train", f"--model={spec.model}",
                f"--method={spec.method}", f"--dataset={_DATASET}"]
        names = _SHARED_FLAGS + _CLI_ONLY_FLAGS
    argv += [f"--sparsity={spec.sparsity:g}", f"--epochs={spec.epochs}",
             f"--seed={spec.seed}"]
    if spec.steps_per_epoch is not None:
        argv.append(f"--steps_per_epoch={spec.steps_per_epoch}")
    shared["distribution"] = spec.distribution
    argv += [f"--{name}={shared[name]}" for name in names]
    for name, value in spec.structure_flags.items():
        if value is not None:
            argv.append(f"--{name}={','.join(str(v) for v in value)}")
    if spec.method == "tfmot":
        targets = erk_targets(spec.model, spec.sparsity, data_dir)
        argv.append("--layer_sparsity=" + json.dumps(targets, separators=(",", ":")))
    if data_dir:
        argv.append(f"--data_dir={data_dir}")
    argv += ["--verbose=2", f"--results_json={results_json}"]
    return argv


def _child_env(spec):
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    if spec.method == "tfmot":
        env["TF_USE_LEGACY_KERAS"] = "1"
    return env


# ----------------------------------------------------------------------
# Run files.


def run_path(runs_dir, spec):
    """`<runs_dir>/<key>.json`."""
    return pathlib.Path(runs_dir) / f"{spec.key}.json"


def _read_json(path):
    try:
        return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def finished(runs_dir, spec):
    """Whether `spec` has a valid run JSON trained with the shared flags.

    Args:
        runs_dir: Folder of the run JSONs.
        spec: A `RunSpec`.

    Returns:
        True if `<runs_dir>/<key>.json` parses, has a `test_accuracy` and
        its `benchmark` entry and flags match `spec` and `shared_flags()`:
        the shared flags, the distribution and the structure flags
        (`block_shape`, `n_m`; absent from runs made before the CLI had
        them, which are unstructured).
    """
    result = _read_json(run_path(runs_dir, spec))
    if not isinstance(result, dict) or not isinstance(result.get("test_accuracy"), float):
        return False
    if result.get("benchmark", {}).get("key") != spec.key:
        return False
    flags = result.get("flags", {})
    shared = shared_flags()
    if any(flags.get(name) != shared[name] for name in _SHARED_FLAGS):
        return False
    if flags.get("distribution") != spec.distribution:
        return False
    return all(flags.get(name) == value for name, value in spec.structure_flags.items())


def _display_command(argv, final_path):
    shown = ["python"] + [
        a.replace(str(_ROOT) + os.sep, "") for a in argv[1:-1]
    ] + [f"--results_json={_relative(final_path)}"]
    return shlex.join(shown)


def _relative(path):
    path = pathlib.Path(path).resolve()
    try:
        return path.relative_to(_ROOT).as_posix()
    except ValueError:
        return str(path)


def _finalize(spec, partial, final, argv):
    """Annotates and trims the trainer's JSON, then renames it to `final`."""
    result = _read_json(partial)
    if not isinstance(result, dict) or "test_accuracy" not in result:
        raise RuntimeError(f"{partial} is not a results JSON")
    result.pop("results_json", None)
    result.get("flags", {}).pop("results_json", None)
    history = result.get("history", {})
    result["history"] = {k: v for k, v in history.items() if k in _HISTORY_KEEP}
    result["benchmark"] = {
        "key": spec.key,
        **dataclasses.asdict(spec),
        "command": _display_command(argv, final),
        "date": _common.utc_timestamp(),
    }
    _common.write_json(final, result, indent=1, sort_keys=True)
    partial.unlink()
    return result


def execute(spec, runs_dir, log_dir, data_dir=None):
    """Runs one spec in a subprocess; returns its finished result dict.

    Raises:
        RuntimeError: If the trainer fails (the message has the tail of its
            log, which is kept in `log_dir`).
    """
    runs_dir = pathlib.Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    log_dir = pathlib.Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    partial = runs_dir / f"{spec.key}.partial.json"
    final = run_path(runs_dir, spec)
    argv = run_command(spec, str(partial), data_dir)
    log_path = log_dir / f"{spec.key}.log"
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(shlex.join(argv) + "\n")
        log.flush()
        status = subprocess.run(
            argv, stdout=log, stderr=subprocess.STDOUT, env=_child_env(spec),
            cwd=str(_ROOT), check=False,
        ).returncode
    if status != 0 or not partial.exists():
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        tail = "\n".join(lines[-15:])
        raise RuntimeError(f"{spec.key} failed (exit code {status}); log {log_path}:\n{tail}")
    return _finalize(spec, partial, final, argv)


# ----------------------------------------------------------------------
# Aggregation.


def load_runs(runs_dir):
    """Every finished run JSON of `runs_dir` (with a `benchmark` entry)."""
    runs = []
    for path in sorted(pathlib.Path(runs_dir).glob("*.json")):
        if path.name.endswith(".partial.json"):
            continue
        result = _read_json(path)
        if isinstance(result, dict) and "benchmark" in result and "test_accuracy" in result:
            runs.append(result)
    return runs


def _stats(values):
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def _compact(run):
    bench = run["benchmark"]
    structure = run.get("structure")
    return {
        "key": bench["key"],
        "model": bench["model"],
        "method": bench["method"],
        "structure": bench.get("structure"),
        "sparsity": bench["sparsity"],
        "seed": bench["seed"],
        "epochs": bench["epochs"],
        "steps_per_epoch": bench.get("steps_per_epoch"),
        "test_accuracy": run["test_accuracy"],
        "measured_sparsity": run.get("sparsity"),
        "train_flops": run.get("train_flops"),
        "inference_flops": run.get("inference_flops"),
        "wall_seconds": run.get("wall_seconds"),
        # Whether the trained masks hold the structure (the trainer's
        # `structures.check`); None for unstructured runs.
        "structure_holds": None if not structure else structure.get("holds"),
        "command": bench.get("command"),
        "flags": run.get("flags", {}),
    }


def aggregate(runs):
    """Groups runs by (model, epochs, steps_per_epoch, method, structure, sparsity).

    Args:
        runs: Run result dicts (as `load_runs` returns).

    Returns:
        A list of group dicts sorted by model, epochs, method (in `METHODS`
        order), structure (unstructured first, then in `STRUCTURES` order)
        and sparsity, each with `model`, `epochs`, `steps_per_epoch`,
        `method`, `structure` (a name in `STRUCTURES` or None), `sparsity`
        (None for dense), `n`, `seeds`, `test_accuracy` (`mean`, `std`
        (sample), `min`, `max`; fractions), the means
        `measured_sparsity`, `train_flops`, `inference_flops`,
        `wall_seconds` (None when not recorded), and `structure_holds`:
        how many of the `n` runs' trained masks hold the structure (None
        for unstructured groups).
    """
    groups = {}
    for run in runs:
        row = _compact(run)
        sparsity = None if row["method"] == "dense" else row["sparsity"]
        key = (row["model"], row["epochs"], row["steps_per_epoch"], row["method"],
               row["structure"], sparsity)
        groups.setdefault(key, []).append(row)
    result = []
    for key, rows in groups.items():
        model, epochs, steps_per_epoch, method, structure, sparsity = key
        rows.sort(key=lambda r: r["seed"])
        accuracy = _stats(r["test_accuracy"] for r in rows)
        means = {
            name: (_stats(r[name] for r in rows) or {}).get("mean")
            for name in ("measured_sparsity", "train_flops", "inference_flops", "wall_seconds")
        }
        holds = None if structure is None else sum(r["structure_holds"] is True for r in rows)
        result.append({
            "model": model, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
            "method": method, "structure": structure, "sparsity": sparsity, "n": len(rows),
            "seeds": [r["seed"] for r in rows], "test_accuracy": accuracy, **means,
            "structure_holds": holds,
        })

    def order(group):
        structure = group["structure"]
        return (MODELS.index(group["model"]) if group["model"] in MODELS else len(MODELS),
                group["model"], group["epochs"], group["steps_per_epoch"] or 0,
                METHODS.index(group["method"]),
                -1 if structure is None else list(STRUCTURES).index(structure),
                group["sparsity"] or 0.0)

    return sorted(result, key=order)


def _find(groups, setting, method, sparsity=None, structure=None):
    """The group of `method` (with `structure`) at `sparsity`, or None."""
    model, epochs, steps_per_epoch = setting
    for group in groups:
        if (group["model"], group["epochs"], group["steps_per_epoch"], group["method"],
                group["structure"]) != (model, epochs, steps_per_epoch, method, structure):
            continue
        if method == "dense" or math.isclose(group["sparsity"], sparsity):
            return group
    return None


def evaluate_targets(groups, setting):
    """The issue's targets on the LeNet-300-100 groups of `setting`.

    Args:
        groups: As `aggregate` returns.
        setting: `(model, epochs, steps_per_epoch)` of the runs to judge.

    Returns:
        A list of dicts: `name`, `status` (`"met"`, `"missed"` or
        `"pending"`), `detail` (the numbers, in percentage points, with the
        number of seeds of each mean) and `values` (`{method@sparsity:
        mean accuracy in points}`; a structured run's label has its
        structure: `rigl/block4x1@90`).
    """

    def mean(method, sparsity=None, structure=None):
        group = _find(groups, setting, method, sparsity, structure)
        if group is None:
            return None, 0
        return 100 * group["test_accuracy"]["mean"], group["n"]

    targets = []

    def add(name, needed, check, describe):
        values = {}
        counts = {}
        for method, sparsity, *structure in needed:
            structure = structure[0] if structure else None
            label = method if structure is None else f"{method}/{structure}"
            label = label if sparsity is None else f"{label}@{_percent(sparsity)}"
            values[label], counts[label] = mean(method, sparsity, structure)
        if any(v is None for v in values.values()):
            missing = ", ".join(k for k, v in values.items() if v is None)
            targets.append({"name": name, "status": "pending", "values": values,
                            "detail": f"no finished run yet for {missing}"})
            return
        numbers = ", ".join(f"{k} {v:.2f} (n={counts[k]})" for k, v in values.items())
        status = "met" if check(*values.values()) else "missed"
        targets.append({"name": name, "status": status, "values": values,
                        "detail": f"{numbers}; {describe(*values.values())}"})

    add("RigL > SET > static at 98%",
        [("rigl", 0.98), ("set", 0.98), ("static", 0.98)],
        lambda r, s, t: r > s + _EPS and s > t + _EPS,
        lambda r, s, t: f"RigL - SET {r - s:+.3f}, SET - static {s - t:+.3f}")
    add("RigL >= SET >= static at 95%",
        [("rigl", 0.95), ("set", 0.95), ("static", 0.95)],
        lambda r, s, t: r >= s - _EPS and s >= t - _EPS,
        lambda r, s, t: f"RigL - SET {r - s:+.3f}, SET - static {s - t:+.3f}")
    for sparsity, tolerance in ((0.9, 0.4), (0.98, 1.0)):
        add(f"RigL at {_percent(sparsity)}% within {tolerance} points of dense",
            [("rigl", sparsity), ("dense", None)],
            lambda r, d, tol=tolerance: d - r <= tol + _EPS,
            lambda r, d: f"dense - RigL {d - r:+.3f}")
    for sparsity in _DEFAULTS["sparsities"]:
        add(f"prune within 0.3 points of TFMOT at {_percent(sparsity)}%",
            [("prune", sparsity), ("tfmot", sparsity)],
            lambda p, t: abs(p - t) <= 0.3 + _EPS,
            lambda p, t: f"prune - TFMOT {p - t:+.3f}")
    block = STRUCTURES["block4x1"]
    add(f"RigL with {block.label} at 90% within 0.3 points of unstructured RigL at 90%",
        [("rigl", 0.9, "block4x1"), ("rigl", 0.9)],
        lambda b, u: u - b <= 0.3 + _EPS,
        lambda b, u: f"unstructured - block RigL {u - b:+.3f}")
    n_m = STRUCTURES["nm2of4"]
    add(f"RigL with {n_m.label} ({_percent(n_m.sparsity)}%, uniform) within 0.2 points "
        "of dense",
        [("rigl", n_m.sparsity, "nm2of4"), ("dense", None)],
        lambda r, d: d - r <= 0.2 + _EPS,
        lambda r, d: f"dense - 2:4 RigL {d - r:+.3f}")
    return targets


# ----------------------------------------------------------------------
# Reports.


def _settings(groups):
    seen = []
    for group in groups:
        setting = (group["model"], group["epochs"], group["steps_per_epoch"])
        if setting not in seen:
            seen.append(setting)
    return seen


def _setting_title(setting):
    model, epochs, steps_per_epoch = setting
    title = f"{_MODEL_LABELS.get(model, model)} on MNIST, {epochs} epoch{'s' * (epochs != 1)}"
    if steps_per_epoch is not None:
        title += f" of at most {steps_per_epoch} steps"
    return title


def _flops_cell(groups, setting, method, sparsities, name):
    cells = []
    for sparsity in sparsities:
        group = _find(groups, setting, method, sparsity)
        value = None if group is None else group[name]
        cells.append("—" if value is None else f"{value:.3f}")
    if all(c == "—" for c in cells):
        return "n/a" if method == "tfmot" else "—"
    return " / ".join(cells)


def _accuracy_cell(group):
    acc = group["test_accuracy"]
    return f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} ({group['n']})"


def _series_label(method, structure):
    if structure is None:
        return LABELS[method]
    label = f"{LABELS[method]}, {STRUCTURES[structure].label}"
    if STRUCTURES[structure].distribution != "erk":
        label += f" ({STRUCTURES[structure].distribution})"
    return label


def _structured_table(groups, setting):
    """The structured runs of `setting` next to their references (lines)."""
    structured = [g for g in groups if g["structure"] is not None
                  and (g["model"], g["epochs"], g["steps_per_epoch"]) == setting]
    if not structured:
        return []
    header = ["Method", "Structure", "Sparsity", "Distribution", "Test accuracy",
              "Reference", "Reference accuracy", "Difference (points)", "Train FLOPs",
              "Inference FLOPs", "Masks hold the structure"]
    lines = [f"### {_setting_title(setting)}: structured masks", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] * 4 + ["---:", ":---"] + ["---:"] * 5) + "|"]
    for group in structured:
        structure = STRUCTURES[group["structure"]]
        if structure.reference == "dense":
            reference = _find(groups, setting, "dense")
            reference_label = LABELS["dense"]
        else:
            reference = _find(groups, setting, group["method"], group["sparsity"])
            reference_label = f"{LABELS[group['method']]}, unstructured"
        if reference is None:
            difference = "—"
        else:
            delta = group["test_accuracy"]["mean"] - reference["test_accuracy"]["mean"]
            difference = f"{100 * delta:+.2f}"
        distribution = structure.distribution
        cells = [
            LABELS[group["method"]], structure.label, f"{_percent(group['sparsity'])}%",
            distribution.upper() if distribution == "erk" else distribution,
            _accuracy_cell(group), reference_label,
            "—" if reference is None else _accuracy_cell(reference), difference,
        ]
        for name in ("train_flops", "inference_flops"):
            cells.append("—" if group[name] is None else f"{group[name]:.3f}")
        cells.append(f"{group['structure_holds']} of {group['n']}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_tables(groups):
    """Markdown tables per (model, epochs): methods x sparsities, then structures.

    In the first table, cells are `mean ± std (n)` of the test accuracy in
    percent over `n` seeds (unstructured masks); `dense` (which has no
    sparsity) repeats its value in every column. The FLOPs columns list
    the mean train / inference FLOPs relative to dense for the sparsities
    in column order. A second table, when there are structured runs, has
    one row per (method, structure, sparsity) with its reference (the
    unstructured method at the same sparsity, or dense: `Structure.reference`),
    the difference of the means, the FLOPs and how many runs' trained masks
    hold the structure.

    Args:
        groups: As `aggregate` returns.

    Returns:
        A markdown string (empty if there are no groups).
    """
    parts = []
    for setting in _settings(groups):
        in_setting = [g for g in groups if g["structure"] is None
                      and (g["model"], g["epochs"], g["steps_per_epoch"]) == setting]
        structured = _structured_table(groups, setting)
        if not in_setting:
            parts.append("\n".join(structured))
            continue
        sparsities = sorted({g["sparsity"] for g in in_setting if g["sparsity"] is not None})
        if not sparsities:
            sparsities = list(_DEFAULTS["sparsities"])
        percents = [f"{_percent(s)}%" for s in sparsities]
        header = (["Method"] + percents
                  + [f"Train FLOPs ({' / '.join(percents)})",
                     f"Inference FLOPs ({' / '.join(percents)})"])
        lines = [f"### {_setting_title(setting)}", "",
                 "| " + " | ".join(header) + " |",
                 "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
        for method in METHODS:
            if not any(g["method"] == method for g in in_setting):
                continue
            cells = [LABELS[method]]
            for sparsity in sparsities:
                group = _find(groups, setting, method, sparsity)
                if group is None:
                    cells.append("—")
                    continue
                cells.append(_accuracy_cell(group))
            for name in ("train_flops", "inference_flops"):
                cells.append(_flops_cell(groups, setting, method, sparsities, name))
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
        if structured:
            parts.append("\n".join(structured))
    return "\n\n".join(parts)


def markdown_targets(targets):
    """The targets as a markdown list."""
    marks = {"met": "met", "missed": "**missed**", "pending": "pending"}
    return "\n".join(f"- {marks[t['status']]}: {t['name']} ({t['detail']})" for t in targets)


def _plot_range(groups):
    """`(bottom, top)` of the y axis (points) for the groups of one panel."""
    means = [100 * g["test_accuracy"]["mean"] for g in groups]
    highs = [100 * (g["test_accuracy"]["mean"] + g["test_accuracy"]["std"]) for g in groups]
    lows = [100 * (g["test_accuracy"]["mean"] - g["test_accuracy"]["std"]) for g in groups]
    dense = [m for g, m in zip(groups, means) if g["method"] == "dense"]
    reference = dense[0] if dense else max(means)
    bottom = max(min(lows) - 0.3, reference - _PLOT_SPAN)
    return bottom, max(highs) + 0.3


def _series():
    """`(method, structure)` of every line of the plot, in legend order."""
    return ([(m, None) for m in METHODS]
            + [(m, s) for m in _STRUCTURED_METHODS for s in STRUCTURES])


def write_plot(groups, path):
    """Writes the accuracy-vs-sparsity PNG; returns its path, or None.

    One panel per (model, epochs); a line with ± std error bars per method
    and per (method, structure) (structured: dotted, square markers), all
    slightly offset sideways so the bars do not hide each other; dense as
    a horizontal line with a ± std band. The x axis has the sparsities of
    the panel's runs (2:4 adds 50%). The y axis spans at most `_PLOT_SPAN`
    points below dense; a mean below that is marked by an arrow at the
    bottom edge with its value. Returns None (and writes nothing) when
    matplotlib is not installed or there is nothing to plot.
    """
    try:
        import matplotlib  # pylint: disable=g-import-not-at-top
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    settings = _settings(groups)
    if not settings:
        return None
    fig, axes = plt.subplots(1, len(settings), figsize=(6.4 * len(settings), 4.6),
                             squeeze=False)
    series = _series()
    colors = dict(zip(series, plt.get_cmap("tab10").colors))
    sparse_series = [s for s in series if s != ("dense", None)]

    def offset(method, structure):
        index = sparse_series.index((method, structure))
        return 0.06 * (index - (len(sparse_series) - 1) / 2)

    for ax, setting in zip(axes[0], settings):
        in_setting = [g for g in groups
                      if (g["model"], g["epochs"], g["steps_per_epoch"]) == setting]
        sparsities = sorted({g["sparsity"] for g in in_setting if g["sparsity"] is not None})
        positions = {s: i for i, s in enumerate(sparsities)}
        for method, structure in series:
            rows = [g for g in in_setting
                    if (g["method"], g["structure"]) == (method, structure)]
            if not rows:
                continue
            color, label = colors[(method, structure)], _series_label(method, structure)
            if method == "dense":
                acc = rows[0]["test_accuracy"]
                mean, std = 100 * acc["mean"], 100 * acc["std"]
                ax.axhline(mean, color=color, linestyle="--", label=f"{label} ({mean:.2f})")
                if std > 0:
                    ax.axhspan(mean - std, mean + std, color=color, alpha=0.15)
                continue
            xs = [positions[g["sparsity"]] + offset(method, structure) for g in rows]
            ys = [100 * g["test_accuracy"]["mean"] for g in rows]
            errors = [100 * g["test_accuracy"]["std"] for g in rows]
            ax.errorbar(xs, ys, yerr=errors, marker="o" if structure is None else "s",
                        markersize=4, capsize=3, color=color, label=label,
                        linestyle="-" if structure is None else ":")
        bottom, top = _plot_range(in_setting)
        ax.set_ylim(bottom, top)
        for group in in_setting:
            value = 100 * group["test_accuracy"]["mean"]
            if group["method"] == "dense" or value >= bottom:
                continue
            key = (group["method"], group["structure"])
            ax.annotate(
                f"{_series_label(*key)}: {value:.1f}", color=colors[key],
                xy=(positions[group["sparsity"]] + offset(*key), bottom),
                xytext=(0, 18), textcoords="offset points", ha="center", fontsize=7,
                arrowprops={"arrowstyle": "->", "color": colors[key]},
            )
        ax.set_xticks(range(len(sparsities)))
        ax.set_xticklabels([f"{_percent(s)}%" for s in sparsities])
        ax.set_xlim(-0.5, max(len(sparsities) - 0.5, 0.5))
        ax.set_xlabel("sparsity (ERK unless marked)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(_setting_title(setting) + "\nmean ± std over seeds", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _code_digests():
    # The runs depend on the library and on rigl_keras.experiments (the CLI).
    root = _ROOT / "rigl_keras"
    files = sorted(root.rglob("*.py")) + [_TFMOT_SCRIPT, pathlib.Path(__file__).resolve()]
    return _common.file_digests(files, _ROOT)


def _machine():
    return {
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": _common.load_average(ndigits=None),
    }


def build_report(config, plan, failures=()):
    """Aggregates `config.runs_dir` into the report dict (not written)."""
    runs = load_runs(config.runs_dir)
    groups = aggregate(runs)
    main_setting = ("lenet300_100", config.epochs, config.steps_per_epoch)
    targets = evaluate_targets(groups, main_setting)
    done = [s.key for s in plan if finished(config.runs_dir, s)]
    missing = [s.key for s in plan if s.key not in set(done)]
    command = _common.command_line("benchmarks.accuracy", config.argv)
    report = {
        "benchmark": "accuracy",
        "command": command,
        "date": _common.utc_timestamp(),
        "config": {
            "models": list(config.models),
            "methods": list(config.methods),
            "sparsities": list(config.sparsities),
            "epochs": config.epochs,
            "lenet5_methods": list(config.lenet5_methods),
            "lenet5_sparsities": list(config.lenet5_sparsities),
            "lenet5_epochs": config.lenet5_epochs,
            "seeds": list(config.seeds),
            "steps_per_epoch": config.steps_per_epoch,
            "distribution": "erk",
            "structures": {
                name: {"label": STRUCTURES[name].label,
                       STRUCTURES[name].flag: list(STRUCTURES[name].value),
                       "distribution": STRUCTURES[name].distribution,
                       "reference": STRUCTURES[name].reference}
                for name in config.structures
            },
            "structured_methods": list(_STRUCTURED_METHODS),
            "block_sparsities": list(config.block_sparsities),
            "dataset": _DATASET,
            "shared_flags": shared_flags(),
            "runs_dir": _relative(config.runs_dir),
        },
        "machine": _machine(),
        "code": _code_digests(),
        "progress": {
            "planned": len(plan),
            "finished": len(done),
            "missing": missing,
            "failed_this_invocation": list(failures),
            "runs_in_dir": len(runs),
        },
        "targets": targets,
        "groups": groups,
        "runs": [_compact(r) for r in runs],
    }
    report["markdown"] = render_markdown(report)
    return report


def render_markdown(report):
    """The whole `accuracy.md` text of a report."""
    progress = report["progress"]
    shared = report["config"]["shared_flags"]
    setup = (
        f"batch {shared['batch_size']}, SGD (momentum {shared['momentum']}) with peak "
        f"learning rate {shared['learning_rate']} and {shared['lr_schedule']} decay, "
        f"weight decay {shared['weight_decay']}, ERK sparsity, mask updates / pruning "
        f"steps every {shared['update_freq']} steps until {shared['end_fraction']:.0%} of "
        f"training (initial drop fraction {shared['drop_fraction']})"
    )
    lines = [
        "# Accuracy of sparse training methods on MNIST",
        "",
        f"Produced by `{report['command']}` ({report['date']}); "
        f"{progress['finished']} of {progress['planned']} planned runs finished"
        + (" (the sweep is resumable: run the same command to finish it)."
           if progress["missing"] else "."),
        "",
        f"All runs: `python -m rigl_keras.experiments.train` defaults, i.e. {setup}. "
        "Cells: test accuracy in %, mean ± sample std over the number of seeds "
        "in parentheses. FLOPs: theoretical, relative to dense training / "
        "inference of the full model (`rigl_keras.flops`). Dense has no "
        "sparsity: its value repeats in every column. Pruning (TFMOT) is "
        "`tfmot.sparsity.keras.prune_low_magnitude` with the same per-layer "
        "ERK targets and pruning schedule (`benchmarks/accuracy_tfmot.py`, "
        "tf_keras); its FLOPs are those of Pruning (ours) by construction "
        "and are not recomputed (n/a). Structured masks (RigL, LeNet-300-100): "
        "`--block_shape 4,1` (`rigl_keras.structures.Block((4, 1))`, ERK) and "
        "`--n_m 2,4` (`NM(2, 4)`, which needs `--sparsity 0.5 --distribution "
        "uniform`), otherwise the same flags; the last column counts the runs "
        "whose trained masks pass `rigl_keras.structures.check`.",
        "",
        markdown_tables(report["groups"]) or "_No finished runs yet._",
        "",
        "### Targets (LeNet-300-100, percentage points)",
        "",
        markdown_targets(report["targets"]),
        "",
        "![Test accuracy vs sparsity](accuracy.png)",
        "",
    ]
    return "\n".join(lines)


def write_outputs(report, output_dir):
    """Writes accuracy.json, accuracy.md and accuracy.png into `output_dir`."""
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plot = write_plot(report["groups"], output_dir / "accuracy.png")
    report["plot"] = None if plot is None else plot.name
    (output_dir / "accuracy.md").write_text(report["markdown"], encoding="utf-8")
    _common.write_json(output_dir / "accuracy.json", report, indent=1)


# ----------------------------------------------------------------------
# Driver.


def _list(kind, allowed=None):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            values = [kind(t) for t in items]
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error
        if not values or len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"need distinct values, got {text!r}")
        if allowed is not None and any(v not in allowed for v in values):
            raise argparse.ArgumentTypeError(f"values must be in {allowed}, got {text!r}")
        return values
    return parse


def _sparsity_list(text):
    values = _list(float)(text)
    if any(not 0.0 < v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"sparsities must be in (0, 1), got {text!r}")
    return values


def _structure_list(text):
    if text.strip() == "none":
        return []
    return _list(str, tuple(STRUCTURES))(text)


def parse_args(argv=None):
    """Parses the sweep's command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", type=_list(str, MODELS), default=list(MODELS))
    parser.add_argument("--methods", type=_list(str, METHODS), default=list(METHODS))
    parser.add_argument("--sparsities", type=_sparsity_list,
                        default=list(_DEFAULTS["sparsities"]),
                        help="LeNet-300-100 sparsities.")
    parser.add_argument("--epochs", type=_common.positive_int, default=_DEFAULTS["epochs"],
                        help="LeNet-300-100 epochs (all methods).")
    parser.add_argument("--lenet5_methods", type=_list(str, METHODS),
                        default=list(_DEFAULTS["lenet5_methods"]))
    parser.add_argument("--lenet5_sparsities", type=_sparsity_list,
                        default=list(_DEFAULTS["lenet5_sparsities"]))
    parser.add_argument("--lenet5_epochs", type=_common.positive_int,
                        default=_DEFAULTS["lenet5_epochs"])
    parser.add_argument("--structures", type=_structure_list,
                        default=list(_DEFAULTS["structures"]),
                        help=f"Structured RigL runs on LeNet-300-100: names in "
                             f"{', '.join(STRUCTURES)}, or 'none'.")
    parser.add_argument("--block_sparsities", type=_sparsity_list,
                        default=list(_DEFAULTS["block_sparsities"]),
                        help="Sparsities of the block-structured runs.")
    parser.add_argument("--seeds", type=_list(int), default=list(_DEFAULTS["seeds"]))
    parser.add_argument("--steps_per_epoch", type=_common.positive_int, default=None,
                        help="Cap on the steps of an epoch (quick checks only).")
    parser.add_argument("--data_dir", default=None,
                        help="TFDS folder (default: TFDS_DATA_DIR or TFDS's).")
    parser.add_argument("--runs_dir", default=str(_DEFAULT_RUNS_DIR))
    parser.add_argument("--output_dir", default=str(_RESULTS_DIR),
                        help="Where accuracy.json, .md and .png go.")
    parser.add_argument("--log_dir",
                        default=os.path.join(tempfile.gettempdir(), "rigl_keras_accuracy_logs"),
                        help="Per-run trainer logs.")
    parser.add_argument("--max_runs", type=_common.positive_int, default=None,
                        help="Stop after this many new runs.")
    parser.add_argument("--only_aggregate", action="store_true",
                        help="Train nothing; rewrite the outputs from the run JSONs.")
    parser.add_argument("--dry_run", action="store_true",
                        help="Print the plan and which runs are finished; write nothing.")
    return parser.parse_args(argv)


def _plan(config):
    return plan_runs(
        config.models, config.methods, config.sparsities, config.epochs, config.seeds,
        lenet5_methods=config.lenet5_methods, lenet5_sparsities=config.lenet5_sparsities,
        lenet5_epochs=config.lenet5_epochs, steps_per_epoch=config.steps_per_epoch,
        structures=config.structures, block_sparsities=config.block_sparsities,
    )


def _clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def main(argv=None):
    """Runs the missing runs of the plan, then writes the outputs.

    Args:
        argv: Arguments without the program name; `None` reads `sys.argv`.

    Returns:
        The report dict (`None` for `--dry_run`), with `executed` and
        `skipped`: the keys of the runs trained and skipped by this call.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config = parse_args(argv)
    config.argv = argv
    plan = _plan(config)
    todo = [s for s in plan if not finished(config.runs_dir, s)]
    skipped = [s.key for s in plan if s not in todo]
    if config.dry_run:
        for spec in plan:
            print(f"{'done' if spec.key in skipped else 'todo'}  {spec.key}")
        print(f"{len(skipped)} of {len(plan)} runs finished, {len(todo)} to do")
        return None
    executed, failures = [], []
    if not config.only_aggregate:
        print(f"{len(skipped)} of {len(plan)} runs already finished; "
              f"{len(todo)} to run", flush=True)
        if config.max_runs is not None:
            todo = todo[:config.max_runs]
        start = time.perf_counter()
        for index, spec in enumerate(todo, 1):
            run_start = time.perf_counter()
            try:
                result = execute(spec, config.runs_dir, config.log_dir, config.data_dir)
            except RuntimeError as error:
                failures.append(spec.key)
                print(f"[{index}/{len(todo)}] FAILED {error}", flush=True)
                continue
            executed.append(spec.key)
            elapsed = time.perf_counter() - start
            eta = elapsed / index * (len(todo) - index)
            print(f"[{index}/{len(todo)}] {spec.key}: test accuracy "
                  f"{result['test_accuracy']:.4f}, sparsity {result['sparsity']:.4f}, "
                  f"{time.perf_counter() - run_start:.0f} s (elapsed {_clock(elapsed)}, "
                  f"remaining ~{_clock(eta)})", flush=True)
            # Keep the outputs current: the sweep may be stopped at any time.
            write_outputs(build_report(config, plan, failures), config.output_dir)
    report = build_report(config, plan, failures)
    write_outputs(report, config.output_dir)
    report["executed"], report["skipped"] = executed, skipped
    print(report["markdown"])
    print(f"Wrote {config.output_dir}/accuracy.json, accuracy.md, accuracy.png")
    return report


if __name__ == "__main__":
    main()
