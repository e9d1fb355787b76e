"""The verdict: rules on hand-made figures, then on real runs read back."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest

import tbgrad
from tbgrad import verdict
from tbgrad.cli.train import main as train_main
from tbgrad.eventlog import load_run
from tbgrad.verdict import EXPLODING_ABOVE, VANISHING_BELOW, judge


def layers(*hidden_over_output, output=0.05, epochs=3):
    """grad_mean_abs series whose hidden/output quotients are the given ones."""
    out = {f"hidden_{i + 1}": [q * output] * epochs for i, q in enumerate(hidden_over_output)}
    out["output"] = [output] * epochs
    return out


def test_thresholds_are_ordered():
    assert 0 < VANISHING_BELOW < 1 < EXPLODING_ABOVE


@pytest.mark.parametrize(
    "quotients, label",
    [
        ((1.0, 0.5, 0.3), "healthy"),
        ((1.0, VANISHING_BELOW * 0.99), "vanishing"),
        ((1.0, VANISHING_BELOW * 1.01), "healthy"),
        ((EXPLODING_ABOVE * 1.01, 1.0), "exploding"),
        ((EXPLODING_ABOVE * 0.99, 1.0), "healthy"),
        # Both at once: the vanished layer decides (it is the one not learning).
        ((EXPLODING_ABOVE * 2, VANISHING_BELOW / 2), "vanishing"),
    ],
)
def test_label_from_the_weakest_and_strongest_layer(quotients, label):
    result = judge(layers(*quotients))
    assert result.label == label
    assert result.weakest_ratio == pytest.approx(min(quotients))
    assert result.strongest_ratio == pytest.approx(max(quotients))


def test_median_over_epochs_ignores_a_single_outlier_epoch():
    g = {"hidden_1": [0.001, 0.001, 0.04, 0.001, 0.001], "output": [0.05] * 5}
    result = judge(g)
    assert result.label == "vanishing"
    assert result.weakest_ratio == pytest.approx(0.02)


def test_a_layer_with_no_gradient_at_all_counts_as_vanished():
    result = judge({"hidden_1": [0.0, 0.0], "output": [0.0, 0.0]})
    assert (result.label, result.weakest_ratio) == ("vanishing", 0.0)


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(nonfinite=3), "3 non-finite gradient entries"),
        (dict(losses=[0.7, math.nan]), "the loss is NaN or Inf"),
        (dict(losses=[0.7, math.inf]), "the loss is NaN or Inf"),
    ],
)
def test_non_finite_wins_over_healthy_figures(kwargs, reason):
    result = judge(layers(1.0, 0.5), **kwargs)
    assert (result.label, result.reason) == ("non-finite", reason)


def test_non_finite_gradient_magnitude():
    assert judge({"hidden_1": [math.inf], "output": [0.1]}).label == "non-finite"


@pytest.mark.parametrize("g", [{}, {"output": [0.1, 0.2]}, {"hidden_1": [], "output": []}])
def test_unknown_without_two_layers_or_epochs(g):
    assert judge(g).label == "unknown"


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match=r"Received: nonfinite=-1"):
        judge(layers(1.0), nonfinite=-1)
    with pytest.raises(ValueError, match=r"Received lengths \{'hidden_1': 2, 'output': 3\}"):
        judge({"hidden_1": [1, 2], "output": [1, 2, 3]})


@pytest.mark.parametrize("preset, label", [("A2", "vanishing"), ("A3", "healthy")])
def test_reference_runs_read_back(tmp_path, capsys, preset, label):
    # Three epochs of the real presets through train.py's main: A2's middle
    # layers receive under a tenth of the output layer's mean |g| from the
    # first epoch on.
    args = ["--preset", preset, "--epochs", "3", "--logdir", str(tmp_path), "--quiet"]
    assert train_main(args) == 0
    (run_dir,) = tmp_path.iterdir()
    stored = json.loads((run_dir / "tbgrad_run.json").read_text())["verdict"]
    assert stored["label"] == label
    out = capsys.readouterr().out
    assert f"verdict: {label} (median weakest/output {stored['weakest_ratio']:.3g}," in out
    run = load_run(run_dir)
    g = np.stack([run.train.scalar(f"grad_mean_abs/{n}") for n in _layers(5)], axis=1)
    expected = np.median((g[:, :-1] / g[:, -1:]).min(axis=1))
    assert stored["weakest_ratio"] == pytest.approx(expected, rel=1e-6)


def test_nan_inputs_make_a_non_finite_run(tmp_path, circles):
    keras.utils.set_random_seed(1)
    model = tbgrad.lab.build_mlp(depth=2, width=4, activation="tanh", init="glorot_uniform")
    model.compile("sgd", "binary_crossentropy")
    x = circles.x_train[:64].copy()
    x[5, 0] = np.nan  # one poisoned sample: NaN loss and NaN gradients
    model.fit(
        x,
        circles.y_train[:64],
        epochs=2,
        batch_size=32,
        verbose=0,
        callbacks=[tbgrad.GradientTensorBoard(tmp_path)],
    )
    result = verdict.verdict_of(tmp_path)
    assert result.label == "non-finite"
    assert result.reason.endswith("non-finite gradient entries")
    assert int(result.reason.split()[0]) > 0


def _layers(depth):
    return [f"hidden_{i}" for i in range(1, depth + 1)] + ["output"]
