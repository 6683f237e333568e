r"""The deployment table: size and TFLite latency of models trained sparse.

Trains LeNet-300-100 (`rigl_keras.experiments.models.lenet300_100`:
flatten, 300, 100, 10 logits) on MNIST for a short time, four ways (`--variants`):

* `dense`: no mask;
* `unstructured`: RigL at 90% (`--sparsity`), ERK distribution;
* `block4x1`: RigL at 90%, ERK, `structure=rigl_keras.structures.Block((4,
  1))`: 4 consecutive inputs of one unit, TFLite's 1x4 block of float32
  `FULLY_CONNECTED`;
* `block16x1`: the same with `Block((16, 1))` on fc1 (TFLite's 1x16 block
  of int8 `FULLY_CONNECTED`; 88% of the weights) and `Block((4, 1))` on
  fc2 and fc3, whose 300 and 100 inputs 16 does not divide;

with the training CLI's defaults
(`rigl_keras.experiments.train.TrainConfig`): batch 128, SGD with momentum 0.9, learning rate 0.1 with cosine decay to 0,
weight decay 1e-4, mask updates every 100 steps until 75% of training,
initial drop fraction 0.3. Then it exports each model with
`rigl_keras.export_tflite` in every format of `--formats`:

* `float32`: `quantize=None` (sparse weight encoding asked for, as by
  default);
* `dynamic`: `quantize="dynamic"` (int8 weights, float activations);
* `int8`: `quantize="int8"`, calibrated on 500 training images (full
  integer; float32 input and output);
* `int8_dense`: `quantize="int8", sparse=False` (sparse models only): the
  int8 file XNNPack runs.

For each file it records the size, the sparse-encoded tensors (shape, type,
block), the ops (without delegates; `NAME[sparse]` for an op reading a
sparse-encoded weight) and those left once XNNPack took its share, the
warnings of `export_tflite`, the test accuracy of the file (every
`--eval_examples` test image through the interpreter without delegates)
and its largest output difference to the Keras model, and single-example
latency with 1 thread (`--threads`) in two settings: LiteRT's default
(XNNPack delegate) and builtin kernels only
(`experimental_op_resolver_type=BUILTIN_WITHOUT_DEFAULT_DELEGATES`). A
setting that fails (XNNPack on sparse int8 weights: "failed to delegate
FULLY_CONNECTED node") is recorded as failed with its message, not timed.

Latency: all interpreters of the run are interleaved, round by round in a
rotating order, so that the drift of a shared machine hits all alike; each
of `--rounds` rounds times `--runs` calls of `set_tensor + invoke +
get_tensor` of each interpreter on one test image (Python's overhead of
about a microsecond included); the figure is the median over all of them.

Targets: the 4x1-block float32 file at least 2x faster than the dense
float32 file (checked with XNNPack and with builtin kernels), and every
file runs in at least one setting, with a warning from `export_tflite`
for every setting that fails.

Data: MNIST from TFDS (`--data mnist`; `TFDS_DATA_DIR` or `--data_dir`,
never downloaded) or, for tests, random images with labels from a fixed
random linear map (`--data synthetic`).

Usage:

    TFDS_DATA_DIR=/path/to/tfds python -m benchmarks.export
    python -m benchmarks.export --data synthetic --steps 30 --rounds 2 \
        --runs 10 --output /tmp/export.json

The JSON written to `--output` (default `benchmarks/results/export.json`)
holds the command, the date, machine facts with load averages (the machine
may be shared), every measurement, the targets and the markdown table,
which also goes to the `.md` file next to it and to stdout.
"""

import argparse
import collections
import gzip
import importlib.metadata
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

from benchmarks import _common  # pylint: disable=wrong-import-position
import rigl_keras  # pylint: disable=wrong-import-position
from rigl_keras import structures  # pylint: disable=wrong-import-position
from rigl_keras.experiments import models  # pylint: disable=wrong-import-position

try:
    from ai_edge_litert import interpreter as litert  # pylint: disable=wrong-import-position
except ImportError:  # pragma: no cover - depends on the environment
    litert = None

_DEFAULT_OUTPUT = pathlib.Path(__file__).resolve().parent / "results" / "export.json"

