r"""Sizes, TFLite ops and TFLite latency of exported sparse models.

For each model (LeNet-300-100 on 784 features; the small CNN of
`benchmarks/overhead.py` on 28x28x1 images) and each global sparsity
(default 0%, 90%, 95%, 98%; ERK over the masked layers via
`rigl_keras.sparsity_distribution`, random masks via
`rigl_keras.masking.random_mask`, Glorot-initialized kernels times the
mask, small random biases: no training, but realistic non-zeros) the
benchmark

* exports the model with `rigl_keras.export_saved_model` and records the
  size of `variables/` and its gzip-compressed size (level 9);
* converts it with `rigl_keras.export_tflite`, with and without sparse
  weight encoding, and records both `.tflite` sizes (and gzip sizes), and
  the ratio of the sparse-encoded file to the dense model's plain file
  (target: <= 0.25 at 90% sparsity);
* lists the ops in each `.tflite` file (LiteRT interpreter without
  delegates: `DENSIFY`, and which ops take sparse-encoded weights, e.g. a
  `FULLY_CONNECTED` with a sparse weight runs a sparse kernel) and the ops
  left after the default XNNPack delegate took its share;
* times single-example inference with the LiteRT interpreter
  (`ai_edge_litert`), XNNPack on (the default), `--threads` threads: the
  interpreters of one model are interleaved round by round (rotating
  order) and the reported figure is the median over all `--rounds` x
  `--runs` timed `set_tensor + invoke + get_tensor` calls. The same is
  done without delegates (`BUILTIN_WITHOUT_DEFAULT_DELEGATES`) to show
  what the sparse kernels themselves do;
* checks every `.tflite` output against the Keras model.

Besides random (unstructured) masks, `--block_sparsities` adds models whose
`MaskedDense` masks consist of 1x4 blocks (4 consecutive inputs of one
output unit, the block shape the TFLite converter can keep sparse for
`FULLY_CONNECTED` instead of inserting `DENSIFY`); conv masks stay random.

Usage:

    python benchmarks/export.py
    python benchmarks/export.py --models lenet300_100 --sparsities 0,0.9 \
        --rounds 5 --runs 200 --output /tmp/export.json

The JSON written to `--output` (default `benchmarks/results/export.json`)
holds the command, the date, machine facts (with load averages: the machine
may be shared), every measurement, the op lists, the target check, and the
markdown table that is also printed to stdout.
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
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

try:
    import rigl_keras  # pylint: disable=wrong-import-position
except ImportError:  # Run from a checkout: `python benchmarks/export.py`.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    import rigl_keras  # pylint: disable=wrong-import-position
from rigl_keras.masking import random_mask  # pylint: disable=wrong-import-position

try:
    import _common  # pylint: disable=wrong-import-position
except ImportError:  # Loaded by path (as the tests do): benchmarks/ is not on sys.path.
    sys.path.append(str(pathlib.Path(__file__).resolve().parent))
    import _common  # pylint: disable=wrong-import-position

try:
    from ai_edge_litert import interpreter as litert  # pylint: disable=wrong-import-position
except ImportError:  # pragma: no cover - depends on the environment
    litert = None

_MODELS = ("lenet300_100", "cnn")
_DEFAULT_OUTPUT = pathlib.Path(__file__).resolve().parent / "results" / "export.json"
_TARGET_SPARSITY = 0.9
_TARGET_RATIO = 0.25
_NOTES = [
    "How the converter encodes sparse weights (TensorFlow's DenseToSparse pass, "
    "tensorflow/compiler/mlir/lite/transforms/dense_to_sparse_pass.cc): a constant "
    "weight of FULLY_CONNECTED / CONV_2D is sparse-encoded only if at least 30% of "
    "it is zero (kMinSparsityLevel = 0.3). If the op supports a block shape (float "
    "FULLY_CONNECTED: 1x4) and the weight's block sparsity exceeds 0.9x its element "
    "sparsity, it is stored in 1x4 blocks and read directly by the sparse "
    "FULLY_CONNECTED kernel (`FULLY_CONNECTED[sparse]` in the op lists); otherwise it "
    "is stored element-wise (CSR-like) and a DENSIFY op re-creates the dense weight "
    "once, at the first invocation (`DENSIFY[sparse]`).",
    "XNNPack (the default delegate) takes DENSIFY + FULLY_CONNECTED / CONV_2D, "
    "densifies the static weight at initialization and runs dense kernels: the "
    "element-wise encoding shrinks the file, not the latency. It does not take a "
    "FULLY_CONNECTED with 1x4-block sparse weights; the built-in sparse kernel runs "
    "it instead, which is what makes those rows faster.",
    "Random masks at 98% can pass the block test by chance (a 1x4 block is all zero "
    "with probability 0.98^4 = 0.92 > 0.9 x 0.98), so such layers get the 1x4 block "
    "encoding, which also stores the zeros inside the non-zero blocks.",
    "The CNN's Flatten on a free batch dimension converts to SHAPE, STRIDED_SLICE, "
    "PACK and RESHAPE ops, which XNNPack leaves to the interpreter.",
    "Latency: single example, median over rounds x runs; the machine is shared, "
    "so absolute numbers drift; compare rows of one model (measured interleaved).",
]
_ENV_VARS = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_CPP_MIN_LOG_LEVEL")


# ----------------------------------------------------------------------
# Models.


def build_model(name):
    """A masked benchmark model (`"lenet300_100"` or `"cnn"`), 10 logits."""
    dense, conv = rigl_keras.MaskedDense, rigl_keras.MaskedConv2D
    if name == "lenet300_100":
        return keras.Sequential(
            [
                keras.Input((784,)),
                dense(300, activation="relu", name="fc1"),
                dense(100, activation="relu", name="fc2"),
                dense(10, name="fc3"),
            ],
            name=name,
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
            name=name,
        )
    raise ValueError(f"`name` must be one of {_MODELS}. Received: name={name!r}")


def _block_mask(shape, num_zeros, seed):
    """A (in, out) Dense mask made of 1x4 blocks along the input axis."""
    blocks = random_mask((shape[0] // 4, shape[1]), num_zeros // 4, seed)
    return np.repeat(blocks, 4, axis=0)


def make_sparse_model(name, sparsity, structure, seed):
    """The model with ERK masks of global `sparsity` and realistic weights.

    Args:
        name: Model name.
        sparsity: Global sparsity over the masked layers (0 for dense).
        structure: `"random"`, or `"block1x4"` for 1x4-block Dense masks.
        seed: Integer seed.

    Returns:
        A built masked `keras.Sequential`.
    """
    keras.utils.set_random_seed(seed)
    model = build_model(name)
    rng = np.random.default_rng(seed)
    targets = (
        rigl_keras.sparsity_distribution(model, sparsity, method="erk")
        if sparsity > 0
        else {}
    )
    for layer in rigl_keras.masked_layers(model):
        shape = tuple(layer.kernel.shape)
        size = int(np.prod(shape))
        layer_seed = zlib.crc32(f"{name}/{layer.name}".encode()) ^ seed
        num_zeros = int(round(targets.get(layer.kernel.path, 0.0) * size))
        blocky = (
            structure == "block1x4"
            and isinstance(layer, rigl_keras.MaskedDense)
            and shape[0] % 4 == 0
        )
        if blocky:
            mask = _block_mask(shape, 4 * (num_zeros // 4), layer_seed)
        else:
            mask = random_mask(shape, num_zeros, layer_seed)
        layer.mask.assign(mask)
        layer.apply_mask()
        layer.bias.assign(rng.normal(0.0, 0.05, layer.bias.shape).astype("float32"))
    return model


def example_input(name, seed):
    shape = (1, 784) if name == "lenet300_100" else (1, 28, 28, 1)
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# ----------------------------------------------------------------------
# Sizes.


def _dir_bytes(path):
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())


def _gzip_bytes(data):
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def _dir_gzip_bytes(path):
    files = sorted(p for p in pathlib.Path(path).rglob("*") if p.is_file())
    return _gzip_bytes(b"".join(p.read_bytes() for p in files))


# ----------------------------------------------------------------------
# TFLite ops.


def _interpreter(path, delegate, threads):
    resolver = (
        litert.OpResolverType.AUTO
        if delegate
        else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter = litert.Interpreter(
        model_path=str(path), num_threads=threads,
        experimental_op_resolver_type=resolver,
    )
    interpreter.allocate_tensors()
    return interpreter


def describe_ops(path, threads):
    """The ops of a `.tflite` file and which take sparse-encoded tensors.

    Returns:
        Dict with `ops` (op counts, without delegates; an op reading a
        sparse-encoded constant is listed as `NAME[sparse]`),
        `sparse_tensors` (number of sparse-encoded tensors), and
        `ops_with_xnnpack` (op counts once the default delegate applied).
    """
    plain = _interpreter(path, delegate=False, threads=threads)
    sparse_tensors = {
        t["index"] for t in plain.get_tensor_details() if t.get("sparsity_parameters")
    }
    ops = collections.Counter()
    for op in plain._get_ops_details():  # pylint: disable=protected-access
        name = op["op_name"]
        if any(int(i) in sparse_tensors for i in op["inputs"]):
            name += "[sparse]"
        ops[name] += 1
    with_xnnpack = _executed_ops(_interpreter(path, delegate=True, threads=threads))
    return {
        "ops": dict(sorted(ops.items())),
        "sparse_tensors": len(sparse_tensors),
        "ops_with_xnnpack": dict(sorted(with_xnnpack.items())),
    }


def _executed_ops(interpreter):
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


def _ops_text(ops):
    return ", ".join(f"{k}x{v}" if v > 1 else k for k, v in ops.items())


# ----------------------------------------------------------------------
# Latency.


def _run_once(interpreter, x):
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


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


def _measure_config(name, sparsity, structure, args, workdir):
    """Exports one model; returns its row (sizes, ops, errors) and files."""
    model = make_sparse_model(name, sparsity, structure, args.seed)
    tag = f"{name}_{structure}_{round(sparsity * 100)}"
    report = rigl_keras.sparsity_report(model)
    saved = rigl_keras.export_saved_model(model, os.path.join(workdir, tag))
    variables = os.path.join(saved, "variables")
    files = {
        "plain": rigl_keras.export_tflite(model, os.path.join(workdir, tag + ".tflite"), sparse=False),
        "sparse": rigl_keras.export_tflite(
            model, os.path.join(workdir, tag + "_sparse.tflite"), sparse=True
        ),
    }
    x = example_input(name, args.seed)
    expected = model(x, training=False).numpy()
    row = {
        "model": name,
        "masks": structure,
        "sparsity": sparsity,
        "kernel_sparsity": report[-1]["sparsity"],
        "layer_sparsity": {r["name"]: round(r["sparsity"], 4) for r in report[:-1]},
        "params": model.count_params() - sum(
            int(np.prod(layer.mask.shape)) for layer in rigl_keras.masked_layers(model)
        ),
        "savedmodel_variables_bytes": _dir_bytes(variables),
        "savedmodel_variables_gzip_bytes": _dir_gzip_bytes(variables),
        "savedmodel_total_bytes": _dir_bytes(saved),
    }
    for kind, path in files.items():
        data = pathlib.Path(path).read_bytes()
        row[f"tflite_{kind}_bytes"] = len(data)
        row[f"tflite_{kind}_gzip_bytes"] = _gzip_bytes(data)
        row[f"ops_{kind}"] = describe_ops(path, args.threads)
        out = _run_once(_interpreter(path, delegate=True, threads=args.threads), x)
        row[f"max_abs_error_{kind}"] = float(np.abs(out - expected).max())
    return row, files, x


def run(args):
    """Runs the benchmark; returns the JSON-serializable result."""
    if litert is None:
        raise SystemExit(
            "benchmarks/export.py needs the LiteRT interpreter: "
            "pip install ai-edge-litert (the rigl_keras[tflite] extra)"
        )
    configs = [(m, s, "random") for m in args.models for s in args.sparsities]
    configs += [(m, s, "block1x4") for m in args.models for s in args.block_sparsities]
    rows = []
    with tempfile.TemporaryDirectory(prefix="rigl_export_bench_") as workdir:
        for name in args.models:
            interpreters = {}
            inputs = None
            for model_name, sparsity, structure in configs:
                if model_name != name:
                    continue
                print(f"[export] {name} {structure} {sparsity:.0%}", file=sys.stderr, flush=True)
                row, files, inputs = _measure_config(name, sparsity, structure, args, workdir)
                rows.append(row)
                for kind, path in files.items():
                    for delegate in (True, False):
                        key = (len(rows) - 1, kind, delegate)
                        interpreters[key] = _interpreter(path, delegate, args.threads)
            print(f"[latency] {name}: {len(interpreters)} interpreters", file=sys.stderr, flush=True)
            timings = time_interpreters(interpreters, inputs, args.rounds, args.runs)
            for (index, kind, delegate), timing in timings.items():
                suffix = "xnnpack" if delegate else "builtin"
                rows[index][f"latency_{kind}_{suffix}"] = timing
    _add_ratios(rows)
    return rows


def _add_ratios(rows):
    """Ratios to the dense model (0% sparsity) of the same architecture."""
    dense = {r["model"]: r for r in rows if r["sparsity"] == 0 and r["masks"] == "random"}
    for row in rows:
        base = dense.get(row["model"])
        if base is None:
            continue
        row["tflite_sparse_vs_dense_model"] = row["tflite_sparse_bytes"] / base["tflite_plain_bytes"]
        row["tflite_plain_vs_dense_model"] = row["tflite_plain_bytes"] / base["tflite_plain_bytes"]
        row["savedmodel_gzip_vs_dense_model"] = (
            row["savedmodel_variables_gzip_bytes"] / base["savedmodel_variables_gzip_bytes"]
        )
        for kind in ("plain", "sparse"):
            for suffix in ("xnnpack", "builtin"):
                key = f"latency_{kind}_{suffix}"
                if key in row and f"latency_plain_{suffix}" in base:
                    row[f"{key}_vs_dense_model"] = (
                        row[key]["median_us"] / base[f"latency_plain_{suffix}"]["median_us"]
                    )


def _kib(n):
    return f"{n / 1024:,.1f}"


def markdown_table(rows):
    """The results as a markdown table (sizes in KiB, latencies in us)."""
    header = (
        "| Model | Masks | Sparsity | SavedModel vars KiB | gzip KiB | .tflite KiB "
        "| sparse .tflite KiB | sparse / dense model | XNNPack us (plain / sparse) "
        "| vs dense | builtin us (plain / sparse) | ops in sparse .tflite |"
    )
    lines = [header, "|" + "---|" * 12]
    for r in rows:
        xnn = (r["latency_plain_xnnpack"]["median_us"], r["latency_sparse_xnnpack"]["median_us"])
        ref = (r["latency_plain_builtin"]["median_us"], r["latency_sparse_builtin"]["median_us"])
        lines.append(
            f"| {r['model']} | {r['masks']} | {r['sparsity']:.0%} "
            f"| {_kib(r['savedmodel_variables_bytes'])} "
            f"| {_kib(r['savedmodel_variables_gzip_bytes'])} "
            f"| {_kib(r['tflite_plain_bytes'])} | {_kib(r['tflite_sparse_bytes'])} "
            f"| {r.get('tflite_sparse_vs_dense_model', float('nan')):.3f} "
            f"| {xnn[0]:.1f} / {xnn[1]:.1f} "
            f"| {r.get('latency_sparse_xnnpack_vs_dense_model', float('nan')):.2f}x "
            f"| {ref[0]:.1f} / {ref[1]:.1f} "
            f"| {_ops_text(r['ops_sparse']['ops'])} |"
        )
    return "\n".join(lines)


def check_target(rows):
    """Sparse-encoded .tflite <= 0.25x the dense model's at 90% (random masks)."""
    checks = []
    for r in rows:
        if r["masks"] == "random" and abs(r["sparsity"] - _TARGET_SPARSITY) < 1e-9:
            ratio = r.get("tflite_sparse_vs_dense_model")
            checks.append({
                "model": r["model"],
                "ratio": ratio,
                "target": _TARGET_RATIO,
                "pass": ratio is not None and ratio <= _TARGET_RATIO,
            })
    return checks


