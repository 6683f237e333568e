r"""Peer baseline of `benchmarks/accuracy.py`: TFMOT's `prune_low_magnitude`.

Needs two benchmark-only packages that the library does not depend on:

    pip install tf_keras tensorflow-model-optimization

(`tf_keras` must match TensorFlow's version, e.g. `tf_keras==2.21.0` for
TensorFlow 2.21; `tensorflow-model-optimization` 0.8 pins `absl-py~=1.2` but
runs with absl-py 2.x.) TensorFlow Model Optimization (TFMOT) only works
with Keras 2, i.e. `tf_keras`, so this script runs in its own process with
`TF_USE_LEGACY_KERAS=1` (it sets the variable itself before importing
TensorFlow; `benchmarks/accuracy.py` runs it as a subprocess). It never
imports Keras 3 or the `rigl_keras` package: the input pipeline
(`rigl_keras/experiments/data.py`) and, when `--layer_sparsity` is not
given, the ERK distribution (`rigl_keras/distributions.py`) are loaded from
their files, which import only TensorFlow and NumPy.

What it trains mirrors `python -m rigl_keras.experiments.train --method=prune`:

* the same model (LeNet-300-100 or LeNet-5, same layer names and widths,
  Glorot-uniform kernels, zero biases, `L2(weight_decay / 2)` on kernels);
* the same data (TFDS, `[0, 1]` floats, shuffle buffer 10,000 seeded by
  `--seed`, `drop_remainder` batches, `ceil(examples / batch)` steps per
  epoch);
* the same optimizer (SGD with momentum, cosine decay to 0 over training);
* the same pruning schedule: each layer `l` with a non-zero target `s_l`
  is wrapped by `prune_low_magnitude` with its own
  `PolynomialDecay(initial_sparsity=0, final_sparsity=s_l, begin_step=0,
  end_step=round(end_fraction * total_steps), power=3,
  frequency=update_freq)`; `s_l` are the per-layer ERK targets (TFMOT
  would otherwise prune every layer uniformly). Layers with target 0 are
  not wrapped.

Differences that remain: TFMOT prunes only on multiples of `update_freq`
(ours also at `end_step`; the missed part of the schedule is below 1e-6 of
the target for the sweep's settings), keeps the momentum of pruned weights
(ours resets it) and, being Keras 2, draws different initial weights from
the same seed.

After training, `strip_pruning` removes the wrappers and the plain model is
evaluated on the test split. The results JSON has the keys of the
`rigl_keras.experiments.train` results the benchmark reads (`flags`,
`test_accuracy`, `test_loss`, `sparsity`, `layer_sparsity`, `train_flops`
and `inference_flops` (null: not computed for Keras 2 models),
`wall_seconds`, `train_seconds`, `steps`, `steps_per_epoch`, `end_step`,
`history`, `versions`), with `flags["method"] == "tfmot_prune"`.

Usage:

    python -m benchmarks.accuracy_tfmot --sparsity 0.95 --epochs 20 \
        --results_json /tmp/tfmot.json
"""

import argparse
import importlib.util
import json
import math
import os
import pathlib
import sys
import time

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_LIB = _ROOT / "rigl_keras"

METHOD = "tfmot_prune"
MODELS = ("lenet300_100", "lenet5")


