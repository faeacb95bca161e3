"""Checks of constructor arguments (sizes, rates), with errors that name the argument and its range."""

import numbers


def positive_int(name, value):
    """`value` as an int.

    Raises:
        TypeError: `value` is not an integer (a float, a string, a bool).
        ValueError: `value` is not positive.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r} ({type(value).__name__}).")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def fraction(name, value, zero_allowed=True):
    """`value` as a float in [0, 1), or in (0, 1) when `zero_allowed` is False.

    Raises:
        TypeError: `value` is not a real number (a string, a bool, None).
        ValueError: `value` is outside the interval (or NaN).
    """
    interval = "[0, 1)" if zero_allowed else "(0, 1)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in {interval}, got {value!r} ({type(value).__name__}).")
    if not (0.0 <= value < 1.0 if zero_allowed else 0.0 < value < 1.0):
        raise ValueError(f"{name} must be in {interval}, got {value!r}.")
    return float(value)