def _floats(text):
    values = [float(v) for v in text.split(",") if v.strip()]
    if any(not 0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"sparsities must be in [0, 1): {text!r}")
    return values


def _models(text):
    values = [v.strip() for v in text.split(",") if v.strip()]
    if any(v not in _MODELS for v in values):
        raise argparse.ArgumentTypeError(f"models must be among {_MODELS}: {text!r}")
    return values


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=_models, default=list(_MODELS))
    parser.add_argument("--sparsities", type=_floats, default=[0.0, 0.9, 0.95, 0.98])
    parser.add_argument("--block_sparsities", type=_floats, default=[0.9],
                        help="sparsities of extra models with 1x4-block Dense masks")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=250,
                        help="timed calls per interpreter per round")
    parser.add_argument("--threads", type=int, default=1,
                        help="interpreter threads (1: steadiest on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=pathlib.Path, default=_DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if 0.0 not in args.sparsities:
        parser.error("--sparsities must include 0 (the dense model every ratio refers to)")
    return args


def main(argv=None):
    """Runs the benchmark, writes `--output` and returns the report dict."""
    args = parse_args(argv)
    started = time.time()
    facts = machine_facts()
    rows = run(args)
    table = markdown_table(rows)
    checks = check_target(rows)
    load = _common.load_average()
    if load is not None:
        facts["load_average_at_end"] = load
    result = {
        "command": _common.command_line(
            "benchmarks/export.py", sys.argv[1:] if argv is None else argv
        ),
        "date": _common.utc_timestamp(),
        "duration_s": round(time.time() - started, 1),
        "machine": facts,
        "config": {
            "models": args.models,
            "sparsities": args.sparsities,
            "block_sparsities": args.block_sparsities,
            "distribution": "erk",
            "rounds": args.rounds,
            "runs": args.runs,
            "threads": args.threads,
            "seed": args.seed,
            "latency": "median of rounds x runs single-example set_tensor+invoke+get_tensor calls",
        },
        "target": {
            "description": "sparse-encoded .tflite <= 0.25x the dense model's .tflite at 90% sparsity",
            "checks": checks,
        },
        "notes": _NOTES,
        "results": rows,
        "table": table,
    }
    _common.write_json(args.output, result)
    print(table)
    for check in checks:
        status = "PASS" if check["pass"] else "MISS"
        print(f"target {check['model']}: sparse .tflite / dense = {check['ratio']:.3f} "
              f"(<= {check['target']}) {status}")
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
