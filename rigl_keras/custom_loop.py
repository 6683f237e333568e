"""Driving the mask callbacks from a custom training loop.

`model.fit` calls a callback's hooks for you. In a loop of your own (a
`tf.GradientTape` step, `strategy.run` under a `tf.distribute` strategy —
the supported path for `MultiWorkerMirroredStrategy`, where Keras 3's `fit`
does not work), `CustomLoop` calls them: `begin()` once before the first
step, `step()` after every optimizer step, `end()` at the end.

The optimizer's `apply` masks the gradients and records the dense gradient
an update needs (`rigl_keras.gradients`), so the train step needs nothing
else; it must only be traced *after* `begin()`, which sets that up.

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

from rigl_keras import _checks
from rigl_keras import engine as engine_lib

__all__ = ["CustomLoop"]


def _is_multi_worker(strategy):
    """Whether `strategy` has replicas in other processes than this one."""
    if strategy.num_replicas_in_sync == 1:
        return False
    return strategy.num_replicas_in_sync > len(strategy.extended.worker_devices)


class CustomLoop:
    """Runs a `RigLCallback` or `GradualPruningCallback` without `fit`.

    A thin adapter over the callback's mask engine
    (`rigl_keras.engine.MaskEngine`): `begin`, `step`, `logs` and `end` are
    its step API.

    Args:
        callback: A `rigl_keras.RigLCallback` or
            `rigl_keras.GradualPruningCallback` (or their engine). Its
            `end_step` must be set: there is no `fit()` call to take 75% of.
        model: The Keras model with masked weights.
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
        engine = getattr(callback, "engine", callback)
        if not isinstance(engine, engine_lib.MaskEngine):
            raise ValueError(
                "`callback` must be a rigl_keras RigLCallback or "
                f"GradualPruningCallback. Received: callback={callback!r}"
            )
        if engine.end_step is None and engine.update_freq is not None:
            raise ValueError(
                "In a custom loop the callback needs an explicit `end_step` "
                "(there is no fit() call to take 75% of). "
                "Received: end_step=None"
            )
        optimizer = optimizer or getattr(model, "optimizer", None)
        if optimizer is None:
            raise ValueError(
                f"Pass the optimizer: model '{model.name}' has none. "
                "Received: optimizer=None"
            )
        if not _checks.is_int(steps_per_call) or steps_per_call < 1:
            raise ValueError(
                "`steps_per_call` must be an integer >= 1. "
                f"Received: steps_per_call={steps_per_call!r}"
            )
        if getattr(engine, "seed", 0) is None and _is_multi_worker(
            model.distribute_strategy
        ):
            raise ValueError(
                "Under a multi-worker strategy pass the same integer `seed` "
                "to the callback on every worker: each worker draws the "
                "initial masks itself. Received: seed=None"
            )
        # It raises for an engine bound to another model, which must then
        # keep driving that model with its own optimizer.
        engine.bind(model)
        self.callback = callback
        self.engine = engine
        self.model = model
        self.optimizer = optimizer
        self.steps_per_call = int(steps_per_call)
        self._begun = False

    def begin(self):
        """Initializes masks and recorders. Call before tracing the step."""
        self.engine.begin(
            self.model, self.optimizer, steps_per_call=self.steps_per_call
        )
        self.engine.start_epoch(0)
        self._begun = True

    def step(self):
        """Updates the masks if the optimizer step just taken is due one.

        Call it after every call of your train step (eagerly, outside any
        `tf.function`), so that no update step is skipped.

        Returns:
            Whether the masks were updated.

        Raises:
            RuntimeError: If `begin()` was not called.
            ValueError: If an update step fell inside one call of several
                optimizer steps (see `steps_per_call`).
        """
        if not self._begun:
            raise RuntimeError("Call CustomLoop.begin() before the first step().")
        return self.engine.after_step()

    def logs(self):
        """The numbers the callback would write into the epoch logs."""
        return self.engine.logs()

    def end(self):
        """Ends training with the callback (stops gradient recording)."""
        self.engine.end()