# name -> (structure, sparse)
_VARIANTS = {
    "dense": (None, False),
    "unstructured": (None, True),
    "block4x1": (structures.Block((4, 1)), True),
    # 16 divides fc1's 784 inputs, not fc2's 300 nor fc3's 100.
    "block16x1": (
        {"fc1": structures.Block((16, 1)), "fc2": structures.Block((4, 1)),
         "fc3": structures.Block((4, 1))},
        True,
    ),
}
# name -> export_tflite arguments (representative_dataset added for int8)
_FORMATS = {
    "float32": {},
    "dynamic": {"quantize": "dynamic"},
    "int8": {"quantize": "int8"},
    "int8_dense": {"quantize": "int8", "sparse": False},
}
_SETTINGS = ("xnnpack", "builtin")
_CALIBRATION_EXAMPLES = 500
_TARGET_SPEEDUP = 2.0
_ENV_VARS = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_CPP_MIN_LOG_LEVEL", "TFDS_DATA_DIR")

# The training CLI's defaults (rigl_keras.experiments.train.TrainConfig).
_BATCH_SIZE = 128
_LEARNING_RATE = 0.1
_MOMENTUM = 0.9
_WEIGHT_DECAY = 1e-4
_END_FRACTION = 0.75
_DROP_FRACTION = 0.3

_NOTES = [
    "Sparse encoding (TensorFlow's DenseToSparse pass): a constant FULLY_CONNECTED or "
    "CONV_2D weight with at least 30% zeros is stored sparse. If its zeros fill whole "
    "1x4 blocks (float32) or 1x16 blocks (int8) of one output and consecutive inputs, "
    "it is stored in blocks and TFLite's sparse FULLY_CONNECTED kernel reads it "
    "(FULLY_CONNECTED[sparse]); otherwise it is stored element-wise and a DENSIFY op "
    "rebuilds the dense weight at the first invocation (DENSIFY[sparse]).",
    "XNNPack runs sparse float32 weights densified (dense speed) and leaves a "
    "block-sparse FULLY_CONNECTED to the builtin sparse kernel; on sparse int8 weights "
    "it fails in allocate_tensors()/invoke() ('failed to delegate FULLY_CONNECTED "
    "node'), which export_tflite warns about, naming the interpreter setting that runs "
    "the file (builtin kernels).",
    "Dynamic-range quantization leaves weights under 1024 entries (fc3 when sparse: "
    "it is 100x10) in float32.",
    "Convolutions have no sparse kernel in TFLite on x86 (XNNPack's sparse inference "
    "is for 1x1 convolutions on ARM): this table has fully connected layers only.",
    "The model's Flatten (free batch dimension) becomes SHAPE, STRIDED_SLICE, PACK and "
    "RESHAPE ops, which XNNPack leaves to the interpreter; they cost the same in every "
    "row.",
    "Latency: batch 1, medians over rounds x runs interleaved calls; the machine is "
    "shared (see the load averages), so absolute numbers drift, compare rows of one run.",
]


# ----------------------------------------------------------------------
# Data.


def load_data(args):
    """`(train dataset (repeating), test images, test labels, calibration images)`."""
    if args.data == "synthetic":
        rng = np.random.default_rng(args.seed)
        projection = rng.normal(size=(784, 10)).astype("float32")

        def examples(n):
            x = rng.random((n, 28, 28, 1), dtype=np.float32)
            return x, np.argmax((x.reshape(n, -1) - 0.5) @ projection, axis=1)

        x_train, y_train = examples(max(_BATCH_SIZE * 8, _CALIBRATION_EXAMPLES))
        x_test, y_test = examples(args.eval_examples)
        train = (
            tf.data.Dataset.from_tensor_slices((x_train, y_train))
            .shuffle(len(x_train), seed=args.seed)
            .repeat()
            .batch(_BATCH_SIZE)
        )
        return train, x_test, y_test, x_train[:_CALIBRATION_EXAMPLES]
    from rigl_keras.experiments import data  # pylint: disable=import-outside-toplevel

    train = data.load_dataset(
        "mnist", "train", _BATCH_SIZE, data_dir=args.data_dir, seed=args.seed, repeat=True
    )
    test = data.load_dataset(
        "mnist", "test", 1000, data_dir=args.data_dir, shuffle=False, cache=False
    )
    x_test, y_test = (np.concatenate(parts) for parts in zip(*test.as_numpy_iterator()))
    calibration = data.load_dataset(
        "mnist", f"train[:{_CALIBRATION_EXAMPLES}]", _CALIBRATION_EXAMPLES,
        data_dir=args.data_dir, shuffle=False, cache=False,
    )
    (x_calibration, _), = calibration.as_numpy_iterator()
    n = args.eval_examples
    return train, x_test[:n], y_test[:n], x_calibration


