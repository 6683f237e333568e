"""`RigLCallback`: dynamic sparse training inside `model.fit`.

The callback

* at the start of training gives every masked layer whose mask is all ones a
  random mask with exactly its target number of zeros (per-layer targets
  from `rigl_keras.sparsity_distribution`), and zeroes the kernel outside it;
* every `update_freq` optimizer steps, from `begin_step` to `end_step`, drops
  and regrows connections of each sparse layer with a `rigl_keras.updaters`
  rule (RigL, SET or SNFS), the drop fraction following a schedule, and
  resets the optimizer's state at every changed position;
* writes `sparsity` and `drop_fraction` into the logs.

Steps are counted with `model.optimizer.iterations`. The dense gradient the
RigL rule needs is recorded by the masked layers themselves, on the update
step only, during the ordinary training step (see `rigl_keras.layers`): no
extra data, no extra forward pass.
"""

import numbers
import random
import warnings
import zlib

import keras
import numpy as np
import tensorflow as tf

from rigl_keras import distributions
from rigl_keras import gradients
from rigl_keras import masking
from rigl_keras import optimizer_state
from rigl_keras import schedules
from rigl_keras import updaters

__all__ = ["MaskCallback", "RigLCallback", "random_mask"]

_DISTRIBUTIONS = ("uniform", "er", "erk")
_SCHEDULES = ("cosine", "constant")
_SNFS_MOMENTUM = 0.9
_DEFAULT_END_FRACTION = 0.75


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and np.isfinite(value)
    )


def _layer_seed(seed, layer_name):
    """A per-layer seed from the user seed and a stable digest of the name."""
    return (int(seed) * 1_000_003 + zlib.crc32(layer_name.encode("utf-8"))) % (
        2**31 - 1
    )


def _read_step(iterations):
    """The optimizer's step counter as a Python int.

    `int(optimizer.iterations)` fails under a `tf.distribute` strategy,
    where the counter is a `MirroredVariable`; converting to NumPy works
    everywhere.
    """
    return int(tf.convert_to_tensor(masking.variable_value(iterations)).numpy())


def random_mask(shape, num_zeros, seed):
    """A 0/1 float32 mask of `shape` with exactly `num_zeros` zeros.

    Args:
        shape: The mask's shape.
        num_zeros: Integer in `[0, prod(shape)]`.
        seed: Integer seed; the same seed gives the same mask.

    Returns:
        A NumPy float32 array.

    Example:

    >>> int((random_mask((4, 5), 7, seed=0) == 0).sum())
    7
    """
    size = int(np.prod(shape))
    mask = np.ones(size, np.float32)
    order = np.random.default_rng(seed).permutation(size)
    mask[order[:num_zeros]] = 0.0
    return mask.reshape(shape)


