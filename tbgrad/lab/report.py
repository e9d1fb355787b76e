"""A table and figures of runs, read back with TensorBoard's own reader.

:func:`summarize` reads every run folder under a log folder with
:mod:`tbgrad.eventlog` and returns one :class:`RunSummary` per run: final
train and validation accuracy, final mean |g| per layer, the gradient ratio
and the verdict of :mod:`tbgrad.verdict`. :func:`format_table` prints them;
:func:`write_run_figure` draws study B's panels for one run and
:func:`write_sweep_figure` final accuracy and gradient ratio against depth,
one line per activation/init. Figures use matplotlib's Agg canvas (no
display needed, no global pyplot state). Log folders and figure folders can
be local paths or URLs of any TensorFlow filesystem (``gs://``, ``ram://``):
see :mod:`tbgrad._paths`.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tbgrad import _paths, tags
from tbgrad.eventlog import RunData, find_runs, load_run
from tbgrad.lab.averages import geomean
from tbgrad.lab.experiment import RESULT_FILE
from tbgrad.lab.sweep import INCOMPLETE
from tbgrad.verdict import VANISHING_BELOW, Verdict, run_verdict

FIGURE_DPI = 100


@dataclass
class RunSummary:
    """One run of a report."""

    name: str
    path: _paths.RunPath
    config: dict | None
    train_accuracy: float
    val_accuracy: float
    grad_mean_abs: dict[str, float]
    grad_ratio: float
    verdict: Verdict
    data: RunData = field(repr=False)


def summarize(logdir: str | os.PathLike) -> list[RunSummary]:
    """Reads every run under ``logdir`` (skipping sweeps' ``.incomplete-N``)."""
    out = []
    for path in find_runs(logdir):
        # A run's name is its path under logdir; logdir itself, its folder name.
        rel = _paths.relative(path, logdir)
        rel = _paths.name(path) if rel in ("", ".") else rel
        if any(INCOMPLETE in part for part in rel.split("/")):
            continue
        run = load_run(path)
        accuracy = tags.epoch_tag("accuracy")
        out.append(
            RunSummary(
                name=rel,
                path=path,
                config=_config(path),
                train_accuracy=_last(run.train.scalar(accuracy)),
                val_accuracy=_last(run.validation.scalar(accuracy)),
                grad_mean_abs={
                    tag.split("/", 1)[1]: _last(run.train.scalar(tag))
                    for tag in _layer_tags(run, tags.GRAD_MEAN_ABS)
                },
                grad_ratio=_last(run.train.scalar(tags.GRAD_RATIO)),
                verdict=run_verdict(run),
                data=run,
            )
        )
    return out


def describe_config(config: dict | None) -> str:
    """A short description, e.g. ``tanh uniform01 d5x5 sgd lr0.01 s1 fit``."""
    if not config:
        return "-"
    return (
        f"{config['act']} {config['init']} d{config['depth']}x{config['width']} "
        f"{config['optimizer']} lr{config.get('learning_rate', config.get('lr'))} "
        f"s{config['seed']} {config['loop']}"
    )


def format_table(summaries: list[RunSummary]) -> str:
    """The report table: one row per run, columns aligned."""
    header = [
        "run",
        "config",
        "train acc",
        "val acc",
        "final mean |g| per layer (first..output)",
        "grad ratio",
        "weakest/output",
        "verdict",
    ]
    rows = [
        [
            s.name,
            describe_config(s.config),
            _fmt(s.train_accuracy, ".3f"),
            _fmt(s.val_accuracy, ".3f"),
            " ".join(_fmt(v, ".1e") for v in s.grad_mean_abs.values()) or "-",
            _fmt(s.grad_ratio, ".2e"),
            _fmt(s.verdict.weakest_ratio, ".2e"),
            s.verdict.label,
        ]
        for s in summaries
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_explanations(summaries: list[RunSummary]) -> str:
    """Each run's verdict explained, indented below its name, e.g.::

    why and what to try:
      A2-tanh-uniform01-d5-w5-sgd-s1 (vanishing)
        why: weakest/output < 0.1 (median 0.0288) in hidden_4, hidden_5, epochs 0-499
        try: hidden_4, hidden_5 saturated (56%) with tanh and RandomUniform(0, 1) ...
    """
    lines = ["why and what to try:"]
    for s in summaries:
        lines.append(f"  {s.name} ({s.verdict.label})")
        if s.verdict.explanation is not None:
            lines += [f"    {line}" for line in str(s.verdict.explanation).splitlines()]
    return "\n".join(lines)


def figure_name(summary: RunSummary) -> str:
    """The PNG file name of a run's figure (sub-folders joined by ``__``)."""
    return summary.name.replace("/", "__") + ".png"


def write_run_figure(summary: RunSummary, path: str | os.PathLike) -> _paths.RunPath:
    """Draws study B's panels of one run into the PNG ``path``.

    Top row: per-layer gradient mean |g| and std (log axes), the loss.
    Bottom row: per-layer kernel mean and std over epochs, the gradient ratio.
    """
    train = summary.data.train
    fig = Figure(figsize=(15, 8), dpi=FIGURE_DPI, layout="constrained")
    axes = fig.subplots(2, 3)
    panels = [
        (axes[0, 0], tags.GRAD_MEAN_ABS, "gradient mean |g| per layer", True),
        (axes[0, 1], tags.GRAD_STD, "gradient std per layer", True),
        (axes[1, 0], tags.WEIGHT_MEAN, "kernel mean per layer", False),
        (axes[1, 1], tags.WEIGHT_STD, "kernel std per layer", False),
    ]
    for ax, family, title, log in panels:
        for tag in _layer_tags(summary.data, family):
            _plot(ax, train.steps(tag), train.scalar(tag), tag.split("/", 1)[1], log)
        _finish(ax, title, legend=True)
    loss = tags.epoch_tag("loss")
    _plot(axes[0, 2], train.steps(loss), train.scalar(loss), "train", False)
    val = summary.data.validation
    _plot(axes[0, 2], val.steps(loss), val.scalar(loss), "validation", False)
    _finish(axes[0, 2], "loss", legend=True)
    _plot(axes[1, 2], train.steps(tags.GRAD_RATIO), train.scalar(tags.GRAD_RATIO), "", True)
    _finish(axes[1, 2], "grad_ratio (first layer / output layer)", legend=False)
    fig.suptitle(f"{summary.name}: {summary.verdict}")
    return _save(fig, path)


def write_sweep_figure(
    summaries: list[RunSummary], path: str | os.PathLike
) -> _paths.RunPath | None:
    """Draws final validation accuracy and gradient ratio against depth.

    One line per group of runs that differ only in depth and seed (labelled
    by activation/init, plus any other field that varies); seeds are
    averaged. Returns None (and writes nothing) unless at least two depths
    were run.
    """
    runs = [s for s in summaries if s.config]
    if len({s.config["depth"] for s in runs}) < 2:
        return None
    keys = ("act", "init", "width", "optimizer", "learning_rate", "loop", "dataset", "epochs")
    varied = [k for k in keys[2:] if len({str(s.config.get(k)) for s in runs}) > 1]
    groups: dict[str, dict[int, list[RunSummary]]] = defaultdict(lambda: defaultdict(list))
    for s in runs:
        label = "/".join(str(s.config[k]) for k in ("act", "init"))
        label += "".join(f" {k}={s.config.get(k)}" for k in varied)
        groups[label][s.config["depth"]].append(s)
    fig = Figure(figsize=(16, 4.5), dpi=FIGURE_DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    panels = (
        ("final validation accuracy", lambda s: s.val_accuracy, np.nanmean, False),
        ("grad_ratio, last epoch (first layer / output)", lambda s: s.grad_ratio, geomean, True),
        (
            "verdict: median weakest layer / output",
            lambda s: s.verdict.weakest_ratio,
            geomean,
            True,
        ),
    )
    for ax, (title, value, average, log) in zip(axes, panels):
        for label, by_depth in sorted(groups.items()):
            depths = sorted(by_depth)
            ax.plot(
                depths,
                [average([value(s) for s in by_depth[d]]) for d in depths],
                marker="o",
                label=label,
            )
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("hidden layers (depth)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    axes[2].axhline(VANISHING_BELOW, color="gray", linestyle="--", linewidth=1)
    return _save(fig, path)


def _config(path: _paths.RunPath) -> dict | None:
    try:
        return json.loads(_paths.read_text(_paths.join(path, RESULT_FILE)))["config"]
    except (OSError, ValueError, KeyError):
        return None


def _layer_tags(run: RunData, family: str) -> list[str]:
    # Layers in model order (the reader keeps the order of the first write),
    # not alphabetical: hidden_10 after hidden_9, output last.
    return [t for t in run.train.scalars if t.startswith(family + "/")]


def _last(values: np.ndarray) -> float:
    return float(values[-1]) if len(values) else math.nan


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def _plot(ax, steps, values, label: str, log: bool) -> None:
    if len(values) == 0:
        return
    values = np.asarray(values, dtype=float)
    if log:
        values = np.where(values > 0, values, np.nan)  # log axes cannot show 0
        ax.set_yscale("log")
    ax.plot(steps, values, label=label or None)


def _finish(ax, title: str, legend: bool) -> None:
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.grid(True, which="both", alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _save(fig: Figure, path) -> _paths.RunPath:
    path = _paths.as_path(path)
    _paths.gfile().makedirs(str(_paths.parent(path)))
    if isinstance(path, str):  # a URL: matplotlib writes local files only
        with _paths.gfile().GFile(path, "wb") as f:
            fig.savefig(f, format="png")
    else:
        fig.savefig(path)
    return path
