"""Step-indexed schedules for drop fractions and target sparsities.

Every schedule maps a training step to a fraction in ``[0, 1]``. They are
shaped like ``keras.optimizers.schedules.LearningRateSchedule``: calling one
with a step (a Python int or an integer tensor, also inside a
``tf.function``) returns a scalar ``float64`` tensor, ``get_config()`` is a
flat dict of Python numbers and ``from_config(config)`` is ``cls(**config)``.
Each class is registered with Keras under the ``rigl_keras`` package, so
``keras.saving.serialize_keras_object`` / ``deserialize_keras_object`` round
trip them.

* ``CosineDropFraction``: RigL's cosine annealing of the drop fraction
  (Evci et al. 2020, "Rigging the Lottery").
* ``ConstantDropFraction``: a drop fraction that never changes.
* ``PolynomialSparsity``: the gradual pruning sparsity schedule of Zhu &
  Gupta 2017, used by the gradual magnitude pruning baseline.

Example:

    >>> schedule = CosineDropFraction(
    ...     initial_drop_fraction=0.3, begin_step=100, end_step=1100)
    >>> round(float(schedule(600)), 4)
    0.15
"""

import abc
import math
import numbers

import keras
from keras import ops

__all__ = [
    "DropFractionSchedule",
    "CosineDropFraction",
    "ConstantDropFraction",
    "PolynomialSparsity",
    "get",
]


def _check_step(name, value):
    """Returns `value` as a Python int after checking it is an integer.

    Args:
        name: Argument name used in the error message.
        value: The received value.

    Returns:
        `int(value)`.

    Raises:
        ValueError: If `value` is not an integer (bools are rejected too).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"`{name}` must be an integer. Received: {name}={value!r}"
        )
    return int(value)


def _check_begin_end(begin_step, end_step):
    """Validates a `begin_step`/`end_step` pair.

    Args:
        begin_step: First step of the schedule, must be `>= 0`.
        end_step: Last step of the schedule, must be `> begin_step`.

    Returns:
        The tuple `(begin_step, end_step)` as Python ints.

    Raises:
        ValueError: If either value is not an integer, `begin_step < 0` or
            `end_step <= begin_step`.
    """
    begin_step = _check_step("begin_step", begin_step)
    if begin_step < 0:
        raise ValueError(
            "`begin_step` must be >= 0. "
            f"Received: begin_step={begin_step}"
        )
    if end_step is None:
        raise ValueError(
            "`end_step` is required and must be an integer > begin_step "
            f"({begin_step}). Received: end_step=None"
        )
    end_step = _check_step("end_step", end_step)
    if end_step <= begin_step:
        raise ValueError(
            f"`end_step` must be > begin_step ({begin_step}). "
            f"Received: end_step={end_step}"
        )
    return begin_step, end_step


def _check_drop_fraction(name, value):
    """Checks that a drop fraction lies in `(0, 1]`.

    Args:
        name: Argument name used in the error message.
        value: The received value.

    Returns:
        `float(value)`.

    Raises:
        ValueError: If `value` is not a real number in `(0, 1]`.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"`{name}` must be a float in (0, 1]. Received: {name}={value!r}"
        )
    if not 0.0 < value <= 1.0:  # Also rejects NaN.
        raise ValueError(
            f"`{name}` must be in (0, 1]. Received: {name}={value}"
        )
    return float(value)


