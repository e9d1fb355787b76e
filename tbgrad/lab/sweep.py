"""Runs many configurations in parallel worker processes, resumably.

:func:`run_sweep` trains each :class:`RunConfig` with
:func:`tbgrad.lab.experiment.run` into its own run folder
``sweep_dir/<config.run_name()>``, in a pool of worker processes.

- **Processes, spawned.** TensorFlow is not fork-safe, so the pool uses the
  ``spawn`` start method; each worker imports TensorFlow once and trains one
  run after another, single-threaded (many small runs side by side use the
  cores better than one run spread over all of them).
- **Resumable.** A run folder holding its result file
  (:data:`tbgrad.lab.experiment.RESULT_FILE`) is finished: a rerun skips it
  and returns its stored result. A run folder without it is what an
  interrupted or failed run left behind; it is never mixed with a new run:
  it is moved aside to ``<name>.incomplete-N`` (:data:`INCOMPLETE`, the
  first free N) and the run starts again in a fresh ``<name>``. Delete the
  ``.incomplete-N`` folders once you no longer need them;
  :mod:`tbgrad.lab.report` ignores them.
- **Failures stay local.** A run that raises is reported with its error
  message and the others go on. If a worker process dies (killed, out of
  memory), the pool breaks and the runs it had not finished are reported as
  failed; rerun the sweep to retry them.
- **Or on a Ray cluster** (``backend="ray"``, ``pip install ".[ray]"``):
  each run is a Ray task (one CPU) that calls the same
  :func:`tbgrad.lab.sweep_worker.train_one`, so folders, resumption and the
  report are the pool's. Ray core tasks rather than Ray Tune or KerasTuner's
  distributed mode: a sweep is a fixed list of independent runs with its
  own folder layout and resumption, which Tune's trial folders and
  KerasTuner's oracle (a search over one model-building function) would
  replace, not serve. On a cluster of several machines the sweep folder
  must be one they all see (a shared file system), and tbgrad installed on
  each.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO, get_args

from tbgrad.lab import sweep_worker
from tbgrad.lab.config import RunConfig
from tbgrad.lab.experiment import RESULT_FILE

Status = Literal["done", "skipped", "failed"]
DONE, SKIPPED, FAILED = get_args(Status)
Backend = Literal["pool", "ray"]
BACKENDS = get_args(Backend)
# Marks a run folder moved aside: ``<name>.incomplete-N``.
INCOMPLETE = ".incomplete-"


@dataclass
class SweepOutcome:
    """What became of one configuration of a sweep."""

    config: RunConfig
    run_dir: Path
    status: Status
    error: str | None = None
    result: dict | None = None
    moved_aside: Path | None = None


def run_sweep(
    configs: list[RunConfig],
    sweep_dir: str | os.PathLike,
    workers: int | None = None,
    progress: bool = True,
    run_names: Sequence[str] | None = None,
    stream: TextIO | None = None,
    backend: Backend = "pool",
    ray_address: str | None = None,
) -> list[SweepOutcome]:
    """Trains every config into ``sweep_dir/<config.run_name()>`` in parallel.

    Args:
        configs: The runs; their run names must be distinct.
        sweep_dir: The sweep folder; created if missing.
        workers: Worker processes (default: the number of CPU cores, at most
            the number of runs to do); with Ray and no ``ray_address``, the
            CPUs of the local Ray instance started for the sweep.
        progress: Print an overall progress bar, one line per finished run.
        run_names: Folder names to use instead of ``config.run_name()``.
        stream: Where the progress goes (default ``sys.stderr``).
        backend: ``"pool"`` (processes on this machine) or ``"ray"`` (Ray
            tasks; needs the ``ray`` extra).
        ray_address: The Ray cluster to use (``"auto"``, ``"ray://host:10001"``);
            default: a Ray instance already started in this process, else a
            local one for the sweep.

    Returns:
        One :class:`SweepOutcome` per config, in the order of ``configs``.

    Example:
        >>> configs = [make_config(act=a, depth=d, epochs=50)
        ...            for a in ("tanh", "relu") for d in (1, 3, 5)]
        >>> outcomes = run_sweep(configs, "logs/sweep-act-depth")
    """
    configs = list(configs)
    names = _run_names(configs, run_names)
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise ValueError(f"workers must be a positive integer. Received: workers={workers!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}. Received: backend={backend!r}")
    if backend == "ray":
        _import_ray()  # before anything is written
    root = Path(sweep_dir)
    root.mkdir(parents=True, exist_ok=True)
    outcomes, todo = _sort_out(configs, names, root)
    bar = _Progress(len(configs), stream or sys.stderr) if progress else None
    if bar:
        for outcome in outcomes:
            if outcome.status == SKIPPED:
                bar.update(outcome)
    if todo and backend == "ray":
        _train_on_ray(todo, root, workers, ray_address, bar)
    elif todo:
        _train(todo, root, min(workers or os.cpu_count() or 1, len(todo)), bar)
    if bar:
        bar.finish()
    return outcomes


def _run_names(configs: list[RunConfig], run_names: Sequence[str] | None) -> list[str]:
    """The run folder names of ``configs``, checked to be one per config, distinct."""
    for config in configs:
        if not isinstance(config, RunConfig):
            raise TypeError(f"configs must hold RunConfig objects. Received: {config!r}")
    names = list(run_names) if run_names is not None else [c.run_name() for c in configs]
    if len(names) != len(configs):
        raise ValueError(
            f"run_names must have one name per config. Received: {len(names)} names "
            f"for {len(configs)} configs"
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            "two configs of the sweep share a run folder name; vary a field the run "
            f"name holds or pass run_names. Received: duplicate names {duplicates}"
        )
    return names


def _sort_out(
    configs: list[RunConfig], names: list[str], root: Path
) -> tuple[list[SweepOutcome], list[tuple[str, SweepOutcome]]]:
    """One outcome per config, and (run name, outcome) of the runs still to train.

    A finished run is skipped with its stored result; an unfinished one is
    moved aside and counts as failed until its rerun succeeds.
    """
    outcomes, todo = [], []
    for config, name in zip(configs, names):
        run_dir = root / name
        stored = _read_result(run_dir)
        if stored is not None:
            outcomes.append(SweepOutcome(config, run_dir, SKIPPED, result=stored))
            continue
        moved = _move_aside(run_dir) if run_dir.exists() else None
        outcomes.append(SweepOutcome(config, run_dir, FAILED, moved_aside=moved))
        todo.append((name, outcomes[-1]))
    return outcomes, todo


def _train(
    todo: list[tuple[str, SweepOutcome]], root: Path, workers: int, bar: _Progress | None
) -> None:
    """Trains each (run name, outcome) of ``todo`` in a pool of spawned workers,
    filling in its outcome."""
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=sweep_worker.init_worker
    ) as pool:
        pending = {
            pool.submit(sweep_worker.train_one, outcome.config, str(root), name): outcome
            for name, outcome in todo
        }
        for future in futures.as_completed(pending):
            outcome = pending[future]
            try:
                outcome.result = future.result()
                outcome.status = DONE
            except futures.process.BrokenProcessPool as err:
                outcome.error = f"the worker process died: {err}"
            except Exception as err:  # noqa: BLE001 - one run's failure is reported
                outcome.error = f"{type(err).__name__}: {err}"
            if bar:
                bar.update(outcome)


def _train_on_ray(
    todo: list[tuple[str, SweepOutcome]],
    root: Path,
    workers: int | None,
    address: str | None,
    bar: _Progress | None,
) -> None:
    """Trains each (run name, outcome) of ``todo`` as a Ray task, filling in
    its outcome; starts (and then stops) a local Ray instance if none runs."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        # A local instance gets `workers` CPUs; a cluster has its own.
        cpus = (workers or os.cpu_count() or 1) if address is None else None
        ray.init(address=address, num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(sweep_worker.train_one_fresh)
        # Absolute: a Ray worker need not start in this process's folder.
        folder = os.path.abspath(root)
        pending = {task.remote(outcome.config, folder, name): outcome for name, outcome in todo}
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            outcome = pending.pop(ref)
            try:
                outcome.result = ray.get(ref)
                outcome.status = DONE
            except ray.exceptions.RayTaskError as err:
                cause = err.cause
                outcome.error = f"{type(cause).__name__}: {cause}"
            except ray.exceptions.RayError as err:  # the worker died, the node went away
                outcome.error = f"the Ray worker failed: {type(err).__name__}: {err}"
            if bar:
                bar.update(outcome)
    finally:
        if started:
            ray.shutdown()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ValueError(
            'backend="ray" needs Ray: pip install "tbgrad[ray]" (or ".[ray]" in the '
            "repository). Received: backend='ray'"
        ) from None
    return ray


def _read_result(run_dir: Path) -> dict | None:
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # A torn or unreadable file: the run counts as unfinished.


def _move_aside(run_dir: Path) -> Path:
    for k in range(1, 100_000):
        target = run_dir.with_name(f"{run_dir.name}{INCOMPLETE}{k}")
        if not target.exists():
            os.rename(run_dir, target)
            return target
    raise ValueError(f"no free name to move {str(run_dir)!r} aside")


class _Progress:
    """One line per finished run, each led by the overall bar."""

    WIDTH = 20

    def __init__(self, total: int, stream: TextIO):
        self.total = total
        self.count = 0
        self.failed = 0
        self.stream = stream
        self.start = time.perf_counter()

    def update(self, outcome: SweepOutcome) -> None:
        self.count += 1
        self.failed += outcome.status == FAILED
        filled = round(self.WIDTH * self.count / max(self.total, 1))
        bar = "#" * filled + "." * (self.WIDTH - filled)
        detail = ""
        if outcome.status == FAILED:
            detail = f"  {outcome.error}"
        elif outcome.result:
            r = outcome.result
            detail = f"  test acc {r.get('test_accuracy', float('nan')):.3f}"
            if isinstance(r.get("verdict"), dict):
                detail += f", {r['verdict']['label']}"
            if outcome.status == DONE:
                detail += f", {r.get('seconds', 0):.0f}s"
        elapsed = time.perf_counter() - self.start
        print(
            f"[{bar}] {self.count}/{self.total} {elapsed:6.0f}s  {outcome.status:<7} "
            f"{outcome.run_dir.name}{detail}",
            file=self.stream,
            flush=True,
        )

    def finish(self) -> None:
        elapsed = time.perf_counter() - self.start
        print(
            f"sweep: {self.total} runs, {self.failed} failed, {elapsed:.0f}s",
            file=self.stream,
            flush=True,
        )