# ----------------------------------------------------------------------
# Training.


def train_model(variant, train, args):
    """LeNet-300-100 trained `args.steps` steps as `variant`.

    Returns:
        The model and the last values of its training logs.
    """
    structure, sparse = _VARIANTS[variant]
    keras.utils.set_random_seed(args.seed)
    model = models.lenet300_100(masked=sparse, weight_decay=_WEIGHT_DECAY)
    schedule = keras.optimizers.schedules.CosineDecay(_LEARNING_RATE, args.steps)
    model.compile(
        keras.optimizers.SGD(schedule, momentum=_MOMENTUM),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    callbacks = []
    if sparse:
        callbacks.append(rigl_keras.RigLCallback(
            sparsity=args.sparsity, distribution="erk", update_freq=args.update_freq,
            drop_fraction=_DROP_FRACTION, end_step=int(_END_FRACTION * args.steps),
            seed=args.seed, structure=structure,
        ))
    history = model.fit(train, steps_per_epoch=args.steps, epochs=1, verbose=0,
                        shuffle=False, callbacks=callbacks)
    logs = {k: float(v[-1]) for k, v in history.history.items()}
    # itop_rate: the fraction of entries ever active (above 1 - sparsity
    # once RigL has grown connections).
    kept = ("loss", "accuracy", "sparsity", "itop_rate")
    return model, {k: logs[k] for k in kept if k in logs}


def model_facts(variant, model, x_test, y_test):
    """Sparsity, structure check and Keras test accuracy of a trained model."""
    structure, sparse = _VARIANTS[variant]
    report = rigl_keras.sparsity_report(model, structure=structure)
    logits = model.predict(x_test, batch_size=1000, verbose=0)
    return {
        "variant": variant,
        "structure": structures.serialize(structure),
        "distribution": "erk" if sparse else None,
        "sparsity": report.sparsity if sparse else 0.0,
        "layer_sparsity": {r["name"]: round(r["sparsity"], 4) for r in report[:-1]},
        "structure_holds": report[-1]["structure_holds"],
        "keras_test_accuracy": float(np.mean(np.argmax(logits, 1) == y_test)),
    }


# ----------------------------------------------------------------------
# TFLite files.


def _gzip_bytes(data):
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def _interpreter(path, setting, threads):
    resolver = (
        litert.OpResolverType.AUTO
        if setting == "xnnpack"
        else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter = litert.Interpreter(
        model_path=str(path), num_threads=threads, experimental_op_resolver_type=resolver
    )
    interpreter.allocate_tensors()
    return interpreter


def _run_once(interpreter, x):
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _working_interpreter(path, setting, threads, x):
    """`(interpreter, None)` if `path` runs in `setting`, else `(None, message)`."""
    try:
        interpreter = _interpreter(path, setting, threads)
        _run_once(interpreter, x)
    except RuntimeError as error:
        return None, f"{type(error).__name__}: {error}"
    return interpreter, None


def sparse_tensors(interpreter):
    """The sparse-encoded tensors: name, shape, type and block of each."""
    found = []
    for detail in interpreter.get_tensor_details():
        params = detail.get("sparsity_parameters")
        if not params:
            continue
        blocked = len(params["block_map"]) > 0
        found.append({
            "name": detail["name"].split(";")[0],
            "shape": [int(d) for d in detail["shape"]],
            "dtype": np.dtype(detail["dtype"]).name,
            "block": [1, int(params["dim_metadata"][-1]["dense_size"])] if blocked else None,
        })
    return found


def op_counts(interpreter):
    """Op counts of a `.tflite` file (no delegate): `NAME[sparse]` if it reads one."""
    sparse = {
        d["index"] for d in interpreter.get_tensor_details() if d.get("sparsity_parameters")
    }
    ops = collections.Counter()
    for op in interpreter._get_ops_details():  # pylint: disable=protected-access
        name = op["op_name"]
        if any(int(i) in sparse for i in op["inputs"]):
            name += "[sparse]"
        ops[name] += 1
    return dict(sorted(ops.items()))


def executed_ops(interpreter):
    """Op counts of the nodes that run once delegates took their share.

    The interpreter keeps the nodes a delegate replaced in its node list
    (only its execution plan drops them), so walk back from the outputs: a
    tensor produced by a `DELEGATE` node comes from it, not from the
    original node it replaced.
    """
    ops = interpreter._get_ops_details()  # pylint: disable=protected-access
    producer = {}
    for op in ops:
        for tensor in op["outputs"]:
            if op["op_name"] == "DELEGATE" or int(tensor) not in producer:
                producer[int(tensor)] = op
    executed = {}
    pending = [int(d["index"]) for d in interpreter.get_output_details()]
    while pending:
        op = producer.get(pending.pop())
        if op is None or op["index"] in executed:
            continue
        executed[op["index"]] = op["op_name"]
        pending.extend(int(t) for t in op["inputs"] if t >= 0)
    return dict(sorted(collections.Counter(executed.values()).items()))


def _predict_tflite(interpreter, x):
    return np.stack([_run_once(interpreter, example[np.newaxis])[0] for example in x])


def export_file(model, variant, fmt, calibration, workdir):
    """Exports one file; returns its path and `export_tflite`'s warnings."""
    kwargs = dict(_FORMATS[fmt])
    if kwargs.get("quantize") == "int8":
        kwargs["representative_dataset"] = calibration
    path = os.path.join(workdir, f"{variant}_{fmt}.tflite")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rigl_keras.export_tflite(model, path, **kwargs)
    messages = [
        str(w.message) for w in caught
        if issubclass(w.category, UserWarning) and "export_tflite" in str(w.message)
    ]
    return path, messages


def measure_file(path, model_logits, x_test, y_test, threads):
    """Size, tensors, ops, accuracy and the two settings of one file."""
    data = pathlib.Path(path).read_bytes()
    builtin = _interpreter(path, "builtin", threads)
    outputs = _predict_tflite(builtin, x_test)
    row = {
        "bytes": len(data),
        "gzip_bytes": _gzip_bytes(data),
        "sparse_tensors": sparse_tensors(builtin),
        "ops": op_counts(builtin),
        "tflite_test_accuracy": float(np.mean(np.argmax(outputs, 1) == y_test)),
        "max_abs_diff_to_keras": float(np.abs(outputs - model_logits).max()),
    }
    interpreters = {}
    for setting in _SETTINGS:
        interpreter, error = _working_interpreter(path, setting, threads, x_test[:1])
        row[setting] = {"runs": error is None, "error": error}
        if interpreter is not None:
            interpreters[setting] = interpreter
            if setting == "xnnpack":
                row["ops_with_xnnpack"] = executed_ops(interpreter)
    return row, interpreters


# ----------------------------------------------------------------------
# Latency.


def time_interpreters(interpreters, x, rounds, runs, warmup=20):
    """Median single-example latency (microseconds) of each interpreter.

    The interpreters are interleaved: each round times `runs` calls of each,
    in an order rotated by one per round, so slow drift of a shared machine
    hits all alike.
    """
    keys = list(interpreters)
    for key in keys:
        for _ in range(warmup):
            _run_once(interpreters[key], x)
    samples = {key: [] for key in keys}
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[: r % len(keys)]
        for key in order:
            interpreter = interpreters[key]
            input_index = interpreter.get_input_details()[0]["index"]
            output_index = interpreter.get_output_details()[0]["index"]
            times = samples[key]
            for _ in range(runs):
                start = time.perf_counter_ns()
                interpreter.set_tensor(input_index, x)
                interpreter.invoke()
                interpreter.get_tensor(output_index)
                times.append(time.perf_counter_ns() - start)
    return {
        key: {
            "median_us": statistics.median(values) / 1e3,
            "p10_us": float(np.percentile(values, 10)) / 1e3,
            "p90_us": float(np.percentile(values, 90)) / 1e3,
            "samples": len(values),
        }
        for key, values in samples.items()
    }


# ----------------------------------------------------------------------
# Machine.


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_facts():
    """Facts about the machine and software that affect the numbers."""
    return {
        **_common.cpu_facts(),
        "load_average_at_start": _common.load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "ai_edge_litert": _version("ai-edge-litert"),
        "rigl_keras": rigl_keras.__version__,
        "env": _common.env_vars(_ENV_VARS),
    }


# ----------------------------------------------------------------------
# Benchmark.


def _formats_of(variant, formats):
    sparse = _VARIANTS[variant][1]
    return [f for f in formats if sparse or f != "int8_dense"]


def run(args):
    """Trains, exports and measures; returns `(models, files, load averages)`."""
    if litert is None:
        raise SystemExit(
            "benchmarks/export.py needs the LiteRT interpreter: "
            "pip install ai-edge-litert (the rigl_keras[tflite] extra)"
        )
    train, x_test, y_test, calibration = load_data(args)
    x_latency = x_test[:1]
    model_rows, files, interpreters = [], [], {}
    with tempfile.TemporaryDirectory(prefix="rigl_export_bench_") as workdir:
        for variant in args.variants:
            print(f"[train] {variant}: {args.steps} steps", file=sys.stderr, flush=True)
            started = time.time()
            model, train_logs = train_model(variant, train, args)
            facts = model_facts(variant, model, x_test, y_test)
            facts["final_train_logs"] = train_logs
            facts["train_seconds"] = round(time.time() - started, 1)
            model_rows.append(facts)
            logits = model.predict(x_test, batch_size=1000, verbose=0)
            for fmt in _formats_of(variant, args.formats):
                print(f"[export] {variant} {fmt}", file=sys.stderr, flush=True)
                path, messages = export_file(model, variant, fmt, calibration, workdir)
                row, working = measure_file(path, logits, x_test, y_test, args.threads)
                row = {"variant": variant, "format": fmt, **row, "export_warnings": messages}
                files.append(row)
                for setting, interpreter in working.items():
                    interpreters[(len(files) - 1, setting)] = interpreter
        load_before = _common.load_average()
        print(f"[latency] {len(interpreters)} interpreters, {args.rounds} rounds x "
              f"{args.runs} runs", file=sys.stderr, flush=True)
        timings = time_interpreters(interpreters, x_latency, args.rounds, args.runs)
        load_after = _common.load_average()
    for (index, setting), timing in timings.items():
        files[index][setting].update(timing)
    _add_ratios(files)
    return model_rows, files, {"before": load_before, "after": load_after}


def _add_ratios(files):
    """Each file's median latency over the dense float32 file's, per setting."""
    base = next((f for f in files if (f["variant"], f["format"]) == ("dense", "float32")), None)
    for row in files:
        for setting in _SETTINGS:
            if base is None or "median_us" not in row[setting] or "median_us" not in base[setting]:
                continue
            row[setting]["vs_dense_float32"] = (
                row[setting]["median_us"] / base[setting]["median_us"]
            )
        if base is not None:
            row["bytes_vs_dense_float32"] = row["bytes"] / base["bytes"]


def check_targets(files):
    """The speed target and the no-crash target."""
    by_key = {(f["variant"], f["format"]): f for f in files}
    dense, block = by_key.get(("dense", "float32")), by_key.get(("block4x1", "float32"))
    checks = []
    if dense is not None and block is not None:
        for setting in _SETTINGS:
            if "median_us" in dense[setting] and "median_us" in block[setting]:
                speedup = dense[setting]["median_us"] / block[setting]["median_us"]
            else:
                speedup = None
            checks.append({
                "target": f"block4x1 float32 >= {_TARGET_SPEEDUP}x faster than dense "
                          f"float32 ({setting})",
                "speedup": speedup,
                "pass": speedup is not None and speedup >= _TARGET_SPEEDUP,
            })
    unwarned = [
        f"{f['variant']} {f['format']} ({setting})"
        for f in files for setting in _SETTINGS
        if not f[setting]["runs"] and not f["export_warnings"]
    ]
    unrunnable = [
        f"{f['variant']} {f['format']}" for f in files
        if not any(f[s]["runs"] for s in _SETTINGS)
    ]
    checks.append({
        "target": "every file runs in a setting; every failing setting was warned about",
        "failing_without_warning": unwarned,
        "running_nowhere": unrunnable,
        "pass": not unwarned and not unrunnable,
    })
    return checks


def _kib(n):
    return f"{n / 1024:,.1f}"


def _latency_cell(cell):
    if not cell["runs"]:
        return "fails"
    if "median_us" not in cell:
        return "runs"
    return f"{cell['median_us']:.1f} ({1 / cell['vs_dense_float32']:.2f}x)" if (
        "vs_dense_float32" in cell) else f"{cell['median_us']:.1f}"


def _sparse_cell(tensors):
    if not tensors:
        return "none"
    kinds = collections.Counter(
        f"{t['dtype']} " + ("x".join(map(str, t["block"])) + " blocks" if t["block"] else "CSR")
        for t in tensors
    )
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))


