"""scripts/train.py end to end, in subprocesses, and its bad-input handling."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tbgrad import tags
from tbgrad.cli.train import main
from tbgrad.eventlog import load_run

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train.py"


def subprocess_env() -> dict[str, str]:
    """The environment of every subprocess: the working tree's tbgrad first.

    Without PYTHONPATH a non-editable install would run the installed copy,
    not the code under test.
    """
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))


def run_train(*args, cwd=None):
    env = subprocess_env()
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_subprocesses_import_the_working_tree(tmp_path):
    # From another folder, so that the current directory does not decide.
    code = (
        "import importlib.util, json, sys; "
        "print(json.dumps([importlib.util.find_spec('tbgrad').origin, sys.path]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=subprocess_env(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    origin, path = json.loads(proc.stdout)
    assert Path(origin) == ROOT / "tbgrad" / "__init__.py"
    # The working tree comes before every installed package (an editable
    # install alone would put it after site-packages, or not on sys.path).
    site = [i for i, p in enumerate(path) if "site-packages" in p]
    assert str(ROOT) in path
    assert path.index(str(ROOT)) < min(site, default=len(path)), path


@pytest.mark.slow
def test_preset_run_end_to_end(tmp_path):
    logdir = tmp_path / "logs"
    proc = run_train("--preset", "A2", "--epochs", "2", "--logdir", str(logdir), "--quiet")
    assert proc.returncode == 0, proc.stderr
    run_dir = logdir / "A2-tanh-uniform01-d5-w5-sgd-s1"
    assert f"run folder: {run_dir}" in proc.stdout
    assert "final accuracy: train " in proc.stdout
    assert f"tensorboard --logdir {logdir}" in proc.stdout
    run = load_run(run_dir)
    layers = [f"hidden_{i}" for i in range(1, 6)] + ["output"]
    for tag, plugin in tags.layer_tags(layers).items():
        assert run.train.plugins[tag] == plugin
        assert run.train.steps(tag) == [0, 1]
    result = json.loads((run_dir / "tbgrad_run.json").read_text())
    assert result["config"]["preset"] == "A2"
    assert result["config"]["momentum_value"] == 0.9
    assert 0.0 <= result["test_accuracy"] <= 1.0


@pytest.mark.slow
def test_tape_loop_and_flags_override_preset(tmp_path):
    proc = run_train(
        "--preset",
        "B-tanh",
        "--loop",
        "tape",
        "--depth",
        "2",
        "--epochs",
        "1",
        "--logdir",
        str(tmp_path),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "B-tanh-tanh-normal-d2-w5-rmsprop-s42-tape"
    assert run_dir.is_dir(), list(tmp_path.iterdir())
    run = load_run(run_dir)
    assert sorted(t for t in run.train.plugins if t.startswith("gradients/")) == [
        "gradients/hidden_1",
        "gradients/hidden_2",
        "gradients/output",
    ]


@pytest.mark.slow
def test_a_second_run_never_reuses_the_folder(tmp_path):
    args = (
        "--depth",
        "1",
        "--epochs",
        "1",
        "--logdir",
        str(tmp_path),
        "--quiet",
        "--run-name",
        "same",
    )
    first = run_train(*args)
    assert first.returncode == 0, first.stderr
    events = sorted((tmp_path / "same" / "train").iterdir())
    before = _contents(tmp_path / "same")
    assert "tbgrad_run.json" in before and any(k.startswith("train/") for k in before)
    second = run_train(*args)
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same", "same-2"]
    assert sorted((tmp_path / "same" / "train").iterdir()) == events
    assert f"run folder: {tmp_path / 'same-2'}" in second.stdout
    # The old run is untouched, byte for byte; the new one is a whole run.
    assert _contents(tmp_path / "same") == before
    assert f"run folder: {tmp_path / 'same'}\n" in first.stdout
    new = load_run(tmp_path / "same-2")
    assert new.train.steps("grad_mean_abs/output") == [0]
    assert (tmp_path / "same-2" / "tbgrad_run.json").is_file()


def _contents(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    "args, message",
    [
        (["--act", "swishy"], "Unknown activation 'swishy'; valid choices: sigmoid, tanh, relu"),
        (["--init", "uniform02"], "Unknown initializer 'uniform02'; valid choices: uniform01"),
        (["--optimizer", "lion"], "invalid choice: 'lion' (choose from 'sgd', 'rmsprop', 'adam')"),
        (["--preset", "A9"], "invalid choice: 'A9'"),
        (["--dataset", "moons"], "invalid choice: 'moons'"),
        (["--depth", "0"], "argument --depth: '0' must be a positive integer"),
        (["--width", "-3"], "argument --width: '-3' must be a positive integer"),
        (["--epochs", "0"], "argument --epochs: '0' must be a positive integer"),
        (["--batch-size", "x"], "argument --batch-size: 'x' is not an integer"),
        (["--lr", "0"], "argument --lr: '0' must be a positive finite number"),
        (["--lr", "nan"], "argument --lr: 'nan' must be a positive finite number"),
        (["--histogram-freq", "-1"], "argument --histogram-freq: '-1' must be >= 0"),
        (["--update-freq", "-2"], "argument --update-freq: '-2' must be 'epoch' or a positive"),
        (["--momentum", "1.5"], "argument --momentum: '1.5' must be in [0, 1)"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, message):
    logdir = tmp_path / "logs"
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main([*args, "--logdir", str(logdir)]))
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("train.py: error: ")
    assert message in lines[0]
    assert not logdir.exists()


@pytest.mark.parametrize(
    "args", [["--depth", "0"], ["--act", "swishy"]], ids=["argparse", "config"]
)
def test_bad_input_in_a_real_process_shows_no_tensorflow_noise(tmp_path, args):
    proc = run_train(*args, "--logdir", str(tmp_path / "logs"))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "logs").exists()


def test_logdir_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("not a folder")
    assert main(["--logdir", str(target / "sub")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"train.py: error: logdir '{target / 'sub'}' cannot be created: "
        f"'{target}' is not a directory"
    )
    assert target.read_text() == "not a folder"


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_first_nonfinite_is_printed_and_kept_in_the_run(tmp_path, loop):
    # A learning rate of 1e30 takes the weights past float32 within two
    # steps (which step and layer: tests/library/test_diagnostic_signals.py).
    proc = run_train(
        "--depth",
        "2",
        "--epochs",
        "2",
        "--lr",
        "1e30",
        "--loop",
        loop,
        "--logdir",
        str(tmp_path),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (printed,) = [line for line in proc.stdout.splitlines() if line.startswith("first NaN")]
    where = printed[len("first NaN or Inf: ") :]
    assert re.fullmatch(
        r"(hidden_\d|output) (weights|gradient) turned NaN or Inf at step (\d) "
        r"\(epoch 0, step \3 of the epoch\)",
        where,
    ), where
    result = json.loads((run_dir / "tbgrad_run.json").read_text())
    assert result["first_nonfinite"] == {"epoch": 0, "where": where}
    assert result["verdict"]["label"] == "non-finite"
    assert load_run(run_dir).train.first_nonfinite == (0, where)
