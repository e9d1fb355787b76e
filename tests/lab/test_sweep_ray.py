"""Sweeps on Ray: the same folders, results and report as the process pool.

Ray 2.60 has no local mode any more (``ray.init(local_mode=True)`` raises
"`local_mode` is no longer supported"): the test starts a local Ray
instance of 2 CPUs, as ``backend="ray"`` does without ``ray_address``.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from tbgrad.cli.sweep import main as sweep_main
from tbgrad.lab.config import RunConfig, make_config
from tbgrad.lab.report import format_table, summarize
from tbgrad.lab.sweep import DONE, FAILED, SKIPPED, run_sweep

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="no Ray")

CONFIGS = [
    make_config(act=act, depth=depth, epochs=2, histogram_freq=0)
    for act in ("tanh", "relu")
    for depth in (1, 2)
]
# Never validated by the caller: it fails inside its task.
BAD = RunConfig(act="no_such_activation", depth=1, epochs=2)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """The same 4 configurations, and a failing one, swept with the pool and
    with Ray."""
    root = tmp_path_factory.mktemp("sweeps")
    outcomes = {
        backend: run_sweep(
            [*CONFIGS, BAD], root / backend, workers=2, progress=False, backend=backend
        )
        for backend in ("pool", "ray")
    }
    return root, outcomes


def listing(folder):
    """Every path under ``folder``, event files by their folder only (their
    names hold the host, the process and the time)."""
    return sorted(
        str(p.parent.relative_to(folder) / "<events>")
        if ".tfevents." in p.name
        else str(p.relative_to(folder))
        for p in folder.rglob("*")
    )


@pytest.mark.slow
@needs_ray
def test_ray_gives_the_pools_folders_results_and_report(sweeps):
    root, outcomes = sweeps
    assert [o.status for o in outcomes["ray"]] == [DONE] * 4 + [FAILED]
    assert listing(root / "ray") == listing(root / "pool")
    runs = sorted(c.run_name() for c in CONFIGS)
    for run in runs:
        assert {f"{run}/train/<events>", f"{run}/validation/<events>"} <= set(listing(root / "ray"))
    for pool, ray_ in zip(outcomes["pool"][:4], outcomes["ray"][:4]):
        assert ray_.run_dir.name == pool.run_dir.name
        assert ray_.run_dir.parent == root / "ray"
        for key in ("train_accuracy", "test_accuracy", "train_loss", "test_loss", "verdict"):
            assert ray_.result[key] == pool.result[key], key
        assert ray_.result["config"] == pool.result["config"]
        stored = json.loads((ray_.run_dir / "tbgrad_run.json").read_text())
        assert stored == ray_.result
    assert format_table(summarize(root / "ray")) == format_table(summarize(root / "pool"))


@pytest.mark.slow
@needs_ray
def test_a_ray_rerun_skips_finished_runs(sweeps):
    root, _ = sweeps
    again = run_sweep(CONFIGS, root / "ray", workers=2, progress=False, backend="ray")
    assert [o.status for o in again] == [SKIPPED] * 4


@pytest.mark.slow
@needs_ray
def test_a_failing_run_is_reported_as_by_the_pool(sweeps):
    _, outcomes = sweeps
    failed = outcomes["ray"][-1]
    assert failed.error.startswith("ValueError: Unknown activation 'no_such_activation'")
    assert failed.error == outcomes["pool"][-1].error


@pytest.mark.slow
@needs_ray
def test_cli_backend_flags(tmp_path, capsys):
    argv = ["--act", "tanh", "--epochs", "2", "--sweep-dir", str(tmp_path / "s"), "--quiet"]
    assert sweep_main([*argv, "--ray-address", "auto"]) == 2
    assert capsys.readouterr().err == (
        "sweep.py: error: --ray-address needs --backend ray. Received: --backend pool, "
        "--ray-address auto\n"
    )
    assert sweep_main([*argv, "--backend", "ray"]) == 0
    out = capsys.readouterr().out
    assert "report: python scripts/report.py" in out
    (run,) = (tmp_path / "s").iterdir()
    assert (run / "tbgrad_run.json").is_file()


def test_without_ray_the_backend_is_refused_before_anything_is_written(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    argv = ["--act", "tanh", "--sweep-dir", str(tmp_path / "s"), "--backend", "ray"]
    assert sweep_main(argv) == 2
    assert capsys.readouterr().err == (
        'sweep.py: error: --backend ray needs Ray: pip install "tbgrad[ray]" (or ".[ray]" '
        "in the repository). Received: --backend ray\n"
    )
    assert list(tmp_path.iterdir()) == []
