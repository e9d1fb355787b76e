"""Ctrl-C and SIGTERM during train.py: exit 130/143, one line, logs intact.

train.py runs in a subprocess with far more epochs than it will finish; once
TensorBoard's reader sees an epoch on disk the signal is sent. Every epoch
the run reports as finished must then be complete in the event files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tbgrad import tags
from tbgrad.eventlog import load_run

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train.py"
LAYERS = ["hidden_1", "hidden_2", "output"]
START_TIMEOUT = 240  # seconds for TensorFlow to start and an epoch to appear


def wait_for_epochs(proc, run_dir: Path, count: int) -> int:
    """Polls the event files until ``count`` epochs are readable; returns how many."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if (run_dir / tags.TRAIN_DIR).is_dir():
            seen = len(load_run(run_dir).train.steps("epoch_loss"))
            if seen >= count:
                return seen
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"no epoch on disk after {START_TIMEOUT}s: {proc.communicate()}")


@pytest.mark.parametrize(
    "sig, name, code, loop, twice",
    [
        # Ctrl-C pressed twice: the second one must not cut the closing short.
        pytest.param(
            signal.SIGINT,
            "SIGINT",
            130,
            "fit",
            True,
            # Known bug, not yet fixed: now and then, in a fresh install, the
            # first SIGINT during model.fit is swallowed before it stops the
            # run, and the second, arriving within REPEAT_GRACE_SECONDS, is
            # then ignored as a repeat, so training goes on. Intermittent (seen
            # in fresh installs); the test fails by timeout when it happens.
            marks=pytest.mark.xfail(
                reason="a swallowed first SIGINT plus the repeat grace can leave model.fit running",
                strict=False,
            ),
        ),
        (signal.SIGTERM, "SIGTERM", 143, "tape", False),
    ],
)
def test_signal_stops_cleanly(tmp_path, sig, name, code, loop, twice):
    logdir = tmp_path / "logs"
    args = ["--depth", "2", "--width", "3", "--epochs", "100000", "--loop", loop]
    args += ["--logdir", str(logdir), "--run-name", "long", "--quiet"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    run_dir = logdir / "long"
    seen = wait_for_epochs(proc, run_dir, 2)
    proc.send_signal(sig)
    if twice:
        time.sleep(0.05)
        proc.send_signal(sig)  # a no-op if the process has already exited
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running 120s after {name}; stdout: {out!r}; stderr: {err!r}")

    assert proc.returncode == code, err
    assert "Traceback" not in err and "Traceback" not in out
    assert err.strip().splitlines() == [
        f"train.py: interrupted by {name}; every finished epoch is in {run_dir}; "
        f"view: tensorboard --logdir {logdir}"
    ]
    assert not (run_dir / "tbgrad_run.json").exists()  # the run did not finish

    run = load_run(run_dir)
    epochs = run.train.steps("epoch_loss")
    assert len(epochs) >= seen
    assert epochs == list(range(len(epochs)))
    # Every finished epoch is complete: every tag, every split, every epoch.
    assert run.validation.steps("epoch_loss") == epochs
    for tag in tags.layer_tags(LAYERS):
        assert run.train.steps(tag) == epochs, tag
    for tag, series in run.train.scalars.items():
        assert all(v == v for _, v in series), tag  # decoded, no NaN from a torn write
    assert len(run.train.event_files) == 1
