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
from tbgrad.cli import common as cli
from tbgrad.eventlog import load_run

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, name, code, loop, twice",
    [
        # Ctrl-C pressed twice: the second one must not cut the closing short.
        (signal.SIGINT, "SIGINT", 130, "fit", True),
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
        # As from a terminal: a test run started in the background (nohup,
        # `&` in a script) passes SIGINT down as ignored, and train.py keeps
        # an inherited ignored SIGINT ignored, by design.
        preexec_fn=_default_sigint,
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


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def own_signal_handlers():
    # stop_on_signals ignores SIGINT/SIGTERM after a stop (the process is
    # expected to exit): give this process its handlers back afterwards.
    # Python's own Ctrl-C handler meanwhile, even if this test run inherited
    # SIGINT as ignored (started in the background), which stop_on_signals
    # would respect.
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _send(signum=signal.SIGINT):
    # Delivered to this process at once; Python runs the handler between the
    # next two bytecodes, here inside the sleep.
    os.kill(os.getpid(), signum)
    time.sleep(0.5)


def test_repeat_signal_stops_again_after_a_swallowed_stop(own_signal_handlers):
    # Keras converts batch logs to floats under a bare ``except: pass``
    # (keras.src.utils.python_utils.pythonify_logs): a Ctrl-C landing there
    # never leaves model.fit. The next one must stop the run.
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with cli.stop_on_signals():
            try:
                _send()
            except BaseException:  # noqa: BLE001 - what the swallowing code does
                pass
            reached.append("after swallow")
            _send()
            reached.append("not stopped")
    assert reached == ["after swallow"]


def test_repeat_signal_is_ignored_while_the_stop_is_cleaned_up(own_signal_handlers):
    closed = []
    with pytest.raises(cli.Terminated):
        with cli.stop_on_signals():
            try:
                _send(signal.SIGTERM)
            finally:
                _send(signal.SIGINT)  # Ctrl-C during the closing: ignored
                closed.append("nested cleanup")
                try:
                    raise OSError("a failure inside the cleanup")
                except OSError:
                    _send(signal.SIGTERM)  # still the same stop
                closed.append(True)
    assert closed == ["nested cleanup", True]
    # After the stop, the block is left and further signals are ignored.
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    _send(signal.SIGINT)
