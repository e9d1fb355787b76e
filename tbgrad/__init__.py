"""tbgrad: per-layer gradients of Keras models in TensorBoard.

Example:
    >>> import tbgrad
    >>> model = tbgrad.build_mlp(depth=5, width=5, activation="tanh", init="uniform01")
    >>> model.compile("sgd", "binary_crossentropy", metrics=["accuracy"])
    >>> model.fit(x, y, epochs=10, callbacks=[tbgrad.GradientTensorBoard("logs/run")])

The public names load on first use, so that the command-line tools can check
their flags before TensorFlow is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_PUBLIC = {
    "RunConfig": "tbgrad.config",
    "make_config": "tbgrad.config",
    "PRESETS": "tbgrad.config",
    "load_run": "tbgrad.eventlog",
    "find_runs": "tbgrad.eventlog",
    "run_sweep": "tbgrad.sweep",
    "verdict_of": "tbgrad.verdict",
    "DATASETS": "tbgrad.data",
    "Dataset": "tbgrad.data",
    "load_dataset": "tbgrad.data",
    "GradientTensorBoard": "tbgrad.gradient_tensorboard",
    "OptimizerHook": "tbgrad.hook",
    "build_mlp": "tbgrad.models",
    "make_initializer": "tbgrad.models",
    "make_optimizer": "tbgrad.models",
    "GradientStats": "tbgrad.stats",
    "kernel_layers": "tbgrad.stats",
    "SummaryLogger": "tbgrad.summary",
    "train_with_tape": "tbgrad.tape",
}

__all__ = [
    "PRESETS",
    "RunConfig",
    "find_runs",
    "load_run",
    "make_config",
    "run_sweep",
    "verdict_of",
    "DATASETS",
    "Dataset",
    "GradientStats",
    "GradientTensorBoard",
    "OptimizerHook",
    "SummaryLogger",
    "build_mlp",
    "kernel_layers",
    "load_dataset",
    "make_initializer",
    "make_optimizer",
    "train_with_tape",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from tbgrad.config import PRESETS, RunConfig, make_config
    from tbgrad.data import DATASETS, Dataset, load_dataset
    from tbgrad.eventlog import find_runs, load_run
    from tbgrad.gradient_tensorboard import GradientTensorBoard
    from tbgrad.hook import OptimizerHook
    from tbgrad.models import build_mlp, make_initializer, make_optimizer
    from tbgrad.stats import GradientStats, kernel_layers
    from tbgrad.summary import SummaryLogger
    from tbgrad.sweep import run_sweep
    from tbgrad.tape import train_with_tape
    from tbgrad.verdict import verdict_of


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'tbgrad' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
