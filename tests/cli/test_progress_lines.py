"""train.py's progress lines show each epoch's own values, for both loops.

Keras's Progbar averages every value over the updates so far unless it is
named in ``stateful_metrics``: before the fix, the line of epoch k showed the
mean of epochs 1..k (only the last line was right). train.py's ``main`` runs
here in-process; its stdout is read back and each line compared with the
epoch values the run logged, read with :func:`tbgrad.eventlog.load_run`.
"""

from __future__ import annotations

import functools
import re

import keras
import pytest

from tbgrad.cli.train import main as train_main
from tbgrad.eventlog import load_run

EPOCHS = 3
# "2/3 ━━━━ 0s 12ms/epoch - accuracy: 0.4860 - loss: 1.6112 - val_accuracy: ..."
LINE = re.compile(r"^\s*(\d+)/(\d+)\b(.*)$")
VALUE = re.compile(r" - (\w+): (-?[0-9.]+(?:e[-+]?\d+)?)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Progbar prints 4 decimals (or 4 significant digits in e-notation).
PRINTED_ROUNDING = 5e-5


def progress_lines(stdout: str) -> dict[int, dict[str, float]]:
    """``{epoch (1-based): {name: printed value}}`` of every progress update.

    The bar rewrites its line with backspaces and carriage returns: each
    piece between those is one update; the newest update of an epoch wins.
    """
    lines: dict[int, dict[str, float]] = {}
    for piece in re.split(r"[\r\n\b]+", ANSI.sub("", stdout)):
        match = LINE.match(piece)
        if match and int(match.group(2)) == EPOCHS:
            values = {k: float(v) for k, v in VALUE.findall(match.group(3))}
            if values:
                lines[int(match.group(1))] = values
    return lines


def logged_values(run_dir, epoch: int) -> dict[str, float]:
    """The values the run logged for ``epoch`` (0-based), under Keras's log names."""
    run = load_run(run_dir)
    out = {}
    for split, prefix in ((run.train, ""), (run.validation, "val_")):
        for metric in ("accuracy", "loss"):
            series = dict(split.scalars[f"epoch_{metric}"])
            out[prefix + metric] = series[epoch]
    return out


@pytest.fixture
def every_update_printed(monkeypatch):
    # Progbar prints at most every 0.05 s by default, so a fast epoch can go
    # without a line (the fit loop's bar sets interval=0, the tape loop's
    # keeps the default): print every update, to compare every epoch.
    init = functools.partialmethod(keras.utils.Progbar.__init__, interval=0)
    monkeypatch.setattr(keras.utils.Progbar, "__init__", init)


@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_each_progress_line_shows_its_epochs_logged_values(
    tmp_path, capsys, every_update_printed, loop
):
    args = ["--preset", "A2", "--depth", "2", "--epochs", str(EPOCHS), "--loop", loop]
    assert train_main([*args, "--logdir", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    lines = progress_lines(stdout)
    assert sorted(lines) == list(range(1, EPOCHS + 1)), stdout
    for epoch, printed in lines.items():
        logged = logged_values(run_dir, epoch - 1)
        assert set(printed) == set(logged), (epoch, printed)
        for name, value in printed.items():
            assert value == pytest.approx(logged[name], abs=PRINTED_ROUNDING), (epoch, name)
    # The averaging this guards against would show on a later epoch's line:
    # the values do change from epoch to epoch.
    first, last = logged_values(run_dir, 0), logged_values(run_dir, EPOCHS - 1)
    assert first["loss"] != pytest.approx(last["loss"], abs=1e-3)
