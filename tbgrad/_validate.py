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


def check_update_freq(value, name: str = "update_freq"):
    """Returns ``value`` if it is ``"epoch"`` or a positive int, else raises ValueError."""
    if value == EPOCH:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{name} must be 'epoch' or a positive number of steps. Received: {name}={value!r}"
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


VARIABLE_CHOICES = ("matrices", "kernels", "all")


def check_variables(value):
    """Returns ``variables`` if it is one of :data:`VARIABLE_CHOICES` or a callable."""
    if callable(value) or (isinstance(value, str) and value in VARIABLE_CHOICES):
        return value
    raise ValueError(
        "variables must be 'matrices', 'kernels', 'all' or a callable(variable) -> bool. "
        f"Received: variables={value!r}"
    )


# The Keras backends tbgrad runs on: its statistics are Keras variables
# updated inside the optimizer's update step, in keras.ops.
TENSORFLOW = "tensorflow"
BACKENDS = ("tensorflow", "jax", "torch")


def backend_error(backend: str, what: str, backends=BACKENDS) -> str:
    """The message for ``what`` (a class or command) run on another backend."""
    names = " or ".join(repr(b) for b in backends)
    return (
        f"{what} needs Keras's {names} backend, but Keras's backend is {backend!r}: "
        f"set KERAS_BACKEND={backends[0]} before Keras is imported. "
        f"Received: backend={backend!r}"
    )


def check_keras_backend(what: str, backends=BACKENDS) -> None:
    """Raises ValueError unless Keras (imported) runs on one of ``backends``."""
    import keras

    backend = keras.backend.backend()
    if backend not in backends:
        raise ValueError(backend_error(backend, what, backends))


def configured_keras_backend() -> str:
    """The backend Keras will load, read as Keras reads it, without importing it.

    ``KERAS_BACKEND`` wins; else the ``"backend"`` of ``$KERAS_HOME/keras.json``
    (``~/.keras/keras.json``); else TensorFlow.
    """
    import json
    import os

    backend = os.environ.get("KERAS_BACKEND")
    if backend:
        return backend
    base = os.path.expanduser("~")
    if not os.access(base, os.W_OK):
        base = "/tmp"  # as keras/src/backend/config.py does
    home = os.environ.get("KERAS_HOME") or os.path.join(base, ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return str(json.load(f).get("backend", TENSORFLOW))
    except (OSError, ValueError, AttributeError):
        return TENSORFLOW


def check_configured_keras_backend(what: str) -> str:
    """Returns the backend Keras will load if tbgrad runs on it and it is
    installed, else raises ValueError; imports nothing.

    For the command line, which must fail before it creates anything (and
    before Keras's import fails first when the named backend is missing).
    """
    import importlib.util

    backend = configured_keras_backend()
    if backend not in BACKENDS:
        raise ValueError(backend_error(backend, what))
    if importlib.util.find_spec(backend) is None:
        raise ValueError(
            f"{what}: Keras's backend {backend!r} is not installed: "
            f"pip install 'tbgrad[{backend}]'. Received: backend={backend!r}"
        )
    return backend
