"""Helpers shared by the benchmark scripts in this folder.

Machine facts (CPU model, available CPUs, memory, load average, selected
environment variables), the command line and date recorded in a report,
short digests of source files, atomic JSON writing, small argparse and
statistics helpers, and the builders of the off-the-shelf models the
benchmarks share (`mobilenet_v2`, `small_transformer`). The module imports
neither TensorFlow nor `rigl_keras` (the model builders import Keras when
called), so scripts that keep TensorFlow out of their driver process can use
it.

The scripts import it as `from benchmarks import _common` and run as
`python -m benchmarks.<name>` from the repository root.
"""

import argparse
import datetime
import hashlib
import json
import os
import pathlib
import platform
import random
import shlex
import statistics

_DIGEST_CHARS = 12


# ----------------------------------------------------------------------
# Machine facts.


def cpu_model():
    """The CPU's model name.

    Returns:
        The first `model name` of /proc/cpuinfo; where there is none (not
        Linux, or a CPU without that line), `platform.processor()` or else
        `platform.machine()`.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpus_available():
    """How many CPUs this process may run on.

    Returns:
        The size of the process's CPU affinity set, or None where the
        platform has no `os.sched_getaffinity`.
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return None


def cpu_facts():
    """The CPU facts of a report's `machine` entry.

    Returns:
        `{"cpu_model": ..., "nproc": ..., "cpus_available": ...}`: the model
        name (`cpu_model`), `os.cpu_count()` and `cpus_available()`.
    """
    return {
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "cpus_available": cpus_available(),
    }


def proc_kib(path, field):
    """A `kB` field of a /proc file such as /proc/meminfo.

    Args:
        path: The file, e.g. `"/proc/meminfo"` or `"/proc/self/status"`.
        field: The field name without the colon, e.g. `"MemTotal"`.

    Returns:
        The field's value in KiB as an int, or None if the file cannot be
        read or has no such field.
    """
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def meminfo_gib(field):
    """A field of /proc/meminfo in GiB.

    Args:
        field: The field name, e.g. `"MemTotal"` or `"MemAvailable"`.

    Returns:
        The value in GiB (unrounded), or None where it cannot be read.
    """
    kib = proc_kib("/proc/meminfo", field)
    return None if kib is None else kib / 2**20


def load_average(ndigits=2):
    """The 1, 5 and 15 minute load averages.

    Args:
        ndigits: Digits to round each value to; None keeps them as they are.

    Returns:
        A list of three floats, or None where the load average is not
        available.
    """
    try:
        load = os.getloadavg()
    except OSError:
        return None
    if ndigits is None:
        return list(load)
    return [round(v, ndigits) for v in load]


def env_vars(names):
    """The environment variables among `names` that are set.

    Args:
        names: Variable names, e.g. `("OMP_NUM_THREADS",)`.

    Returns:
        A dict from each set name (in the order of `names`) to its value.
    """
    return {name: os.environ[name] for name in names if name in os.environ}


# ----------------------------------------------------------------------
# Report fields and files.


def utc_timestamp():
    """The current UTC time to the second, e.g. `2026-11-22T10:00:00+00:00`."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def command_line(module, argv):
    """The shell command that reruns a benchmark (from the repository root).

    Args:
        module: The script's module, e.g. `"benchmarks.overhead"`.
        argv: The arguments, without the program name.

    Returns:
        `python -m <module> <args>`, each argument quoted for a POSIX shell.

    Example:

    >>> command_line("benchmarks.scaling", ["--sizes", "1000,4000", "--output", ""])
    "python -m benchmarks.scaling --sizes 1000,4000 --output ''"
    """
    return shlex.join(["python", "-m", module, *argv])


def file_digest(path):
    """A short SHA-256 digest of a file's bytes.

    Args:
        path: The file.

    Returns:
        The first 12 hex digits of the SHA-256 of its content.
    """
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()[:_DIGEST_CHARS]


def file_digests(paths, root):
    """Short digests of files, keyed by their paths relative to `root`.

    Args:
        paths: The files, in the order the result should have.
        root: The folder the keys are relative to.

    Returns:
        A dict from each file's POSIX path relative to `root` (its absolute
        path if it is not below `root`) to `file_digest` of it.
    """
    root = pathlib.Path(root).resolve()
    digests = {}
    for path in paths:
        path = pathlib.Path(path).resolve()
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:
            name = str(path)
        digests[name] = file_digest(path)
    return digests


def write_json(path, data, indent=2, sort_keys=False):
    """Writes `data` as JSON (with a final newline), atomically.

    The text goes to `<path>.tmp` first, which then replaces `path`, so a
    reader never sees a half-written file. Missing parent folders are
    created.

    Args:
        path: The file to write.
        data: A JSON-serializable value.
        indent: Indentation of `json.dumps`.
        sort_keys: Whether to sort the keys of every dict.

    Returns:
        `path` as a `pathlib.Path`.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------
# Command line and statistics.


def positive_int(text):
    """An argparse `type` for integers >= 1.

    Args:
        text: The argument as given on the command line.

    Returns:
        The integer.

    Raises:
        argparse.ArgumentTypeError: If it is below 1.
        ValueError: If `text` is not an integer (argparse reports it).
    """
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def median(values):
    """The median of `values`, or None if there are none.

    Example:

    >>> median([3.0, 1.0, 2.0]), median([])
    (2.0, None)
    """
    return statistics.median(values) if values else None


