"""Argument checks shared by the modules (pure Python: the CLI uses them
before TensorFlow loads)."""

import math
import numbers

__all__ = ["is_int", "is_real"]


def is_int(value):
    """Whether `value` is an integer (Python or NumPy), not a bool.

    Example:

    >>> is_int(3), is_int(True), is_int(3.0)
    (True, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value):
    """Whether `value` is a finite real number (Python or NumPy), not a bool.

    Example:

    >>> is_real(0.5), is_real(float("nan")), is_real(False)
    (True, False, False)
    """
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and not type(value).__name__ == "bool_"
        and math.isfinite(float(value))
    )
