"""Driving the mask callbacks from a custom training loop.

`model.fit` calls a callback's hooks for you. In a loop of your own (a
`tf.GradientTape` step, `strategy.run` under a `tf.distribute` strategy —
the supported path for `MultiWorkerMirroredStrategy`, where Keras 3's `fit`
does not work), `CustomLoop` calls them: `begin()` once before the first
step, `step()` after every optimizer step, `end()` at the end.

The masked layers record the dense gradient themselves when called with
`training=True` inside the tape, so the train step needs nothing else; it
must only be traced *after* `begin()` (which attaches the recorders).

Example:

```python
with strategy.scope():
    model = build_masked_model()
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
loop = rigl_keras.CustomLoop(
    rigl_keras.RigLCallback(sparsity=0.9, update_freq=100,
                            end_step=7500, seed=1),
    model, optimizer)
loop.begin()

@tf.function
def train_step(x, y):
    def replica_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.nn.compute_average_loss(
                loss_fn(y, logits), global_batch_size=GLOBAL_BATCH)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
    strategy.run(replica_step, args=(x, y))

for x, y in dist_dataset:
    train_step(x, y)
    loop.step()
loop.end()
```
"""

from rigl_keras import callbacks as callbacks_lib

__all__ = ["CustomLoop"]


def _is_multi_worker(strategy):
    """Whether `strategy` has replicas in other processes than this one."""
    if strategy.num_replicas_in_sync == 1:
        return False
    return strategy.num_replicas_in_sync > len(strategy.extended.worker_devices)


class CustomLoop:
    """Runs a `RigLCallback` or `GradualPruningCallback` without `fit`.

    Args:
        callback: A `rigl_keras.callbacks.MaskCallback` (`RigLCallback`,
            `GradualPruningCallback`). Its `end_step` must be set: there is
            no `fit()` call to take 75% of.
        model: The Keras model with masked layers.
        optimizer: The optimizer the loop applies gradients with (its
            `iterations` counts the steps); defaults to `model.optimizer`.
        steps_per_call: Optimizer steps each `step()` call stands for (use
            it when one traced call runs several steps); `update_freq` and
            `begin_step` must be multiples of it.

    Raises:
        ValueError: If `callback` is not a mask callback, has no `end_step`
            or, under a multi-worker strategy, no `seed`; if there is no
            optimizer; or if `steps_per_call` is not an integer >= 1.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), rigl_keras.MaskedDense(8)])
    >>> optimizer = keras.optimizers.SGD(0.1)
    >>> loop = CustomLoop(rigl_keras.RigLCallback(
    ...     sparsity=0.5, update_freq=2, end_step=6, seed=0), model, optimizer)
    >>> loop.begin()
    >>> round(loop.logs()["sparsity"], 2)
    0.5
    """

    def __init__(self, callback, model, optimizer=None, steps_per_call=1):
        if not isinstance(callback, callbacks_lib.MaskCallback):
            raise ValueError(
                "`callback` must be a rigl_keras RigLCallback or "
                f"GradualPruningCallback. Received: callback={callback!r}"
            )
        if callback.end_step is None and callback.update_freq is not None:
            raise ValueError(
                "In a custom loop the callback needs an explicit `end_step` "
                "(there is no fit() call to take 75% of). "
                f"Received: end_step=None"
            )
        optimizer = optimizer or getattr(model, "optimizer", None)
        if optimizer is None:
            raise ValueError(
                f"Pass the optimizer: model '{model.name}' has none. "
                "Received: optimizer=None"
            )
        if (
            not isinstance(steps_per_call, int)
            or isinstance(steps_per_call, bool)
            or steps_per_call < 1
        ):
            raise ValueError(
                "`steps_per_call` must be an integer >= 1. "
                f"Received: steps_per_call={steps_per_call!r}"
            )
        if getattr(callback, "seed", 0) is None and _is_multi_worker(
            model.distribute_strategy
        ):
            raise ValueError(
                "Under a multi-worker strategy pass the same integer `seed` "
                "to the callback on every worker: each worker draws the "
                "initial masks itself. Received: seed=None"
            )
        self.callback = callback
        self.model = model
        self.optimizer = optimizer
        self.steps_per_call = steps_per_call
        # set_model first: it raises for a callback bound to another model,
        # which must then keep driving that model with its own optimizer.
        callback.set_model(model)
        callback._custom_loop_optimizer = optimizer  # pylint: disable=protected-access
        callback.set_params({"steps": None, "epochs": 1, "verbose": 0})
        self._begun = False

    def begin(self):
        """Initializes masks and recorders. Call before tracing the step."""
        if not self.optimizer.built:
            # Slot variables must be created in the strategy's scope
            # (MultiWorkerMirroredStrategy and MirroredStrategy require it).
            with self.model.distribute_strategy.scope():
                self.optimizer.build(self.model.trainable_variables)
        # The callback checks `update_freq` and `begin_step` against the
        # model's steps_per_execution; lend it steps_per_call for that check
        # and leave the model's own setting (used by fit) as it was.
        previous = getattr(self.model, "steps_per_execution", 1)
        self.model.steps_per_execution = self.steps_per_call
        try:
            self.callback.on_train_begin()
        finally:
            self.model.steps_per_execution = previous
        self.callback.on_epoch_begin(0)
        self._begun = True

    def step(self):
        """Updates the masks if the optimizer step just taken is due one.

        Call it after every call of your train step (eagerly, outside any
        `tf.function`), so that no update step is skipped.

        Raises:
            RuntimeError: If `begin()` was not called.
            ValueError: If an update step fell inside one call of several
                optimizer steps (see `steps_per_call`).
        """
        if not self._begun:
            raise RuntimeError("Call CustomLoop.begin() before the first step().")
        done = callbacks_lib._read_step(self.optimizer.iterations)  # pylint: disable=protected-access
        start = self.callback._epoch_start_step  # pylint: disable=protected-access
        self.callback.on_train_batch_end(done - start - 1)

    def logs(self):
        """The numbers the callback would write into the epoch logs."""
        logs = {}
        self.callback.on_epoch_end(0, logs)
        return logs

    def end(self):
        """Ends training with the callback (stops gradient recording)."""
        self.callback.on_train_end()
