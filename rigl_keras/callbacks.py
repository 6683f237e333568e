"""`RigLCallback`: dynamic sparse training inside `model.fit`.

The callbacks are thin adapters: each holds a mask engine
(`rigl_keras.engine`) and calls its step API from the Keras callback hooks.
What the training does is documented with the engines:
`rigl_keras.rigl_engine.RigLEngine` (RigL, SET, SNFS, static) and
`rigl_keras.pruning.GradualPruningEngine`.
"""

import keras

from rigl_keras import engine as engine_lib
from rigl_keras import pruning
from rigl_keras import rigl_engine
from rigl_keras import structure_arguments

__all__ = ["GradualPruningCallback", "MaskCallback", "RigLCallback"]


def _engine_attribute(name):
    """A read-only property forwarding to the engine's `name`."""
    return property(
        lambda self: getattr(self.engine, name),
        doc=f"The engine's `{name}` (see the class arguments).",
    )


class MaskCallback(keras.callbacks.Callback):
    """Runs a `rigl_keras.engine.MaskEngine` in `model.fit`.

    Args:
        engine: The mask engine to drive.

    Example:

    >>> engine = rigl_keras.rigl_engine.RigLEngine(sparsity=0.5, seed=0)
    >>> callback = MaskCallback(engine)
    >>> callback.engine is engine
    True
    """

    def __init__(self, engine):
        super().__init__()
        if not isinstance(engine, engine_lib.MaskEngine):
            raise ValueError(
                "`engine` must be a rigl_keras.engine.MaskEngine. "
                f"Received: engine={engine!r}"
            )
        self.engine = engine
        self._epoch_start = 0

    sparsity = _engine_attribute("sparsity")
    distribution = _engine_attribute("distribution")
    update_freq = _engine_attribute("update_freq")
    begin_step = _engine_attribute("begin_step")
    end_step = _engine_attribute("end_step")
    dense_layers = _engine_attribute("dense_layers")
    erk_power_scale = _engine_attribute("erk_power_scale")
    verbose = _engine_attribute("verbose")
    structure = _engine_attribute("structure")
    weights = _engine_attribute("weights")
    target_sparsities = _engine_attribute("target_sparsities")
    resolved_end_step = _engine_attribute("resolved_end_step")
    next_update_step = _engine_attribute("next_update_step")

    def layer_sparsities(self):
        """`{weight key: fraction of zeros in its mask}` now."""
        return self.engine.layer_sparsities()

    def current_sparsity(self):
        """Overall fraction of zeros across all masks (a float)."""
        return self.engine.current_sparsity()

    def set_model(self, model):
        self.engine.bind(model)
        super().set_model(model)

    def on_train_begin(self, logs=None):
        self.engine.begin(self.model, fit_params=dict(self.params or {}))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self.engine.start_epoch(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        self.engine.before_step(self._epoch_start + batch + 1)

    def on_train_batch_end(self, batch, logs=None):
        self.engine.after_step(self._epoch_start + batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.engine.logs())

    def on_train_end(self, logs=None):
        self.engine.end()


@keras.saving.register_keras_serializable(package="rigl_keras")
class RigLCallback(MaskCallback):
    """Trains a model with masked weights sparse, rewiring it as RigL does.

    Every `update_freq` optimizer steps `t` with `begin_step < t <= end_step`
    and `(t - begin_step) % update_freq == 0`, each masked weight with
    0 < density < 1 drops `floor(f(t) * nnz)` active connections with the
    smallest `|W|` and grows as many where `|dL/d(W * M)|` is largest
    (`grow="gradient"`), at random (`"random"`, SET) or where the momentum of
    the dense gradient is largest (`"momentum"`, SNFS). `f` is the drop
    fraction schedule. After `end_step` the masks are frozen.

    Args:
        sparsity: Overall fraction of zeros over all masked weights, in
            `[0, 1)`.
        distribution: `"uniform"`, `"er"` or `"erk"` (how `sparsity` is
            spread over weights), or a dict `{weight path or layer name:
            sparsity}` (weights not named stay dense).
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
        dense_layers: Weights (paths or layer names) to keep dense, outside
            the sparsity budget for ER/ERK.
        erk_power_scale: Exponent of the ERK raw scores.
        verbose: 0 (silent) or 1 (one line per mask update).
        structure: `None` (unstructured), a `rigl_keras.structures.Block`
            or `NM` for every sparse weight, or a dict `{weight path or
            layer name: structure or None}`. With `Block` whole blocks are
            dropped and grown (zero blocks: `floor(s * blocks)`); with
            `NM(n, m)` every group of m inputs keeps exactly n active, and
            every structured weight's sparsity must be `1 - n/m`.

    Raises:
        ValueError: For any argument outside its allowed range.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((20,)),
    ...     keras.layers.Dense(128, activation="relu"),
    ...     keras.layers.Dense(10)])
    >>> report = rigl_keras.sparsify(model)
    >>> model.compile("sgd", "mse")
    >>> x, y = np.random.rand(256, 20), np.random.rand(256, 10)
    >>> history = model.fit(x, y, epochs=2, verbose=0, callbacks=[
    ...     rigl_keras.RigLCallback(sparsity=0.8, update_freq=4, seed=0)])
    >>> round(history.history["sparsity"][-1], 2)
    0.8
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
        structure=None,
    ):
        super().__init__(
            rigl_engine.RigLEngine(
                sparsity=sparsity,
                distribution=distribution,
                update_freq=update_freq,
                drop_fraction=drop_fraction,
                drop_fraction_schedule=drop_fraction_schedule,
                begin_step=begin_step,
                end_step=end_step,
                grow=grow,
                grow_init=grow_init,
                seed=seed,
                dense_layers=dense_layers,
                erk_power_scale=erk_power_scale,
                verbose=verbose,
                structure=structure,
            )
        )

    drop_fraction = _engine_attribute("drop_fraction")
    drop_fraction_schedule = _engine_attribute("drop_fraction_schedule")
    grow = _engine_attribute("grow")
    grow_init = _engine_attribute("grow_init")
    seed = _engine_attribute("seed")
    updater = _engine_attribute("updater")
    dense_gradients = _engine_attribute("dense_gradients")

    def detach(self):
        """Removes the gradient hook and the recorders (frees their memory).

        Call it once training with this callback is over for good: the
        optimizer then no longer masks gradients, so the masked weights'
        inactive entries stay zero only in graphs traced before.
        """
        self.engine.detach()

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
            "structure": structure_arguments.serialize_argument(self.structure),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["structure"] = structure_arguments.deserialize_argument(config.get("structure"))
        if isinstance(config.get("drop_fraction_schedule"), dict):
            config["drop_fraction_schedule"] = keras.saving.deserialize_keras_object(
                config["drop_fraction_schedule"]
            )
        return cls(**config)


@keras.saving.register_keras_serializable(package="rigl_keras")
class GradualPruningCallback(MaskCallback):
    """Prunes a model with masked weights gradually, by weight magnitude.

    Zhu & Gupta's schedule (`rigl_keras.pruning` has it in full): at
    optimizer step t the sparsity of weight l is
    `s_t,l = s_f,l + (s_i,l - s_f,l) * (1 - p) ** 3`, p the fraction of the
    window `[begin_step, end_step]` gone by. The number of zeros of weight
    l after a pruning step is exactly `floor(s_t,l * N_l)`
    (`rigl_keras.distributions.layer_zero_counts`), unless it was already
    sparser (masks never grow). Ties in `|W|` are broken by a seeded random
    order (the same on every run and replica). Weights whose final target
    is 0 are never touched.

    Args:
        sparsity: Final overall fraction of zeros over all masked weights,
            in `[0, 1)`. Ignored when `distribution` is a dict.
        distribution: `"uniform"`, `"er"` or `"erk"` (how `sparsity` is
            spread over weights), or a dict `{weight path or layer name:
            final_sparsity}` (weights not named stay dense).
        begin_step: Optimizer step at which pruning starts (>= 0).
        end_step: Optimizer step at which the final sparsity is reached,
            greater than `begin_step`; `None` means 75% of the optimizer
            steps of this `fit()` call.
        update_freq: Optimizer steps between pruning steps (>= 1).
        initial_sparsity: Sparsity `s_i` of the schedule at `begin_step`, in
            `[0, sparsity]`; the model is pruned to it when training starts.
            A weight whose final target is lower starts at its final target.
        dense_layers: Weights (paths or layer names) to keep dense, outside
            the sparsity budget for ER/ERK.
        erk_power_scale: Exponent of the ERK raw scores.
        verbose: 0 (silent) or 1 (one line per pruning step).
        structure: As in `RigLCallback`. `Block` weights are pruned in
            whole blocks (`floor(s_t * blocks)` zero blocks at step t);
            `NM` weights are pruned to n:m at the first pruning step, by
            magnitude within each group (one shot, as NVIDIA's ASP does),
            and their final sparsity must be `1 - n/m`.

    Raises:
        ValueError: For any argument outside its allowed range.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((20,)),
    ...     rigl_keras.MaskedDense(64, activation="relu"),
    ...     rigl_keras.MaskedDense(1)])
    >>> model.compile("sgd", "mse")
    >>> x, y = np.random.rand(256, 20), np.random.rand(256, 1)
    >>> history = model.fit(x, y, epochs=4, verbose=0, callbacks=[
    ...     rigl_keras.GradualPruningCallback(
    ...         sparsity=0.8, distribution="uniform", update_freq=4)])
    >>> round(history.history["sparsity"][-1], 2)
    0.8
    """

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
            pruning.GradualPruningEngine(
                sparsity,
                distribution=distribution,
                begin_step=begin_step,
                end_step=end_step,
                update_freq=update_freq,
                initial_sparsity=initial_sparsity,
                dense_layers=dense_layers,
                erk_power_scale=erk_power_scale,
                verbose=verbose,
                structure=structure,
            )
        )

    initial_sparsity = _engine_attribute("initial_sparsity")
    sparsity_schedules = _engine_attribute("sparsity_schedules")

    def target_sparsities_at(self, step):
        """`{weight key: s_t}` the schedule prescribes at optimizer `step`."""
        return self.engine.target_sparsities_at(step)

    # ------------------------------------------------------------------
    # Serialization.

    def get_config(self):
        return {
            "sparsity": self.sparsity,
            "distribution": self.distribution,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "update_freq": self.update_freq,
            "initial_sparsity": self.initial_sparsity,
            "dense_layers": list(self.dense_layers),
            "erk_power_scale": self.erk_power_scale,
            "verbose": self.verbose,
            "structure": structure_arguments.serialize_argument(self.structure),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["structure"] = structure_arguments.deserialize_argument(config.get("structure"))
        return cls(**config)