_FORMAT_TITLES = {
    "float32": "float32",
    "dynamic": "dynamic range",
    "int8": "int8",
    "int8_dense": "int8, sparse=False",
}


def markdown_table(model_rows, files):
    """The deployment table (sizes in KiB, median latencies in us)."""
    facts = {m["variant"]: m for m in model_rows}
    lines = [
        "| Model | Format | Size KiB | XNNPack us (speed-up) | builtin us (speed-up) "
        "| Test acc. | Sparse weights | Ops (builtin) |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for f in files:
        m = facts[f["variant"]]
        name = f["variant"] if m["sparsity"] == 0 else f"{f['variant']} {m['sparsity']:.0%}"
        ops = ", ".join(f"{k}x{v}" if v > 1 else k for k, v in f["ops"].items()
                        if k not in ("SHAPE", "STRIDED_SLICE", "PACK", "RESHAPE"))
        lines.append(
            f"| {name} | {_FORMAT_TITLES[f['format']]} | {_kib(f['bytes'])} "
            f"| {_latency_cell(f['xnnpack'])} | {_latency_cell(f['builtin'])} "
            f"| {f['tflite_test_accuracy']:.2%} | {_sparse_cell(f['sparse_tensors'])} | {ops} |"
        )
    return "\n".join(lines)


def _variants(text):
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in _VARIANTS for v in values):
        raise argparse.ArgumentTypeError(f"variants must be among {list(_VARIANTS)}: {text!r}")
    return values


