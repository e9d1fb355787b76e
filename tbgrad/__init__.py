"""tbgrad: per-layer gradients of Keras models in TensorBoard.

The library: a callback for ``model.fit`` (:class:`TensorBoard`), an
object for your own training loop (:class:`GradientLogger`), a compiled
GradientTape loop, the optimizer hook and statistics they share, the
summary writer that owns the tag contract, and reading runs back. The
experiment lab (presets, data, models, sweeps, reports, the reproduction of
the reference studies, the benchmark) lives in :mod:`tbgrad.lab`; the
``tbgrad`` command in :mod:`tbgrad.cli`.

Example:
    >>> import keras, tbgrad
    >>> model.compile("sgd", "binary_crossentropy", metrics=["accuracy"])
    >>> model.fit(x, y, epochs=10, callbacks=[tbgrad.TensorBoard("logs/run")])

The public names load on first use, so that the command line can check its
flags before TensorFlow is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_PUBLIC = {
    "TensorBoard": "tbgrad.tensorboard",
    "GradientLogger": "tbgrad.gradient_logger",
    "train_with_tape": "tbgrad.tape",
    "Statistic": "tbgrad.statistics",
    "Family": "tbgrad.statistics",
    "REGISTRY": "tbgrad.statistics",
    "tracked_variables": "tbgrad.variables",
    "load_run": "tbgrad.eventlog",
    "find_runs": "tbgrad.eventlog",
    "verdict_of": "tbgrad.verdict",
    "explain": "tbgrad.verdict",
    "Explanation": "tbgrad.verdict",
}
_SUBPACKAGES = ("lab", "cli", "dashboard")

__all__ = [
    "REGISTRY",
    "Explanation",
    "Family",
    "GradientLogger",
    "Statistic",
    "TensorBoard",
    "explain",
    "find_runs",
    "load_run",
    "tracked_variables",
    "train_with_tape",
    "verdict_of",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from tbgrad.eventlog import find_runs, load_run
    from tbgrad.gradient_logger import GradientLogger
    from tbgrad.statistics import REGISTRY, Family, Statistic
    from tbgrad.tape import train_with_tape
    from tbgrad.tensorboard import TensorBoard
    from tbgrad.variables import tracked_variables
    from tbgrad.verdict import Explanation, explain, verdict_of


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"tbgrad.{name}")
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'tbgrad' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
