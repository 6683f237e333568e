"""Resetting an optimizer's per-weight state at chosen kernel positions.

When a connection is grown or dropped, whatever the optimizer remembers about
that position (momentum, Adam's `m` and `v`, RMSprop's accumulators, ...)
belongs to another connection's past. RigL resets it: a grown connection
starts fresh, and a dropped one cannot be moved off zero by momentum.

Keras 3 optimizers keep each kind of state in a list with one variable per
trainable variable, indexed by `optimizer._get_variable_index(variable)`.
A registry maps each known optimizer class to its list attributes and the
value each resets to; `register_optimizer_state` adds a class and
`registered_optimizers` lists them. An
optimizer whose class (or base class) is not known raises a `ValueError`
naming it: silently skipping its state would leave stale momentum behind.
"""

import keras
import tensorflow as tf

__all__ = [
    "base_optimizer",
    "registered_optimizers",
    "register_optimizer_state",
    "optimizer_state_slots",
    "check_optimizer_supported",
    "reset_optimizer_state",
]


def _zero(optimizer):
    del optimizer
    return 0.0


def _initial_accumulator(optimizer):
    return float(optimizer.initial_accumulator_value)


# class name -> [(attribute holding a per-variable list, reset value fn)].
# Attributes that an optimizer creates only for some settings (SGD without
# momentum, RMSprop without momentum/centered, Adam without amsgrad) are
# simply absent or empty and are skipped.
_OPTIMIZER_STATE = {
    keras.optimizers.SGD: [("momentums", _zero)],
    keras.optimizers.Adam: [
        ("_momentums", _zero),
        ("_velocities", _zero),
        ("_velocity_hats", _zero),
    ],
    keras.optimizers.RMSprop: [
        ("_velocities", _zero),
        ("_momentums", _zero),
        ("_average_gradients", _zero),
    ],
    keras.optimizers.Adagrad: [("_accumulators", _initial_accumulator)],
    keras.optimizers.Adamax: [("_m", _zero), ("_u", _zero)],
    keras.optimizers.Nadam: [("_momentums", _zero), ("_velocities", _zero)],
    keras.optimizers.Lion: [("_momentums", _zero)],
    keras.optimizers.Adadelta: [
        ("_accumulated_grads", _zero),
        ("_accumulated_delta_vars", _zero),
    ],
    keras.optimizers.Ftrl: [
        ("_accumulators", _initial_accumulator),
        ("_linears", _zero),
    ],
    keras.optimizers.Lamb: [("_momentums", _zero), ("_velocities", _zero)],
}


def registered_optimizers():
    """`{optimizer class: ((state attribute, reset value fn), ...)}`.

    A copy: change the registry with `register_optimizer_state`.

    Example:

    >>> keras.optimizers.SGD in registered_optimizers()
    True
    """
    return {cls: tuple(slots) for cls, slots in _OPTIMIZER_STATE.items()}


def register_optimizer_state(optimizer_class, slots):
    """Teaches the package which state an optimizer class keeps per weight.

    Args:
        optimizer_class: A `keras.optimizers.Optimizer` subclass.
        slots: List of `(attribute_name, reset_value_fn)`: the attribute is a
            list with one variable per trainable variable (as Keras'
            `add_optimizer_variables` returns); `reset_value_fn(optimizer)`
            gives the float a reset position takes.

    Example:

    >>> class MySGD(keras.optimizers.SGD):
    ...     pass
    >>> register_optimizer_state(MySGD, [("momentums", lambda opt: 0.0)])
    """
    _OPTIMIZER_STATE[optimizer_class] = list(slots)


def base_optimizer(optimizer):
    """The optimizer that owns the per-weight state.

    Unwraps `keras.optimizers.LossScaleOptimizer` (and any wrapper with an
    `inner_optimizer`).
    """
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer


def _known_slots(optimizer):
    for cls in type(optimizer).__mro__:
        if cls in _OPTIMIZER_STATE:
            return _OPTIMIZER_STATE[cls]
    return None