def _check_sparsity(name, value):
    """Checks that a sparsity lies in `[0, 1)`.

    Args:
        name: Argument name used in the error message.
        value: The received value.

    Returns:
        `float(value)`.

    Raises:
        ValueError: If `value` is not a real number in `[0, 1)`.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"`{name}` must be a float in [0, 1). Received: {name}={value!r}"
        )
    if not 0.0 <= value < 1.0:  # Also rejects NaN.
        raise ValueError(
            f"`{name}` must be in [0, 1). Received: {name}={value}"
        )
    return float(value)


def _progress(step, begin_step, end_step):
    """Fraction of the `[begin_step, end_step]` window elapsed at `step`.

    Args:
        step: Python int or integer/float tensor.
        begin_step: Python int, start of the window.
        end_step: Python int, end of the window (`> begin_step`).

    Returns:
        A scalar `float64` tensor in `[0, 1]`.
    """
    step = ops.cast(step, "float64")
    duration = float(end_step - begin_step)
    elapsed = ops.clip(step - float(begin_step), 0.0, duration)
    return elapsed / duration


class DropFractionSchedule(abc.ABC):
    """Base class for step -> fraction schedules.

    This is the shared interface of every schedule in this module: drop
    fraction schedules used by the dynamic sparse training callbacks and the
    `PolynomialSparsity` target sparsity schedule. Subclasses implement
    `__call__` and `get_config`; `from_config` is `cls(**config)`.

    Example:

        >>> class Half(DropFractionSchedule):
        ...     def __call__(self, step):
        ...         return ops.convert_to_tensor(0.5, dtype="float32")
        ...     def get_config(self):
        ...         return {}
        >>> float(Half()(10))
        0.5
    """

    @abc.abstractmethod
    def __call__(self, step):
        """Returns the fraction at `step`.

        Args:
            step: A Python int or a scalar integer tensor (e.g.
                `optimizer.iterations`), possibly symbolic inside a
                `tf.function`.

        Returns:
            A scalar `float64` tensor.
        """

    @abc.abstractmethod
    def get_config(self):
        """Returns the constructor arguments as a flat dict.

        Returns:
            A dict of Python numbers such that `cls(**config)` rebuilds the
            schedule.
        """

    @classmethod
    def from_config(cls, config):
        """Instantiates a schedule from its config.

        Args:
            config: A dict as returned by `get_config()`.

        Returns:
            A schedule instance.
        """
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="rigl_keras")
class CosineDropFraction(DropFractionSchedule):
    """Cosine annealing of the drop fraction (RigL, Evci et al. 2020).

    With `alpha = initial_drop_fraction` and
    `p = clip(step - begin_step, 0, end_step - begin_step)
    / (end_step - begin_step)`:

        f(step) = alpha * 0.5 * (1 + cos(pi * p))

    so `f = alpha` at and before `begin_step`, `alpha / 2` at the midpoint
    and `0` at and after `end_step`.

    Args:
        initial_drop_fraction: Float in `(0, 1]`, the drop fraction at
            `begin_step`. Defaults to `0.3` (the RigL paper's value).
        begin_step: Integer `>= 0`, step at which annealing starts.
            Defaults to `0`.
        end_step: Integer `> begin_step`, step at which the drop fraction
            reaches 0 (typically the last mask update step). Required.

    Raises:
        ValueError: If an argument is outside its allowed range.

    Example:

        >>> schedule = CosineDropFraction(0.3, begin_step=100, end_step=1100)
        >>> [round(float(schedule(s)), 4) for s in (0, 100, 600, 1100)]
        [0.3, 0.3, 0.15, 0.0]
    """

    def __init__(self, initial_drop_fraction=0.3, begin_step=0, end_step=None):
        self.initial_drop_fraction = _check_drop_fraction(
            "initial_drop_fraction", initial_drop_fraction
        )
        self.begin_step, self.end_step = _check_begin_end(begin_step, end_step)

    def __call__(self, step):
        """Returns the drop fraction at `step` as a scalar `float64` tensor."""
        progress = _progress(step, self.begin_step, self.end_step)
        return (
            self.initial_drop_fraction
            * 0.5
            * (1.0 + ops.cos(math.pi * progress))
        )

    def get_config(self):
        """Returns the constructor arguments as a flat dict."""
        return {
            "initial_drop_fraction": self.initial_drop_fraction,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
        }


@keras.saving.register_keras_serializable(package="rigl_keras")
class ConstantDropFraction(DropFractionSchedule):
    """A drop fraction that is the same at every step.

    Args:
        drop_fraction: Float in `(0, 1]`. Defaults to `0.3`.

    Raises:
        ValueError: If `drop_fraction` is outside `(0, 1]`.

    Example:

        >>> float(ConstantDropFraction(0.25)(12345))
        0.25
    """

    def __init__(self, drop_fraction=0.3):
        self.drop_fraction = _check_drop_fraction(
            "drop_fraction", drop_fraction
        )

    def __call__(self, step):
        """Returns `drop_fraction` as a scalar `float64` tensor.

        Args:
            step: Ignored; accepted for interface compatibility.

        Returns:
            A scalar `float64` tensor.
        """
        del step  # Unused.
        return ops.convert_to_tensor(self.drop_fraction, dtype="float64")

    def get_config(self):
        """Returns the constructor arguments as a flat dict."""
        return {"drop_fraction": self.drop_fraction}


@keras.saving.register_keras_serializable(package="rigl_keras")
class PolynomialSparsity(DropFractionSchedule):
    """Gradual pruning sparsity schedule (Zhu & Gupta 2017).

    With `p = clip((step - begin_step) / (end_step - begin_step), 0, 1)`:

        s(step) = final_sparsity
                  + (initial_sparsity - final_sparsity) * (1 - p) ** power

    so the sparsity rises quickly at first and levels off at
    `final_sparsity` at `end_step`.

    Args:
        final_sparsity: Float in `[0, 1)`, the sparsity reached at
            `end_step`.
        begin_step: Integer `>= 0`, step at which pruning starts.
        end_step: Integer `> begin_step`, step at which `final_sparsity` is
            reached.
        initial_sparsity: Float in `[0, 1)`, `<= final_sparsity`. Defaults
            to `0.0`.
        power: Number `>= 1`, exponent of the decay. Defaults to `3`.

    Raises:
        ValueError: If an argument is outside its allowed range.

    Example:

        >>> schedule = PolynomialSparsity(0.8, begin_step=0, end_step=100)
        >>> round(float(schedule(50)), 4)
        0.7
    """

    def __init__(
        self,
        final_sparsity,
        begin_step,
        end_step,
        initial_sparsity=0.0,
        power=3,
    ):
        self.final_sparsity = _check_sparsity("final_sparsity", final_sparsity)
        self.initial_sparsity = _check_sparsity(
            "initial_sparsity", initial_sparsity
        )
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(
                "`initial_sparsity` must be <= final_sparsity "
                f"({self.final_sparsity}). "
                f"Received: initial_sparsity={self.initial_sparsity}"
            )
        self.begin_step, self.end_step = _check_begin_end(begin_step, end_step)
        if isinstance(power, bool) or not isinstance(power, numbers.Real):
            raise ValueError(
                f"`power` must be a number >= 1. Received: power={power!r}"
            )
        if not power >= 1:  # Also rejects NaN.
            raise ValueError(f"`power` must be >= 1. Received: power={power}")
        self.power = power

    def __call__(self, step):
        """Returns the target sparsity at `step` as a scalar `float64` tensor."""
        progress = _progress(step, self.begin_step, self.end_step)
        decay = ops.power(1.0 - progress, float(self.power))
        return self.final_sparsity + (
            self.initial_sparsity - self.final_sparsity
        ) * decay

    def get_config(self):
        """Returns the constructor arguments as a flat dict."""
        return {
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "initial_sparsity": self.initial_sparsity,
            "power": self.power,
        }


def get(identifier):
    """Returns a schedule object from an instance or a serialized config.

    The strings `"cosine"` and `"constant"` are not resolved here because
    they need parameters (the end step, the drop fraction); the callbacks
    that accept them build `CosineDropFraction` / `ConstantDropFraction`
    themselves.

    Args:
        identifier: A `DropFractionSchedule` instance (returned as is) or a
            dict produced by `keras.saving.serialize_keras_object`.

    Returns:
        A `DropFractionSchedule` instance.

    Raises:
        ValueError: If `identifier` is a string, a dict that does not
            deserialize to a schedule, or any other type.

    Example:

        >>> config = keras.saving.serialize_keras_object(
        ...     ConstantDropFraction(0.1))
        >>> get(config).get_config()
        {'drop_fraction': 0.1}
    """
    if isinstance(identifier, DropFractionSchedule):
        return identifier
    if isinstance(identifier, dict):
        schedule = keras.saving.deserialize_keras_object(identifier)
        if not isinstance(schedule, DropFractionSchedule):
            raise ValueError(
                "The config does not describe a rigl_keras schedule. "
                f"Received: identifier={identifier!r}"
            )
        return schedule
    if isinstance(identifier, str):
        raise ValueError(
            f"Unknown schedule name {identifier!r}: `schedules.get` does not "
            "resolve strings ('cosine' and 'constant' are resolved by the "
            "callbacks, which know the parameters). Pass a schedule instance "
            f"or a serialized config. Received: identifier={identifier!r}"
        )
    raise ValueError(
        "Could not interpret schedule identifier: expected a "
        "DropFractionSchedule instance or a config dict. "
        f"Received: identifier={identifier!r}"
    )
