"""Another Keras backend: train.py stops with one line and writes nothing; the
library's entry points raise before training, naming the backend and the fix."""

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


def _train_py(tmp_path, **env):
    # jax need not be installed: the check runs before Keras is imported
    # (Keras itself would fail on import without it).
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--epochs", "2", "--logdir", str(tmp_path / "logs")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )


def test_train_py_on_jax_prints_one_line_exits_2_writes_nothing(tmp_path):
    proc = _train_py(tmp_path, KERAS_BACKEND="jax")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "'jax'" in lines[0] and FIX in lines[0]
    assert lines[0].startswith("train.py: error: ")
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_train_py_reads_the_backend_from_keras_json(tmp_path):
    home = tmp_path / "keras-home"
    home.mkdir()
    (home / "keras.json").write_text(json.dumps({"backend": "torch"}))
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
    assert "'torch'" in proc.stderr and FIX in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keras-home"]


def _model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="out")])
    model.compile("sgd", "mse")
    return model


@pytest.mark.parametrize(
    "make, what",
    [
        (lambda path: tbgrad.TensorBoard(path), "tbgrad.TensorBoard"),
        (lambda path: tbgrad.GradientLogger(_model(), path), "tbgrad.GradientLogger"),
        (
            lambda path: tbgrad.train_with_tape(
                _model(), np.zeros((4, 2)), np.zeros(4), log_dir=path, verbose=0
            ),
            "tbgrad.train_with_tape",
        ),
    ],
)
def test_library_raises_before_training_on_another_backend(tmp_path, monkeypatch, make, what):
    # keras.backend.backend() is what the check reads; on a real jax backend
    # it says "jax" the same way (the Keras model would not even build here).
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match=rf"^{what} needs .*'jax'.*{FIX}.*Received: backend='jax'"):
        make(tmp_path / "run")
    assert not (tmp_path / "run").exists()
