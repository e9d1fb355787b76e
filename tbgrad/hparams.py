"""HParams for TensorBoard: a run's configuration and its outcome metrics.

:func:`write_hparams` writes, into the run folder itself (next to its
``train/`` and ``validation/`` folders), the experiment (the columns, each
with its type and, when given, its domain) and this run's values;
:func:`write_verdict` writes the verdict's figures next to them when training
ends. TensorBoard's HParams dashboard then shows one row per run: the
configuration plus the last value of each metric of :data:`METRICS`, read
from the run's own scalars (``validation/epoch_accuracy`` and so on).

What the HParams dashboard does with them (tensorboard 2.x,
``plugins/hparams/backend_context.py`` and ``tf-hparams-query-pane.ts``):

- Its server sorts the columns by name (those flagged as differing across
  runs first; one run cannot know the others, so none is flagged here),
  whatever order they are written in, and its page ticks the first five
  (``kNumHParamsToDisplayByDefault``); the others are listed unticked.
- It has no integer type (tensorflow/tensorboard#1998) and prints every
  number with five significant digits (``toPrecision(5)``: 32 as ``32.000``).
  Integers are therefore written as their decimal text, so that they read
  as integers; they then sort as text.
- Metrics are numbers, shown in the order given, the first five ticked: the
  verdict is written as its code (:data:`tbgrad.verdict.CODES`).

Runs that write the same columns share one table: TensorBoard uses the first
experiment it finds (``backend_context.py``, ``_find_experiment_tag``).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import summary as hparams_summary

from tbgrad import tags
from tbgrad.verdict import CODES, EXPLODING_ABOVE, VANISHING_BELOW, Verdict

# The run folder itself, where the verdict's scalars go (HParams's group "").
RUN_GROUP = ""

_CODES = ", ".join(f"{code} {label}" for label, code in CODES.items())
# (tag, group, display name): group is the run's sub-folder holding the tag.
# The first five are the ones HParams shows by default.
METRICS = (
    (tags.VERDICT, RUN_GROUP, f"verdict ({_CODES})"),
    (tags.VERDICT_WEAKEST_RATIO, RUN_GROUP, f"weakest / output (< {VANISHING_BELOW:g}: vanishing)"),
    (tags.epoch_tag("accuracy"), tags.VALIDATION_DIR, "validation accuracy"),
    (tags.epoch_tag("loss"), tags.VALIDATION_DIR, "validation loss"),
    (
        tags.VERDICT_STRONGEST_RATIO,
        RUN_GROUP,
        f"strongest / output (> {EXPLODING_ABOVE:g}: exploding)",
    ),
    (tags.epoch_tag("accuracy"), tags.TRAIN_DIR, "train accuracy"),
    (tags.epoch_tag("loss"), tags.TRAIN_DIR, "train loss"),
    (tags.GRAD_RATIO, tags.TRAIN_DIR, "grad ratio (first / output)"),
)

HParamValue = str | int | float | bool
# In this order: a bool is also an int.
_DATA_TYPES = (
    (bool, api_pb2.DATA_TYPE_BOOL),
    (str, api_pb2.DATA_TYPE_STRING),
    (float, api_pb2.DATA_TYPE_FLOAT64),
)


def hparam_value(name: str, value: HParamValue) -> str | float | bool:
    """The value HParams stores for ``value``: an integer as its decimal text.

    Raises:
        TypeError: ``value`` is not a str, bool, integer or real number.
    """
    if isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"hparams values must be str, bool, int or float. Received: {name}={value!r}")


def hparam_infos(
    hparams: Mapping[str, HParamValue],
    domains: Mapping[str, Sequence[HParamValue]] | None = None,
) -> list[api_pb2.HParamInfo]:
    """The columns of ``hparams``: each with its type, and its domain when given.

    Raises:
        ValueError: A domain names an unknown column, or lacks the run's value.
    """
    domains = dict(domains or {})
    unknown = sorted(set(domains) - set(hparams))
    if unknown:
        raise ValueError(f"domains name columns hparams lacks. Received: {unknown}")
    infos = []
    for name, value in hparams.items():
        value = hparam_value(name, value)
        data_type = next(t for kind, t in _DATA_TYPES if isinstance(value, kind))
        info = api_pb2.HParamInfo(name=name, type=data_type)
        if name in domains:
            allowed = [hparam_value(name, v) for v in domains[name]]
            if value not in allowed:
                raise ValueError(
                    f"the domain of {name!r} lacks the run's value. "
                    f"Received: {name}={value!r}, domain {allowed!r}"
                )
            info.domain_discrete.extend(allowed)
        infos.append(info)
    return infos


def write_hparams(
    run_dir: str | os.PathLike,
    hparams: Mapping[str, HParamValue],
    metrics: Sequence[tuple[str, str, str]] = METRICS,
    domains: Mapping[str, Sequence[HParamValue]] | None = None,
) -> None:
    """Writes ``hparams`` as this run's HParams into ``run_dir``.

    Args:
        run_dir: The run folder (the one holding ``train/``); its name is the
            HParams trial.
        hparams: ``{name: value}``; integers are written as text (see the
            module's docs).
        metrics: ``(tag, group, display name)`` of each metric column, in
            the dashboard's order. The default's ``verdict/*`` columns are
            filled by :func:`write_verdict`.
        domains: ``{name: every value the column can take}``, for the
            dashboard's filter (checkboxes, or a regular expression from 10
            values on).

    Example:
        >>> write_hparams("logs/run1", {"act": "tanh", "depth": 5, "lr": 0.01},
        ...               domains={"act": ["relu", "tanh"]})
    """
    run_dir = os.fspath(run_dir)
    if not isinstance(hparams, Mapping):
        raise TypeError(f"hparams must be a mapping of names to values. Received: {hparams!r}")
    infos = hparam_infos(hparams, domains)
    experiment = hparams_summary.experiment_pb(
        hparam_infos=infos,
        metric_infos=[
            api_pb2.MetricInfo(
                name=api_pb2.MetricName(group=group, tag=tag), display_name=display_name
            )
            for tag, group, display_name in metrics
        ],
    )
    values = {name: hparam_value(name, value) for name, value in hparams.items()}
    start = hp.hparams_pb(values, trial_id=os.path.basename(run_dir))
    writer = tf.summary.create_file_writer(run_dir)
    try:
        with writer.as_default(), tf.summary.record_if(True):
            for summary in (experiment, start):
                tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=0)
    finally:
        writer.close()


def verdict_scalars(verdict: Verdict) -> dict[str, float]:
    """``{tag: value}`` of the verdict's scalars; a figure the verdict lacks is left out."""
    figures = {
        tags.VERDICT: CODES.get(verdict.label),
        tags.VERDICT_WEAKEST_RATIO: verdict.weakest_ratio,
        tags.VERDICT_STRONGEST_RATIO: verdict.strongest_ratio,
    }
    return {
        tag: float(value)
        for tag, value in figures.items()
        if value is not None and math.isfinite(value)
    }


def write_verdict(run_dir: str | os.PathLike, verdict: Verdict, step: int) -> dict[str, float]:
    """Writes the ``verdict/*`` scalars of :data:`tbgrad.tags` into ``run_dir`` at ``step``.

    Call it when training ends, with the last epoch as ``step``: HParams
    shows the last value of each as the run's metric. An ``unknown``
    verdict has no code and no ratios: nothing is written.

    Returns:
        ``{tag: value}`` as written.

    Example:
        >>> write_verdict("logs/run1", tbgrad.verdict_of("logs/run1"), step=499)
    """
    values = verdict_scalars(verdict)
    if not values:
        return values
    writer = tf.summary.create_file_writer(os.fspath(run_dir))
    try:
        with writer.as_default(), tf.summary.record_if(True):
            for tag, value in values.items():
                tf.summary.scalar(tag, value, step=step)
    finally:
        writer.close()
    return values