def _formats(text):
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in _FORMATS for v in values):
        raise argparse.ArgumentTypeError(f"formats must be among {list(_FORMATS)}: {text!r}")
    return values


def _sparsity(text):
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"--sparsity must be in (0, 1): {text!r}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", type=_variants, default=list(_VARIANTS))
    parser.add_argument("--formats", type=_formats, default=list(_FORMATS))
    parser.add_argument("--sparsity", type=_sparsity, default=0.9)
    parser.add_argument("--steps", type=_common.positive_int, default=1876,
                        help="training steps of batch 128 (1876: 4 epochs of MNIST)")
    parser.add_argument("--update_freq", type=_common.positive_int, default=100,
                        help="steps between RigL mask updates")
    parser.add_argument("--data", choices=("mnist", "synthetic"), default="mnist")
    parser.add_argument("--data_dir", default=None,
                        help="TFDS data folder (default: TFDS_DATA_DIR)")
    parser.add_argument("--eval_examples", type=_common.positive_int, default=10_000,
                        help="test images run through each file for its accuracy")
    parser.add_argument("--rounds", type=_common.positive_int, default=100)
    parser.add_argument("--runs", type=_common.positive_int, default=200,
                        help="timed calls per interpreter per round")
    parser.add_argument("--threads", type=_common.positive_int, default=1,
                        help="interpreter threads (1: steadiest on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=pathlib.Path, default=_DEFAULT_OUTPUT)
    return parser.parse_args(argv)


def main(argv=None):
    """Runs the benchmark, writes `--output` (and its `.md`); returns the report."""
    args = parse_args(argv)
    started = time.time()
    facts = machine_facts()
    model_rows, files, latency_load = run(args)
    facts["load_average_around_latency"] = latency_load
    facts["load_average_at_end"] = _common.load_average()
    table = markdown_table(model_rows, files)
    checks = check_targets(files)
    command = _common.command_line("benchmarks.export", sys.argv[1:] if argv is None else argv)
    result = {
        "command": command,
        "date": _common.utc_timestamp(),
        "duration_s": round(time.time() - started, 1),
        "machine": facts,
        "config": {
            "model": "lenet300_100 (rigl_keras.experiments.models.lenet300_100)",
            "variants": args.variants,
            "formats": args.formats,
            "sparsity": args.sparsity,
            "distribution": "erk",
            "data": args.data,
            "training": {
                "steps": args.steps, "batch_size": _BATCH_SIZE, "optimizer": "sgd",
                "momentum": _MOMENTUM, "learning_rate": _LEARNING_RATE,
                "lr_schedule": "cosine to 0", "weight_decay": _WEIGHT_DECAY,
                "update_freq": args.update_freq, "end_step": int(_END_FRACTION * args.steps),
                "drop_fraction": _DROP_FRACTION, "seed": args.seed,
            },
            "int8_calibration_examples": _CALIBRATION_EXAMPLES,
            "eval_examples": args.eval_examples,
            "rounds": args.rounds,
            "runs": args.runs,
            "threads": args.threads,
            "latency": "median of rounds x runs interleaved single-example "
                       "set_tensor+invoke+get_tensor calls",
        },
        "targets": checks,
        "notes": _NOTES,
        "models": model_rows,
        "files": files,
        "table": table,
    }
    _common.write_json(args.output, result)
    markdown = _markdown_report(result)
    args.output.with_suffix(".md").write_text(markdown, encoding="utf-8")
    print(table)
    for check in checks:
        print(f"{'PASS' if check['pass'] else 'MISS'}: {check['target']}"
              + (f" (speed-up {check['speedup']:.2f}x)" if check.get("speedup") else ""))
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}")
    return result


