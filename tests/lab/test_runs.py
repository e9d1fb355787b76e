"""No lost or mixed runs, and --deterministic.

Two train.py processes started at the same moment with the same config get
two distinct run folders; with --deterministic they also log identical
values (every scalar and histogram decoded from the event files).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tbgrad.eventlog import load_run
from tbgrad.lab.runs import create_run_dir

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train.py"
CONFIG = ["--depth", "2", "--width", "4", "--epochs", "3", "--update-freq", "4"]


@pytest.fixture(scope="module")
def twin_runs(tmp_path_factory):
    """Starts two fit and two tape runs of one config at once; returns
    {loop: (logdir, [(returncode, stdout, stderr), ...])}."""
    root = tmp_path_factory.mktemp("twins")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    procs = {}
    for loop in ("fit", "tape"):
        logdir = root / loop
        cmd = [sys.executable, str(SCRIPT), *CONFIG, "--loop", loop, "--deterministic"]
        cmd += ["--logdir", str(logdir), "--quiet"]
        procs[loop] = (
            logdir,
            [
                subprocess.Popen(
                    cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
                )
                for _ in range(2)
            ],
        )
    out = {}
    for loop, (logdir, pair) in procs.items():
        results = []
        for proc in pair:
            stdout, stderr = proc.communicate(timeout=600)
            results.append((proc.returncode, stdout, stderr))
        out[loop] = (logdir, results)
    return out


def run_folder(stdout: str) -> Path:
    (line,) = [line for line in stdout.splitlines() if line.startswith("run folder: ")]
    return Path(line.removeprefix("run folder: "))


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_simultaneous_runs_get_distinct_folders(twin_runs, loop):
    logdir, results = twin_runs[loop]
    for code, _, stderr in results:
        assert code == 0, stderr
    folders = sorted(run_folder(stdout) for _, stdout, _ in results)
    name = "relu-he_uniform-d2-w4-sgd-s1" + ("-tape" if loop == "tape" else "")
    assert folders == [logdir / name, logdir / f"{name}-2"]
    assert sorted(p.name for p in logdir.iterdir()) == [name, f"{name}-2"]
    for folder in folders:
        # Each folder holds exactly one run: one event file per split.
        run = load_run(folder)
        assert len(run.train.event_files) == 1 and len(run.validation.event_files) == 1
        assert run.train.steps("epoch_loss") == [0, 1, 2]
        assert json.loads((folder / "tbgrad_run.json").read_text())["run_dir"] == str(folder)


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_deterministic_runs_log_identical_values(twin_runs, loop):
    _, results = twin_runs[loop]
    first, second = (load_run(run_folder(stdout)) for _, stdout, _ in results)
    for split in ("train", "validation"):
        a, b = first.splits[split], second.splits[split]
        assert a.scalars and set(a.scalars) == set(b.scalars)
        assert set(a.histograms) == set(b.histograms)
        for tag in a.scalars:
            assert a.scalars[tag] == b.scalars[tag], tag  # exact, steps and values
        for tag in a.histograms:
            assert [s for s, _ in a.histograms[tag]] == [s for s, _ in b.histograms[tag]]
            for (_, ha), (_, hb) in zip(a.histograms[tag], b.histograms[tag]):
                np.testing.assert_array_equal(ha, hb)
    # batch_* scalars at update_freq 4 are there and identical too.
    assert any(tag.startswith("batch_") for tag in first.train.scalars)
    ja, jb = (json.loads((r.path / "tbgrad_run.json").read_text()) for r in (first, second))
    assert ja["config"]["deterministic"] is True
    for key in ("train_accuracy", "test_accuracy", "train_loss", "test_loss"):
        assert ja[key] == jb[key]


def test_existing_run_is_never_reused(tmp_path):
    taken = tmp_path / "run"
    taken.mkdir()
    (taken / "marker").write_text("old")
    (tmp_path / "run-2").write_text("a file, not a folder")
    assert create_run_dir(tmp_path, "run") == tmp_path / "run-3"
    assert (taken / "marker").read_text() == "old"
    assert list(taken.iterdir()) == [taken / "marker"]
