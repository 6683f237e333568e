"""Helper of `tests/test_multi_worker.py` and `tests/test_custom_loop.py`.

Trains a small MLP of `MaskedDense` layers with `RigLCallback` in a custom
training loop driven by `rigl_keras.CustomLoop`, in a fresh process:

    python tests/_multi_worker_script.py --mode=MODE --out=DIR

Modes:

* `worker`: one worker of a `tf.distribute.MultiWorkerMirroredStrategy`
  (CPU, RING collectives). The cluster and this worker's index come from
  `TF_CONFIG`, which the test sets per process. The dataset of global
  batches is sharded by `experimental_distribute_dataset` (auto-shard policy
  DATA): each worker trains on half of every global batch.
* `single`: the same training in one process without a strategy, on the
  full global batches (the reference the workers must reproduce).
* `fit`: one worker of the same cluster calling Keras' own `model.fit`,
  first with a plain `Dense` model; if that works, RigL with `fit` too.
* `mirrored`: `MirroredStrategy` over two logical CPU devices with the
  custom loop, then the `single` run in the same process.

`worker`, `single` and `mirrored` write `<name>.npz` (every model and
optimizer variable per replica, and the masks after `begin()`) and
`<name>.json` (targets, the steps at which masks changed, losses, logs) into
`--out`; `fit` writes `fit-<index>.json` (and `.npz` when fit works).
"""

import argparse
import json
import os
import pathlib
import sys
import traceback

_GLOBAL_BATCH = 32
_SAMPLES = 256  # 8 global batches; the dataset repeats.
_STEPS = 28
_UPDATE_FREQ = 4
_END_STEP = 24  # Updates at 4, 8, ..., 24; the cosine fraction is 0 at 24.
_SEED = 7


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mode", required=True, choices=("worker", "single", "fit", "mirrored")
    )
    parser.add_argument("--out", required=True)
    return parser.parse_args(argv)


def _data():
    import numpy as np  # pylint: disable=g-import-not-at-top

    rng = np.random.default_rng(0)
    x = rng.standard_normal((_SAMPLES, 16)).astype("float32")
    teacher = rng.standard_normal((16, 4)).astype("float32")
    y = np.tanh(x @ teacher).astype("float32")
    return x, y


def _model(keras, rigl_keras):
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((16,)),
        rigl_keras.MaskedDense(64, activation="relu", name="fc1"),
        rigl_keras.MaskedDense(64, activation="relu", name="fc2"),
        rigl_keras.MaskedDense(4, name="out"),
    ])


def _callback(rigl_keras):
    return rigl_keras.RigLCallback(
        sparsity=0.9,
        update_freq=_UPDATE_FREQ,
        drop_fraction=0.3,
        end_step=_END_STEP,
        seed=_SEED,
    )


def _local(strategy, variable):
    """Per-replica NumPy copies of a Keras variable held by this process."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    value = getattr(variable, "value", variable)
    if strategy is None:
        return [np.asarray(value)]
    return [np.asarray(v) for v in strategy.experimental_local_results(value)]


def _masks(rigl_keras, model):
    import numpy as np  # pylint: disable=g-import-not-at-top

    return {
        layer.name: np.asarray(layer.mask).copy()
        for layer in rigl_keras.masked_layers(model)
    }


def _save(out, name, strategy, model, optimizer, initial_masks, summary):
    """Writes `<name>.npz` and `<name>.json` into `out`."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    arrays = {}
    for variable in list(model.weights) + list(optimizer.variables):
        for replica, value in enumerate(_local(strategy, variable)):
            arrays[f"{variable.path}@{replica}"] = value
    for layer_name, mask in initial_masks.items():
        arrays[f"initial_mask/{layer_name}"] = mask
    np.savez(out / f"{name}.npz", **arrays)
    (out / f"{name}.json").write_text(json.dumps(summary, indent=1))


def _train(tf, keras, rigl_keras, strategy, shard_log=None):
    """Trains with CustomLoop; `strategy=None` means no strategy.

    Returns `(model, optimizer, initial_masks, summary)`.
    """
    import numpy as np  # pylint: disable=g-import-not-at-top

    x, y = _data()
    scope_strategy = strategy or tf.distribute.get_strategy()
    with scope_strategy.scope():
        model = _model(keras, rigl_keras)
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    callback = _callback(rigl_keras)
    loop = rigl_keras.CustomLoop(callback, model, optimizer)
    loop.begin()
    initial_masks = _masks(rigl_keras, model)

    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            pred = model(xb, training=True)
            per_example = tf.reduce_mean(tf.square(yb - pred), axis=-1)
            loss = tf.nn.compute_average_loss(
                per_example, global_batch_size=_GLOBAL_BATCH
            )
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(_GLOBAL_BATCH)
    dataset = dataset.repeat()
    if strategy is None:
        train_step = tf.function(replica_step)
    else:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        dataset = strategy.experimental_distribute_dataset(
            dataset.with_options(options)
        )

        @tf.function
        def train_step(xb, yb):
            losses = strategy.run(replica_step, args=(xb, yb))
            return strategy.reduce("SUM", losses, axis=None)

    changed_steps, losses = [], []
    masks = initial_masks
    iterator = iter(dataset)
    for step in range(1, _STEPS + 1):
        xb, yb = next(iterator)
        if shard_log is not None and step <= 2:
            shard_log.append(
                [np.asarray(v).tolist() for v in strategy.experimental_local_results(xb)]
            )
        losses.append(float(train_step(xb, yb)))
        loop.step()
        new_masks = _masks(rigl_keras, model)
        if any(not np.array_equal(masks[k], new_masks[k]) for k in masks):
            changed_steps.append(step)
        masks = new_masks
    logs = loop.logs()
    loop.end()
    summary = {
        "targets": callback.target_sparsities,
        "changed_steps": changed_steps,
        "losses": losses,
        "logs": {k: float(v) for k, v in logs.items()},
        "iterations": int(np.asarray(optimizer.iterations.value)),
    }
    return model, optimizer, initial_masks, summary


