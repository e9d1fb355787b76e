"""scripts/reproduce.py --quick: the qualitative findings, on real runs."""

from __future__ import annotations

from pathlib import Path

import keras
import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

import tbgrad
from tbgrad.cli.reproduce import main
from tbgrad.eventlog import load_run
from tbgrad.lab import reproduce
from tbgrad.lab.glorot_check import CHECK_DEPTH, CHECK_WIDTH, backprop_stds, flatness
from tbgrad.verdict import SATURATED_ABOVE, layer_span, verdict_of


@pytest.fixture
def saved_figures(monkeypatch):
    """{PNG file name: the matplotlib Figure saved there}.

    ``Figure.savefig`` is wrapped to note the figure, then writes the file as
    usual: the plotted data can be checked as well as the image.
    """
    figures = {}
    savefig = Figure.savefig

    def noting_savefig(fig, path, *args, **kwargs):
        figures[Path(path).name] = fig
        return savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", noting_savefig)
    return figures


@pytest.mark.slow
def test_quick_reproduction_shows_the_findings(tmp_path, capsys, circles, saved_figures):
    out = tmp_path / "repro"
    assert main(["--quick", "--out", str(out), "--workers", "2"]) == 0
    stdout = capsys.readouterr().out
    assert "NOT reproduced" not in stdout
    # A2 against A3: the Glorot check, the gradient ratio, the explanations'
    # saturation, and A3 (relu, He init, seed 1) without dead-unit alarms.
    assert stdout.count("reproduced: ") == 4
    assert "## Why: the verdicts explained" in (out / "results.md").read_text()
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
    check_figures(out, runs, saved_figures, circles)


def _xy(line):
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)


def check_figures(out, runs, figures, circles):
    """The quick reproduction's figures hold the runs' and the check's data."""
    names = {key: n for n in runs for key in ("A2", "A3") if n.startswith(PREFIX[key])}
    expected = ["glorot_bengio.png", "weight_l1.png", *(f"{k}__{n}.png" for k, n in names.items())]
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(expected)
    assert sorted(figures) == sorted(expected)
    for name in ("glorot_bengio.png", "weight_l1.png"):
        assert matplotlib.image.imread(out / "figures" / name).shape[:2] == (400, 1200)
    layers = [f"hidden_{i}" for i in range(1, 6)] + ["output"]
    epochs = list(range(reproduce.QUICK_EPOCHS))

    # weight_l1.png: A2 and A3 side by side, one line per layer with the run's series.
    fig = figures["weight_l1.png"]
    titles = [
        "A2: 5 x tanh, uniform01, SGD: weight L1 norm per layer",
        "A3: 5 x relu, He uniform, SGD: weight L1 norm per layer",
    ]
    assert [ax.get_title() for ax in fig.axes] == titles
    for ax, key in zip(fig.axes, ("A2", "A3")):
        train = runs[names[key]].train
        assert [line.get_label() for line in ax.get_lines()] == layers
        for line, layer in zip(ax.get_lines(), layers):
            x, y = _xy(line)
            np.testing.assert_array_equal(x, epochs)
            np.testing.assert_allclose(y, train.scalar(f"weight_l1/{layer}"), rtol=1e-12)

    # The per-run panels: the run's own mean |g| per layer and its verdict.
    for key, name in names.items():
        fig = figures[f"{key}__{name}.png"]
        run_dir = out / "runs" / name
        assert fig.get_suptitle() == f"{name}: {verdict_of(run_dir)}"
        ax = fig.axes[0]
        assert ax.get_title() == "gradient mean |g| per layer"
        assert [line.get_label() for line in ax.get_lines()] == layers
        for line, layer in zip(ax.get_lines(), layers):
            want = runs[name].train.scalar(f"grad_mean_abs/{layer}")
            np.testing.assert_allclose(_xy(line)[1], want, rtol=1e-12)

    # glorot_bengio.png: per init, the std of dL/dh per hidden layer. At
    # initialization it is recomputed here from the same seed (--quick: seed 1).
    fig = figures["glorot_bengio.png"]
    assert [ax.get_title() for ax in fig.axes] == [
        "back-propagated gradient, deep tanh MLP, at initialization",
        "back-propagated gradient, deep tanh MLP, after training",
    ]
    labels = ["standard U[-1/√n, 1/√n]", "Glorot (normalized)"]
    at_init = {}
    for init in ("standard", "glorot_uniform"):
        keras.utils.set_random_seed(1)
        model = tbgrad.lab.build_mlp(
            depth=CHECK_DEPTH, width=CHECK_WIDTH, activation="tanh", init=init, output_init=init
        )
        profile = backprop_stds(model, circles.x_train, circles.y_train)
        at_init[init] = profile["activation_grad_std"][:-1]
    for ax, when in zip(fig.axes, ("at_init", "after")):
        assert [c.get_label() for c in ax.containers] == labels
        assert ax.get_yscale() == "log"
        profiles = []
        for container in ax.containers:
            x, y = _xy(container.lines[0])
            np.testing.assert_array_equal(x, np.arange(1, CHECK_DEPTH + 1))
            assert np.all(np.isfinite(y)) and np.all(y > 0)
            profiles.append(y)
        if when == "at_init":
            np.testing.assert_allclose(profiles[0], at_init["standard"], rtol=1e-4)
            np.testing.assert_allclose(profiles[1], at_init["glorot_uniform"], rtol=1e-4)
            # What the figure shows: Glorot's profile is the flatter one.
            assert flatness(profiles[1]) < flatness(profiles[0])
        else:
            # Training moved the profiles away from those at initialization.
            assert not np.allclose(profiles[0], at_init["standard"], rtol=1e-4)


