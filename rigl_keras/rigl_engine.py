"""`RigLEngine`: dynamic sparse training at a fixed parameter count.

At the start of training every masked weight whose mask is all ones gets a
random mask with exactly its target number of zeros (targets from
`rigl_keras.sparsity_distribution`), and its entries outside it are zeroed.
Every `update_freq` optimizer steps, from `begin_step` to `end_step`, each
sparse weight drops and regrows connections with a `rigl_keras.updaters`
rule (RigL, SET or SNFS), the drop fraction following a schedule, and the
optimizer's state is reset at every changed position. With
`update_freq=None` the masks never change (static sparse training).

`rigl_keras.RigLCallback` runs it in `model.fit`; `rigl_keras.CustomLoop`
in a loop of your own.
"""

import random
import warnings

import tensorflow as tf

from rigl_keras import _checks
from rigl_keras import engine as engine_lib
from rigl_keras import gradients
from rigl_keras import masking
from rigl_keras import optimizer_state
from rigl_keras import recording
from rigl_keras import schedules
from rigl_keras import structures
from rigl_keras import updaters

__all__ = ["RigLEngine"]

_SCHEDULES = ("cosine", "constant")
_SNFS_MOMENTUM = 0.9


class RigLEngine(engine_lib.MaskEngine):
    """The mask engine of RigL, SET, SNFS and static sparse training.

    Takes the arguments of `rigl_keras.RigLCallback` (see there).

    Raises:
        ValueError: For any argument outside its allowed range.

    Example:

    >>> engine = RigLEngine(sparsity=0.9, update_freq=100, seed=0)
    >>> engine.updater
    RigL(grow_init='zeros')
    """

    owner_name = "RigLCallback"

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
        structure=None,
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
            structure=structure,
        )
        if not _checks.is_real(drop_fraction) or not 0.0 < drop_fraction <= 1.0:
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
        if seed is not None and not _checks.is_int(seed):
            raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
        self.updater = updaters.get(grow, grow_init)  # validates both
        self.drop_fraction = float(drop_fraction)
        self.drop_fraction_schedule = drop_fraction_schedule
        self.grow = grow
        self.grow_init = grow_init
        self.seed = seed
        momentum = _SNFS_MOMENTUM if isinstance(self.updater, updaters.SNFS) else None
        self._recording = recording.GradientRecording(momentum)
        self._drop_fraction_now = 0.0
        self._churn = {}
        self._warned_no_update = False

    @property
    def dense_gradients(self):
        """`{weight key: float32 variable}`: what the next update grows by.

        For RigL, the dense gradient `dL/d(W * M)` of the update step; for
        SNFS its moving average over steps. Under a distribution strategy
        each is an `ON_READ` variable whose value, read in cross-replica
        context, is the global-batch gradient. Only weights the update
        rewires have one (not those kept dense); the dict is empty for
        rules that do not use the gradient, and before training starts.

        In `model.fit` (one optimizer step per batch, no loss scaling or
        gradient accumulation) a RigL gradient takes memory only on update
        steps: it holds the weight's shape from the start of the update
        step until the update has used it, and no element (shape `(0,)`)
        in between. Elsewhere (SNFS, `CustomLoop`, loss scaling, gradient
        accumulation, `steps_per_execution > 1`) it keeps the weight's
        shape through the update window and holds zeros between updates.
        """
        return {
            key: recorder.gradient for key, recorder in self._recording.recorders.items()
        }

    # ------------------------------------------------------------------
    # The step API (the rest is in MaskEngine).

    def start_epoch(self, epoch):
        self._drop_fraction_now = 0.0
        return super().start_epoch(epoch)

    def before_step(self, step):
        if self._recording.swaps():
            self._recording.before_step(
                self.model, self._updates_left and step == self._next_update
            )

    def end(self):
        model = self.model if self._fit_params is not None else None
        self._recording.end(model)

    def detach(self):
        """Removes the gradient hook and the recorders (frees their memory).

        Call it once training with this engine is over for good: the
        optimizer then no longer masks gradients, so the masked weights'
        inactive entries stay zero only in graphs traced before.
        """
        if self.optimizer is not None:
            gradients.detach(self.optimizer, self._weights)
        if self._recording.clear() and self.model is not None:
            self.model.train_function = None

    # ------------------------------------------------------------------
    # Start of training.

    def _prepare_masks(self):
        if self.seed is None:
            self.seed = random.randint(0, 2**31 - 2)
        self._resolved_schedule = None
        self._drop_fraction_now = 0.0
        self._churn = {}
        self._initialize_masks()

    def _weight_seed(self, weight):
        return masking.weight_seed(self.seed, self._seed_names[weight.key])

    def _initial_mask(self, weight, num_zeros):
        """A random mask with exactly `num_zeros` zeros (and the structure)."""
        seed = self._weight_seed(weight)
        structure = self._structures.get(weight.key)
        if structure is None:
            return masking.random_mask(weight.shape, num_zeros, seed)
        view = self._views[weight.key]
        zero_units = structure.zero_units(view, self._targets[weight.key])
        return structures.initial_mask(weight.shape, structure, zero_units, seed, view=view)

    def _initialize_masks(self):
        targets = self._target_zero_counts(self._targets)
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
                w.mask.assign(self._initial_mask(w, targets[w.key]))
            if fresh:
                zero_counts = start_training().numpy()
        self._check_structures(self._weights)
        self._zero_counts = {
            w.key: int(zeros) for w, zeros in zip(self._weights, zero_counts)
        }
        for w in self._weights:
            if self._zero_counts[w.key] != targets[w.key]:
                warnings.warn(
                    f"Weight '{w.key}' already has a sparse mask with "
                    f"{self._zero_counts[w.key]} zeros; keeping it (the "
                    f"target is {targets[w.key]}).",
                    stacklevel=4,
                )
        total = sum(w.size for w in self._weights)
        self._ever_active_total = total - sum(self._zero_counts.values())

    def _build_start_function(self):
        """Traces what every fit() starts with, for all weights in one call.

        Zeroes the weights outside their masks; resets the optimizer state
        there (a model trained dense before keeps momentum, EMA, ... at the
        positions masked out now, which would move them off zero at the next
        step; a no-op on a fresh state); starts the record of positions
        ever active (in-time over-parameterization) at the current masks; and
        returns the masks' zero counts.
        """
        try:
            optimizer_state.check_optimizer_supported(self.optimizer)
            reset_state = True
        except ValueError:  # Allowed for static training (update_freq=None).
            reset_state = False
        weights = list(self._weights)
        optimizer = self.optimizer
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
                zero_counts.append(engine_lib.count_true(inactive))
            return tf.stack(zero_counts)

        return start_training

    def _ever_active_variables(self):
        """`{weight key: bool variable}`: positions active since fit() began."""
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
        """Resolves end_step and the schedule at the first epoch."""
        if self.update_freq is None:
            self._resolved_end_step = None
            return
        self._resolved_end_step = self._resolve_end_step(epoch)
        schedule = self.drop_fraction_schedule
        if schedule == "cosine":
            schedule = schedules.CosineDropFraction(
                self.drop_fraction,
                self.begin_step,
                self._resolved_end_step or self.begin_step + 1,
            )
        elif schedule == "constant":
            schedule = schedules.ConstantDropFraction(self.drop_fraction)
        self._resolved_schedule = schedule
        if self._resolved_end_step is None:
            self._updates_left = False
            self._warn_no_update(epoch, None)
            return
        self._attach_recorders()
        self._schedule_next_update(self._epoch_start_step)
        self._warn_no_update(epoch, self._next_update)

    def _warn_no_update(self, epoch, first_update):
        """Warns once if this `fit()` call ends before its first update."""
        last_step = self._last_step_of_fit(epoch)
        if self._warned_no_update or last_step is None:
            return
        if first_update is not None and first_update <= last_step:
            return
        self._warned_no_update = True
        if first_update is None:
            reason = (
                f"the update window ends at end_step={self._resolved_end_step} "
                f"(begin_step={self.begin_step}, update_freq={self.update_freq})"
                if self._resolved_end_step is not None
                else "75% of its steps end before begin_step="
                f"{self.begin_step}"
            )
        else:
            reason = (
                f"the first mask update is at step {first_update} "
                f"(begin_step={self.begin_step}, update_freq={self.update_freq})"
            )
        warnings.warn(
            f"RigLCallback will not update the masks in this fit() call: it "
            f"trains optimizer steps {self._epoch_start_step + 1} to "
            f"{last_step} and {reason}. Steps count across fit() calls; "
            "lower `update_freq` or train longer to rewire.",
            stacklevel=5,
        )

    def _next_step_after(self, step):
        return engine_lib.next_update_step(
            step, self.begin_step, self._resolved_end_step, self.update_freq
        )

    def _schedule_next_update(self, step):
        super()._schedule_next_update(step)
        # Past end_step the recorders stay attached until the end of fit()
        # (the running train function holds them) but record nothing.
        self._recording.schedule(self._next_update)

    def _extra_logs(self):
        """`drop_fraction` (of the epoch's last update; 0 if it had none),
        per-weight `churn/<weight key>` (fraction of active connections
        replaced at the last update) and `itop_rate` (fraction of all masked
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
        if self._recording.is_current(self._sparse_weights(), self.optimizer):
            return self._recording.recorders
        return {}

    def _attach_recorders(self):
        """Gives every weight the update rewires a dense-gradient recorder
        in the optimizer's gradient hook and, in `fit`, makes the train
        function(s) that use them."""
        if not self.updater.uses_gradient:
            return
        swaps = self._fit_params is not None and self._can_swap_train_functions()
        # Weights kept dense (a target of 0) never grow: no recorder.
        self._recording.prepare(
            self._sparse_weights(), self.optimizer, self._strategy, lazy=swaps
        )
        gradients.attach(self.optimizer, self._weights, self._recording.recorders)
        if self._fit_params is None:
            return  # A custom loop traces its own step after begin().
        self._recording.make_train_functions(self.model, swaps)

    def _can_swap_train_functions(self):
        """Per-step choice of train function works when every batch is one
        optimizer step whose number the engine knows in advance."""
        optimizer = self.optimizer
        return (
            self._steps_per_call == 1
            and self.updater.uses_gradient
            and not isinstance(self.updater, updaters.SNFS)
            and not hasattr(optimizer, "inner_optimizer")  # loss scaling skips steps
            and not getattr(optimizer, "gradient_accumulation_steps", None)
        )

    # ------------------------------------------------------------------
    # The update.

    def _sparse_weights(self):
        return [w for w in self._weights if 0 < self._targets[w.key] < 1]

    def _build_update_function(self):
        sparse_weights = self._sparse_weights()
        weight_seeds = [self._weight_seed(w) for w in sparse_weights]
        ever_active = self._ever_active_variables()
        recorders = dict(self._recording.recorders)

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
            gradient = recorder.value()
        else:
            gradient = tf.zeros(tf.shape(kernel), tf.float32)
        finite = tf.logical_and(
            tf.reduce_all(tf.math.is_finite(gradient)),
            tf.reduce_all(tf.math.is_finite(tf.cast(kernel, tf.float32))),
        )
        seed = tf.stack([tf.constant(weight_seed, tf.int64), tf.cast(step, tf.int64)])

        structure = self._structures.get(weight.key)
        view = self._views.get(weight.key)

        def apply_update():
            result = self.updater.update(
                kernel, mask, gradient, drop_fraction, seed, structure=structure, view=view
            )
            weight.mask.assign(result.mask)
            weight.variable.assign(result.kernel)
            changed = tf.logical_or(result.grown, result.dropped)
            optimizer_state.reset_optimizer_state(self.optimizer, weight.variable, changed)
            newly_active = tf.logical_and(result.grown, tf.logical_not(ever_active))
            ever_active.assign(tf.logical_or(ever_active, result.grown))
            return (
                engine_lib.count_true(result.grown),
                engine_lib.count_true(newly_active),
                engine_lib.count_true(tf.equal(result.mask, 0)),
            )

        def skip():
            return (
                tf.constant(0, tf.int64),
                tf.constant(0, tf.int64),
                engine_lib.count_true(tf.equal(mask, 0)),
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
        fraction = float(self._resolved_schedule(step))
        self._drop_fraction_now = fraction
        if fraction <= 0.0:  # nothing to replace (the cosine at end_step)
            self._recording.reset()
            self._churn = {w.key: 0.0 for w in self._sparse_weights()}
            return
        self._recording.ready_for_update()
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
                    stacklevel=4,
                )
            grown = int(result["grown"])
            total_grown += grown
            active = w.size - self._zero_counts[w.key]
            self._churn[w.key] = grown / max(1, active)
        if self.verbose:
            print(
                f"RigLCallback: step {step}: drop fraction {fraction:.4f}, "
                f"{total_grown} connections regrown, sparsity "
                f"{engine_lib.overall_sparsity(self._zero_counts, self._weights):.4f}"
            )