def _multi_worker_strategy(tf):
    """The cluster of `TF_CONFIG`, CPU only, RING collectives."""
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING
    )
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=options
    )


def _worker(out):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    strategy = _multi_worker_strategy(tf)
    import keras  # pylint: disable=g-import-not-at-top
    import rigl_keras  # pylint: disable=g-import-not-at-top

    index = strategy.cluster_resolver.task_id
    with strategy.scope():
        model = _model(keras, rigl_keras)
    try:
        rigl_keras.CustomLoop(
            rigl_keras.RigLCallback(update_freq=4, end_step=8, seed=None),
            model, keras.optimizers.SGD(0.1))
        seed_none_error = None
    except ValueError as error:
        seed_none_error = str(error)
    shard_log = []
    model, optimizer, initial, summary = _train(
        tf, keras, rigl_keras, strategy, shard_log
    )
    summary.update(
        task_id=index,
        num_replicas_in_sync=strategy.num_replicas_in_sync,
        first_batches=shard_log,
        seed_none_error=seed_none_error,
    )
    _save(pathlib.Path(out), f"worker-{index}", strategy, model, optimizer,
          initial, summary)


def _single(out, name="single"):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import keras  # pylint: disable=g-import-not-at-top
    import rigl_keras  # pylint: disable=g-import-not-at-top

    model, optimizer, initial, summary = _train(tf, keras, rigl_keras, None)
    _save(pathlib.Path(out), name, None, model, optimizer, initial, summary)


def _mirrored(out):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras  # pylint: disable=g-import-not-at-top
    import rigl_keras  # pylint: disable=g-import-not-at-top

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    model, optimizer, initial, summary = _train(tf, keras, rigl_keras, strategy)
    summary["num_replicas_in_sync"] = strategy.num_replicas_in_sync
    _save(pathlib.Path(out), "mirrored", strategy, model, optimizer, initial,
          summary)
    _single(out)


def _fit(out):
    """`model.fit` under MultiWorkerMirroredStrategy (Keras 3 may fail)."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    strategy = _multi_worker_strategy(tf)
    import keras  # pylint: disable=g-import-not-at-top
    import rigl_keras  # pylint: disable=g-import-not-at-top

    index = strategy.cluster_resolver.task_id
    out = pathlib.Path(out)
    x, y = _data()
    summary = {"task_id": index}
    try:
        with strategy.scope():
            keras.utils.set_random_seed(0)
            plain = keras.Sequential([keras.Input((16,)), keras.layers.Dense(4)])
            plain.compile(keras.optimizers.SGD(0.05), "mse")
        plain.fit(x, y, batch_size=_GLOBAL_BATCH, epochs=1, verbose=0)
    except Exception as error:  # pylint: disable=broad-except
        summary.update(
            plain_fit_ok=False,
            error_type=type(error).__name__,
            error_head=str(error)[:200],
            error_tail=str(error)[-300:],
            frames=[
                f"{pathlib.Path(f.filename).name}:{f.name}"
                for f in traceback.extract_tb(error.__traceback__)
            ],
        )
        (out / f"fit-{index}.json").write_text(json.dumps(summary, indent=1))
        return
    summary["plain_fit_ok"] = True
    with strategy.scope():
        model = _model(keras, rigl_keras)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
    callback = _callback(rigl_keras)
    initial_masks = {}

    class InitialMasks(keras.callbacks.Callback):
        """Placed after the RigL callback: keeps the masks it started with."""

        def on_train_begin(self, logs=None):
            initial_masks.update(_masks(rigl_keras, self.model))

    steps_per_epoch = _SAMPLES // _GLOBAL_BATCH
    epochs = -(-_STEPS // steps_per_epoch)
    model.fit(x, y, batch_size=_GLOBAL_BATCH, epochs=epochs, shuffle=False,
              verbose=0, callbacks=[callback, InitialMasks()])
    summary["targets"] = callback.target_sparsities
    summary["iterations"] = int(np.asarray(model.optimizer.iterations.value))
    _save(out, f"fit-{index}", strategy, model, model.optimizer, initial_masks,
          summary)


def main(argv=None):
    args = _parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    {"worker": _worker, "single": _single, "fit": _fit, "mirrored": _mirrored}[
        args.mode
    ](args.out)
    print(f"DONE {args.mode}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
