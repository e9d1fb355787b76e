"""Keras's backends: train.py runs on TensorFlow, JAX and PyTorch; on another
backend, or with a flag only TensorFlow runs, it stops with one line and
writes nothing; the library's entry points raise before training, naming the
backend and the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import tbgrad

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train.py"
FIX = "KERAS_BACKEND=tensorflow"


def _train_py(tmp_path, *flags, **env):
    # The check runs before Keras is imported (Keras itself would fail on
    # import with a backend it does not know).
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--epochs", "2", "--logdir", str(tmp_path / "logs"), *flags],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )


def _one_line(proc, tmp_path, *words):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert lines[0].startswith("train.py: error: ")
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_train_py_on_another_backend_prints_one_line_exits_2_writes_nothing(tmp_path):
    proc = _train_py(tmp_path, KERAS_BACKEND="numpy")
    _one_line(proc, tmp_path, "'numpy'", FIX, "'jax'", "'torch'")


@pytest.mark.parametrize("flags", [("--loop", "tape"), ("--replicas", "2"), ("--deterministic",)])
def test_train_py_flags_only_tensorflow_runs_refused_on_jax(tmp_path, flags):
    proc = _train_py(tmp_path, "--backend", "jax", *flags)
    _one_line(proc, tmp_path, flags[0], "--backend tensorflow", "Received: --backend jax")


@pytest.mark.slow
def test_train_py_on_jax_writes_a_run_with_a_verdict(tmp_path):
    proc = _train_py(tmp_path, "--backend", "jax", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "verdict: " in proc.stdout
    (run,) = (tmp_path / "logs").iterdir()
    train = tbgrad.load_run(run).train
    assert train.steps("grad_mean_abs/hidden_1") == [0, 1]
    assert "activation_zero/hidden_1" in train.scalars  # relu, the diagnostics too


def test_train_py_reads_the_backend_from_keras_json(tmp_path):
    home = tmp_path / "keras-home"
    home.mkdir()
    (home / "keras.json").write_text(json.dumps({"backend": "numpy"}))
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), KERAS_HOME=str(home))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--epochs", "2", "--logdir", str(tmp_path / "logs")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "'numpy'" in proc.stderr and FIX in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keras-home"]


def _model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="out")])
    model.compile("sgd", "mse")
    return model


@pytest.mark.parametrize(
    "make, what, backend",
    [
        (lambda path: tbgrad.TensorBoard(path), "tbgrad.TensorBoard", "numpy"),
        (lambda path: tbgrad.GradientLogger(_model(), path), "tbgrad.GradientLogger", "numpy"),
        (
            lambda path: tbgrad.train_with_tape(
                _model(), np.zeros((4, 2)), np.zeros(4), log_dir=path, verbose=0
            ),
            "tbgrad.train_with_tape",
            "jax",
        ),
    ],
)
def test_library_raises_before_training_on_another_backend(
    tmp_path, monkeypatch, make, what, backend
):
    # keras.backend.backend() is what the check reads; on a real backend it
    # says its name the same way (the Keras model would not even build here).
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    pattern = rf"^{what} needs .*'{backend}'.*{FIX}.*Received: backend='{backend}'"
    with pytest.raises(ValueError, match=pattern):
        make(tmp_path / "run")
    assert not (tmp_path / "run").exists()
