"""MirroredStrategy over two logical CPUs logs what one device logs.

Logical devices must be configured before TensorFlow initializes its
devices, which the pytest process did long ago: the training runs in
subprocesses (tests/library/distributed_run.py, and train.py --replicas 2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tbgrad import tags
from tbgrad.eventlog import load_run

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5
LAYERS = ["hidden_1", "hidden_2", "output"]


def python(*args, cwd=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    proc = python(Path(__file__).with_name("distributed_run.py"), out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_two_replicas_log_the_single_device_gradients(runs, loop):
    one, two = load_run(runs / f"{loop}-1"), load_run(runs / f"{loop}-2")
    for split in ("train", "validation"):
        a, b = one.splits[split], two.splits[split]
        # One writer: one event file per split, one value per tag and step.
        assert len(b.event_files) == 1
        assert set(a.scalars) == set(b.scalars) and set(a.histograms) == set(b.histograms)
        for tag in a.scalars:
            assert b.steps(tag) == a.steps(tag), tag
            np.testing.assert_allclose(
                b.scalar(tag), a.scalar(tag), rtol=TOL, atol=TOL, err_msg=tag
            )
        for tag in a.histograms:
            assert b.steps(tag) == a.steps(tag), tag
            if tag.startswith(tags.ACTIVATIONS + "/"):
                # A replica's outputs are its half of the batch: the
                # histogram is the first replica's (tbgrad.statistics.activations).
                continue
            for (_, ha), (_, hb) in zip(a.histograms[tag], b.histograms[tag]):
                np.testing.assert_allclose(hb[:, :2], ha[:, :2], rtol=TOL, atol=TOL, err_msg=tag)
                np.testing.assert_array_equal(hb[:, 2], ha[:, 2], err_msg=tag)
    train = two.train
    for name in LAYERS:
        assert train.steps(tags.layer_tag(tags.GRAD_MEAN_ABS, name)) == [0, 1, 2]
        assert train.steps(tags.layer_tag(tags.GRADIENTS, name)) == [0, 1, 2]
        assert train.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS, name)).min() > 0
    # update_freq=2: batch_* scalars at the global steps 2, 4, ...
    steps = train.steps(tags.layer_tag(tags.BATCH_GRAD_MEAN_ABS, "output"))
    assert steps and all(s % 2 == 0 for s in steps)
    assert steps == one.train.steps(tags.layer_tag(tags.BATCH_GRAD_MEAN_ABS, "output"))


@pytest.mark.parametrize("loop", ["tape"])
def test_train_cli_replicas(tmp_path, loop):
    logdir = tmp_path / "logs"
    proc = python(
        ROOT / "scripts" / "train.py",
        *("--replicas", "2", "--depth", "2", "--width", "3", "--epochs", "2"),
        *("--loop", loop, "--logdir", logdir, "--quiet"),
    )
    assert proc.returncode == 0, proc.stderr
    name = "relu-he_uniform-d2-w3-sgd-s1" + ("-tape" if loop == "tape" else "") + "-r2"
    run_dir = logdir / name
    assert f"run folder: {run_dir}" in proc.stdout
    result = json.loads((run_dir / "tbgrad_run.json").read_text())
    assert result["config"]["replicas"] == 2
    run = load_run(run_dir)
    assert len(run.train.event_files) == 1
    for tag in tags.layer_tags(LAYERS):
        assert run.train.steps(tag) == [0, 1], tag
    assert np.isfinite(run.train.scalar("epoch_loss")).all()
    assert run.train.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS, "hidden_1")).min() > 0
