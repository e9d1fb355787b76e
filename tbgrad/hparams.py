"""HParams for TensorBoard: each run's configuration and outcome metrics.

:func:`write_hparams` writes, into the run folder itself (next to its
``train/`` and ``validation/`` folders), an ``hparams_config`` summary (the
columns) and an ``hparams`` summary (this run's values), with
``tensorboard.plugins.hparams``. TensorBoard's HParams dashboard then shows
one row per run: the configuration plus the last value of each metric of
:data:`METRICS`, read from the run's own scalars (``validation/epoch_accuracy``
and so on), so nothing has to be written at the end of training.

Every run writes the same ``hparams_config``; TensorBoard uses the first it
finds (``tensorboard/plugins/hparams/backend_context.py``), so runs written by
separate processes or sweeps share one table.
"""

from __future__ import annotations

import os

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from tbgrad import tags
from tbgrad.config import RunConfig

# The configuration columns, in the dashboard's order.
HPARAMS = (
    "act",
    "init",
    "output_init",
    "depth",
    "width",
    "optimizer",
    "lr",
    "momentum",
    "batch_size",
    "epochs",
    "seed",
    "loop",
    "dataset",
    "preset",
)

# (tag, group, display name): group is the run's sub-folder holding the tag.
METRICS = (
    (tags.epoch_tag("accuracy"), tags.VALIDATION_DIR, "validation accuracy"),
    (tags.epoch_tag("loss"), tags.VALIDATION_DIR, "validation loss"),
    (tags.epoch_tag("accuracy"), tags.TRAIN_DIR, "train accuracy"),
    (tags.epoch_tag("loss"), tags.TRAIN_DIR, "train loss"),
    (tags.GRAD_RATIO, tags.TRAIN_DIR, "grad ratio (first / output)"),
)


def hparam_values(config: RunConfig) -> dict[str, str | int | float]:
    """The HParams values of ``config`` (defaults resolved, no None)."""
    return {
        "act": config.act,
        "init": config.init,
        "output_init": config.output_init or "default",
        "depth": config.depth,
        "width": config.width,
        "optimizer": config.optimizer,
        "lr": float(config.learning_rate),
        "momentum": float(config.momentum_value),
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "seed": config.seed,
        "loop": config.loop,
        "dataset": config.dataset,
        "preset": config.preset or "none",
    }


def write_hparams(run_dir: str | os.PathLike, config: RunConfig) -> None:
    """Writes ``config`` as this run's HParams into ``run_dir``.

    Args:
        run_dir: The run folder (the one holding ``train/``).
        config: The run's configuration.

    Example:
        >>> write_hparams("logs/A2-tanh-uniform01-d5-w5-sgd-s1", config)
    """
    run_dir = os.fspath(run_dir)
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig. Received: config={config!r}")
    writer = tf.summary.create_file_writer(run_dir)
    try:
        with writer.as_default(), tf.summary.record_if(True):
            hp.hparams_config(
                hparams=[hp.HParam(name) for name in HPARAMS],
                metrics=[
                    hp.Metric(tag, group=group, display_name=name) for tag, group, name in METRICS
                ],
            )
            hp.hparams(hparam_values(config), trial_id=os.path.basename(run_dir))
    finally:
        writer.close()
