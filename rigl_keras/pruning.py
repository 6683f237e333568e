"""`GradualPruningEngine`: gradual magnitude pruning (Zhu & Gupta 2017).

The dense-to-sparse baseline of the RigL paper, run in `model.fit` by
`rigl_keras.GradualPruningCallback`. Training starts dense (every mask all
ones) and the engine

* at the start of training prunes each masked layer to the initial sparsity
  (nothing when `initial_sparsity=0`);
* at every optimizer step `t` with `begin_step <= t <= end_step` and
  `(t - begin_step) % update_freq == 0`, and at `end_step` exactly, sets the
  sparsity of each masked layer `l` to

      s_t,l = s_f,l + (s_i,l - s_f,l) * (1 - p) ** 3,
      p = clip((t - begin_step) / (end_step - begin_step), 0, 1),

  where `s_f,l` is the layer's final target (from
  `rigl_keras.sparsity_distribution`) and `s_i,l = min(initial_sparsity,
  s_f,l)`, by keeping the `N_l - floor(s_t,l * N_l)` largest `|W|` among its
  currently active weights (masks only shrink) and resetting the optimizer
  state of the pruned positions;
* after `end_step` leaves the masks frozen at exactly the final targets;
* writes `sparsity` into the logs.

Steps are counted with `model.optimizer.iterations`, as in
`rigl_keras.RigLCallback`.
"""

import tensorflow as tf

from rigl_keras import _checks
from rigl_keras import distributions
from rigl_keras import engine as engine_lib
from rigl_keras import masking
from rigl_keras import optimizer_state
from rigl_keras import schedules
from rigl_keras import structures
from rigl_keras import _selection

__all__ = ["GradualPruningEngine"]

# Zhu & Gupta's exponent of the sparsity schedule.
_POWER = 3
# The callback has no `seed` argument: ties in |W| are broken by a seeded
# random order keyed by this constant, the layer name and the step, so runs
# and replicas agree.
_TIE_BREAK_SEED = 0


def _next_pruning_step(step, begin_step, end_step, update_freq):
    """The first pruning step strictly after `step`, or None past `end_step`.

    Pruning steps are `begin_step + k * update_freq` (k >= 0) up to
    `end_step`, plus `end_step` itself.
    """
    if step < begin_step:
        return begin_step
    candidate = engine_lib.next_update_step(step, begin_step, end_step, update_freq)
    if candidate is None and step < end_step:
        candidate = end_step
    return candidate


