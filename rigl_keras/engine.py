"""The mask engine: masked weights, their targets, the step schedule, logs.

`MaskEngine` owns what every sparse training method shares: the masked
weights of a model (`rigl_keras.masking.masked_weights`), their target
sparsities, the optimizer steps at which masks change, the gradient hook
that keeps the optimizer off inactive entries, and the numbers written into
the logs. The methods subclass it: `rigl_keras.rigl_engine.RigLEngine`
(RigL, SET, SNFS, static) and `rigl_keras.pruning.GradualPruningEngine`.

Training drives an engine through four calls, whatever runs the loop:

* `begin(model, optimizer=None, fit_params=None, steps_per_call=None)` once
  at the start of training, then `start_epoch(epoch)`;
* `after_step(step=None)` after every optimizer step (it updates the masks
  when the step is due an update);
* `logs()` for the numbers to log;
* `end()` at the end of training.

`RigLCallback` and `GradualPruningCallback` adapt it to `model.fit`,
`rigl_keras.CustomLoop` to a loop of your own.
"""

import warnings

import tensorflow as tf

from rigl_keras import _checks
from rigl_keras import distributions
from rigl_keras import gradients
from rigl_keras import masking
from rigl_keras import optimizer_state
from rigl_keras import structured_masks
from rigl_keras import structure_arguments
from rigl_keras import structures

__all__ = [
    "MaskEngine",
    "count_true",
    "next_update_step",
    "read_step",
]

_DISTRIBUTIONS = ("uniform", "er", "erk")
_DEFAULT_END_FRACTION = 0.75


def read_step(iterations):
    """An optimizer's step counter as a Python int.

    `int(optimizer.iterations)` fails under a `tf.distribute` strategy,
    where the counter is a `MirroredVariable`; converting to NumPy works
    everywhere.

    Example:

    >>> read_step(keras.optimizers.SGD().iterations)
    0
    """
    return int(tf.convert_to_tensor(masking.variable_value(iterations)).numpy())


