"""Where the mask engine sees gradients: a hook on the optimizer's `apply`.

Whatever the model's kind (Sequential, functional, subclassed, nested,
attention internals), every gradient reaches the optimizer's `apply` (Keras'
`LossScaleOptimizer` and jaxpruner's `wrap_optax` take the same place).
While a mask callback trains a model, `attach` puts a hook there, on the
optimizer that owns the state (a `LossScaleOptimizer` is unwrapped, so the
hook sees unscaled gradients of finite steps only):

* the gradient of every masked weight is multiplied by its mask, so the
  optimizer never moves an inactive entry off exactly 0.0;
* before that, a `DenseGradientRecorder` stores the unmasked gradient on the
  steps a RigL update needs it. Because inactive entries hold exactly 0.0,
  the gradient with respect to the variable *is* the dense gradient
  `dL/d(W * M)` at every position, for any layer, without touching its
  `call`; and the optimizer sees the sum over all the call sites of a
  shared layer.

Graphs traced while the hook is attached keep it (a train function
traced then stays correct after `detach`); functions must be traced after
`attach` to get it.
"""

import tensorflow as tf

from rigl_keras import masking
from rigl_keras import optimizer_state

__all__ = ["DenseGradientRecorder", "attach", "detach", "attached_optimizer"]

_HOOK_ATTRIBUTE = "_rigl_gradient_hook"


