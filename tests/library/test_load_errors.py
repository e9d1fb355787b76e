"""A folder that holds no run gets one clear error naming it, not an empty
run judged "unknown"."""

from __future__ import annotations

import pytest
import tensorflow as tf

import tbgrad
from tbgrad.eventlog import load_run


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"nosuch holds no run: .*\(no such folder\)"):
        load_run(tmp_path / "nosuch")
    with pytest.raises(ValueError, match="holds no run"):
        tbgrad.verdict_of(tmp_path / "nosuch")


def test_a_runs_train_folder_points_to_the_run_above_it(tmp_path):
    run = tmp_path / "run"
    with tf.summary.create_file_writer(str(run / "train")).as_default():
        tf.summary.scalar("epoch_loss", 1.0, step=0)
    assert load_run(run).train.scalar("epoch_loss").tolist() == [1.0]
    with pytest.raises(ValueError, match=r"train/ is a run's folder of event files: pass the run"):
        load_run(run / "train")
