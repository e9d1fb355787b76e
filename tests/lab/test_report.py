"""report.py: the table's values against the event files, the PNGs, bad input."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from tbgrad.cli.report import main
from tbgrad.eventlog import load_run
from tbgrad.lab import experiment
from tbgrad.lab.config import make_config
from tbgrad.lab.report import summarize
from tbgrad.verdict import VANISHING_BELOW, verdict_of

pytestmark = pytest.mark.slow

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
    """report.py LOGDIR --png DIR, run once: (stdout lines, png folder, figures).

    ``figures`` maps each PNG's file name to the matplotlib Figure saved
    there: ``Figure.savefig`` is wrapped to note the figure and then write
    the file as usual, so that the plotted data can be checked as well as
    the image.
    """
    png = tmp_path_factory.mktemp("out") / "png"
    out = io.StringIO()
    figures = {}
    savefig = Figure.savefig

    def noting_savefig(fig, path, *args, **kwargs):
        figures[Path(path).name] = fig
        return savefig(fig, path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setattr(Figure, "savefig", noting_savefig)
        assert main([str(logdir), "--png", str(png)]) == 0
    return out.getvalue().splitlines(), png, figures


def test_table_values_come_from_the_event_files(logdir, report):
    out, png, _ = report
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
    assert sorted(report[2]) == sorted(p.name for p in png.iterdir())


RUN_PANELS = [
    # (title, tag family) in the order of the 2 x 3 grid, row by row.
    ("gradient mean |g| per layer", "grad_mean_abs"),
    ("gradient std per layer", "grad_std"),
    ("loss", None),
    ("kernel mean per layer", "weight_mean"),
    ("kernel std per layer", "weight_std"),
    ("grad_ratio (first layer / output layer)", "grad_ratio"),
]


def _xy(line):
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)


@pytest.mark.parametrize("depth", [1, 2])
def test_run_figure_plots_the_runs_series(logdir, report, depth):
    name = f"tanh-uniform01-d{depth}-w5-sgd-s1"
    fig = report[2][f"{name}.png"]
    run = load_run(logdir / name)
    layers = [f"hidden_{i}" for i in range(1, depth + 1)] + ["output"]
    assert fig.get_suptitle() == f"{name}: {verdict_of(logdir / name)}"
    assert [ax.get_title() for ax in fig.axes] == [title for title, _ in RUN_PANELS]
    for ax, (title, family) in zip(fig.axes, RUN_PANELS):
        assert ax.get_xlabel() == "epoch", title
        if family is None:  # the loss: train and validation
            series = [
                ("train", run.train.steps("epoch_loss"), run.train.scalar("epoch_loss")),
                (
                    "validation",
                    run.validation.steps("epoch_loss"),
                    run.validation.scalar("epoch_loss"),
                ),
            ]
        elif family == "grad_ratio":
            series = [(None, run.train.steps(family), run.train.scalar(family))]
        else:
            series = [
                (layer, run.train.steps(f"{family}/{layer}"), run.train.scalar(f"{family}/{layer}"))
                for layer in layers
            ]
        # One line per layer (or series), in model order, with the run's data.
        assert len(ax.get_lines()) == len(series), title
        for line, (label, steps, values) in zip(ax.get_lines(), series):
            if label is not None:
                assert line.get_label() == label, title
            x, y = _xy(line)
            np.testing.assert_array_equal(x, steps, err_msg=title)
            assert list(steps) == [0, 1]
            np.testing.assert_allclose(y, values, rtol=1e-12, err_msg=f"{title} {label}")
        legend = ax.get_legend()
        if family == "grad_ratio":
            assert legend is None
        else:
            assert [t.get_text() for t in legend.get_texts()] == [s[0] for s in series]
        log = family in ("grad_mean_abs", "grad_std", "grad_ratio")
        assert ax.get_yscale() == ("log" if log else "linear"), title


def test_sweep_figure_plots_final_figures_against_depth(logdir, report):
    fig = report[2]["sweep.png"]
    by_depth = {d: logdir / f"tanh-uniform01-d{d}-w5-sgd-s1" for d in (1, 2)}
    runs = {d: load_run(path) for d, path in by_depth.items()}
    panels = [
        (
            "final validation accuracy",
            [runs[d].validation.scalar("epoch_accuracy")[-1] for d in (1, 2)],
        ),
        (
            "grad_ratio, last epoch (first layer / output)",
            [runs[d].train.scalar("grad_ratio")[-1] for d in (1, 2)],
        ),
        (
            "verdict: median weakest layer / output",
            [verdict_of(by_depth[d]).weakest_ratio for d in (1, 2)],
        ),
    ]
    assert len(fig.axes) == 3
    for ax, (title, want) in zip(fig.axes, panels):
        assert ax.get_title() == title
        assert ax.get_xlabel() == "hidden layers (depth)"
        # One group (tanh/uniform01, one seed): one line, a point per depth.
        lines = ax.get_lines()
        assert lines[0].get_label() == "tanh/uniform01"
        x, y = _xy(lines[0])
        np.testing.assert_array_equal(x, [1, 2])
        np.testing.assert_allclose(y, want, rtol=1e-12, err_msg=title)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["tanh/uniform01"]
    assert [len(ax.get_lines()) for ax in fig.axes] == [1, 1, 2]
    # The third panel's second line: the vanishing threshold.
    np.testing.assert_array_equal(fig.axes[2].get_lines()[1].get_ydata(), [VANISHING_BELOW] * 2)


def test_summaries_skip_unfinished_runs(logdir):
    assert [s.name for s in summarize(logdir)] == [
        "tanh-uniform01-d1-w5-sgd-s1",
        "tanh-uniform01-d2-w5-sgd-s1",
    ]


def test_one_run_folder_is_a_report_of_one_run(logdir, capsys):
    assert main([str(logdir / "tanh-uniform01-d2-w5-sgd-s1")]) == 0
    lines = capsys.readouterr().out.splitlines()
    found = verdict_of(logdir / "tanh-uniform01-d2-w5-sgd-s1")
    explained = str(found.explanation).splitlines()
    assert len(lines) == 6 + len(explained)
    assert lines[2].startswith("tanh-uniform01-d2-w5-sgd-s1 ")
    name = f"  tanh-uniform01-d2-w5-sgd-s1 ({found.label})"
    assert lines[3:6] == ["", "why and what to try:", name]
    assert lines[6:] == [f"    {line}" for line in explained]


def test_explanations_follow_the_table(logdir, report):
    out, _, _ = report
    start = out.index("why and what to try:")
    assert out[start - 1] == ""
    for name in ("tanh-uniform01-d1-w5-sgd-s1", "tanh-uniform01-d2-w5-sgd-s1"):
        found = verdict_of(logdir / name)
        at = out.index(f"  {name} ({found.label})")
        explained = str(found.explanation).splitlines()
        assert explained[0].startswith("why: ")
        assert out[at + 1 : at + 1 + len(explained)] == [f"    {line}" for line in explained]


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
