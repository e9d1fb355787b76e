"""HParams for TensorBoard: a run's configuration and its outcome metrics.

:func:`write_hparams` writes, into the run folder itself (next to its
``train/`` and ``validation/`` folders), an ``hparams_config`` summary (the
columns) and an ``hparams`` summary (this run's values), with
``tensorboard.plugins.hparams``. TensorBoard's HParams dashboard then shows
one row per run: the configuration plus the last value of each metric of
:data:`METRICS`, read from the run's own scalars (``validation/epoch_accuracy``
and so on), so nothing has to be written at the end of training.

Runs that write the same columns share one table: TensorBoard uses the first
``hparams_config`` it finds (``tensorboard/plugins/hparams/backend_context.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from tbgrad import tags

# (tag, group, display name): group is the run's sub-folder holding the tag.
METRICS = (
    (tags.epoch_tag("accuracy"), tags.VALIDATION_DIR, "validation accuracy"),
    (tags.epoch_tag("loss"), tags.VALIDATION_DIR, "validation loss"),
    (tags.epoch_tag("accuracy"), tags.TRAIN_DIR, "train accuracy"),
    (tags.epoch_tag("loss"), tags.TRAIN_DIR, "train loss"),
    (tags.GRAD_RATIO, tags.TRAIN_DIR, "grad ratio (first / output)"),
)

HParamValue = str | int | float | bool


def write_hparams(
    run_dir: str | os.PathLike,
    hparams: Mapping[str, HParamValue],
    metrics: Sequence[tuple[str, str, str]] = METRICS,
) -> None:
    """Writes ``hparams`` as this run's HParams into ``run_dir``.

    Args:
        run_dir: The run folder (the one holding ``train/``); its name is the
            HParams trial.
        hparams: ``{name: value}``, the columns in the dashboard's order.
        metrics: ``(tag, group, display name)`` of each metric column.

    Example:
        >>> write_hparams("logs/run1", {"act": "tanh", "depth": 5, "lr": 0.01})
    """
    run_dir = os.fspath(run_dir)
    if not isinstance(hparams, Mapping):
        raise TypeError(f"hparams must be a mapping of names to values. Received: {hparams!r}")
    writer = tf.summary.create_file_writer(run_dir)
    try:
        with writer.as_default(), tf.summary.record_if(True):
            hp.hparams_config(
                hparams=[hp.HParam(name) for name in hparams],
                metrics=[
                    hp.Metric(tag, group=group, display_name=name) for tag, group, name in metrics
                ],
            )
            hp.hparams(dict(hparams), trial_id=os.path.basename(run_dir))
    finally:
        writer.close()