class DenseGradientRecorder:
    """Records one masked weight's dense gradient on chosen steps.

    The gradient hook calls `maybe_record(grad)` with each gradient of the
    weight: when `step_counter + 1 == record_step` (the optimizer step
    about to be applied is the one an update needs) the gradient is added
    to `gradient`.

    Args:
        shape: The weight's shape.
        step_counter: The optimizer's `iterations` variable, or a callable
            returning the current step (re-read in the graph, as needed
            with `gradient_accumulation_steps`).
        record_step: An int64 `tf.Variable` holding the optimizer step whose
            gradient should be recorded (`-1` for none).
        momentum: `None` to record on `record_step` only; a float in
            `[0, 1)` to keep instead, on every optimizer step, the
            exponential moving average `gradient = momentum * gradient +
            (1 - momentum) * grad` (SNFS).
        accumulation_steps: The optimizer's `gradient_accumulation_steps`
            k (1 for none). The gradient of an optimizer step is then the
            sum of its k micro-batch gradients, and the moving average moves
            once per optimizer step, not once per micro-batch.
        micro_step_counter: With k > 1, the optimizer's raw counter of
            `apply` calls (it counts micro-batches).
        lazy: Whether the stored gradient takes memory only from
            `allocate()` until the next `reset()`. A lazy `gradient` holds
            no element (shape `(0,)`) in between, so a model costs no
            gradient copy between updates. Its shape then changes at
            `allocate()` and `reset()`, which XLA allows only outside
            compiled code: call `allocate()` before the (possibly
            compiled) step that records, in `mode = "always"` (a lazy
            recorder cannot decide in the graph). `momentum` needs
            `lazy=False`.

    Raises:
        ValueError: If `momentum` is outside `[0, 1)`, or set with
            `lazy=True`.

    Example:

    >>> counter = tf.Variable(0, dtype=tf.int64)
    >>> recorder = DenseGradientRecorder(
    ...     (3, 2), counter, tf.Variable(1, dtype=tf.int64))
    >>> recorder.gradient.shape
    TensorShape([3, 2])
    >>> lazy = DenseGradientRecorder(
    ...     (3, 2), counter, tf.Variable(1, dtype=tf.int64), lazy=True)
    >>> tf.shape(lazy.gradient).numpy().tolist()
    [0]
    >>> lazy.allocate()
    >>> tf.shape(lazy.gradient).numpy().tolist()
    [3, 2]
    """

    def __init__(
        self,
        shape,
        step_counter,
        record_step,
        momentum=None,
        accumulation_steps=1,
        micro_step_counter=None,
        lazy=False,
    ):
        if momentum is not None and not 0.0 <= momentum < 1.0:
            raise ValueError(
                f"`momentum` must be None or in [0, 1). Received: momentum={momentum}"
            )
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(
                "`accumulation_steps` must be an integer >= 1. "
                f"Received: accumulation_steps={accumulation_steps!r}"
            )
        if accumulation_steps > 1 and micro_step_counter is None:
            raise ValueError(
                "`micro_step_counter` is needed with `accumulation_steps` > 1. "
                "Received: micro_step_counter=None"
            )
        if lazy and momentum is not None:
            raise ValueError(
                "`lazy=True` cannot keep a moving average: it needs `momentum=None`. "
                f"Received: momentum={momentum}"
            )
        self.shape = tf.TensorShape(shape)
        self.lazy = bool(lazy)
        self.step_counter = step_counter
        self.record_step = record_step
        self.momentum = momentum
        self.accumulation_steps = accumulation_steps
        self.micro_step_counter = micro_step_counter
        # Read when a train step is *traced*: "step" decides in the graph
        # from `step_counter` and `record_step`; "always" and "never" let a
        # caller keep two traced train functions and pick one per step, so
        # that ordinary steps carry no recording ops at all.
        self.mode = "step"
        # ON_READ: each replica adds into its own copy, with no cross-replica
        # traffic inside the train step; reading it in cross-replica context
        # (the update function) returns the sum over replicas. Keras scales
        # each replica's loss by 1 / replicas, so that sum is the gradient
        # of the global batch, the one the optimizer applies.
        self.gradient = tf.Variable(
            self._initial_value(),
            trainable=False,
            name="dense_gradient",
            # A lazy gradient changes shape between empty and the weight's.
            shape=tf.TensorShape(None) if self.lazy else self.shape,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.SUM,
        )

    def _initial_value(self):
        """Zeros of the weight's shape, or no element for a lazy gradient."""
        shape = (0,) if self.lazy else self.shape
        return tf.zeros(shape, tf.float32)

    def allocate(self):
        """Gives a lazy gradient its zeros of the weight's shape (call in
        cross-replica context, outside XLA-compiled code)."""
        self.gradient.assign(tf.zeros(self.shape, tf.float32))

    def value(self):
        """The stored gradient as a tensor of the weight's shape.

        Read in cross-replica context, the sum over replicas. A lazy
        gradient must be allocated.
        """
        stored = tf.convert_to_tensor(self.gradient)
        return tf.reshape(stored, self.shape) if self.lazy else stored

    def should_record(self):
        """Returns a boolean tensor: is the current step a recording step?"""
        counter = self.step_counter
        if callable(counter):
            counter = counter()
        step = tf.cast(masking.variable_value(counter), tf.int64) + 1
        return tf.equal(step, tf.cast(masking.variable_value(self.record_step), tf.int64))

    def maybe_record(self, grad):
        """Adds `grad` to the stored gradient if this is a recording step.

        With `momentum` set, updates the moving average instead, every step,
        except on steps whose gradient is not finite.
        """
        grad = tf.cast(tf.convert_to_tensor(grad), tf.float32)
        if self.momentum is not None:
            self.gradient.assign(self._moved_average(grad))
            return tf.constant(True)

        def record():
            # A non-finite stored value is what a skipped step leaves
            # behind: the retry overwrites it.
            stored = self.gradient.read_value()
            self.gradient.assign(
                tf.where(tf.reduce_all(tf.math.is_finite(stored)), stored + grad, grad)
            )
            return tf.constant(True)

        if self.mode == "always":
            self.gradient.assign_add(grad)
            return tf.constant(True)
        if self.mode == "never":
            return tf.constant(False)
        if self.lazy:
            raise ValueError(
                "A lazy DenseGradientRecorder records in mode 'always' only (the "
                "caller allocates it before that step). Received: mode='step'"
            )
        return tf.cond(self.should_record(), record, lambda: tf.constant(False))

    def _moved_average(self, grad):
        """The moving average after this `apply` call's gradient `grad`.

        With accumulation the first micro-batch of an optimizer step decays
        the average and every micro-batch adds its share:
        `m * avg + (1 - m) * (g_1 + ... + g_k)` once the step is complete.
        """
        average = self.gradient.read_value()
        share = (1.0 - self.momentum) * grad
        if self.accumulation_steps == 1:
            moved = self.momentum * average + share
        else:
            counter = self.micro_step_counter
            if callable(counter):
                counter = counter()
            micro = tf.cast(masking.variable_value(counter), tf.int64)
            starts_step = tf.equal(micro % self.accumulation_steps, 0)
            moved = tf.where(starts_step, self.momentum * average, average) + share
        return tf.where(tf.reduce_all(tf.math.is_finite(grad)), moved, average)

    def reset(self):
        """Zeroes the stored gradient, or empties a lazy one (call in
        cross-replica context, outside XLA-compiled code)."""
        self.gradient.assign(self._initial_value())


