"""Sweeps: parallel spawned workers, resume, unfinished folders, failures, the CLI."""

from __future__ import annotations

import json

import pytest

from tbgrad.cli.sweep import configs_from_grid, main
from tbgrad.eventlog import load_run
from tbgrad.lab.config import RunConfig, make_config
from tbgrad.lab.sweep import SweepOutcome, run_sweep


def tiny(**kw) -> RunConfig:
    return make_config(**{"depth": 1, "epochs": 2, "histogram_freq": 0, **kw})


@pytest.fixture(scope="module")
def first_sweep(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweep")
    configs = [
        tiny(act="tanh"),
        tiny(act="relu", depth=2),
        # Never validated by the caller: it fails inside its worker.
        RunConfig(act="no_such_activation", depth=1, epochs=2),
    ]
    outcomes = run_sweep(configs, sweep_dir, workers=2, progress=False)
    return sweep_dir, configs, outcomes


@pytest.mark.slow
def test_each_run_in_its_own_folder_and_one_failure_does_not_stop_the_others(first_sweep):
    sweep_dir, configs, outcomes = first_sweep
    assert [o.status for o in outcomes] == ["done", "done", "failed"]
    assert all(isinstance(o, SweepOutcome) for o in outcomes)
    for config, outcome in zip(configs, outcomes):
        assert outcome.config == config
        assert outcome.run_dir == sweep_dir / config.run_name()
    for outcome in outcomes[:2]:
        stored = json.loads((outcome.run_dir / "tbgrad_run.json").read_text())
        assert outcome.result == stored
        assert outcome.result["config"]["act"] == outcome.config.act
        assert outcome.error is None
        # Really trained: two epochs of events per run.
        assert load_run(outcome.run_dir).train.steps("epoch_loss") == [0, 1]
    failed = outcomes[2]
    assert failed.result is None
    assert failed.error.startswith("ValueError: Unknown activation 'no_such_activation'")
    # The failed run left an unfinished folder, without tbgrad_run.json.
    assert not (failed.run_dir / "tbgrad_run.json").exists()


@pytest.mark.slow
def test_rerun_skips_finished_runs_and_moves_unfinished_ones_aside(first_sweep):
    sweep_dir, configs, _ = first_sweep
    finished = {
        c.run_name(): (sweep_dir / c.run_name() / "train").stat().st_mtime_ns for c in configs[:2]
    }
    # An interrupted run: events written, no tbgrad_run.json.
    half = tiny(act="sigmoid")
    (sweep_dir / half.run_name() / "train").mkdir(parents=True)
    (sweep_dir / half.run_name() / "train" / "events.out.tfevents.0.stale").write_bytes(b"x")
    outcomes = run_sweep([*configs[:2], half], sweep_dir, workers=1, progress=False)
    assert [o.status for o in outcomes] == ["skipped", "skipped", "done"]
    for config in configs[:2]:
        train = sweep_dir / config.run_name() / "train"
        assert train.stat().st_mtime_ns == finished[config.run_name()]
    aside = sweep_dir / f"{half.run_name()}.incomplete-1"
    assert outcomes[2].moved_aside == aside
    assert (aside / "train" / "events.out.tfevents.0.stale").read_bytes() == b"x"
    fresh = outcomes[2].run_dir
    assert not any(p.name.endswith(".stale") for p in (fresh / "train").iterdir())
    assert outcomes[2].result["config"]["act"] == "sigmoid"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(configs=[tiny(), tiny()]), "duplicate names \\['relu-he_uniform-d1-w5-sgd-s1'\\]"),
        (dict(configs=[tiny()], workers=0), "Received: workers=0"),
        (dict(configs=[tiny()], run_names=["a", "b"]), "2 names for 1 configs"),
    ],
)
def test_bad_arguments_raise_before_anything_is_written(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_sweep(sweep_dir=tmp_path / "sweep", progress=False, **kwargs)
    assert not (tmp_path / "sweep").exists()


def test_grid_expands_ranges_and_names_fields_the_run_name_lacks():
    configs, names = configs_from_grid(
        {"act": ["tanh", "relu"], "depth": [1, 2, 3], "batch_size": [16, 32], "epochs": [3]}
    )
    assert len(configs) == 12
    assert names[:2] == ["tanh-he_uniform-d1-w5-sgd-s1-bs16", "tanh-he_uniform-d1-w5-sgd-s1-bs32"]
    assert {c.epochs for c in configs} == {3}


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    args = ["--act", "tanh", "--depth", "1-2", "--epochs", "1", "--histogram-freq", "0"]
    assert main([*args, "--sweep-dir", str(sweep_dir), "--workers", "2"]) == 0
    out, err = capsys.readouterr()
    names = sorted(p.name for p in sweep_dir.iterdir())
    assert names == ["tanh-he_uniform-d1-w5-sgd-s1", "tanh-he_uniform-d2-w5-sgd-s1"]
    bar_lines = [line for line in err.splitlines() if line.startswith("[")]
    assert [line.split()[1] for line in bar_lines] == ["1/2", "2/2"]
    assert bar_lines[0].startswith("[" + "#" * 10 + "." * 10 + "]")
    assert bar_lines[-1].startswith("[" + "#" * 20 + "]")
    assert "sweep: 2 runs, 0 failed" in err
    assert f"report: python scripts/report.py {sweep_dir}" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--depth", "0"], "argument --depth: '0' must be a positive integer"),
        (["--depth", "5-1"], "argument --depth: '5-1' is an empty range"),
        (["--act", "tanh", "swishy"], "Unknown activation 'swishy'; valid choices: sigmoid"),
        (["--optimizer", "lion"], "argument --optimizer: invalid choice: 'lion'"),
        (["--seed", "1", "1"], "the grid repeats a run: 'relu-he_uniform-d5-w5-sgd-s1'"),
        (["--workers", "0"], "argument --workers: '0' must be a positive integer"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, message):
    sweep_dir = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main([*args, "--sweep-dir", str(sweep_dir)]))
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sweep.py: error: ")
    assert message in lines[0]
    assert not sweep_dir.exists()