class GradualPruningEngine(engine_lib.MaskEngine):
    """The mask engine of gradual magnitude pruning.

    Takes the arguments of `rigl_keras.GradualPruningCallback` (see there).

    Raises:
        ValueError: For any argument outside its allowed range.

    Example:

    >>> engine = GradualPruningEngine(sparsity=0.8, update_freq=10)
    >>> engine.initial_sparsity
    0.0
    """

    owner_name = "GradualPruningCallback"

    def __init__(
        self,
        sparsity,
        distribution="erk",
        begin_step=0,
        end_step=None,
        update_freq=100,
        initial_sparsity=0.0,
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
            structure=structure,
        )
        if (
            not _checks.is_real(initial_sparsity)
            or not 0.0 <= initial_sparsity <= sparsity
        ):
            raise ValueError(
                f"`initial_sparsity` must be a number in [0, sparsity] = "
                f"[0, {sparsity}]. Received: initial_sparsity={initial_sparsity!r}"
            )
        self.initial_sparsity = float(initial_sparsity)
        self._schedules = None

    # ------------------------------------------------------------------
    # Public state.

    @property
    def sparsity_schedules(self):
        """`{weight key: PolynomialSparsity}` of the pruned weights.

        Resolved at the first epoch of `fit()` (`None` before).
        """
        return None if self._schedules is None else dict(self._schedules)

    def target_sparsities_at(self, step):
        """`{weight key: s_t,l}` the schedule prescribes at optimizer `step`.

        Weights with final target 0 map to 0.0. Available once the schedule
        is resolved (first epoch of `fit()`).
        """
        if self._schedules is None:
            raise ValueError(
                "The pruning schedule is resolved at the first epoch of fit(); "
                "call target_sparsities_at() after training has started."
            )
        return {
            name: float(self._schedules[name](step))
            if name in self._schedules
            else 0.0
            for name in self._targets
        }

    # ------------------------------------------------------------------
    # Hooks of MaskEngine.

    def _aligned_arguments(self):
        return super()._aligned_arguments() + (("end_step", self.end_step or 0),)

    def _prepare_masks(self):
        self._pruned = [w for w in self._weights if self._targets[w.key] > 0.0]
        self._shapes = {w.key: w.shape for w in self._weights}
        with self._strategy.scope():
            for weight in self._weights:
                weight.apply_mask()
        self._zero_counts = self._mask_zero_counts()
        # Masks only shrink: one that lacks its structure keeps lacking it.
        self._check_structures([w for w in self._weights if self._zero_counts[w.key]])
        self._schedules = None
        self._updates_left = bool(self._pruned)

    def _start_window(self, epoch):
        """Resolves end_step and the schedules, then prunes to s_t0."""
        self._resolved_end_step = self._resolve_end_step(epoch)
        if self._resolved_end_step is None:
            raise ValueError(
                "GradualPruningCallback(end_step=None) resolved end_step to a "
                "step not after begin_step (75% of the steps of this fit() "
                f"call, begin_step={self.begin_step}). Pass an explicit "
                "`end_step` or train longer."
            )
        self._schedules = {
            w.key: schedules.PolynomialSparsity(
                self._targets[w.key],
                self.begin_step,
                self._resolved_end_step,
                initial_sparsity=min(self.initial_sparsity, self._targets[w.key]),
                power=_POWER,
            )
            for w in self._pruned
        }
        if not self._pruned:
            return
        # At a fresh start this is the initial sparsity; a resumed run
        # catches up with the schedule (masks only shrink).
        self._prune(self._epoch_start_step)
        self._schedule_next_update(self._epoch_start_step)

    def _next_step_after(self, step):
        return _next_pruning_step(
            step, self.begin_step, self._resolved_end_step, self.update_freq
        )

    def _on_update_step(self, step):
        self._prune(step)

    # ------------------------------------------------------------------
    # The pruning step.

    def _build_update_function(self):
        seeds = [
            masking.weight_seed(_TIE_BREAK_SEED, self._seed_names[w.key])
            for w in self._pruned
        ]

        @tf.function
        def update(counts, step):
            results = []
            for i, (weight, weight_seed) in enumerate(zip(self._pruned, seeds)):
                results.append(
                    self._prune_weight(weight, counts[i], step, weight_seed)
                )
            return results

        return update

    def _prune_weight(self, weight, count, step, layer_seed):
        """Prunes one weight by magnitude.

        `count` is the number of entries to keep (unstructured), or of
        units (blocks, entries for N:M) to zero (structured).
        """
        kernel = tf.convert_to_tensor(weight.variable)
        mask = tf.convert_to_tensor(weight.mask)
        finite = tf.reduce_all(tf.math.is_finite(tf.cast(kernel, tf.float32)))
        active = mask > 0
        seed = tf.stack([tf.constant(layer_seed, tf.int64), tf.cast(step, tf.int64)])
        structure = self._structures.get(weight.key)
        if structure is None:
            nnz = tf.reduce_sum(tf.cast(active, tf.int32))
            kept = _selection.select_top_k(tf.abs(kernel), active, tf.minimum(count, nnz), seed)
        else:
            kept = structures.prune_mask(
                tf.abs(kernel), mask, structure, count, seed, view=self._views[weight.key]
            ) > 0
        kept = tf.where(finite, kept, active)
        pruned = tf.logical_and(active, tf.logical_not(kept))
        weight.mask.assign(tf.cast(kept, mask.dtype))
        weight.variable.assign(tf.where(kept, kernel, tf.zeros_like(kernel)))
        optimizer_state.reset_optimizer_state(self.optimizer, weight.variable, pruned)
        return {
            "finite": finite,
            "pruned": engine_lib.count_true(pruned),
            "zeros": engine_lib.count_true(tf.logical_not(kept)),
        }

    def _prune_counts(self, step):
        """Per pruned weight: entries to keep, or structured units to zero."""
        targets = {
            w.key: float(self._schedules[w.key](step)) for w in self._pruned
        }
        zeros = distributions.layer_zero_counts(self._shapes, targets)
        counts = []
        for w in self._pruned:
            structure = self._structures.get(w.key)
            if structure is None:
                counts.append(w.size - zeros[w.key])
            elif isinstance(structure, structures.NM):
                # N:M has one sparsity: the final one, from the first step.
                counts.append(structure.zero_units(self._views[w.key], self._targets[w.key]))
            else:
                counts.append(structure.zero_units(self._views[w.key], targets[w.key]))
        return counts

    def _prune(self, step):
        counts = self._prune_counts(step)
        with self._strategy.scope():
            update = self._cached_for_model("update", self._build_update_function)
            results = update(tf.constant(counts, tf.int32), tf.constant(step, tf.int64))
        total_pruned = 0
        for weight, result in zip(self._pruned, results):
            self._zero_counts[weight.key] = int(result["zeros"])
            if not bool(result["finite"]):
                self._warn_non_finite(weight, step, "pruning step")
                continue
            total_pruned += int(result["pruned"])
        if self.verbose:
            print(
                f"GradualPruningCallback: step {step}: {total_pruned} "
                f"connections pruned, sparsity "
                f"{engine_lib.overall_sparsity(self._zero_counts, self._weights):.4f}"
            )