PREFIX = {"A2": "tanh-uniform01-d5", "A3": "relu-he_uniform-d5"}


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


# -- the explanations of A2, A3, B-sigmoid and B-relu, on tiny runs ----------------

EXPLAINED = {"A2": "A2", "A3": "A3", "B-sigmoid-fit": "B-sigmoid", "B-relu-fit": "B-relu"}


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """The four presets for three epochs, trained, collected as reproduce does."""
    from tbgrad.lab import experiment
    from tbgrad.lab.config import make_config

    out = tmp_path_factory.mktemp("explained")
    groups = []
    for key, preset in EXPLAINED.items():
        config = make_config(preset, epochs=3, histogram_freq=0)
        result = experiment.run(config, out / "runs", run_name=config.run_name(), verbose=0)
        experiment.write_result(result)
        groups.append(reproduce.Group(key, key, [config]))
    return out, reproduce.collect(groups, out)


@pytest.mark.slow
def test_explanation_rows_hold_the_runs_signals(explained):
    out, groups = explained
    lines = reproduce._explained({g.key: g for g in groups})
    assert lines[0] == "## Why: the verdicts explained"
    rows = [line for line in lines if line.startswith("| ") and "seed" in line]
    assert len(rows) == 4
    for group, row in zip(groups, rows):
        (run,) = group.runs
        data = load_run(out / "runs" / group.configs[0].run_name())
        found = verdict_of(out / "runs" / group.configs[0].run_name())
        hidden = data.train.kernels[:-1]
        deep = hidden[len(hidden) // 2 :]
        assert deep == (
            ["hidden_3", "hidden_4", "hidden_5"]
            if group.key[0] == "A"
            else ["hidden_3", "hidden_4"]
        )

        ratio = np.mean([np.median(data.train.scalar(f"update_ratio/{n}")) for n in deep])
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert cells[:4] == [
            f"{group.key} seed {group.configs[0].seed}",
            found.label,
            found.explanation.rule,
            layer_span(found.explanation.layers) or "-",
        ]
        saturating = group.key in ("A2", "B-sigmoid-fit")
        assert cells[4] == (deep_share(data, deep, "activation_saturated") if saturating else "-")
        assert cells[5] == ("-" if saturating else deep_share(data, deep, "activation_dead"))
        assert cells[6] == f"{ratio:.1e}"
        assert cells[7] == (found.explanation.suggestion or "-")


def deep_share(data, deep, family):
    """Numpy on the scalars: each deep layer's median, their mean, as a percentage."""
    medians = [np.median(data.train.scalar(f"{family}/{n}")) for n in deep]
    return f"{np.mean(medians):.0%}"


@pytest.mark.slow
def test_explanation_checks_follow_the_runs(explained):
    _, groups = explained
    by_key = {g.key: g for g in groups}
    checks = {name: (passed, text) for name, passed, text in reproduce.explanation_checks(by_key)}
    assert len(checks) == 4
    a2, a3 = by_key["A2"].runs, by_key["A3"].runs
    name = next(n for n in checks if n.startswith("A2's deep layers saturated"))
    vanishing = [r for r in a2 if r["verdict"] == "vanishing"]
    named = [r for r in vanishing if any("saturated" in n for n in r["explanation"]["notes"])]
    calm = [r for r in a3 if not any("saturated" in n for n in r["explanation"]["notes"])]
    expected = bool(vanishing) and len(named) == len(vanishing) and len(calm) == len(a3)
    assert checks[name][0] == expected
    assert (
        f"saturation named in {len(named)} of A2's {len(vanishing)} vanishing runs"
        in checks[name][1]
    )
    sigmoid = by_key["B-sigmoid-fit"].runs
    expected = all(r["deep"]["saturated"] > SATURATED_ABOVE for r in sigmoid)
    assert checks["B-sigmoid's deep layers saturated"][0] == expected
    for key, name in (("A3", "relu with He init (A3)"), ("B-relu-fit", "B-relu")):
        runs = by_key[key].runs
        alarm = any(any("units dead" in n for n in r["explanation"]["notes"]) for r in runs)
        assert checks[f"{name} without dead-unit alarms"][0] == (not alarm)


def test_checks_fail_when_the_story_is_not_told():
    """Hand-made rows: A2 vanishing without a saturation note, a dead A3 layer."""

    def row(verdict, notes, saturated=None, dead=None):
        deep = {"layers": [], "saturated": saturated, "dead": dead, "update_ratio": 1e-3}
        return {"verdict": verdict, "explanation": {"notes": notes}, "deep": deep}

    groups = {
        "A2": reproduce.Group("A2", "A2", [], runs=[row("vanishing", [], saturated=0.2)]),
        "A3": reproduce.Group(
            "A3", "A3", [], runs=[row("healthy", ["hidden_2: up to 60% of units dead"])]
        ),
        "B-sigmoid-fit": reproduce.Group(
            "B-sigmoid-fit", "", [], runs=[row("vanishing", [], saturated=0.5)]
        ),
        "B-relu-fit": reproduce.Group(
            "B-relu-fit", "", [], runs=[row("healthy", ["hidden_3: up to 80% of units dead"])]
        ),
    }
    assert [passed for _, passed, _ in reproduce.explanation_checks(groups)] == [
        False,  # A2 vanishing without saturation named
        True,  # B-sigmoid's deep layers 50% saturated
        False,  # a dead A3 layer
        False,  # a dead B-relu layer
    ]
