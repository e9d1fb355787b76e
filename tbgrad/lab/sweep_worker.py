"""What runs inside a sweep's worker processes.

Kept apart from :mod:`tbgrad.lab.sweep` and free of heavy imports: a spawned
worker imports this module to find its initializer, and the initializer must
run before TensorFlow loads, both to set the thread counts and to keep
TensorFlow's C++ start-up chatter out of the sweep's output.
"""

from __future__ import annotations

import json
import os


def init_worker() -> None:
    # Tiny models: one thread per worker beats workers competing for cores.
    # Set before TensorFlow loads; tf.config.threading cannot change it after.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    from tbgrad.cli import common as cli

    cli.import_tensorflow_quietly()


def train_one_fresh(config, sweep_dir: str, name: str) -> dict:
    """:func:`init_worker`, then :func:`train_one`: a Ray task, in a worker
    process that may not have loaded TensorFlow yet."""
    init_worker()
    return train_one(config, sweep_dir, name)


def train_one(config, sweep_dir: str, name: str) -> dict:
    """Trains ``config`` into ``sweep_dir/name``; returns its result file's contents."""
    from tbgrad.lab import experiment

    result = experiment.run(config, sweep_dir, run_name=name, verbose=0)
    experiment.write_result(result)
    return json.loads((result.run_dir / experiment.RESULT_FILE).read_text())