def _next_update_step(step, begin_step, end_step, update_freq):
    """The first update step strictly after `step`, or None past `end_step`."""
    if step < begin_step:
        candidate = begin_step + update_freq
    else:
        candidate = begin_step + update_freq * ((step - begin_step) // update_freq + 1)
    return candidate if candidate <= end_step else None


def _count_true(condition):
    """The exact number of true entries of a boolean tensor (int64 scalar).

    Sums in int32 when the tensor is small enough for it (half the memory
    traffic of int64).
    """
    size = condition.shape.num_elements()
    dtype = tf.int32 if size is not None and size < 2**31 else tf.int64
    return tf.cast(tf.reduce_sum(tf.cast(condition, dtype)), tf.int64)


def _sparsities(zero_counts, weights):
    """`{weight key: fraction of zeros}` from per-weight zero counts."""
    return {w.key: zero_counts[w.key] / max(1, w.size) for w in weights}


def _overall_sparsity(zero_counts, weights):
    """Fraction of zeros over all the masks, from zero counts."""
    total = sum(w.size for w in weights)
    return sum(zero_counts[w.key] for w in weights) / total if total else 0.0


class MaskCallback(keras.callbacks.Callback):
    """Base of the callbacks that change masks at scheduled optimizer steps.

    It owns what `RigLCallback` and `GradualPruningCallback` share: argument
    checks, finding the masked layers, per-layer sparsity targets, counting
    steps with `optimizer.iterations`, the `steps_per_execution` rule, the
    default `end_step`, and the logs. Subclasses implement the hooks
    `_prepare_masks()`, `_start_window(epoch)`, `_next_step_after(step)`,
    `_on_update_step(step)` and `_extra_logs()`.

    Args:
        sparsity: Overall fraction of zeros over all masked kernels, in
            `[0, 1)`.
        distribution: `"uniform"`, `"er"`, `"erk"`, or a dict
            `{layer_name: sparsity}` (layers not named stay dense).
        update_freq: Optimizer steps between updates (>= 1), or `None` when
            `allow_static` (no updates).
        begin_step: First optimizer step of the update window (>= 0).
        end_step: Last optimizer step of the window (> `begin_step`), or
            `None` for 75% of the optimizer steps of this `fit()` call.
        dense_layers: Names of masked layers kept dense.
        erk_power_scale: Exponent of the ERK raw scores.
        verbose: 0 or 1.
        allow_static: Whether `update_freq=None` is allowed.

    Raises:
        ValueError: For any argument outside its allowed range.
    """

    def __init__(
        self,
        sparsity,
        distribution,
        update_freq,
        begin_step,
        end_step,
        dense_layers,
        erk_power_scale,
        verbose,
        allow_static=False,
    ):
        super().__init__()
        if not _is_real(sparsity) or not 0.0 <= sparsity < 1.0:
            raise ValueError(
                "`sparsity` must be a number in [0, 1). "
                f"Received: sparsity={sparsity!r}"
            )
        if isinstance(distribution, dict):
            for name, value in distribution.items():
                if not _is_real(value) or not 0.0 <= value < 1.0:
                    raise ValueError(
                        "Every sparsity in `distribution` must be a number in "
                        f"[0, 1). Received: distribution[{name!r}]={value!r}"
                    )
        elif distribution not in _DISTRIBUTIONS:
            raise ValueError(
                f"`distribution` must be one of {_DISTRIBUTIONS} or a dict "
                f"{{layer_name: sparsity}}. Received: distribution={distribution!r}"
            )
        if not (update_freq is None and allow_static) and (
            not _is_int(update_freq) or update_freq < 1
        ):
            static = ", or None for static sparse training" if allow_static else ""
            raise ValueError(
                f"`update_freq` must be an integer >= 1{static}. "
                f"Received: update_freq={update_freq!r}"
            )
        if not _is_int(begin_step) or begin_step < 0:
            raise ValueError(
                "`begin_step` must be an integer >= 0. "
                f"Received: begin_step={begin_step!r}"
            )
        if end_step is not None and (not _is_int(end_step) or end_step <= begin_step):
            raise ValueError(
                "`end_step` must be an integer greater than `begin_step` "
                f"({begin_step}), or None. Received: end_step={end_step!r}"
            )
        if not _is_real(erk_power_scale) or erk_power_scale < 0:
            raise ValueError(
                "`erk_power_scale` must be a number >= 0. "
                f"Received: erk_power_scale={erk_power_scale!r}"
            )
        if verbose not in (0, 1, False, True):
            raise ValueError(f"`verbose` must be 0 or 1. Received: verbose={verbose!r}")
        self.sparsity = float(sparsity)
        self.distribution = distribution
        self.update_freq = None if update_freq is None else int(update_freq)
        self.begin_step = int(begin_step)
        self.end_step = None if end_step is None else int(end_step)
        self.dense_layers = tuple(dense_layers)
        self.erk_power_scale = float(erk_power_scale)
        self.verbose = int(verbose)
        self._bound_model = None
        self._custom_loop_optimizer = None  # set by rigl_keras.CustomLoop
        self._optimizer = None
        self._warned_non_finite = set()
        self._weights = []
        self._targets = {}
        self._zero_counts = {}  # {weight key: zeros in its mask}, kept current
        self._model_cache = {}
        self._model_cache_key = None

    # ------------------------------------------------------------------
    # Public state.

    @property
    def weights(self):
        """The masked weights (`rigl_keras.masking.MaskedWeight`) trained."""
        return list(self._weights)

    @property
    def target_sparsities(self):
        """`{weight key: sparsity}` resolved at the start of training."""
        return dict(self._targets)

    def layer_sparsities(self):
        """`{weight key: fraction of zeros in its mask}` now."""
        return _sparsities(self._mask_zero_counts(), self._weights)

    def current_sparsity(self):
        """Overall fraction of zeros across all masks (a float)."""
        return _overall_sparsity(self._mask_zero_counts(), self._weights)

    # ------------------------------------------------------------------
    # Callback hooks.

    def set_model(self, model):
        if self._bound_model is not None and self._bound_model is not model:
            name = type(self).__name__
            raise ValueError(
                f"This {name} is already bound to model "
                f"'{self._bound_model.name}'; create a new {name} for "
                f"model '{model.name}'."
            )
        self._bound_model = model
        super().set_model(model)

    def on_train_begin(self, logs=None):
        model = self.model
        self._weights = masking.masked_weights(model)
        self._seed_names = {w.key: masking.seed_name(w, model) for w in self._weights}
        if not self._weights:
            raise ValueError(
                f"Model '{model.name}' has no masked weight: call "
                "`rigl_keras.sparsify(model)` first (or build it from "
                "rigl_keras.MaskedDense / rigl_keras.MaskedConv2D) to train "
                "it sparse."
            )
        self._strategy = model.distribute_strategy
        self._optimizer = self._custom_loop_optimizer or model.optimizer
        if self._optimizer is None:
            raise ValueError(
                f"Model '{model.name}' has no optimizer: compile it, or pass "
                "the optimizer to rigl_keras.CustomLoop."
            )
        if not self._optimizer.built:
            self._optimizer.build(model.trainable_variables)
        self._steps_per_execution = int(getattr(model, "steps_per_execution", 1) or 1)
        if self.update_freq is not None:
            optimizer_state.check_optimizer_supported(self._optimizer)
            self._check_steps_per_execution()
        self._targets = self._resolve_targets()
        self._window_started = False
        self._updates_left = self.update_freq is not None
        self._next_update = None
        self._attach_gradient_hook()
        self._prepare_masks()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start_step = _read_step(self._optimizer.iterations)
        if not self._window_started:
            self._window_started = True
            self._start_window(epoch)

    def on_train_batch_end(self, batch, logs=None):
        if not self._updates_left:
            return
        step = self._epoch_start_step + batch + 1
        if step < self._next_update:
            return
        step = _read_step(self._optimizer.iterations)
        if step < self._next_update:
            # The optimizer skipped steps (a LossScaleOptimizer does when the
            # gradients overflow): the batch count ran ahead of the optimizer
            # step, and the update step is still to come.
            return
        if step != self._next_update:
            raise ValueError(
                f"Mask update step {self._next_update} fell inside one "
                f"execution of {self._steps_per_execution} steps (now at "
                f"step {step}). Use `update_freq`, `begin_step` and "
                "`end_step` that are multiples of the model's "
                "`steps_per_execution`, and epochs whose length is too."
            )
        self._on_update_step(step)
        self._schedule_next_update(step)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        # Counted on device at the start of fit() and at every update (the
        # only times masks change in training), so no extra device call.
        zero_counts = self._zero_counts
        logs["sparsity"] = _overall_sparsity(zero_counts, self._weights)
        for name, value in _sparsities(zero_counts, self._weights).items():
            logs[f"sparsity/{name}"] = value
        logs.update(self._extra_logs())

    # ------------------------------------------------------------------
    # Shared machinery.

    def _cached_for_model(self, name, build):
        """What `build()` returns, built once per model state.

        For traced functions and the variables they use: a traced function
        holds the variables it touched when traced, the masked weights' and
        the optimizer's. The cache is kept across fit() calls while both are
        the same and emptied when they are not (another optimizer after
        `model.compile`, for one).

        Args:
            name: Cache key.
            build: Callable returning the object to cache.

        Returns:
            The cached or freshly built object.
        """
        layer_ids = [id(w.variable) for w in self._weights]
        if (
            self._model_cache_key is None
            or self._model_cache_key[0] != layer_ids
            or self._model_cache_key[1] is not self._optimizer
        ):
            self._model_cache = {}
            self._model_cache_key = (layer_ids, self._optimizer)
        if name not in self._model_cache:
            self._model_cache[name] = build()
        return self._model_cache[name]

    def _mask_zero_counts(self):
        """`{layer_name: number of zeros in its mask}`, counted in one call."""
        def build():
            weights = list(self._weights)

            @tf.function
            def count_zeros():
                return tf.stack([
                    _count_true(tf.equal(tf.convert_to_tensor(w.mask), 0))
                    for w in weights
                ])

            return count_zeros

        if not self._weights:
            return {}
        counts = self._cached_for_model("count_zeros", build)().numpy()
        return {w.key: int(c) for w, c in zip(self._weights, counts)}

    def _aligned_arguments(self):
        """`(name, value)` pairs that must be multiples of steps_per_execution."""
        return (("update_freq", self.update_freq), ("begin_step", self.begin_step))

    def _check_steps_per_execution(self):
        spe = self._steps_per_execution
        for name, value in self._aligned_arguments():
            if value % spe:
                raise ValueError(
                    f"`{name}` must be a multiple of the model's "
                    f"steps_per_execution ({spe}), because Keras runs "
                    "callbacks only between executions. "
                    f"Received: {name}={value}"
                )

    def _resolve_targets(self):
        if isinstance(self.distribution, dict):
            keys = masking.resolve_keys(self._weights, self.distribution, "distribution")
            given = {keys[name]: float(value) for name, value in self.distribution.items()}
            return {w.key: given.get(w.key, 0.0) for w in self._weights}
        return distributions.sparsity_distribution(
            self.model,
            self.sparsity,
            method=self.distribution,
            dense_layers=self.dense_layers,
            erk_power_scale=self.erk_power_scale,
        )

    def _resolve_end_step(self, epoch):
        """`end_step`, or 75% of this fit()'s steps counted from epoch 0.

        Counting from epoch 0 (not from `initial_epoch`) makes a run resumed
        with `initial_epoch` keep the end_step of the uninterrupted run.
        Returns `None` if that lands at or before `begin_step`.
        """
        if self.end_step is not None:
            return self.end_step
        steps = self.params.get("steps")
        epochs = self.params.get("epochs")
        if not steps or not epochs:
            raise ValueError(
                f"{type(self).__name__}(end_step=None) needs the number of "
                "steps of this fit() call, but Keras does not know it (a "
                "dataset of unknown length?). Pass `end_step`, or "
                "`steps_per_epoch` to fit()."
            )
        # With `gradient_accumulation_steps` k the optimizer steps (and
        # `iterations` counts) once every k batches.
        base = optimizer_state.base_optimizer(self._optimizer)
        accumulation = int(getattr(base, "gradient_accumulation_steps", None) or 1)
        batch_start = self._epoch_start_step
        if accumulation > 1:
            batch_start = _read_step(base._iterations)  # pylint: disable=protected-access
        fit_start = (batch_start - epoch * steps) // accumulation
        end_step = fit_start + int(
            _DEFAULT_END_FRACTION * (steps * epochs // accumulation)
        )
        end_step -= end_step % self._steps_per_execution
        return end_step if end_step > self.begin_step else None

    def _schedule_next_update(self, step):
        self._next_update = self._next_step_after(step)
        if self._next_update is None:
            self._updates_left = False

    def _warn_non_finite(self, weight, step, what):
        """Warns once per weight that its update was skipped."""
        if weight.key in self._warned_non_finite:
            return
        self._warned_non_finite.add(weight.key)
        warnings.warn(
            f"Skipped the {what} of weight '{weight.key}' at step {step}: its "
            "dense gradient or kernel is not finite. Its mask and weights "
            "are unchanged.",
            stacklevel=3,
        )

    def _attach_gradient_hook(self):
        """Masks the masked weights' gradients in the optimizer's `apply`.

        A train function traced without the hook (a model trained dense
        before) is dropped so that fit() traces one with it.
        """
        changed = gradients.attach(self._optimizer, self._weights, self._hook_recorders())
        if changed and self._custom_loop_optimizer is None:
            self.model.make_train_function(force=True)

    # ------------------------------------------------------------------
    # Hooks.

    def _hook_recorders(self):
        """`{weight key: DenseGradientRecorder}` the hook should use now."""
        return {}

    def _prepare_masks(self):
        """Called at the start of training, once the targets are known."""

    def _start_window(self, epoch):
        """Called at the first epoch of fit(): resolve end_step, schedules."""
        raise NotImplementedError

    def _next_step_after(self, step):
        """The next update step after `step`, or `None`."""
        raise NotImplementedError

    def _on_update_step(self, step):
        """Changes the masks after optimizer step `step`."""
        raise NotImplementedError

    def _extra_logs(self):
        """Further `{key: float}` entries of the epoch logs."""
        return {}


@keras.saving.register_keras_serializable(package="rigl_keras")
class RigLCallback(MaskCallback):
    """Trains a model with masked layers sparse, rewiring it as RigL does.

    Every `update_freq` optimizer steps `t` with `begin_step < t <= end_step`
    and `(t - begin_step) % update_freq == 0`, each masked layer with
    0 < density < 1 drops `floor(f(t) * nnz)` active connections with the
    smallest `|W|` and grows as many where `|dL/d(W * M)|` is largest
    (`grow="gradient"`), at random (`"random"`, SET) or where the momentum of
    the dense gradient is largest (`"momentum"`, SNFS). `f` is the drop
    fraction schedule. After `end_step` the masks are frozen.

    Args:
        sparsity: Overall fraction of zeros over all masked kernels, in
            `[0, 1)`.
        distribution: `"uniform"`, `"er"` or `"erk"` (how `sparsity` is
            spread over layers), or a dict `{layer_name: sparsity}` (layers
            not named stay dense).
        update_freq: ΔT, optimizer steps between updates (>= 1), or `None`
            for static sparse training (masks never change).
        drop_fraction: α, the initial drop fraction, in `(0, 1]`.
        drop_fraction_schedule: `"cosine"` (α annealed to 0 at `end_step`),
            `"constant"`, or a `rigl_keras.schedules.DropFractionSchedule`.
        begin_step: First optimizer step of the update window (>= 0).
        end_step: Last optimizer step at which masks may change, greater
            than `begin_step`; `None` means 75% of the optimizer steps of
            this `fit()` call.
        grow: `"gradient"` (RigL), `"random"` (SET), `"momentum"` (SNFS) or
            a `rigl_keras.updaters.MaskUpdater`.
        grow_init: Value of newly grown weights: `"zeros"` or
            `"random_normal"`.
        seed: Integer seed of the initial masks and of tie-breaks. `None`
            draws one from Python's `random` module (which
            `keras.utils.set_random_seed` seeds). Pass it explicitly for
            multi-worker training.
        dense_layers: Names of masked layers to keep dense (within the
            budget for ER/ERK).
        erk_power_scale: Exponent of the ERK raw scores.
        verbose: 0 (silent) or 1 (one line per mask update).

    Raises:
        ValueError: For any argument outside its allowed range.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((20,)),
    ...     rigl_keras.MaskedDense(64, activation="relu"),
    ...     rigl_keras.MaskedDense(1)])
    >>> model.compile("sgd", "mse")
    >>> x, y = np.random.rand(256, 20), np.random.rand(256, 1)
    >>> history = model.fit(x, y, epochs=2, verbose=0, callbacks=[
    ...     rigl_keras.RigLCallback(sparsity=0.9, update_freq=4, seed=0)])
    >>> round(history.history["sparsity"][-1], 2)
    0.9
    """

    def __init__(
        self,
        sparsity=0.9,
        distribution="erk",
        update_freq=100,
        drop_fraction=0.3,
        drop_fraction_schedule="cosine",
        begin_step=0,
        end_step=None,
        grow="gradient",
        grow_init="zeros",
        seed=None,
        dense_layers=(),
        erk_power_scale=1.0,
        verbose=0,
    ):
        super().__init__(
            sparsity,
            distribution,
            update_freq,
            begin_step,
            end_step,
            dense_layers,
            erk_power_scale,
            verbose,
            allow_static=True,
        )
        if not _is_real(drop_fraction) or not 0.0 < drop_fraction <= 1.0:
            raise ValueError(
                "`drop_fraction` must be a number in (0, 1]. "
                f"Received: drop_fraction={drop_fraction!r}"
            )
        if not (
            drop_fraction_schedule in _SCHEDULES
            or isinstance(drop_fraction_schedule, schedules.DropFractionSchedule)
        ):
            raise ValueError(
                f"`drop_fraction_schedule` must be one of {_SCHEDULES} or a "
                "rigl_keras.schedules.DropFractionSchedule. "
                f"Received: drop_fraction_schedule={drop_fraction_schedule!r}"
            )
        if seed is not None and not _is_int(seed):
            raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
        self.updater = updaters.get(grow, grow_init)  # validates both
        self.drop_fraction = float(drop_fraction)
        self.drop_fraction_schedule = drop_fraction_schedule
        self.grow = grow
        self.grow_init = grow_init
        self.seed = seed
        self._record_step = None
        self._recorders_optimizer = None
        self._recorders = {}  # {weight key: DenseGradientRecorder}
        # {mode: traced train function}: "always" and "never" when the
        # callback picks one per step, else the one "step" function.
        self._train_functions = {}

    @property
    def recorders(self):
        """`{weight key: rigl_keras.gradients.DenseGradientRecorder}`.

        The dense gradients the next update will grow by (empty for rules
        that do not use the gradient, and before training starts).
        """
        return dict(self._recorders)

    # ------------------------------------------------------------------
    # Serialization.

    def get_config(self):
        schedule = self.drop_fraction_schedule
        if not isinstance(schedule, str):
            schedule = keras.saving.serialize_keras_object(schedule)
        if not isinstance(self.grow, str):
            raise NotImplementedError(
                "A RigLCallback with a custom MaskUpdater is not serializable."
            )
        return {
            "sparsity": self.sparsity,
            "distribution": self.distribution,
            "update_freq": self.update_freq,
            "drop_fraction": self.drop_fraction,
            "drop_fraction_schedule": schedule,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "grow": self.grow,
            "grow_init": self.grow_init,
            "seed": self.seed,
            "dense_layers": list(self.dense_layers),
            "erk_power_scale": self.erk_power_scale,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("drop_fraction_schedule"), dict):
            config["drop_fraction_schedule"] = keras.saving.deserialize_keras_object(
                config["drop_fraction_schedule"]
            )
        return cls(**config)

    # ------------------------------------------------------------------
    # Callback hooks (the rest is in MaskCallback).

    def on_epoch_begin(self, epoch, logs=None):
        self._drop_fraction_now = 0.0
        super().on_epoch_begin(epoch, logs)

    def on_train_end(self, logs=None):
        if self._record_step is not None:
            self._record_step.assign(-1)  # record nothing outside this fit()
        if self._swaps_train_functions():
            self._use_train_function("never")

    # ------------------------------------------------------------------
    # Start of training.

    def _prepare_masks(self):
        if self.seed is None:
            self.seed = random.randint(0, 2**31 - 2)
        self._resolved_schedule = None
        self._drop_fraction_now = 0.0
        self._churn = {}
        self._initialize_masks()

    def _initialize_masks(self):
        shapes = {w.key: w.shape for w in self._weights}
        targets = distributions.layer_zero_counts(shapes, self._targets)
        start_training = self._cached_for_model(
            "start_training", self._build_start_function
        )
        with self._strategy.scope():
            zero_counts = start_training().numpy()
            fresh = [
                w for w, zeros in zip(self._weights, zero_counts)
                if zeros == 0 and targets[w.key] > 0
            ]
            for w in fresh:  # An all-ones mask: draw the initial one.
                w.mask.assign(
                    random_mask(w.shape, targets[w.key], _layer_seed(self.seed, self._seed_names[w.key]))
                )
            if fresh:
                zero_counts = start_training().numpy()
        self._zero_counts = {
            w.key: int(zeros) for w, zeros in zip(self._weights, zero_counts)
        }
        for w in self._weights:
            if self._zero_counts[w.key] != targets[w.key]:
                warnings.warn(
                    f"Weight '{w.key}' already has a sparse mask with "
                    f"{self._zero_counts[w.key]} zeros; keeping it (the "
                    f"target is {targets[w.key]}).",
                    stacklevel=2,
                )
        total = sum(w.size for w in self._weights)
        self._ever_active_total = total - sum(self._zero_counts.values())

    def _build_start_function(self):
        """Traces what every fit() starts with, for all layers in one call.

        Zeroes the kernels outside their masks; resets the optimizer state
        there (a model trained dense before keeps momentum, EMA, ... at the
        positions masked out now, which would move them off zero at the next
        step; a no-op on a fresh state); starts the record of positions
        ever active (in-time over-parameterization) at the current masks; and
        returns the masks' zero counts.
        """
        try:
            optimizer_state.check_optimizer_supported(self._optimizer)
            reset_state = True
        except ValueError:  # Allowed for static training (update_freq=None).
            reset_state = False
        weights = list(self._weights)
        optimizer = self._optimizer
        ever_active = self._ever_active_variables()

        @tf.function
        def start_training():
            zero_counts = []
            for w in weights:
                w.apply_mask()
                inactive = tf.equal(tf.convert_to_tensor(w.mask), 0)
                if reset_state:
                    optimizer_state.reset_optimizer_state(
                        optimizer, w.variable, inactive
                    )
                ever_active[w.key].assign(tf.logical_not(inactive))
                zero_counts.append(_count_true(inactive))
            return tf.stack(zero_counts)

        return start_training

    def _ever_active_variables(self):
        """`{layer_name: bool variable}`: positions active since fit() began."""
        def build():
            with self._strategy.scope():
                return {
                    w.key: tf.Variable(
                        tf.zeros(w.shape, tf.bool),
                        trainable=False,
                        name="ever_active",
                    )
                    for w in self._weights
                }

        return self._cached_for_model("ever_active", build)

    def _start_window(self, epoch):
        """Resolves end_step and the schedule at the first epoch of `fit`."""
        if self.update_freq is None:
            self._end_step = None
            return
        self._end_step = self._resolve_end_step(epoch)
        schedule = self.drop_fraction_schedule
        if schedule == "cosine":
            schedule = schedules.CosineDropFraction(
                self.drop_fraction,
                self.begin_step,
                self._end_step or self.begin_step + 1,
            )
        elif schedule == "constant":
            schedule = schedules.ConstantDropFraction(self.drop_fraction)
        self._resolved_schedule = schedule
        if self._end_step is None:
            self._updates_left = False
            return
        self._attach_recorders()
        self._schedule_next_update(self._epoch_start_step)

    def _next_step_after(self, step):
        return _next_update_step(step, self.begin_step, self._end_step, self.update_freq)

    def _schedule_next_update(self, step):
        super()._schedule_next_update(step)
        if self._record_step is not None:
            # Past end_step the recorders stay attached until the end of
            # fit() (the running train function holds them) but record nothing.
            self._record_step.assign(self._next_update or -1)

    def _extra_logs(self):
        """`drop_fraction` (of the epoch's last update; 0 if it had none),
        per-weight `churn/<weight key>` (fraction of active connections replaced at
        the last update) and `itop_rate` (fraction of all masked kernel
        positions that have ever been active: in-time over-parameterization).
        """
        logs = {"drop_fraction": self._drop_fraction_now}
        for name, value in self._churn.items():
            logs[f"churn/{name}"] = value
        total = sum(w.size for w in self._weights)
        logs["itop_rate"] = self._ever_active_total / total if total else 0.0
        return logs

    # ------------------------------------------------------------------
    # Dense-gradient recording.

    def _hook_recorders(self):
        if self._recorders_current():
            return dict(self._recorders)
        return {}

    def _attach_recorders(self):
        """Gives every masked weight a dense-gradient recorder in the
        optimizer's gradient hook and makes the train function(s) that use
        them.

        Recorders and train functions stay attached between fit() calls of
        this callback and are reused while they are current: the same
        optimizer, and the model not recompiled since they were traced
        (`model.compile` drops the train function, and `fit` traces a fresh
        one, without the callback's choices, before the callback runs).
        """
        if not self.updater.uses_gradient:
            return
        if self._recorders_current():
            # A fit() interrupted between a recording step and its update
            # (an exception in an earlier callback) left a gradient behind
            # that the next recording would add to.
            with self._strategy.scope():
                for recorder in self._recorders.values():
                    if recorder.momentum is None:
                        recorder.reset()
        else:
            self._create_recorders()
        gradients.attach(self._optimizer, self._weights, self._recorders)
        if self._custom_loop_optimizer is not None:
            return  # A custom loop traces its own step after CustomLoop.begin().
        if any(f is self.model.train_function for f in self._train_functions.values()):
            if self._swaps_train_functions():
                self._use_train_function("never")
            return
        self._train_functions = {}
        if self._can_swap_train_functions():
            # One train function that records and one that does not; the
            # callback picks per step (see on_train_batch_begin), so steps
            # between updates cost what static sparse training costs.
            for mode in ("always", "never"):
                self._set_recording_mode(mode)
                self.model.make_train_function(force=True)
                self._train_functions[mode] = self.model.train_function
            self._use_train_function("never")
        else:
            self._set_recording_mode("step")
            self.model.make_train_function(force=True)
            self._train_functions["step"] = self.model.train_function

    def _recorders_current(self):
        """Whether this callback's recorders cover the weights trained now,
        for the optimizer training now."""
        return (
            self._record_step is not None
            and self._recorders_optimizer is self._optimizer
            and set(self._recorders) == {w.key for w in self._weights}
            and gradients.attached_optimizer(self._optimizer)
        )

    def _create_recorders(self):
        momentum = _SNFS_MOMENTUM if isinstance(self.updater, updaters.SNFS) else None
        optimizer = self._optimizer
        with self._strategy.scope():
            self._record_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
            self._recorders = {
                w.key: gradients.DenseGradientRecorder(
                    w.shape,
                    # Re-read in the graph: with gradient_accumulation_steps
                    # `iterations` is a tensor computed from the raw counter.
                    lambda: optimizer.iterations,
                    self._record_step,
                    momentum=momentum,
                )
                for w in self._weights
            }
        self._recorders_optimizer = optimizer
        # Train functions traced before hold no recorder, or other ones.
        self._train_functions = {}

    def _can_swap_train_functions(self):
        """Per-step choice of train function works when every batch is one
        optimizer step whose number the callback knows in advance."""
        optimizer = self._optimizer
        return (
            self._steps_per_execution == 1
            and self.updater.uses_gradient
            and not isinstance(self.updater, updaters.SNFS)
            and not hasattr(optimizer, "inner_optimizer")  # loss scaling skips steps
            and not getattr(optimizer, "gradient_accumulation_steps", None)
        )

    def _swaps_train_functions(self):
        """Whether the callback picks the train function per step."""
        return "never" in self._train_functions

    def _set_recording_mode(self, mode):
        for recorder in self._recorders.values():
            recorder.mode = mode

    def _use_train_function(self, mode):
        """Sets the recorders' trace-time mode and the matching function."""
        self._set_recording_mode(mode)
        self.model.train_function = self._train_functions[mode]
        self._recording_mode = mode

    def on_train_batch_begin(self, batch, logs=None):
        if not self._swaps_train_functions() or not self._updates_left:
            return
        wanted = "always" if self._epoch_start_step + batch + 1 == self._next_update else "never"
        if wanted != self._recording_mode:
            self._use_train_function(wanted)

    def detach(self):
        """Removes the gradient hook and the recorders (frees their memory).

        Call it once training with this callback is over for good: the
        optimizer then no longer masks gradients, so the masked weights'
        inactive entries stay zero only in graphs traced before.
        """
        if self._optimizer is not None:
            gradients.detach(self._optimizer, self._weights)
        attached = bool(self._recorders)
        self._recorders = {}
        self._record_step = None
        self._recorders_optimizer = None
        self._train_functions = {}
        if attached:
            self.model.train_function = None

    # ------------------------------------------------------------------
    # The update.

    def _sparse_weights(self):
        return [w for w in self._weights if 0 < self._targets[w.key] < 1]

    def _build_update_function(self):
        sparse_weights = self._sparse_weights()
        weight_seeds = [_layer_seed(self.seed, self._seed_names[w.key]) for w in sparse_weights]
        ever_active = self._ever_active_variables()
        recorders = dict(self._recorders)

        @tf.function
        def update(drop_fraction, step):
            return [
                self._update_weight(
                    w, recorders.get(w.key), drop_fraction, step, weight_seed,
                    ever_active[w.key],
                )
                for w, weight_seed in zip(sparse_weights, weight_seeds)
            ]

        return update

    def _update_weight(self, weight, recorder, drop_fraction, step, weight_seed, ever_active):
        kernel = tf.convert_to_tensor(weight.variable)
        mask = tf.convert_to_tensor(weight.mask)
        if recorder is not None:
            gradient = tf.convert_to_tensor(recorder.gradient)
        else:
            gradient = tf.zeros(tf.shape(kernel), tf.float32)
        finite = tf.logical_and(
            tf.reduce_all(tf.math.is_finite(gradient)),
            tf.reduce_all(tf.math.is_finite(tf.cast(kernel, tf.float32))),
        )
        seed = tf.stack([tf.constant(weight_seed, tf.int64), tf.cast(step, tf.int64)])

        def apply_update():
            result = self.updater.update(kernel, mask, gradient, drop_fraction, seed)
            weight.mask.assign(result.mask)
            weight.variable.assign(result.kernel)
            changed = tf.logical_or(result.grown, result.dropped)
            optimizer_state.reset_optimizer_state(self._optimizer, weight.variable, changed)
            newly_active = tf.logical_and(result.grown, tf.logical_not(ever_active))
            ever_active.assign(tf.logical_or(ever_active, result.grown))
            return (
                _count_true(result.grown),
                _count_true(newly_active),
                _count_true(tf.equal(result.mask, 0)),
            )

        def skip():
            return (
                tf.constant(0, tf.int64),
                tf.constant(0, tf.int64),
                _count_true(tf.equal(mask, 0)),
            )

        # A non-finite gradient or kernel leaves the weight untouched.
        grown, newly_active, zeros = tf.cond(finite, apply_update, skip)
        if recorder is not None and recorder.momentum is None:
            recorder.reset()
        return {
            "finite": finite,
            "grown": grown,
            "newly_active": newly_active,
            "zeros": zeros,
            # Growth needs the dense gradient where the mask is 0.
            "gradient_is_zero": tf.equal(
                tf.reduce_max(tf.abs(tf.where(mask > 0, 0.0, gradient))), 0.0
            ),
        }

    def _on_update_step(self, step):
        self._update_masks(step)

    def _update_masks(self, step):
        fraction = float(self._resolved_schedule(step))
        self._drop_fraction_now = fraction
        if fraction <= 0.0:  # nothing to replace (the cosine at end_step)
            with self._strategy.scope():
                for recorder in self._recorders.values():
                    if recorder.momentum is None:
                        recorder.reset()
            self._churn = {w.key: 0.0 for w in self._sparse_weights()}
            return
        with self._strategy.scope():
            update = self._cached_for_model("update", self._build_update_function)
            results = update(tf.constant(fraction, tf.float64), tf.constant(step, tf.int64))
        total_grown = 0
        for w, result in zip(self._sparse_weights(), results):
            self._zero_counts[w.key] = int(result["zeros"])
            self._ever_active_total += int(result["newly_active"])
            if not bool(result["finite"]):
                self._warn_non_finite(w, step, "mask update")
                self._churn[w.key] = 0.0
                continue
            if self.updater.uses_gradient and bool(result["gradient_is_zero"]):
                warnings.warn(
                    f"The recorded dense gradient of weight '{w.key}' is "
                    f"zero at every inactive position at step {step}: grown "
                    "connections were picked by tie-break only. Does the "
                    "train step reach the weight's layer, called with "
                    "training=True?",
                    stacklevel=2,
                )
            grown = int(result["grown"])
            total_grown += grown
            active = w.size - self._zero_counts[w.key]
            self._churn[w.key] = grown / max(1, active)
        if self.verbose:
            print(
                f"RigLCallback: step {step}: drop fraction {fraction:.4f}, "
                f"{total_grown} connections regrown, sparsity "
                f"{_overall_sparsity(self._zero_counts, self._weights):.4f}"
            )
