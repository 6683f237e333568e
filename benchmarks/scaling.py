r"""Scaling of RigL: the mask update as a layer grows, and MirroredStrategy.

Two measurements, each configuration in a fresh subprocess (this script run
with `--worker ...`, printing one `RESULT {json}` line):

* **Mask update vs layer size.** One float32 kernel of `N` parameters
  (`(N / 1000, 1000)`, `N` from 1e5 to 1e8 by default) at 90% sparsity
  (a random mask with exactly 10% active), a random dense gradient and an
  SGD optimizer with momentum built on the kernel. Timed, each inside its
  own `tf.function` (traced by a first, untimed call), median over
  `--repeats` calls (more for small sizes, see `--min_seconds`) of the wall
  time and of the process CPU time (all threads; less sensitive than wall
  time to other processes on a shared machine):

  - `update`: `rigl_keras.updaters.RigL().update(kernel, mask, gradient,
    drop_fraction=0.3, seed)` alone, its outputs materialized;
  - `full`: what `RigLCallback` does per layer: the update, assigning the
    new mask and kernel, and `rigl_keras.optimizer_state.
    reset_optimizer_state` (the momentum at every changed position).

  A fresh process per size makes its peak memory measurable: the peak
  resident set size (Linux `VmHWM`, else `getrusage`) over the timed calls
  and the tracing call, minus the resident size once the tensors exist, is
  the update's extra peak memory (TensorFlow's
  `get_memory_info("CPU:0")` reports 0 on CPU). The log-log slope of the
  median time against `N` is fitted by least squares over all sizes and over
  the two largest (small sizes are dominated by fixed per-call costs). The
  update is O(N): element-wise passes, and per selection (`select_top_k`,
  two per update, `k = 0.3 * nnz = 0.03 N`) a `tf.math.top_k` over a random
  sample of N / 16 scores that bounds the k-th score from below, a pass
  keeping the scores above that bound (about k of them) and a `top_k` over
  those alone; so the expected slope is 1, pushed up by memory-bound passes
  over tensors that outgrow the caches. The CPU time of each of those
  passes, and of one `top_k` over all N scores for comparison, is also
  reported
  (`components_cpu_seconds`), to show where the time goes.

* **MirroredStrategy on 1 vs 2 logical CPU devices.** LeNet-300-100 with
  `MaskedDense` layers (266k parameters), 90% ERK, `RigLCallback(
  update_freq=--update_freq, drop_fraction_schedule="constant")`, SGD with
  momentum, a global batch of 128 synthetic MNIST-shaped examples, under
  `tf.distribute.MirroredStrategy` over `d` logical devices the physical
  CPU is split into (`d = 1` is one device, no split). After a warm-up fit
  (tracing, one update), `--repeats` timed fits. Reported: the median wall
  time of a training step that has no mask update (batch begin to batch
  end, callbacks included) and the median time of `RigLCallback`'s mask
  update (its `_on_update_step`: the update function on every layer and
  the read-back of its results), and the final sparsity. Two logical
  devices on the same cores share one thread pool: this shows the cost of
  the replication and cross-replica reductions, not a speed-up.

The machine may be shared and busy: all times are medians, and the report
records load averages before and after.

Usage:

    python -m benchmarks.scaling
    python -m benchmarks.scaling --sizes 100000,1000000 --repeats 3 \
        --devices 1,2 --output /tmp/scaling.json

The JSON written to `--output` (default `benchmarks/results/scaling.json`)
holds the command, the date, machine facts, every measurement, the slopes and
a markdown table (also printed).
"""

import argparse
import json
import math
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

from benchmarks import _common

_HERE = pathlib.Path(__file__).resolve().parent

_DEFAULT_OUTPUT = _HERE / "results" / "scaling.json"
_DEFAULT_SIZES = (10**5, 10**6, 10**7, 10**8)
_COLUMNS = 1000
_SPARSITY = 0.9
_DROP_FRACTION = 0.3
# Rough peak bytes per parameter of the `full` update (inputs included);
# a size is skipped if the machine has less memory available than this.
_BYTES_PER_PARAM_NEEDED = 64