def _masked_gradient(grad, mask):
    """`grad * mask`, keeping an `IndexedSlices` gradient sparse."""
    if isinstance(grad, tf.IndexedSlices):
        rows = tf.gather(tf.cast(mask, grad.values.dtype), grad.indices)
        return tf.IndexedSlices(grad.values * rows, grad.indices, grad.dense_shape)
    return grad * tf.cast(mask, grad.dtype)


class _Hook:
    """The state one optimizer's hook reads when a step is traced."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.entries = {}  # id(variable) -> (mask, recorder or None)

    def transform(self, grads, variables):
        out = []
        for grad, variable in zip(grads, variables):
            entry = self.entries.get(id(variable))
            if entry is None or grad is None:
                out.append(grad)
                continue
            mask, recorder = entry
            if recorder is None:
                out.append(_masked_gradient(grad, masking.variable_value(mask)))
                continue
            recorded = recorder.maybe_record(grad)
            with tf.control_dependencies([recorded]):
                out.append(_masked_gradient(grad, masking.variable_value(mask)))
        return out

    def apply(self, grads, trainable_variables=None):
        optimizer = self.optimizer
        variables = (
            list(trainable_variables)
            if trainable_variables is not None
            # pylint: disable-next=protected-access
            else list(optimizer._trainable_variables)
        )
        grads = self.transform(list(grads), variables)
        return type(optimizer).apply(optimizer, grads, trainable_variables)


def attach(optimizer, weights, recorders=None):
    """Masks (and records) the gradients of `weights` in `optimizer.apply`.

    Replaces what an earlier `attach` on the same optimizer set up.
    `MaskedDense`/`MaskedConv2D` stop masking their own gradients while
    attached (the hook does it, and records their dense gradient).

    Args:
        optimizer: A Keras optimizer (a `LossScaleOptimizer` is unwrapped).
        weights: List of `rigl_keras.masking.MaskedWeight`.
        recorders: `None`, or `{weight key: DenseGradientRecorder}`.

    Returns:
        Whether the hook is new on this optimizer, or now covers other
        weights or recorders (traced train functions are then stale).
    """
    base = optimizer_state.base_optimizer(optimizer)
    hook = base.__dict__.get(_HOOK_ATTRIBUTE)
    fresh = hook is None
    if fresh:
        hook = _Hook(base)
        object.__setattr__(base, _HOOK_ATTRIBUTE, hook)
        object.__setattr__(base, "apply", hook.apply)
    recorders = recorders or {}
    entries = {
        id(w.variable): (w.mask, recorders.get(w.key)) for w in weights
    }
    changed = fresh or _entry_ids(entries) != _entry_ids(hook.entries)
    hook.entries = entries
    for w in weights:
        object.__setattr__(w.layer, "_rigl_gradient_masked_by_optimizer", True)
    return changed


def _entry_ids(entries):
    return {
        key: (id(mask), id(recorder)) for key, (mask, recorder) in entries.items()
    }


def detach(optimizer, weights=()):
    """Removes the hook from `optimizer` (traced graphs keep theirs).

    Args:
        optimizer: The optimizer given to `attach`.
        weights: The weights given to `attach`; their `MaskedDense` /
            `MaskedConv2D` layers mask their own gradients again.
    """
    base = optimizer_state.base_optimizer(optimizer)
    base.__dict__.pop(_HOOK_ATTRIBUTE, None)
    base.__dict__.pop("apply", None)
    for w in weights:
        w.layer.__dict__.pop("_rigl_gradient_masked_by_optimizer", None)


def attached_optimizer(optimizer):
    """Whether `optimizer` (or the one it wraps) has the hook."""
    return _HOOK_ATTRIBUTE in optimizer_state.base_optimizer(optimizer).__dict__
