"""The dense gradients a RigL update grows by, and the steps that record them.

`GradientRecording` keeps one `rigl_keras.gradients.DenseGradientRecorder`
per masked weight (its gradient is taken by the optimizer hook on the step
an update needs) and, in `model.fit`, the train functions that record:

* where every batch is one optimizer step whose number is known in advance,
  two traced train functions, one that records and one that does not; the
  engine picks one per step (`before_step`), so the steps between updates
  cost what static sparse training costs. The recorders are then lazy: a
  gradient takes memory from just before its recording step until the
  update has used it, and none between updates;
* elsewhere (SNFS's every-step moving average, loss scaling that skips
  steps, gradient accumulation, several steps per execution) one train
  function that decides in the graph, with recorders that keep their
  gradient's memory for the whole update window.

Recorders and train functions are reused across `fit()` calls while they
are current: the same weights, the same optimizer, and the model not
recompiled since they were traced.
"""

import tensorflow as tf

from rigl_keras import gradients
from rigl_keras import optimizer_state

__all__ = ["GradientRecording"]


class GradientRecording:
    """Dense-gradient recorders for a set of masked weights.

    Args:
        momentum: `None` to record on update steps only, or the moving
            average's momentum (SNFS) to record on every step.

    Example:

    >>> recording = GradientRecording()
    >>> recording.recorders
    {}
    """

    def __init__(self, momentum=None):
        self.momentum = momentum
        self.recorders = {}  # {weight key: DenseGradientRecorder}
        self._record_step = None
        self._optimizer = None
        # {mode: traced train function}: "always" and "never" when the
        # engine picks one per step, else the one "step" function.
        self._train_functions = {}
        self._mode = None
        self._strategy = None
        self._lazy = False

    def is_current(self, weights, optimizer, lazy=None):
        """Whether the recorders cover `weights`, for `optimizer` (and,
        unless `lazy` is None, are lazy iff `lazy`)."""
        return (
            self._record_step is not None
            and self._optimizer is optimizer
            and lazy in (None, self._lazy)
            and set(self.recorders) == {w.key for w in weights}
            and gradients.attached_optimizer(optimizer)
        )

    def prepare(self, weights, optimizer, strategy, lazy=False):
        """Makes (or cleans and reuses) a recorder per weight.

        Args:
            weights: The `rigl_keras.masking.MaskedWeight`s to record.
            optimizer: The optimizer whose hook records.
            strategy: The `tf.distribute` strategy the variables live in.
            lazy: Whether the recorders hold their gradient only from
                `before_step(model, records=True)` until the update (for
                the two swapped train functions of `model.fit`).
        """
        self._strategy = strategy
        if self.is_current(weights, optimizer, lazy):
            # A fit() interrupted between a recording step and its update
            # (an exception in an earlier callback) left a gradient behind
            # that the next recording would add to.
            self.reset()
            return
        base = optimizer_state.base_optimizer(optimizer)
        accumulation = int(getattr(base, "gradient_accumulation_steps", None) or 1)
        with strategy.scope():
            self._record_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
            self.recorders = {
                w.key: gradients.DenseGradientRecorder(
                    w.shape,
                    # Re-read in the graph: with gradient_accumulation_steps
                    # `iterations` is a tensor computed from the raw counter.
                    lambda: optimizer.iterations,
                    self._record_step,
                    momentum=self.momentum,
                    accumulation_steps=accumulation,
                    micro_step_counter=lambda: base._iterations,  # pylint: disable=protected-access
                    lazy=lazy,
                )
                for w in weights
            }
        self._optimizer = optimizer
        self._lazy = lazy
        # Train functions traced before hold no recorder, or other ones.
        self._train_functions = {}

    def make_train_functions(self, model, can_swap):
        """Traces the train function(s) of `model.fit` that record.

        Args:
            model: The model `fit` trains.
            can_swap: Whether every batch is one optimizer step whose
                number is known in advance (then two functions are made).
        """
        if any(f is model.train_function for f in self._train_functions.values()):
            if self.swaps():
                self.use(model, "never")
            return
        self._train_functions = {}
        if can_swap:
            for mode in ("always", "never"):
                self._set_mode(mode)
                model.make_train_function(force=True)
                self._train_functions[mode] = model.train_function
            self.use(model, "never")
        else:
            self._set_mode("step")
            model.make_train_function(force=True)
            self._train_functions["step"] = model.train_function

    def swaps(self):
        """Whether the train function is picked per step."""
        return "never" in self._train_functions

    def use(self, model, mode):
        """Installs the train function of `mode` (`"always"`, `"never"`)."""
        self._set_mode(mode)
        model.train_function = self._train_functions[mode]
        self._mode = mode

    def before_step(self, model, records):
        """Installs the train function that records iff `records`, and
        gives lazy recorders their memory before the step that records."""
        wanted = "always" if records else "never"
        if records and self._lazy:
            with self._strategy.scope():
                for recorder in self.recorders.values():
                    recorder.allocate()
        if wanted != self._mode:
            self.use(model, wanted)

    def ready_for_update(self):
        """Allocates (as zeros) lazy gradients no step recorded into.

        Only a step run without `before_step` leaves one empty; the update
        then sees a zero gradient and warns about it.
        """
        if not self._lazy:
            return
        with self._strategy.scope():
            for recorder in self.recorders.values():
                if int(tf.size(recorder.gradient)) == 0:
                    recorder.allocate()

    def schedule(self, step):
        """Records the gradient of optimizer step `step` (`None`: none)."""
        if self._record_step is not None:
            self._record_step.assign(-1 if step is None else step)

    def reset(self):
        """Zeroes (lazy recorders: empties) the stored gradients; not the
        SNFS moving averages."""
        if self.momentum is not None or not self.recorders:
            return
        with self._strategy.scope():
            for recorder in self.recorders.values():
                recorder.reset()

    def end(self, model):
        """Stops recording at the end of `fit` (nothing outside it)."""
        self.schedule(None)
        if self.swaps() and model is not None:
            self.use(model, "never")

    def clear(self):
        """Drops the recorders and train functions (frees their memory).

        Returns:
            Whether there was anything to drop.
        """
        attached = bool(self.recorders)
        self.recorders = {}
        self._record_step = None
        self._optimizer = None
        self._train_functions = {}
        self._mode = None
        self._lazy = False
        return attached

    def _set_mode(self, mode):
        for recorder in self.recorders.values():
            recorder.mode = mode