def bootstrap_median_interval(values, confidence=0.95, resamples=2000, seed=0):
    """A percentile-bootstrap interval for the median of `values`.

    Resamples `values` with replacement `resamples` times (a fixed seed, so
    the same values give the same interval) and returns the central
    `confidence` range of the resampled medians: the uncertainty of a
    median over repetitions, to say whether a target lies inside the noise.

    Args:
        values: A non-empty sequence of numbers.
        confidence: The interval's coverage, in (0, 1).
        resamples: Number of bootstrap resamples (>= 1).
        seed: Seed of the resampling.

    Returns:
        `[low, high]`, with `min(values) <= low <= high <= max(values)`.

    Raises:
        ValueError: For empty `values`, `confidence` outside (0, 1) or
            `resamples` < 1.

    Example:

    >>> bootstrap_median_interval([1.0, 1.0, 1.0])
    [1.0, 1.0]
    """
    if not values:
        raise ValueError("`values` must not be empty.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1). Received: confidence={confidence}")
    if resamples < 1:
        raise ValueError(f"`resamples` must be >= 1. Received: resamples={resamples}")
    rng = random.Random(seed)
    values = list(values)
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples)
    )
    tail = (1.0 - confidence) / 2.0
    low = medians[int(tail * (resamples - 1))]
    high = medians[int(round((1.0 - tail) * (resamples - 1)))]
    return [low, high]


# ----------------------------------------------------------------------
# Models nobody here wrote (plain Keras layers; `rigl_keras.sparsify` makes
# them sparse). Keras is imported on call, not with this module.


def mobilenet_v2(input_shape=(32, 32, 3), classes=10, alpha=0.35):
    """`keras.applications.MobileNetV2`, random weights, producing logits.

    `keras.applications.MobileNetV2(weights=None, input_shape=input_shape,
    classes=classes, alpha=alpha, classifier_activation=None)`: 52
    convolutions (17 of them depthwise) and the classifier; logits rather
    than probabilities so that every benchmark model shares one
    `from_logits=True` loss.

    Args:
        input_shape: Image shape, at least 32x32.
        classes: Number of classes.
        alpha: Width multiplier.

    Returns:
        An uncompiled functional `keras.Model`.
    """
    import keras  # pylint: disable=import-outside-toplevel

    return keras.applications.MobileNetV2(
        weights=None,
        input_shape=input_shape,
        classes=classes,
        alpha=alpha,
        classifier_activation=None,
    )


def small_transformer(vocab_size=1000, length=32, dim=64, heads=4, ff_dim=128,
                      blocks=2, classes=10, name="transformer"):
    """A small functional transformer classifier of plain Keras layers.

    `Embedding(vocab_size, dim)`, then `blocks` post-norm encoder blocks
    (`MultiHeadAttention(heads, dim // heads)` self-attention, residual,
    `LayerNormalization`; `Dense(ff_dim, relu)` and `Dense(dim)`, residual,
    `LayerNormalization`), `GlobalAveragePooling1D` and a `Dense(classes)`
    classifier producing logits. No positional embedding. Layer names:
    `embed`, `mha{i}`, `ln{i}a`, `ff{i}a`, `ff{i}b`, `ln{i}b`, `head`.

    With the defaults: 131,594 parameters (64,000 of them in the
    embedding); a training step at batch 128 took 53 ms on a 2-vCPU AMD
    EPYC (SGD with momentum, one measurement on a quiet machine, as a
    guide to the scale).

    Args:
        vocab_size: Number of token ids (inputs are int32 in
            `[0, vocab_size)`).
        length: Sequence length.
        dim: Model width, divisible by `heads`.
        heads: Attention heads.
        ff_dim: Width of the feed-forward hidden layer.
        blocks: Number of encoder blocks.
        classes: Number of classes.
        name: The model's name.

    Returns:
        An uncompiled functional `keras.Model` taking `(batch, length)`
        int32 token ids.

    Raises:
        ValueError: If `dim` is not divisible by `heads`.
    """
    import keras  # pylint: disable=import-outside-toplevel

    if dim % heads:
        raise ValueError(
            f"`dim` must be divisible by `heads`. Received: dim={dim}, heads={heads}"
        )
    layers = keras.layers
    tokens = keras.Input((length,), dtype="int32", name="tokens")
    h = layers.Embedding(vocab_size, dim, name="embed")(tokens)
    for i in range(blocks):
        attention = layers.MultiHeadAttention(heads, dim // heads, name=f"mha{i}")(h, h)
        h = layers.LayerNormalization(name=f"ln{i}a")(h + attention)
        ff = layers.Dense(ff_dim, activation="relu", name=f"ff{i}a")(h)
        h = layers.LayerNormalization(name=f"ln{i}b")(h + layers.Dense(dim, name=f"ff{i}b")(ff))
    logits = layers.Dense(classes, name="head")(layers.GlobalAveragePooling1D(name="pool")(h))
    return keras.Model(tokens, logits, name=name)
