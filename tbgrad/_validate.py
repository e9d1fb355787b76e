"""Argument checks, one message per kind of mistake.

Every public entry point (the callback, the tape loop, the lab's configs and
builders) validates its arguments here, so a mistake reads the same wherever
it is made: what was expected, then ``Received: name=value``, as Keras's own
errors do. Imports nothing heavy: the command line checks its flags with it
before TensorFlow loads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

EPOCH = "epoch"


def is_finite_number(value) -> bool:
    """Whether ``value`` is a real, finite number (not a bool, a string, NaN or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(name: str, value, minimum: int = 1, *, type_error: type = TypeError) -> int:
    """Returns ``value`` if it is an int >= ``minimum``.

    Raises:
        TypeError: (or ``type_error``) ``value`` is not an int (bools are not).
        ValueError: ``value`` is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise type_error(f"{name} must be an int >= {minimum}. Received: {name}={value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}. Received: {name}={value!r}")
    return value


def check_positive_number(name: str, value) -> float:
    """Returns ``value`` if it is a finite number > 0, else raises ValueError."""
    if not (is_finite_number(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number. Received: {name}={value!r}")
    return value


def check_unit_interval(name: str, value) -> float:
    """Returns ``value`` if it is a number in [0, 1), else raises ValueError."""
    if not (is_finite_number(value) and 0 <= value < 1):
        raise ValueError(f"{name} must be in [0, 1). Received: {name}={value!r}")
    return value


def check_histogram_freq(value) -> int:
    """Returns ``histogram_freq`` if it is an int >= 0 (0: no histograms)."""
    return check_int("histogram_freq", value, 0)


def check_update_freq(value):
    """Returns ``update_freq`` if it is ``"epoch"`` or a positive int, else raises ValueError."""
    if value == EPOCH:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            "update_freq must be 'epoch' or a positive number of steps. "
            f"Received: update_freq={value!r}"
        )
    return value


def check_choice(name: str, value, choices: Iterable[str], more: str = "") -> str:
    """Returns ``value`` if it is one of ``choices``, else raises ValueError.

    ``more`` is appended to the list of choices in the message, e.g. "or any
    Keras activation name".
    """
    choices = tuple(choices)
    if value not in choices:
        listed = ", ".join(choices) + (f" {more}" if more else "")
        raise ValueError(
            f"Unknown {name} {value!r}; valid choices: {listed}. Received: {name}={value!r}"
        )
    return value