def next_update_step(step, begin_step, end_step, update_freq):
    """The first update step strictly after `step`, or None past `end_step`.

    Update steps are `begin_step + k * update_freq` for k >= 1.

    Example:

    >>> next_update_step(0, begin_step=0, end_step=10, update_freq=4)
    4
    >>> next_update_step(8, begin_step=0, end_step=10, update_freq=4) is None
    True
    """
    if step < begin_step:
        candidate = begin_step + update_freq
    else:
        candidate = begin_step + update_freq * ((step - begin_step) // update_freq + 1)
    return candidate if candidate <= end_step else None


def count_true(condition):
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


def overall_sparsity(zero_counts, weights):
    """Fraction of zeros over all the masks, from per-weight zero counts.

    This is the one definition of a model's sparsity in `rigl_keras`:
    zeros over the entries of the masked weights.
    """
    total = sum(w.size for w in weights)
    return sum(zero_counts[w.key] for w in weights) / total if total else 0.0


class MaskEngine:
    """Base of the engines that change masks at scheduled optimizer steps.

    Subclasses implement the hooks `_prepare_masks()`,
    `_start_window(epoch)`, `_next_step_after(step)`, `_on_update_step(step)`
    and, optionally, `_extra_logs()` and `_hook_recorders()`.

    Args:
        sparsity: Overall fraction of zeros over all masked weights, in
            `[0, 1)`.
        distribution: `"uniform"`, `"er"`, `"erk"`, or a dict
            `{weight path or layer name: sparsity}` (weights not named stay
            dense).
        update_freq: Optimizer steps between updates (>= 1), or `None` when
            `allow_static` (no updates).
        begin_step: First optimizer step of the update window (>= 0).
        end_step: Last optimizer step of the window (> `begin_step`), or
            `None` for 75% of the optimizer steps of this `fit()` call.
        dense_layers: Weights (paths or layer names) kept dense, outside
            the sparsity budget.
        erk_power_scale: Exponent of the ERK raw scores.
        verbose: 0 or 1.
        allow_static: Whether `update_freq=None` is allowed.
        structure: `None` (unstructured masks), a
            `rigl_keras.structures.Structure` (`Block`, `NM`) for every
            sparse weight, or a dict `{weight path or layer name: Structure
            or None}`. Weights kept dense carry no structure.

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
        structure=None,
    ):
        structure_arguments.validate_argument(structure)
        if not _checks.is_real(sparsity) or not 0.0 <= sparsity < 1.0:
            raise ValueError(
                "`sparsity` must be a number in [0, 1). "
                f"Received: sparsity={sparsity!r}"
            )
        if isinstance(distribution, dict):
            for name, value in distribution.items():
                if not _checks.is_real(value) or not 0.0 <= value < 1.0:
                    raise ValueError(
                        "Every sparsity in `distribution` must be a number in "
                        f"[0, 1). Received: distribution[{name!r}]={value!r}"
                    )
        elif distribution not in _DISTRIBUTIONS:
            raise ValueError(
                f"`distribution` must be one of {_DISTRIBUTIONS} or a dict "
                f"{{weight: sparsity}}. Received: distribution={distribution!r}"
            )
        if not (update_freq is None and allow_static) and (
            not _checks.is_int(update_freq) or update_freq < 1
        ):
            static = ", or None for static sparse training" if allow_static else ""
            raise ValueError(
                f"`update_freq` must be an integer >= 1{static}. "
                f"Received: update_freq={update_freq!r}"
            )
        if not _checks.is_int(begin_step) or begin_step < 0:
            raise ValueError(
                "`begin_step` must be an integer >= 0. "
                f"Received: begin_step={begin_step!r}"
            )
        if end_step is not None and (not _checks.is_int(end_step) or end_step <= begin_step):
            raise ValueError(
                "`end_step` must be an integer greater than `begin_step` "
                f"({begin_step}), or None. Received: end_step={end_step!r}"
            )
        if not _checks.is_real(erk_power_scale) or erk_power_scale < 0:
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
        self.structure = structure
        self.model = None
        self.optimizer = None
        self._fit_params = None
        self._warned_non_finite = set()
        self._weights = []
        self._targets = {}
        self._zero_counts = {}  # {weight key: zeros in its mask}, kept current
        self._model_cache = {}
        self._model_cache_key = None
        self._resolved_end_step = None
        self._next_update = None
        self._updates_left = False

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

    @property
    def resolved_end_step(self):
        """The `end_step` in use: the argument, or the one resolved from the
        length of the `fit()` call (`None` before training starts, and for
        static training)."""
        return self._resolved_end_step

    @property
    def next_update_step(self):
        """The optimizer step of the next mask update, or `None`."""
        return self._next_update if self._updates_left else None

    def layer_sparsities(self):
        """`{weight key: fraction of zeros in its mask}` now."""
        return _sparsities(self._mask_zero_counts(), self._weights)

    def current_sparsity(self):
        """Overall fraction of zeros across all masks (a float)."""
        return overall_sparsity(self._mask_zero_counts(), self._weights)

    # ------------------------------------------------------------------
    # The step API.

    def bind(self, model):
        """Ties the engine to `model` for good.

        Raises:
            ValueError: If the engine already trains another model.
        """
        if self.model is not None and self.model is not model:
            name = self._owner_name()
            raise ValueError(
                f"This {name} is already bound to model '{self.model.name}'; "
                f"create a new {name} for model '{model.name}'."
            )
        self.model = model

    def begin(self, model, optimizer=None, fit_params=None, steps_per_call=None):
        """Starts training: finds the masked weights, sets the masks up.

        Args:
            model: The model, with masked weights (`rigl_keras.sparsify`).
            optimizer: The optimizer that applies the gradients; defaults to
                `model.optimizer`.
            fit_params: The `params` of the `model.fit` call that drives
                training (`steps`, `epochs`), or `None` for a custom loop
                (the engine then never touches `model.train_function`).
            steps_per_call: Optimizer steps between two `after_step` calls
                at most; defaults to the model's `steps_per_execution` in
                `fit` and to 1 otherwise.

        Raises:
            ValueError: If the model has no masked weight or no optimizer,
                or the step arguments do not fit `steps_per_call`.
        """
        self.bind(model)
        self._fit_params = fit_params
        self._weights = masking.masked_weights(model)
        if not self._weights:
            raise ValueError(
                f"Model '{model.name}' has no masked weight: call "
                "`rigl_keras.sparsify(model)` first (or build it from "
                "rigl_keras.MaskedDense / rigl_keras.MaskedConv2D) to train "
                "it sparse."
            )
        self._seed_names = {w.key: masking.seed_name(w, model) for w in self._weights}
        self._strategy = model.distribute_strategy
        self.optimizer = optimizer or model.optimizer
        if self.optimizer is None:
            raise ValueError(
                f"Model '{model.name}' has no optimizer: compile it, or pass "
                "the optimizer to rigl_keras.CustomLoop."
            )
        if not self.optimizer.built:
            with self._strategy.scope():
                self.optimizer.build(model.trainable_variables)
        if steps_per_call is None:
            steps_per_call = 1
            if fit_params is not None:
                steps_per_call = int(getattr(model, "steps_per_execution", 1) or 1)
        self._steps_per_call = int(steps_per_call)
        if self.update_freq is not None:
            optimizer_state.check_optimizer_supported(self.optimizer)
            self._check_steps_per_call()
        self._targets = self._resolve_targets()
        self._resolve_structures()
        self._window_started = False
        self._updates_left = self.update_freq is not None
        self._next_update = None
        self._attach_gradient_hook()
        self._prepare_masks()

    def start_epoch(self, epoch):
        """Marks the start of an epoch; the first one opens the update window.

        Args:
            epoch: The epoch's index (as `fit` counts, from `initial_epoch`).

        Returns:
            The optimizer step at the start of the epoch.
        """
        self._epoch_start_step = read_step(self.optimizer.iterations)
        if not self._window_started:
            self._window_started = True
            self._start_window(epoch)
        return self._epoch_start_step

    def before_step(self, step):
        """Called before optimizer step `step` (1-based) is taken in `fit`."""

    def after_step(self, step=None):
        """Updates the masks if the optimizer step just taken is due one.

        Args:
            step: The number of optimizer steps taken so far, when the
                caller knows it without reading the device (`fit` counts
                batches); `None` reads the optimizer's counter.

        Returns:
            Whether the masks were updated.

        Raises:
            ValueError: If an update step fell inside one call of several
                optimizer steps (`steps_per_execution`, `steps_per_call`).
        """
        if not self._updates_left:
            return False
        if step is not None and step < self._next_update:
            return False
        step = read_step(self.optimizer.iterations)
        if step < self._next_update:
            # The optimizer skipped steps (a LossScaleOptimizer does when the
            # gradients overflow): the batch count ran ahead of the optimizer
            # step, and the update step is still to come.
            return False
        if step != self._next_update:
            raise ValueError(
                f"Mask update step {self._next_update} fell inside one "
                f"execution of {self._steps_per_call} steps (now at "
                f"step {step}). Use `update_freq`, `begin_step` and "
                "`end_step` that are multiples of the model's "
                "`steps_per_execution`, and epochs whose length is too."
            )
        self._on_update_step(step)
        self._schedule_next_update(step)
        return True

    def logs(self):
        """`sparsity`, per-weight `sparsity/<weight key>` and the method's own.

        Counted on the device at the start of training and at every update
        (the only times masks change), so this makes no device call.
        """
        zero_counts = self._zero_counts
        logs = {"sparsity": overall_sparsity(zero_counts, self._weights)}
        for name, value in _sparsities(zero_counts, self._weights).items():
            logs[f"sparsity/{name}"] = value
        logs.update(self._extra_logs())
        return logs

    def end(self):
        """Ends training (a later `begin` starts again)."""

    # ------------------------------------------------------------------
    # Shared machinery.

    def _owner_name(self):
        """The public name users know the engine by (its callback's)."""
        return getattr(self, "owner_name", type(self).__name__)

    def _cached_for_model(self, name, build):
        """What `build()` returns, built once per model state.

        For traced functions and the variables they use: a traced function
        holds the variables it touched when traced, the masked weights' and
        the optimizer's. The cache is kept across fit() calls while both are
        the same and emptied when they are not (another optimizer after
        `model.compile`, for one).
        """
        variable_ids = [id(w.variable) for w in self._weights]
        if (
            self._model_cache_key is None
            or self._model_cache_key[0] != variable_ids
            or self._model_cache_key[1] is not self.optimizer
        ):
            self._model_cache = {}
            self._model_cache_key = (variable_ids, self.optimizer)
        if name not in self._model_cache:
            self._model_cache[name] = build()
        return self._model_cache[name]

    def _mask_zero_counts(self):
        """`{weight key: number of zeros in its mask}`, counted in one call."""
        def build():
            weights = list(self._weights)

            @tf.function
            def count_zeros():
                return tf.stack([
                    count_true(tf.equal(tf.convert_to_tensor(w.mask), 0))
                    for w in weights
                ])

            return count_zeros

        if not self._weights:
            return {}
        counts = self._cached_for_model("count_zeros", build)().numpy()
        return {w.key: int(c) for w, c in zip(self._weights, counts)}

    def _aligned_arguments(self):
        """`(name, value)` pairs that must be multiples of steps_per_call."""
        return (("update_freq", self.update_freq), ("begin_step", self.begin_step))

    def _check_steps_per_call(self):
        spe = self._steps_per_call
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

    def _resolve_structures(self):
        """Per-weight structures and matrix views, checked against the
        weights' shapes and target sparsities."""
        per_key = structures.per_weight(self._weights, self.structure)
        self._structures, self._views = {}, {}
        for w in self._weights:
            structure = per_key[w.key]
            if structure is None or self._targets[w.key] == 0.0:
                continue
            self._views[w.key] = structure.validate(w)
            try:
                self._targets[w.key] = structure.check_sparsity(self._targets[w.key], w.key)
            except ValueError as error:
                raise ValueError(
                    f"{error}. With {structure!r} every structured weight has "
                    "that sparsity: pass it as `sparsity` with "
                    "distribution='uniform', or a distribution dict."
                ) from None
            self._structures[w.key] = structure

    def _target_zero_counts(self, sparsities):
        """`{weight key: zeros}` at `{weight key: sparsity}`, in whole units
        for structured weights."""
        shapes = {w.key: w.shape for w in self._weights}
        zeros = distributions.layer_zero_counts(shapes, sparsities)
        for key, structure in self._structures.items():
            zeros[key] = structure.zero_entries(self._views[key], sparsities[key])
        return zeros

    def _check_structures(self, weights):
        """Raises if the mask of one of `weights` lacks its structure."""
        result = structured_masks.check_weights(weights, self._structures)
        if not result:
            (key, reason), *_ = result.violations.items()
            raise ValueError(
                f"Weight '{key}' already has a mask without the structure "
                f"{self._structures[key]!r}: {reason}. Start from an all-ones "
                "mask (a freshly sparsified model) or pass another `structure`."
            )

    def _resolve_end_step(self, epoch):
        """`end_step`, or 75% of this fit()'s steps counted from epoch 0.

        Counting from epoch 0 (not from `initial_epoch`) makes a run resumed
        with `initial_epoch` keep the end_step of the uninterrupted run.
        Returns `None` if that lands at or before `begin_step`.
        """
        if self.end_step is not None:
            return self.end_step
        params = self._fit_params or {}
        steps, epochs = params.get("steps"), params.get("epochs")
        if not steps or not epochs:
            raise ValueError(
                f"{self._owner_name()}(end_step=None) needs the number of "
                "steps of this fit() call, but Keras does not know it (a "
                "dataset of unknown length?). Pass `end_step`, or "
                "`steps_per_epoch` to fit()."
            )
        # With `gradient_accumulation_steps` k the optimizer steps (and
        # `iterations` counts) once every k batches.
        base = optimizer_state.base_optimizer(self.optimizer)
        accumulation = int(getattr(base, "gradient_accumulation_steps", None) or 1)
        batch_start = self._epoch_start_step
        if accumulation > 1:
            batch_start = read_step(base._iterations)  # pylint: disable=protected-access
        fit_start = (batch_start - epoch * steps) // accumulation
        end_step = fit_start + int(
            _DEFAULT_END_FRACTION * (steps * epochs // accumulation)
        )
        end_step -= end_step % self._steps_per_call
        return end_step if end_step > self.begin_step else None

    def _last_step_of_fit(self, epoch):
        """The optimizer step this `fit()` call ends at, or None if unknown.

        Args:
            epoch: The first epoch of the call (`initial_epoch`).
        """
        params = self._fit_params or {}
        steps, epochs = params.get("steps"), params.get("epochs")
        if not steps or not epochs:
            return None
        base = optimizer_state.base_optimizer(self.optimizer)
        accumulation = int(getattr(base, "gradient_accumulation_steps", None) or 1)
        return self._epoch_start_step + (epochs - epoch) * steps // accumulation

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
            stacklevel=4,
        )

    def _attach_gradient_hook(self):
        """Masks the masked weights' gradients in the optimizer's `apply`.

        A train function traced without the hook (a model trained dense
        before) is dropped so that fit() traces one with it.
        """
        changed = gradients.attach(self.optimizer, self._weights, self._hook_recorders())
        if changed and self._fit_params is not None:
            self.model.make_train_function(force=True)

    # ------------------------------------------------------------------
    # Hooks.

    def _hook_recorders(self):
        """`{weight key: DenseGradientRecorder}` the hook should use now."""
        return {}

    def _prepare_masks(self):
        """Called at the start of training, once the targets are known."""

    def _start_window(self, epoch):
        """Called at the first epoch: resolve end_step, schedules."""
        raise NotImplementedError

    def _next_step_after(self, step):
        """The next update step after `step`, or `None`."""
        raise NotImplementedError

    def _on_update_step(self, step):
        """Changes the masks after optimizer step `step`."""
        raise NotImplementedError

    def _extra_logs(self):
        """Further `{key: float}` entries of the logs."""
        return {}
