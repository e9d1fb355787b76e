"""scripts/reproduce.py --quick: the qualitative findings, on real runs."""

from __future__ import annotations

import numpy as np
import pytest

import tbgrad
from tbgrad.cli.reproduce import main
from tbgrad.eventlog import load_run
from tbgrad.lab import reproduce
from tbgrad.lab.glorot_check import backprop_stds, flatness


def test_quick_reproduction_shows_the_findings(tmp_path, capsys):
    out = tmp_path / "repro"
    assert main(["--quick", "--out", str(out), "--workers", "2"]) == 0
    stdout = capsys.readouterr().out
    assert "NOT reproduced" not in stdout
    assert stdout.count("reproduced: ") == 2
    text = (out / "results.md").read_text()
    assert "## Study A" in text and "## Glorot & Bengio" in text
    for name in ("glorot_bengio.png", "weight_l1.png"):
        assert (out / "figures" / name).stat().st_size > 10_000
    # The runs themselves, read back: A2's weakest layer sits far below A3's.
    runs = {p.name: load_run(p) for p in (out / "runs").iterdir() if p.is_dir()}
    assert len(runs) == 2
    a2 = next(r for name, r in runs.items() if name.startswith("tanh-uniform01-d5"))
    a3 = next(r for name, r in runs.items() if name.startswith("relu-he_uniform-d5"))
    for run in (a2, a3):
        assert run.train.steps("grad_mean_abs/hidden_3") == list(range(reproduce.QUICK_EPOCHS))
    a2_h5 = np.median(
        a2.train.scalar("grad_mean_abs/hidden_5") / a2.train.scalar("grad_mean_abs/output")
    )
    a3_h5 = np.median(
        a3.train.scalar("grad_mean_abs/hidden_5") / a3.train.scalar("grad_mean_abs/output")
    )
    assert a2_h5 < a3_h5


def test_glorot_profile_is_flatter_than_standard(circles):
    flat = {}
    for init in ("standard", "glorot_uniform"):
        model = tbgrad.lab.build_mlp(
            depth=8, width=64, activation="tanh", init=init, output_init=init, seed=7
        )
        profile = backprop_stds(model, circles.x_train, circles.y_train)
        assert np.isnan(profile["activation_grad_std"][-1])  # the output's dL/dh: undefined
        flat[init] = flatness(profile["activation_grad_std"])
    assert flat["glorot_uniform"] < 2 < 10 < flat["standard"]


def test_standard_init_is_glorot_bengios_heuristic():
    model = tbgrad.lab.build_mlp(depth=1, width=400, init="standard", input_dim=300, seed=3)
    kernel = model.get_layer("hidden_1").kernel.numpy()
    limit = 1 / np.sqrt(300)
    assert kernel.min() >= -limit and kernel.max() <= limit
    assert kernel.std() == pytest.approx(limit / np.sqrt(3), rel=0.02)


def test_plan_covers_every_configuration():
    groups = reproduce.plan()
    keys = {g.key for g in groups}
    for key in (
        "A1",
        "A2",
        "A3",
        "A4",
        "A5",
        "B-warmup-relu",
        "B-warmup-sigmoid",
        "B-warmup-sigmoid3",
        "A2-xavier",
        "A2-adam",
    ):
        assert key in keys
    for act in ("sigmoid", "tanh", "relu"):
        assert {f"B-{act}-fit", f"B-{act}-tape"} <= keys
    assert {f"tanh-d{d}-w{w}" for d in range(1, 11) for w in (5, 25)} <= keys
    assert all(len(g.configs) == 5 for g in groups)
    # A1/A2 are points of the depth grid: trained once.
    names = [c.run_name() for c in reproduce.unique_configs(groups)]
    assert len(names) == len(set(names))
    assert len(names) == 5 * (len(groups) - 2)


def test_bad_flags(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--seeds", "0"])
    assert exit_info.value.code == 2
    assert "argument --seeds: '0' must be a positive integer" in capsys.readouterr().err
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["--out", str(target)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