def check_optimizer_supported(optimizer):
    """Raises `ValueError` if the optimizer's per-weight state is unknown.

    Args:
        optimizer: A Keras optimizer (a `LossScaleOptimizer` is unwrapped).

    Raises:
        ValueError: Naming the optimizer class and how to register it.

    Example:

    >>> check_optimizer_supported(keras.optimizers.Adam())
    """
    base = base_optimizer(optimizer)
    if _known_slots(base) is None:
        known = sorted(cls.__name__ for cls in _OPTIMIZER_STATE)
        raise ValueError(
            f"rigl_keras does not know the per-weight state of optimizer "
            f"{type(base).__name__}, so it cannot reset it for grown and "
            f"dropped connections. Known: {known}. Register it with "
            "`rigl_keras.optimizer_state.register_optimizer_state`."
        )
    unknown = _unknown_state_variables(base)
    if unknown:
        raise ValueError(
            f"Optimizer {type(base).__name__} keeps per-weight state that "
            f"rigl_keras does not know how to reset: {unknown}. (A subclass "
            "of a known optimizer inherits its parent's registration, which "
            "does not cover state the subclass adds.) Register the class "
            "with all its state using "
            "`rigl_keras.optimizer_state.register_optimizer_state`."
        )


def _unknown_state_variables(optimizer):
    """Names of a built optimizer's non-scalar variables no slot covers.

    Scalars (the step counter, the learning rate, ...) are not per-weight
    state. A class registered under its own name is trusted as registered.
    """
    if type(optimizer) in _OPTIMIZER_STATE or not optimizer.built:
        return []
    attributes = [attribute for attribute, _ in _known_slots(optimizer)]
    attributes += ["_model_variables_moving_average", "_accumulated_gradients"]
    covered = {
        id(v)
        for attribute in attributes
        for v in getattr(optimizer, attribute, None) or []
        if v is not None
    }
    return [
        v.path if hasattr(v, "path") else v.name
        for v in optimizer.variables
        if id(v) not in covered and len(v.shape) > 0
    ]


def optimizer_state_slots(optimizer, variable):
    """Lists the optimizer's per-weight state variables of one variable.

    Includes the exponential moving average of `use_ema=True` and the
    accumulators of `gradient_accumulation_steps`.

    Args:
        optimizer: A built Keras optimizer.
        variable: One of the trainable variables it updates.

    Returns:
        A list of `(state_variable, reset_value)`; `reset_value` is a float,
        or `None` meaning "the variable's own new value" (EMA).

    Raises:
        ValueError: If the optimizer's state is unknown.
    """
    check_optimizer_supported(optimizer)
    base = base_optimizer(optimizer)
    index = base._get_variable_index(variable)
    slots = []
    for attribute, reset_value in _known_slots(base):
        state = getattr(base, attribute, None) or []
        if index < len(state) and state[index] is not None:
            slots.append((state[index], reset_value(base)))
    if getattr(base, "use_ema", False):
        slots.append((base._model_variables_moving_average[index], None))
    if getattr(base, "gradient_accumulation_steps", None):
        slots.append((base._accumulated_gradients[index], 0.0))
    return slots


def reset_optimizer_state(optimizer, variable, positions):
    """Resets the optimizer state of `variable` where `positions` is true.

    Call it after the variable got its new value (EMA copies take it).

    Args:
        optimizer: A built Keras optimizer.
        variable: A trainable variable the optimizer updates.
        positions: Boolean tensor of the variable's shape.

    Raises:
        ValueError: If the optimizer's state is unknown.
    """
    for state, reset_value in optimizer_state_slots(optimizer, variable):
        if reset_value is None:
            fresh = tf.cast(tf.convert_to_tensor(variable), state.dtype)
        else:
            fresh = tf.fill(tf.shape(positions), tf.constant(reset_value, state.dtype))
        state.assign(tf.where(positions, fresh, tf.convert_to_tensor(state)))
