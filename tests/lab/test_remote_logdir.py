"""Log folders on any TensorFlow filesystem: ``ram://`` in-process, and local.

``train.py --logdir ram://logs`` writes a complete run (train/, validation/,
tbgrad_run.json) that the report reads back, and creates nothing in the
current directory; the same commands on a local folder give the same
layout. Run folders under a URL are claimed with a marker file, never
shared.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading

import numpy as np
import pytest
import tensorflow as tf

from tbgrad import _paths
from tbgrad.cli.report import main as report_main
from tbgrad.cli.train import main as train_main
from tbgrad.eventlog import find_runs, load_run
from tbgrad.lab.report import summarize
from tbgrad.lab.runs import CLAIM_PREFIX, _claim_url, check_logdir, create_run_dir

gfile = tf.io.gfile
FLAGS = ["--epochs", "2", "--depth", "2", "--width", "4", "--quiet"]
NAME = "relu-he_uniform-d2-w4-sgd-s1"


@pytest.fixture
def ram_root():
    """A fresh ``ram://`` folder for one test (the filesystem lives as long as
    the process)."""
    root = "ram://logs"
    _remove(root)
    yield root
    _remove(root)


def _remove(root: str) -> None:
    # File by file: ram://'s rmtree fails on the entries its prefix listing
    # invents ("run" lists "-tape" when "run-tape" exists).
    for folder, _, files in gfile.walk(root, topdown=False):
        for name in [*files, ""]:
            with contextlib.suppress(tf.errors.NotFoundError):
                gfile.remove(folder.rstrip("/") + "/" + name if name else folder)
    assert not gfile.exists(root)


def _children(folder: str) -> list[str]:
    # Without the entries ram:// lists by name prefix ("run" lists "-2" when
    # "run-2" exists).
    return [n for n in gfile.listdir(folder) if not n.startswith("-")]


def _train(logdir: str, *flags: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = train_main([*FLAGS, "--logdir", logdir, *flags])
    return code, out.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ram", "local"])
def test_train_writes_a_complete_run_the_report_reads(kind, ram_root, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    logdir = ram_root if kind == "ram" else str(tmp_path / "logs")
    for loop in ("fit", "tape"):
        code, stdout = _train(logdir, "--loop", loop)
        assert code == 0, stdout
        assert f"view: tensorboard --logdir {logdir}\n" in stdout
    runs = [_paths.join(logdir, NAME), _paths.join(logdir, NAME + "-tape")]
    assert find_runs(logdir) == runs
    for run_dir in runs:
        assert isinstance(run_dir, str if kind == "ram" else os.PathLike)
        names = {n.rstrip("/") for n in gfile.listdir(str(run_dir))}
        assert {"train", "validation", "tbgrad_run.json"} <= names
        stored = json.loads(_paths.read_text(_paths.join(run_dir, "tbgrad_run.json")))
        assert stored["run_dir"] == str(run_dir)
        run = load_run(run_dir)
        assert len(run.train.event_files) == 1 and len(run.validation.event_files) == 1
        assert run.train.steps("epoch_loss") == [0, 1]
    summaries = summarize(logdir)
    assert [s.name for s in summaries] == [NAME, NAME + "-tape"]
    for summary in summaries:
        run = load_run(summary.path)
        assert summary.config["loop"] in ("fit", "tape")
        assert summary.val_accuracy == run.validation.scalar("epoch_accuracy")[-1]
        assert list(summary.grad_mean_abs) == ["hidden_1", "hidden_2", "output"]
        for layer, value in summary.grad_mean_abs.items():
            np.testing.assert_equal(value, run.train.scalar(f"grad_mean_abs/{layer}")[-1])
    png = _paths.join(ram_root if kind == "ram" else tmp_path, "figures")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert report_main([logdir, "--png", str(png)]) == 0
    table = out.getvalue().splitlines()
    assert [line.split()[0] for line in table[2:4]] == [NAME, NAME + "-tape"]
    assert sorted(gfile.listdir(str(png))) == [f"{NAME}-tape.png", f"{NAME}.png"]
    with gfile.GFile(str(_paths.join(png, f"{NAME}.png")), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert list(cwd.iterdir()) == []  # no local "ram:" folder


def test_url_run_folders_are_never_reused(ram_root):
    taken = _paths.join(ram_root, "run")
    with gfile.GFile(_paths.join(taken, "marker"), "w") as f:
        f.write("old")
    gfile.makedirs(_paths.join(ram_root, "run-2"))
    assert create_run_dir(ram_root, "run") == "ram://logs/run-3"
    assert create_run_dir(ram_root, "run") == "ram://logs/run-4"
    # ram:// lists "ru" by name prefix (it shows "n", "n-2", ...): skipped, as
    # any folder that does not hold our claim alone.
    assert create_run_dir(ram_root + "/", "ru") == "ram://logs/ru-2"
    assert _children(taken) == ["marker"]
    (claim,) = _children("ram://logs/run-3")
    assert claim.startswith(CLAIM_PREFIX)


def test_simultaneous_url_claims_get_distinct_folders(ram_root):
    got, start = [], threading.Barrier(8)

    def claim():
        start.wait()
        got.append(create_run_dir(ram_root, "run"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 8 and len(set(got)) == 8
    for run_dir in got:
        assert len(_children(run_dir)) == 1  # the winner's marker alone


def test_a_claim_that_sees_another_loses_and_withdraws(ram_root):
    folder = _paths.join(ram_root, "run")
    with gfile.GFile(_paths.join(folder, CLAIM_PREFIX + "other"), "w") as f:
        f.write("")
    assert not _claim_url(folder, CLAIM_PREFIX + "mine")
    assert gfile.listdir(folder) == [CLAIM_PREFIX + "other"]


def test_check_logdir_on_urls(ram_root):
    check_logdir(ram_root + "/new/deeper")  # absent: created by the run
    with gfile.GFile(ram_root + "/file", "w") as f:
        f.write("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        check_logdir(ram_root + "/file")
    with pytest.raises(ValueError, match="TensorFlow has no filesystem for nosuch://"):
        check_logdir("nosuch://bucket/logs")


def test_cli_fails_on_an_unknown_scheme(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _train("nosuch://bucket/logs")[0] == 2
    assert capsys.readouterr().err.startswith(
        "train.py: error: logdir 'nosuch://bucket/logs': TensorFlow has no filesystem for "
    )
    assert report_main(["nosuch://bucket/logs"]) == 2
    assert "LOGDIR 'nosuch://bucket/logs' is not a folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_paths_keep_urls_whole():
    assert _paths.join("gs://b/logs/", "run", "train") == "gs://b/logs/run/train"
    assert _paths.join("logs", "run") == _paths.as_path("logs/run")
    assert _paths.name("gs://b/logs/run/") == "run"
    assert _paths.parent("gs://b/logs/run") == "gs://b/logs"
    assert _paths.relative("gs://b/logs/a/run", "gs://b/logs/") == "a/run"
    assert _paths.relative("./logs/a", "logs") == "a"
    assert not _paths.is_url("logs/gs:/x") and _paths.is_url("s3://b")