# ----------------------------------------------------------------------
# Small helpers (no TensorFlow).


def kernel_shape(size):
    """The 2-D kernel shape of `size` parameters used by the benchmark.

    Args:
        size: Number of parameters, a positive multiple of 1000.

    Returns:
        `(size // 1000, 1000)`.

    Raises:
        ValueError: If `size` is not a positive multiple of 1000.

    Example:

    >>> kernel_shape(10**6)
    (1000, 1000)
    """
    if size <= 0 or size % _COLUMNS:
        raise ValueError(
            f"`size` must be a positive multiple of {_COLUMNS}. Received: size={size}"
        )
    return (size // _COLUMNS, _COLUMNS)


def loglog_slope(sizes, seconds):
    """Least-squares slope of log(seconds) against log(sizes).

    Args:
        sizes: At least two distinct positive sizes.
        seconds: Positive times, one per size.

    Returns:
        The slope (1.0 means time proportional to size), or None with fewer
        than two points.

    Example:

    >>> round(loglog_slope([1e5, 1e6, 1e7], [0.01, 0.1, 1.0]), 6)
    1.0
    >>> round(loglog_slope([10, 100], [1.0, 100.0]), 6)
    2.0
    """
    if len(sizes) < 2:
        return None
    xs = [math.log(s) for s in sizes]
    ys = [math.log(t) for t in seconds]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    return sxy / sxx


def _rss_mib():
    kib = _common.proc_kib("/proc/self/status", "VmRSS")
    return None if kib is None else kib / 1024


def _reset_peak_rss():
    """Resets the peak RSS (VmHWM) to the current RSS; False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib():
    kib = _common.proc_kib("/proc/self/status", "VmHWM")
    if kib is None:  # Not Linux: the process's lifetime peak (KiB on Linux).
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024


# ----------------------------------------------------------------------
# Workers (run in a fresh process each).


def update_worker(size, repeats, seed, min_seconds=2.0):
    """Times the RigL mask update of one kernel of `size` parameters.

    The gradient is fixed, so after the first `full` call the update drops
    the connections it has just grown (zero-initialized) and regrows them:
    `changed` falls to 0 but every op still runs over all `size` positions.

    Args:
        size: Number of parameters (a multiple of 1000).
        repeats: Minimum timed calls of each function.
        seed: Seed of the data and of the update's tie-breaks.
        min_seconds: Keep calling (up to `10 * repeats` calls) until the
            timed calls of a function add up to this.

    Returns:
        A JSON-serializable dict: `size`, `shape`, `update_seconds` and
        `full_seconds` (wall, lists) and their medians, the same in process
        CPU seconds (all threads; `*_cpu_seconds`), `nnz_before`/`nnz_after`,
        `changed` (positions grown or dropped by each `full` call, the
        tracing call first), `baseline_rss_mib`,
        `peak_rss_mib`, `extra_peak_mib`, `extra_bytes_per_param`,
        `peak_method`, and `components_cpu_seconds` (see
        `_time_components`; measured after the peak memory).
    """
    # pylint: disable=g-import-not-at-top,import-outside-toplevel
    import keras
    import tensorflow as tf

    from rigl_keras import optimizer_state
    from rigl_keras import updaters

    shape = kernel_shape(size)
    active = size - int(round(_SPARSITY * size))
    generator = tf.random.Generator.from_seed(seed)
    # Exactly `active` ones: the ranks of a random permutation.
    order = tf.random.experimental.stateless_shuffle(tf.range(size), seed=[seed, 1])
    mask = tf.reshape(tf.cast(order < active, tf.float32), shape)
    del order
    kernel = keras.Variable(generator.normal(shape) * mask, name="kernel")
    mask_var = keras.Variable(mask, trainable=False, name="mask")
    gradient = generator.normal(shape)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build([kernel])
    for slot in optimizer.momentums:
        slot.assign(generator.normal(shape))
    del mask
    updater = updaters.RigL()
    fraction = tf.constant(_DROP_FRACTION, tf.float64)

    @tf.function
    def update(step):
        seed_pair = tf.stack([tf.constant(seed, tf.int64), step])
        return updater.update(kernel.value, mask_var.value, gradient, fraction, seed_pair)

    @tf.function
    def full(step):
        seed_pair = tf.stack([tf.constant(seed, tf.int64), step])
        result = updater.update(
            kernel.value, mask_var.value, gradient, fraction, seed_pair
        )
        changed = tf.logical_or(result.grown, result.dropped)
        mask_var.assign(result.mask)
        kernel.assign(result.kernel)
        optimizer_state.reset_optimizer_state(optimizer, kernel, changed)
        return tf.reduce_sum(tf.cast(changed, tf.int64))

    nnz_before = int(tf.reduce_sum(mask_var.value).numpy())
    baseline = _rss_mib()
    peak_method = "VmHWM" if _reset_peak_rss() else "ru_maxrss"
    times = {"update": [], "full": []}
    cpu_times = {"update": [], "full": []}
    changed = []
    for name, function in (("update", update), ("full", full)):
        call = 0
        # The first call traces; then at least `repeats` timed calls, more
        # (up to 10x) until they add up to `min_seconds` (small sizes).
        while call <= repeats or (
            sum(times[name]) < min_seconds and call <= 10 * repeats
        ):
            step = tf.constant(call, tf.int64)
            start, cpu_start = time.perf_counter(), time.process_time()
            out = function(step)
            if name == "update":
                out.mask.numpy()
                out.kernel.numpy()
            else:
                changed.append(int(out.numpy()))
            del out
            if call:
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
            call += 1
    peak = _peak_rss_mib()
    extra = None if baseline is None else max(0.0, peak - baseline)
    components = _time_components(tf, kernel.value, gradient, size, repeats)
    return {
        "components_cpu_seconds": components,
        "size": size,
        "shape": list(shape),
        "update_seconds": times["update"],
        "full_seconds": times["full"],
        "median_update_seconds": _common.median(times["update"]),
        "median_full_seconds": _common.median(times["full"]),
        "update_cpu_seconds": cpu_times["update"],
        "full_cpu_seconds": cpu_times["full"],
        "median_update_cpu_seconds": _common.median(cpu_times["update"]),
        "median_full_cpu_seconds": _common.median(cpu_times["full"]),
        "nnz_before": nnz_before,
        "nnz_after": int(tf.reduce_sum(mask_var.value).numpy()),
        "changed": changed,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": peak,
        "extra_peak_mib": extra,
        "extra_bytes_per_param": None if extra is None else extra * 2**20 / size,
        "peak_method": peak_method,
    }


def _time_components(tf, kernel, scores, size, repeats):
    """Median CPU seconds of the passes `select_top_k` makes over `size`.

    One `select_top_k` (the update makes two) is: `top_k` over a random
    sample of `size / 16` scores (`sample_top_k`, which gives a lower bound
    of the k-th score, `k = 0.03 * size`), the scores at or above that bound
    kept (`prefilter`) and `top_k` over those (`subset_top_k`); around them
    the update makes element-wise passes (`abs`, `where`, casts:
    `elementwise`). `full_top_k` is one `top_k` over all scores, what the
    selection would cost without the prefilter. Each runs alone in a
    `tf.function` (traced first, untimed).
    """
    k = int(round((1 - _SPARSITY) * _DROP_FRACTION * size))
    flat = tf.reshape(scores, [-1])
    sample_size = max(1, size // 16)
    k_sample = min(sample_size, int(k / 16 + 4 * (k / 16) ** 0.5 + 8))
    positions = tf.random.stateless_uniform(
        [sample_size], seed=[0, 0], minval=0, maxval=size, dtype=tf.int32
    )
    low = tf.reduce_min(tf.math.top_k(tf.gather(flat, positions), k=k_sample).values)
    subset = tf.boolean_mask(flat, flat >= low)
    functions = {
        "sample_top_k": (
            lambda x, p: tf.math.top_k(tf.gather(x, p), k=k_sample, sorted=False).values,
            (flat, positions),
        ),
        "prefilter": (lambda x, t: tf.boolean_mask(x, x >= t), (flat, low)),
        "subset_top_k": (
            lambda x: tf.math.top_k(x, k=min(k, int(subset.shape[0])), sorted=False).values,
            (subset,),
        ),
        "full_top_k": (lambda x: tf.math.top_k(x, k=k, sorted=False).values, (flat,)),
        "elementwise": (
            lambda w, g: tf.where(tf.abs(w) > 0, tf.abs(g), -float("inf")),
            (kernel, scores),
        ),
    }
    medians = {}
    for name, (function, args) in functions.items():
        function = tf.function(function)
        function(*args).numpy()
        seconds = []
        for _ in range(repeats):
            start = time.process_time()
            function(*args).numpy()
            seconds.append(time.process_time() - start)
        medians[name] = _common.median(seconds)
    return medians


def mirrored_worker(devices, steps_per_epoch, epochs, repeats, update_freq, seed):
    """Times RigL training under MirroredStrategy on `devices` logical CPUs.

    Args:
        devices: Number of logical CPU devices (replicas), 1 or more.
        steps_per_epoch: Steps of each epoch of a timed fit.
        epochs: Epochs of a timed fit.
        repeats: Timed fits.
        update_freq: RigL's update interval.
        seed: Seed of data, weights and masks.

    Returns:
        A JSON-serializable dict: `devices`, `replicas`, `step_seconds`
        (training steps without a mask update, all fits), `update_seconds`
        (timed mask updates), `first_update_seconds` (the warm-up's, with
        tracing), their medians, `sparsity` and `zeros_match_targets`.
    """
    # pylint: disable=g-import-not-at-top,import-outside-toplevel
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    if devices > 1:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * devices
        )
    import keras
    import numpy as np

    import rigl_keras
    from rigl_keras import distributions

    strategy = tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(devices)]
    )

    class TimedRigL(rigl_keras.RigLCallback):
        """Clocks each mask update (the callback's whole update step)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.update_seconds = []

        def on_train_batch_end(self, batch, logs=None):
            due = self.next_update_step
            start = time.perf_counter()
            super().on_train_batch_end(batch, logs)
            if due is not None and self.next_update_step != due:
                self.update_seconds.append(time.perf_counter() - start)

    class BatchStart(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

    class BatchEnd(keras.callbacks.Callback):
        """Placed last: batch wall time, callbacks (and any update) included."""

        def __init__(self, start, rigl):
            super().__init__()
            self.starter, self.rigl = start, rigl
            self.seconds = []

        def on_train_batch_end(self, batch, logs=None):
            if len(self.rigl.update_seconds) == self._updates:
                self.seconds.append(time.perf_counter() - self.starter.start)
            self._updates = len(self.rigl.update_seconds)

        def on_train_begin(self, logs=None):
            self._updates = len(self.rigl.update_seconds)

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    batch = 128
    x = rng.random((batch * 50, 784), dtype=np.float32)
    y = rng.integers(0, 10, size=batch * 50).astype(np.int32)
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(batch, drop_remainder=True)
        .repeat()
        .prefetch(2)
        .with_options(options)
    )
    with strategy.scope():
        model = keras.Sequential([
            keras.Input((784,)),
            rigl_keras.MaskedDense(300, activation="relu", name="fc1"),
            rigl_keras.MaskedDense(100, activation="relu", name="fc2"),
            rigl_keras.MaskedDense(10, name="fc3"),
        ])
        model.compile(
            keras.optimizers.SGD(0.01, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    rigl = TimedRigL(
        sparsity=_SPARSITY,
        update_freq=update_freq,
        drop_fraction=_DROP_FRACTION,
        drop_fraction_schedule="constant",
        end_step=10**9,
        seed=seed,
    )
    model.fit(dataset, epochs=1, steps_per_epoch=update_freq, verbose=0,
              callbacks=[rigl])
    first_update = list(rigl.update_seconds)
    rigl.update_seconds.clear()
    steps = []
    for _ in range(repeats):
        start = BatchStart()
        end = BatchEnd(start, rigl)
        model.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch,
                  verbose=0, callbacks=[start, rigl, end])
        # The first step of each fit (its train function retrace) is left out.
        steps.extend(end.seconds[1:])
    layers = rigl_keras.masked_layers(model)
    shapes = {l.name: tuple(l.mask.shape) for l in layers}
    targets = {l.name: rigl.target_sparsities[l.kernel.path] for l in layers}
    expected = distributions.layer_zero_counts(shapes, targets)
    zeros = {}
    for layer in layers:
        local = strategy.experimental_local_results(layer.mask.value)
        zeros[layer.name] = [int(np.sum(np.asarray(m) == 0)) for m in local]
    return {
        "devices": devices,
        "replicas": strategy.num_replicas_in_sync,
        "trainable_params": int(
            sum(np.prod(v.shape) for v in model.trainable_weights)
        ),
        "step_seconds": steps,
        "update_seconds": list(rigl.update_seconds),
        "first_update_seconds": first_update,
        "median_step_seconds": _common.median(steps),
        "median_update_seconds": _common.median(rigl.update_seconds),
        "sparsity": rigl.current_sparsity(),
        "zeros_match_targets": all(
            z == int(expected[name]) for name, counts in zeros.items() for z in counts
        ),
    }


# ----------------------------------------------------------------------
# Driver.


def _run_worker(args, timeout):
    """Runs this module with `args` in a fresh process; returns its RESULT."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The worker imports this checkout's `benchmarks` and `rigl_keras`.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(_HERE.parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling"] + args,
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(
        f"worker {args} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )


def _machine_facts():
    """`machine_facts()` of `benchmarks.overhead`."""
    # Imported here: overhead imports TensorFlow, which the driver avoids.
    from benchmarks import overhead  # pylint: disable=import-outside-toplevel
    return overhead.machine_facts()


def markdown_table(update_rows, slopes, mirrored_rows):
    """Markdown tables: the update vs size (and its passes), MirroredStrategy.

    Args:
        update_rows: Results of `update_worker` (or `{"size", "skipped"}`);
            rows with `components_cpu_seconds` also fill a table of the
            passes of one `select_top_k`.
        slopes: `{kind: {"all": slope, "largest_two": slope}}` for kinds
            `"full"` (wall) and `"full_cpu"`.
        mirrored_rows: Results of `mirrored_worker`.

    Returns:
        The tables as one string.
    """

    def fmt(value, spec=".2f"):
        return "n/a" if value is None else format(value, spec)

    lines = [
        "| parameters | update ms | update + assign + optimizer reset ms "
        "| same, CPU ms | CPU ns / parameter | extra peak MiB "
        "| extra bytes / parameter |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in update_rows:
        if row.get("skipped"):
            lines.append(f"| {row['size']:.0e} | skipped: {row['skipped']} | | | | | |")
            continue
        cpu = row["median_full_cpu_seconds"]
        lines.append(
            f"| {row['size']:.0e} | {1e3 * row['median_update_seconds']:.1f} "
            f"| {1e3 * row['median_full_seconds']:.1f} | {1e3 * cpu:.1f} "
            f"| {1e9 * cpu / row['size']:.1f} "
            f"| {fmt(row['extra_peak_mib'], ',.0f')} "
            f"| {fmt(row['extra_bytes_per_param'], '.0f')} |"
        )
    with_components = [r for r in update_rows if r.get("components_cpu_seconds")]
    if with_components:
        names = list(with_components[0]["components_cpu_seconds"])
        lines += [
            "",
            "| parameters | " + " | ".join(f"{n} CPU ms" for n in names)
            + " | CPU ns / parameter (sum of the selection's passes) |",
            "|---:|" + "---:|" * (len(names) + 1),
        ]
        for row in with_components:
            parts = row["components_cpu_seconds"]
            # full_top_k is the alternative the prefilter replaces, not a pass.
            total = sum(parts[n] for n in names if n != "full_top_k")
            lines.append(
                f"| {row['size']:.0e} | "
                + " | ".join(f"{1e3 * parts[n]:.1f}" for n in names)
                + f" | {1e9 * total / row['size']:.1f} |"
            )
    lines.append("")
    wall, cpu = slopes.get("full", {}), slopes.get("full_cpu", {})
    lines.append(
        "Log-log slope of the full update's time vs parameters: wall "
        f"{fmt(wall.get('all'))} over all sizes, {fmt(wall.get('largest_two'))} "
        f"over the two largest; CPU {fmt(cpu.get('all'))} and "
        f"{fmt(cpu.get('largest_two'))}."
    )
    lines += [
        "",
        "| MirroredStrategy devices | replicas | step ms (median, no update) "
        "| mask update ms (median) | first update ms (with tracing) | sparsity |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in mirrored_rows:
        first = row["first_update_seconds"]
        lines.append(
            f"| {row['devices']} | {row['replicas']} "
            f"| {1e3 * row['median_step_seconds']:.2f} "
            f"| {1e3 * row['median_update_seconds']:.1f} "
            f"| {fmt(1e3 * first[0] if first else None, '.0f')} "
            f"| {row['sparsity']:.4f} |"
        )
    return "\n".join(lines)


def _int_list(text):
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from error
    if not values or any(v < 1 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(
            f"must be distinct positive integers separated by commas; got {text!r}"
        )
    return values


def parse_args(argv=None):
    """Parses the command line.

    Args:
        argv: Arguments without the program name; `None` reads `sys.argv`.

    Returns:
        An `argparse.Namespace`.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=_int_list, default=list(_DEFAULT_SIZES),
                        help="kernel sizes in parameters, multiples of 1000 "
                             "(1e5 notation allowed)")
    parser.add_argument("--repeats", type=_common.positive_int, default=5,
                        help="timed calls per size / timed fits per device count")
    parser.add_argument("--min_seconds", type=float, default=2.0,
                        help="per size, keep timing (up to 10x --repeats "
                             "calls) until the calls add up to this")
    parser.add_argument("--devices", type=_int_list, default=[1, 2],
                        help="logical CPU device counts for MirroredStrategy")
    parser.add_argument("--steps_per_epoch", type=_common.positive_int, default=100)
    parser.add_argument("--epochs", type=_common.positive_int, default=2)
    parser.add_argument("--update_freq", type=_common.positive_int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=_common.positive_int, default=3600,
                        help="seconds allowed to each worker process")
    parser.add_argument("--output", default=str(_DEFAULT_OUTPUT),
                        help="JSON file to write; '' to write none")
    parser.add_argument("--worker", choices=("update", "mirrored"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--device_count", type=int, help=argparse.SUPPRESS)
    config = parser.parse_args(argv)
    if config.worker is None:
        for size in config.sizes:
            if size % _COLUMNS:
                parser.error(f"--sizes must be multiples of {_COLUMNS}, got {size}")
        if config.steps_per_epoch < 2:
            parser.error("--steps_per_epoch must be >= 2")
    return config


def run(config):
    """Runs the benchmark described by `config`; returns the report dict."""
    started = time.perf_counter()
    load_before = _common.load_average()
    common = ["--repeats", str(config.repeats), "--seed", str(config.seed)]
    update_rows = []
    for size in sorted(config.sizes):
        available = _common.meminfo_gib("MemAvailable")
        needed = _BYTES_PER_PARAM_NEEDED * size / 2**30
        if available is not None and available < needed:
            update_rows.append({
                "size": size,
                "skipped": f"{available:.1f} GiB available, ~{needed:.1f} GiB needed",
            })
            continue
        row = _run_worker(
            ["--worker", "update", "--size", str(size),
             "--min_seconds", str(config.min_seconds)] + common,
            config.timeout,
        )
        row["mem_available_gib_before"] = available
        update_rows.append(row)
        print(f"update {size:.0e}: {1e3 * row['median_full_seconds']:.1f} ms, "
              f"extra peak {row['extra_peak_mib']} MiB", file=sys.stderr, flush=True)
    timed = [r for r in update_rows if not r.get("skipped")]
    sizes = [r["size"] for r in timed]
    slopes = {}
    for kind in ("full", "update", "full_cpu", "update_cpu"):
        seconds = [r[f"median_{kind}_seconds"] for r in timed]
        slopes[kind] = {
            "all": loglog_slope(sizes, seconds),
            "largest_two": loglog_slope(sizes[-2:], seconds[-2:]),
        }
    mirrored_rows = []
    for devices in config.devices:
        row = _run_worker(
            ["--worker", "mirrored", "--device_count", str(devices),
             "--steps_per_epoch", str(config.steps_per_epoch),
             "--epochs", str(config.epochs),
             "--update_freq", str(config.update_freq)] + common,
            config.timeout,
        )
        mirrored_rows.append(row)
        print(f"mirrored {devices}: step {1e3 * row['median_step_seconds']:.2f} ms, "
              f"update {1e3 * row['median_update_seconds']:.1f} ms",
              file=sys.stderr, flush=True)
    return {
        "benchmark": "scaling",
        "command": _common.command_line("benchmarks.scaling", config.argv),
        "date": _common.utc_timestamp(),
        "duration_seconds": round(time.perf_counter() - started, 1),
        "config": {
            "sizes": sorted(config.sizes),
            "kernel_columns": _COLUMNS,
            "sparsity": _SPARSITY,
            "drop_fraction": _DROP_FRACTION,
            "repeats": config.repeats,
            "min_seconds": config.min_seconds,
            "devices": list(config.devices),
            "steps_per_epoch": config.steps_per_epoch,
            "epochs": config.epochs,
            "update_freq": config.update_freq,
            "seed": config.seed,
            "update": "RigL().update in a tf.function, outputs materialized",
            "full": "update + assign mask and kernel + reset SGD momentum at "
                    "changed positions, in a tf.function",
            "mirrored_model": "LeNet-300-100 MaskedDense, 90% ERK, SGD momentum, "
                              "global batch 128, synthetic MNIST-shaped data",
            "process": "a fresh subprocess per size and per device count",
        },
        "machine": {
            **_machine_facts(),
            "load_average_before": load_before,
            "load_average_after": _common.load_average(),
            "note": "shared, busy machine: medians; absolute times drift",
        },
        "update": update_rows,
        "slopes": slopes,
        "mirrored": mirrored_rows,
        "markdown": markdown_table(update_rows, slopes, mirrored_rows),
    }


def main(argv=None):
    """Command line entry point.

    Args:
        argv: Arguments without the program name; `None` reads `sys.argv`.

    Returns:
        The report dict (written to `--output` unless empty), or, with
        `--worker`, the worker's result (printed as a `RESULT` line).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config = parse_args(argv)
    if config.worker == "update":
        result = update_worker(
            config.size, config.repeats, config.seed, config.min_seconds
        )
        print("RESULT " + json.dumps(result), flush=True)
        return result
    if config.worker == "mirrored":
        result = mirrored_worker(
            config.device_count, config.steps_per_epoch, config.epochs,
            config.repeats, config.update_freq, config.seed,
        )
        print("RESULT " + json.dumps(result), flush=True)
        return result
    config.argv = argv
    report = run(config)
    print(report["markdown"])
    if config.output:
        output = _common.write_json(config.output, report)
        print(f"Wrote {output}")
    return report


if __name__ == "__main__":
    main()
