"""Reads runs back with TensorBoard's own event reader.

Uses ``tensorboard.backend.event_processing.event_file_loader``, the reader
under ``tensorboard --logdir``, with the same migrations of old summary
formats (``data_compat``, ``dataclass_compat``), and keeps every event in
the order written. It does not go through TensorBoard's ``EventAccumulator``,
whose reservoir bookkeeping of every value a finished run folder does not
need. Tensors are decoded with
``tensorboard.util.tensor_util``, except for the two layouts every tbgrad
and Keras summary uses (a float32 scalar in ``float_val``, a float64
histogram in ``tensor_content``), which are read directly. Folders are
listed with ``tf.io.gfile``, so runs are read from any TensorFlow filesystem
(``gs://``, ``ram://``, ...) as from a local folder (:mod:`tbgrad._paths`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from tbgrad import _paths, tags
from tbgrad.dashboard import metadata as dashboard_metadata

SPLITS = (tags.TRAIN_DIR, tags.VALIDATION_DIR)


@dataclass
class SplitData:
    """One folder of a run (``train`` or ``validation``)."""

    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    histograms: dict[str, list[tuple[int, np.ndarray]]] = field(default_factory=dict)
    plugins: dict[str, str] = field(default_factory=dict)
    event_files: list[str] = field(default_factory=list)
    # The layers' kernels named by the run's layer-order summary (None: the
    # run has no such summary, or it names none).
    kernels: list[str] | None = None
    # The text tag tags.FIRST_NONFINITE: (epoch, its line), or None.
    first_nonfinite: tuple[int, str] | None = None

    def scalar(self, tag: str) -> np.ndarray:
        """The values of ``tag`` in step order."""
        return np.array([v for _, v in self.scalars.get(tag, [])])

    def steps(self, tag: str) -> list[int]:
        series = self.scalars.get(tag) or self.histograms.get(tag) or []
        return [s for s, _ in series]


@dataclass
class RunData:
    """Everything a run folder holds, by split."""

    path: Path | str  # a string for a URL (see tbgrad._paths)
    splits: dict[str, SplitData]
    # The run folder's HParams ({name: value}; integers as text), {} without.
    hparams: dict = field(default_factory=dict)

    @property
    def train(self) -> SplitData:
        return self.splits.get(tags.TRAIN_DIR, SplitData())

    @property
    def validation(self) -> SplitData:
        return self.splits.get(tags.VALIDATION_DIR, SplitData())


def load_split(path: str | os.PathLike) -> SplitData:
    """Reads every event file in ``path`` (one split of a run), oldest first."""
    gfile = _paths.gfile()
    out = SplitData()
    if not gfile.isdir(os.fspath(path)):
        return out
    out.event_files = sorted(n for n in gfile.listdir(os.fspath(path)) if ".tfevents." in n)
    for name in out.event_files:
        loader = event_file_loader.EventFileLoader(os.fspath(_paths.join(path, name)))
        for event in loader.Load():
            for value in event.summary.value:
                if not value.HasField("tensor"):
                    continue
                tag = value.tag
                plugin = out.plugins.get(tag)
                if plugin is None:
                    # A tag's metadata comes with its first value only.
                    plugin = out.plugins[tag] = value.metadata.plugin_data.plugin_name
                if plugin == "scalars":
                    out.scalars.setdefault(tag, []).append((event.step, _float(value.tensor)))
                elif plugin == "histograms":
                    out.histograms.setdefault(tag, []).append((event.step, _array(value.tensor)))
                elif plugin == dashboard_metadata.PLUGIN_NAME and value.tensor.string_val:
                    out.kernels = dashboard_metadata.parse_kernels(value.tensor.string_val[0])
                elif tag == tags.FIRST_NONFINITE and value.tensor.string_val:
                    if out.first_nonfinite is not None:
                        continue  # the run's first, whatever file follows
                    text = value.tensor.string_val[0].decode("utf-8", "replace")
                    out.first_nonfinite = (event.step, text)
    return out


def _float(proto) -> float:
    if proto.dtype == types_pb2.DT_FLOAT and len(proto.float_val) == 1 and not proto.tensor_content:
        return float(proto.float_val[0])
    return float(tensor_util.make_ndarray(proto))


def _array(proto) -> np.ndarray:
    if proto.dtype == types_pb2.DT_DOUBLE and proto.tensor_content:
        shape = [dim.size for dim in proto.tensor_shape.dim]
        return np.frombuffer(proto.tensor_content, "<f8").reshape(shape).copy()
    return tensor_util.make_ndarray(proto)


def load_run(run_dir: str | os.PathLike) -> RunData:
    """Reads a run folder written by tbgrad (or Keras's TensorBoard callback).

    ``run_dir`` is a local path or a URL (``gs://bucket/logs/run-1``).

    Raises:
        ValueError: ``run_dir`` holds no run: no event file in its
            ``train/`` or ``validation/`` folder.
    """
    run_dir = _paths.as_path(run_dir)
    splits = {split: load_split(_paths.join(run_dir, split)) for split in SPLITS}
    if not any(split.event_files for split in splits.values()):
        raise ValueError(_no_run_message(run_dir))
    return RunData(run_dir, splits, load_hparams(run_dir))


def _no_run_message(run_dir) -> str:
    where = os.fspath(run_dir)
    hint = ""
    name = where.rstrip("/").rsplit("/", 1)[-1]
    if name in SPLITS:
        hint = f" ({name}/ is a run's folder of event files: pass the run folder above it)"
    elif not _paths.gfile().isdir(where):
        hint = " (no such folder)"
    return (
        f"{where} holds no run: no event file in its {tags.TRAIN_DIR}/ or "
        f"{tags.VALIDATION_DIR}/ folder{hint}. Received: run_dir={where!r}"
    )


def load_hparams(run_dir: str | os.PathLike) -> dict:
    """``{name: value}`` of the HParams written into the run folder itself
    (:func:`tbgrad.hparams.write_hparams`); ``{}`` when it holds none."""
    gfile = _paths.gfile()
    if not gfile.isdir(os.fspath(run_dir)):
        return {}
    out = {}
    for name in sorted(n for n in gfile.listdir(os.fspath(run_dir)) if ".tfevents." in n):
        loader = event_file_loader.EventFileLoader(os.fspath(_paths.join(run_dir, name)))
        for event in loader.Load():
            for value in event.summary.value:
                if value.tag != hparams_metadata.SESSION_START_INFO_TAG:
                    continue
                content = value.metadata.plugin_data.content
                start = hparams_metadata.parse_session_start_info_plugin_data(content)
                for key, v in start.hparams.items():
                    kind = v.WhichOneof("kind")
                    if kind in ("string_value", "number_value", "bool_value"):
                        out[key] = getattr(v, kind)
    return out


def find_runs(logdir: str | os.PathLike) -> list[Path | str]:
    """Every run folder under ``logdir`` (a folder with a ``train/`` of events),
    in path order; :class:`~pathlib.Path` objects, or strings under a URL."""
    top = _paths.parts(logdir)
    runs = []
    for folder, _, files in _paths.gfile().walk(os.fspath(logdir)):
        inner = _paths.parts(folder)
        # A train/ folder below logdir (not logdir itself) holding events.
        if len(inner) > len(top) and inner[-1] == tags.TRAIN_DIR:
            if any(".tfevents." in f for f in files):
                runs.append(_paths.parent(folder))
    return sorted(runs, key=_paths.parts)