def _load_file_module(relative_path):
    """Loads `rigl_keras/<relative_path>` alone (without the package's Keras 3)."""
    name = pathlib.PurePosixPath(relative_path).stem
    spec = importlib.util.spec_from_file_location(
        f"_rigl_keras_{name}_standalone", _LIB / relative_path
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kernel_shapes(model, input_shape=(28, 28, 1), num_classes=10):
    """`{layer_name: kernel_shape}` of the benchmark models (as rigl_keras').

    Args:
        model: `"lenet300_100"` or `"lenet5"`.
        input_shape: `(height, width, channels)`.
        num_classes: Number of classes.

    Returns:
        An ordered dict of shape tuples.

    Raises:
        ValueError: For an unknown `model`.

    Example:

    >>> kernel_shapes("lenet300_100")
    {'fc1': (784, 300), 'fc2': (300, 100), 'fc3': (100, 10)}
    """
    height, width, channels = input_shape
    if model == "lenet300_100":
        return {
            "fc1": (height * width * channels, 300),
            "fc2": (300, 100),
            "fc3": (100, num_classes),
        }
    if model == "lenet5":
        for _ in range(2):  # 5x5 valid conv, then 2x2 max-pool.
            height, width = (height - 4) // 2, (width - 4) // 2
        return {
            "conv1": (5, 5, channels, 20),
            "conv2": (5, 5, 20, 50),
            "fc1": (height * width * 50, 500),
            "fc2": (500, num_classes),
        }
    raise ValueError(f"`model` must be one of {MODELS}. Received: model={model!r}")


def erk_targets(model, sparsity, input_shape=(28, 28, 1), num_classes=10):
    """Per-layer ERK targets, from `rigl_keras/distributions.py`'s file."""
    distributions = _load_file_module("distributions.py")
    return distributions.distribute_sparsity(
        kernel_shapes(model, input_shape, num_classes), sparsity, method="erk"
    )


def parse_args(argv=None):
    """Parses the command line (defaults: `rigl_keras.experiments.train`'s defaults)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", choices=MODELS, default="lenet300_100")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data_dir", default=None,
                        help="TFDS folder (default: TFDS_DATA_DIR or TFDS's).")
    parser.add_argument("--sparsity", type=float, default=0.9,
                        help="Overall sparsity (for the ERK targets and the record).")
    parser.add_argument("--layer_sparsity", default=None,
                        help="JSON {layer: final sparsity}; default: ERK of --sparsity.")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--steps_per_epoch", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--lr_schedule", choices=("cosine", "constant"), default="cosine")
    parser.add_argument("--weight_decay", type=float, default=1e-4)
    parser.add_argument("--update_freq", type=int, default=100)
    parser.add_argument("--end_fraction", type=float, default=0.75)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2)
    parser.add_argument("--results_json", required=True)
    args = parser.parse_args(argv)
    if not 0.0 <= args.sparsity < 1.0:
        parser.error(f"--sparsity must be in [0, 1). Received: sparsity={args.sparsity}")
    for name in ("epochs", "batch_size", "update_freq"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1. Received: {name}={getattr(args, name)}")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        parser.error("--steps_per_epoch must be >= 1. "
                     f"Received: steps_per_epoch={args.steps_per_epoch}")
    if not 0.0 < args.end_fraction <= 1.0:
        parser.error(f"--end_fraction must be in (0, 1]. Received: end_fraction={args.end_fraction}")
    return args


def _build_model(tf_keras, tfmot, args, info, targets, end_step):
    """The tf_keras model with the layers of non-zero target wrapped."""
    regularizer = (
        tf_keras.regularizers.L2(args.weight_decay / 2) if args.weight_decay else None
    )

    def layer(cls, name, *layer_args, **kwargs):
        built = cls(*layer_args, name=name, kernel_regularizer=regularizer, **kwargs)
        target = targets.get(name, 0.0)
        if target <= 0.0:
            return built
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=float(target), begin_step=0,
            end_step=end_step, power=3, frequency=args.update_freq,
        )
        return tfmot.sparsity.keras.prune_low_magnitude(built, pruning_schedule=schedule)

    dense, conv = tf_keras.layers.Dense, tf_keras.layers.Conv2D
    inputs = tf_keras.Input(info.input_shape, name="image")
    if args.model == "lenet300_100":
        x = tf_keras.layers.Flatten(name="flatten")(inputs)
        x = layer(dense, "fc1", 300, activation="relu")(x)
        x = layer(dense, "fc2", 100, activation="relu")(x)
        outputs = layer(dense, "fc3", info.num_classes)(x)
    else:
        x = layer(conv, "conv1", 20, 5, activation="relu")(inputs)
        x = tf_keras.layers.MaxPooling2D(2, name="pool1")(x)
        x = layer(conv, "conv2", 50, 5, activation="relu")(x)
        x = tf_keras.layers.MaxPooling2D(2, name="pool2")(x)
        x = tf_keras.layers.Flatten(name="flatten")(x)
        x = layer(dense, "fc1", 500, activation="relu")(x)
        outputs = layer(dense, "fc2", info.num_classes)(x)
    return tf_keras.Model(inputs, outputs, name=args.model)


def _layer_sparsity(model):
    """Exact zeros of every Dense/Conv2D kernel of a stripped model."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    per_layer, zeros, total = {}, 0, 0
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        values = kernel.numpy()
        layer_zeros = int(np.sum(values == 0))
        per_layer[layer.name] = layer_zeros / values.size
        zeros += layer_zeros
        total += values.size
    return per_layer, (zeros / total if total else 0.0)


def run(args):
    """Trains, prunes, strips and evaluates; writes and returns the results."""
    start = time.perf_counter()
    if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        raise RuntimeError(
            "TensorFlow was imported before TF_USE_LEGACY_KERAS=1 was set; run "
            "this script in its own process."
        )
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    # pylint: disable=g-import-not-at-top
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras
    # pylint: enable=g-import-not-at-top

    data = _load_file_module("experiments/data.py")
    targets = (
        json.loads(args.layer_sparsity) if args.layer_sparsity
        else erk_targets(args.model, args.sparsity)
    )
    tf_keras.utils.set_random_seed(args.seed)
    info = data.dataset_info(args.dataset, args.data_dir)
    num_train = data.num_examples(args.dataset, "train", args.data_dir)
    steps_per_epoch = max(1, math.ceil(num_train / args.batch_size))
    if args.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, args.steps_per_epoch)
    total_steps = steps_per_epoch * args.epochs
    end_step = max(1, int(round(args.end_fraction * total_steps)))
    train_ds = data.load_dataset(
        args.dataset, "train", args.batch_size, data_dir=args.data_dir,
        shuffle=True, seed=args.seed, repeat=True, drop_remainder=True,
    )
    eval_ds = data.load_dataset(
        args.dataset, "test", args.batch_size, data_dir=args.data_dir, shuffle=False,
    )

    model = _build_model(tf_keras, tfmot, args, info, targets, end_step)
    learning_rate = args.learning_rate
    if args.lr_schedule == "cosine":
        learning_rate = tf_keras.optimizers.schedules.CosineDecay(
            args.learning_rate, decay_steps=total_steps
        )
    model.compile(
        optimizer=tf_keras.optimizers.SGD(learning_rate, momentum=args.momentum),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    train_start = time.perf_counter()
    history = model.fit(
        train_ds, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
        verbose=args.verbose,
    )
    train_seconds = time.perf_counter() - train_start

    stripped = tfmot.sparsity.keras.strip_pruning(model)
    stripped.compile(
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    test_loss, test_accuracy = stripped.evaluate(eval_ds, verbose=0)
    layer_sparsity, sparsity = _layer_sparsity(stripped)
    flags = {k: v for k, v in vars(args).items() if k not in ("layer_sparsity", "verbose")}
    flags.update(
        method=METHOD, distribution="erk", optimizer="sgd", layer_targets=targets,
        train_split="train", eval_split="test",
    )
    results = {
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "sparsity": float(sparsity),
        "layer_sparsity": layer_sparsity,
        "train_flops": None,
        "inference_flops": None,
        "wall_seconds": time.perf_counter() - start,
        "train_seconds": train_seconds,
        "steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "end_step": end_step,
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "versions": {
            "tensorflow": tf.__version__,
            "tf_keras": tf_keras.__version__,
            "tensorflow_model_optimization": tfmot.__version__,
            "python": sys.version.split()[0],
        },
        "flags": flags,
    }
    path = pathlib.Path(args.results_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(
        f"{METHOD} {args.model} sparsity {args.sparsity:g}: test accuracy "
        f"{test_accuracy:.4f}, measured sparsity {sparsity:.4f}, "
        f"{results['wall_seconds']:.1f} s -> {path}"
    )
    return results


def main(argv=None):
    """Entry point; returns the results dict."""
    return run(parse_args(argv))


if __name__ == "__main__":
    # Before TensorFlow is imported (in `run`): TFMOT needs Keras 2.
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    main()
