"""The experiment lab around the library: the reference studies' data,
models, presets and configurations, the runner, sweeps, reports, the
reproduction and the benchmark.

Example:
    >>> from tbgrad import lab
    >>> model = lab.build_mlp(depth=5, width=5, activation="tanh", init="uniform01")
    >>> data = lab.load_dataset("circles-a")
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "PRESETS": "tbgrad.lab.presets",
    "RunConfig": "tbgrad.lab.config",
    "make_config": "tbgrad.lab.config",
    "DATASETS": "tbgrad.lab.choices",
    "Dataset": "tbgrad.lab.data",
    "load_dataset": "tbgrad.lab.data",
    "build_mlp": "tbgrad.lab.models",
    "make_initializer": "tbgrad.lab.models",
    "make_optimizer": "tbgrad.lab.models",
    "run_sweep": "tbgrad.lab.sweep",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        try:
            return importlib.import_module(f"tbgrad.lab.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'tbgrad.lab' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
