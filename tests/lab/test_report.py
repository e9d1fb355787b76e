"""report.py: the table's values against the event files, the PNGs, bad input."""

from __future__ import annotations

import contextlib
import io
import shutil

import matplotlib.image
import numpy as np
import pytest

from tbgrad.cli.report import main
from tbgrad.eventlog import load_run
from tbgrad.lab import experiment
from tbgrad.lab.config import make_config
from tbgrad.lab.report import summarize
from tbgrad.verdict import verdict_of

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logs")
    for depth in (1, 2):
        config = make_config(act="tanh", init="uniform01", depth=depth, epochs=2)
        experiment.write_result(experiment.run(config, logdir, verbose=0))
    # A sweep's moved-aside unfinished run: not reported.
    shutil.copytree(
        logdir / "tanh-uniform01-d1-w5-sgd-s1", logdir / "tanh-uniform01-d1-w5-sgd-s1.incomplete-1"
    )
    return logdir


@pytest.fixture(scope="module")
def report(logdir, tmp_path_factory):
    """report.py LOGDIR --png DIR, run once: (stdout lines, png folder)."""
    png = tmp_path_factory.mktemp("out") / "png"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(logdir), "--png", str(png)]) == 0
    return out.getvalue().splitlines(), png


def test_table_values_come_from_the_event_files(logdir, report):
    out, png = report
    assert out[0].split()[:3] == ["run", "config", "train"]
    rows = {line.split()[0]: line for line in out[2:] if line.startswith("tanh-")}
    assert sorted(rows) == ["tanh-uniform01-d1-w5-sgd-s1", "tanh-uniform01-d2-w5-sgd-s1"]
    for name, line in rows.items():
        run = load_run(logdir / name)
        layers = [t for t in run.train.scalars if t.startswith("grad_mean_abs/")]
        expected = [
            f"{run.train.scalar('epoch_accuracy')[-1]:.3f}",
            f"{run.validation.scalar('epoch_accuracy')[-1]:.3f}",
            *(f"{run.train.scalar(t)[-1]:.1e}" for t in layers),
            f"{run.train.scalar('grad_ratio')[-1]:.2e}",
        ]
        verdict = verdict_of(logdir / name)
        expected += [f"{verdict.weakest_ratio:.2e}", verdict.label]
        cells = line.split()
        # The run, its config in seven words, then the figures.
        depth = name.split("-")[2]
        assert cells[1:8] == ["tanh", "uniform01", f"{depth}x5", "sgd", "lr0.01", "s1", "fit"]
        assert cells[8:] == expected
    assert out[-1] == f"wrote 3 figures to {png}"


def test_pngs_are_real_images_of_the_expected_size(report):
    png = report[1]
    assert sorted(p.name for p in png.iterdir()) == [
        "sweep.png",
        "tanh-uniform01-d1-w5-sgd-s1.png",
        "tanh-uniform01-d2-w5-sgd-s1.png",
    ]
    for path in png.iterdir():
        assert path.read_bytes()[:8] == PNG_MAGIC
    run_image = matplotlib.image.imread(png / "tanh-uniform01-d1-w5-sgd-s1.png")
    assert run_image.shape[:2] == (800, 1500)
    # Not a blank canvas: lines were drawn.
    assert np.unique(run_image.reshape(-1, run_image.shape[-1]), axis=0).shape[0] > 50
    assert matplotlib.image.imread(png / "sweep.png").shape[:2] == (450, 1600)


def test_summaries_skip_unfinished_runs(logdir):
    assert [s.name for s in summarize(logdir)] == [
        "tanh-uniform01-d1-w5-sgd-s1",
        "tanh-uniform01-d2-w5-sgd-s1",
    ]


def test_one_run_folder_is_a_report_of_one_run(logdir, capsys):
    assert main([str(logdir / "tanh-uniform01-d2-w5-sgd-s1")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[2].startswith("tanh-uniform01-d2-w5-sgd-s1 ")


@pytest.mark.parametrize("case", ["missing", "empty", "not-tensorboard", "png-is-a-file"])
def test_bad_input_is_one_line_exit_2_nothing_written(logdir, tmp_path, capsys, case):
    target = tmp_path / "target"
    png = tmp_path / "png"
    args = [str(target), "--png", str(png)]
    if case == "empty":
        target.mkdir()
        message = f"no TensorBoard runs under '{target}'"
    elif case == "not-tensorboard":
        (target / "train").mkdir(parents=True)
        (target / "train" / "notes.txt").write_text("hello")
        message = f"no TensorBoard runs under '{target}'"
    elif case == "png-is-a-file":
        png.write_text("a file")
        args = [str(logdir), "--png", str(png)]
        message = f"--png '{png}' exists and is not a folder"
    else:
        message = f"LOGDIR '{target}' is not a folder"
    before = sorted(tmp_path.rglob("*"))
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"report.py: error: {message}")
    assert sorted(tmp_path.rglob("*")) == before