def winners(files):
    """One sentence: the smallest file and the fastest in each setting."""
    def name(f):
        return f"{f['variant']} {_FORMAT_TITLES[f['format']]}"

    smallest = min(files, key=lambda f: f["bytes"])
    parts = [f"Smallest file: {name(smallest)} ({_kib(smallest['bytes'])} KiB)."]
    for setting, title in (("xnnpack", "with XNNPack"), ("builtin", "with builtin kernels")):
        timed = [f for f in files if "median_us" in f[setting]]
        if timed:
            fastest = min(timed, key=lambda f: f[setting]["median_us"])
            parts.append(
                f"Fastest {title}: {name(fastest)} ({fastest[setting]['median_us']:.1f} us)."
            )
    return " ".join(parts)


def _markdown_report(result):
    """The `.md` file: command, machine, the table, the models, the targets."""
    m = result["machine"]
    load = m["load_average_around_latency"]
    lines = [
        "# Deployment table: LeNet-300-100 trained with RigL, exported to TFLite",
        "",
        f"Command: `{result['command']}` ({result['date']}, {result['duration_s']:.0f} s).",
        "",
        f"Machine: {m['cpu_model']}, {m['cpus_available']} CPUs available, "
        f"{m['platform']}; TensorFlow {m['tensorflow']}, Keras {m['keras']}, "
        f"ai-edge-litert {m['ai_edge_litert']}. Load average (1, 5, 15 min) at start "
        f"{m['load_average_at_start']}, around the latency runs {load['before']} -> "
        f"{load['after']}: other jobs shared the cores.",
        "",
        f"Latency: batch 1, {result['config']['threads']} thread, median of "
        f"{result['config']['rounds']} x {result['config']['runs']} interleaved calls; "
        "speed-up over the dense float32 file in the same setting. XNNPack: LiteRT's "
        "default interpreter; builtin: "
        "`experimental_op_resolver_type=BUILTIN_WITHOUT_DEFAULT_DELEGATES`. \"fails\": "
        "the interpreter raised (its message is in export.json), and `export_tflite` "
        "warned.",
        "",
        result["table"],
        "",
        "Test acc.: the file's accuracy on "
        f"{result['config']['eval_examples']:,} test images (builtin kernels). Sparse "
        "weights: the sparse-encoded tensors (CSR: element-wise, with a DENSIFY op).",
        "",
        winners(result["files"]),
        "",
        "| Model | Sparsity | Structure holds | Keras test acc. | Training |",
        "|---|---:|---|---:|---|",
    ]
    config = result["config"]
    for model in result["models"]:
        lines.append(
            f"| {model['variant']} | {model['sparsity']:.2%} "
            f"| {'-' if model['structure_holds'] is None else model['structure_holds']} "
            f"| {model['keras_test_accuracy']:.2%} | {config['training']['steps']} steps, "
            f"{config['data']} |"
        )
    lines += ["", "Targets:", ""]
    for check in result["targets"]:
        extra = f": {check['speedup']:.2f}x" if check.get("speedup") else ""
        lines.append(f"- {'met' if check['pass'] else 'missed'}: {check['target']}{extra}")
    lines += ["", "Notes:", ""] + [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
