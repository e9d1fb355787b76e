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


@pytest.mark.slow
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
        callbacks=[tbgrad.TensorBoard(tmp_path)],
    )
    result = verdict.verdict_of(tmp_path)
    assert result.label == "non-finite"
    assert result.reason.endswith("non-finite gradient entries")
    assert int(result.reason.split()[0]) > 0


def _layers(depth):
    return [f"hidden_{i}" for i in range(1, depth + 1)] + ["output"]


# -- the thresholds, pinned to the documented figures (README, "Comparing runs") ----


def per_epoch(weakest, strongest, output=0.05):
    """Three hidden layers and an output whose per-epoch quotients are given.

    hidden_1 carries the epoch's strongest quotient, hidden_2 its weakest,
    hidden_3 one in between.
    """
    weakest, strongest = np.asarray(weakest, float), np.asarray(strongest, float)
    middle = np.sqrt(weakest * strongest)
    return {
        "hidden_1": list(strongest * output),
        "hidden_2": list(weakest * output),
        "hidden_3": list(middle * output),
        "output": [output] * len(weakest),
    }


def test_documented_threshold_values():
    assert VANISHING_BELOW == 0.1
    assert EXPLODING_ABOVE == 100.0


@pytest.mark.parametrize(
    "quotients, label",
    [
        # Absolute values, not relative to the constants: a moved threshold flips them.
        ((1.0, 0.099), "vanishing"),
        ((1.0, 0.101), "healthy"),
        ((1.0, 0.1), "healthy"),  # "below": 0.1 itself is not vanishing
        ((0.06, 1.0), "vanishing"),  # between 0.05 and 0.1
        ((99.0, 1.0), "healthy"),
        ((101.0, 1.0), "exploding"),
        ((100.0, 1.0), "healthy"),  # "above": 100 itself is not exploding
        ((20.0, 1.0), "healthy"),  # between 10 and 100
    ],
)
def test_thresholds_flip_at_0_1_and_100(quotients, label):
    # output 1.0: the quotients are the values themselves, exactly.
    result = judge(layers(*quotients, output=1.0))
    assert result.label == label, result
    assert result.weakest_ratio == min(quotients)
    assert result.strongest_ratio == max(quotients)


def test_a2_like_run_reads_vanishing():
    # A2 (500 epochs, seed 1): the weakest ratio never rises above 0.070.
    weakest = [0.029, 0.045, 0.060, 0.066, 0.070]
    result = judge(per_epoch(weakest, [1.14] * 5))
    assert result.label == "vanishing", result
    assert result.weakest_ratio == pytest.approx(0.060)
    # Even at its highest, every epoch: still vanishing.
    assert judge(per_epoch([0.070] * 5, [1.14] * 5)).label == "vanishing"


def test_a3_like_run_reads_healthy():
    # A3: the weakest ratio never falls below 0.165 (median 0.39); the
    # strongest peaks at 5.2 (median 3.4).
    result = judge(per_epoch([0.165, 0.3, 0.39, 0.5, 0.6], [2.0, 3.0, 3.4, 4.0, 5.2]))
    assert result.label == "healthy", result
    assert result.weakest_ratio == pytest.approx(0.39)
    assert result.strongest_ratio == pytest.approx(3.4)


def test_b_tanh_like_run_reads_healthy():
    # B-tanh learns well with strongest ratios of 13 to 50 (median 13.4): a
    # threshold of 10 would call it exploding.
    strongest = [13.0, 13.2, 13.4, 13.4, 15.0, 20.0, 50.0]
    result = judge(per_epoch([0.5] * 7, strongest))
    assert result.label == "healthy", result
    assert result.strongest_ratio == pytest.approx(13.4)


def test_one_exploding_epoch_among_healthy_ones_stays_healthy():
    # The median, not the max, of the strongest ratios decides.
    result = judge(per_epoch([0.5] * 5, [3.4, 3.0, 150.0, 3.6, 5.2]))
    assert result.label == "healthy", result
    assert result.strongest_ratio == pytest.approx(3.6)
    # The majority of epochs above 100 does make it exploding.
    assert judge(per_epoch([0.5] * 5, [3.4, 150.0, 150.0, 120.0, 5.2])).label == "exploding"


def test_one_vanished_epoch_among_healthy_ones_stays_healthy():
    result = judge(per_epoch([0.39, 0.01, 0.4, 0.5, 0.3], [2.0] * 5))
    assert result.label == "healthy", result
    assert result.weakest_ratio == pytest.approx(0.39)


@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_a_nan_validation_loss_alone_makes_a_non_finite_run(tmp_path, circles, loop):
    # Training data and gradients are finite; one validation sample is NaN,
    # so only the validation epoch_loss is.
    x, y = circles.x_train[:64], circles.y_train[:64]
    xv = circles.x_test[:32].copy()
    xv[3, 1] = np.nan
    keras.utils.set_random_seed(1)
    model = tbgrad.lab.build_mlp(depth=2, width=4, activation="tanh", init="glorot_uniform")
    if loop == "fit":
        model.compile("sgd", "binary_crossentropy")
        model.fit(
            x,
            y,
            epochs=2,
            batch_size=32,
            validation_data=(xv, circles.y_test[:32]),
            verbose=0,
            callbacks=[tbgrad.TensorBoard(tmp_path)],
        )
    else:
        tbgrad.train_with_tape(
            model,
            x,
            y,
            epochs=2,
            batch_size=32,
            optimizer="sgd",
            validation_data=(xv, circles.y_test[:32]),
            log_dir=tmp_path,
            verbose=0,
        )
    run = load_run(tmp_path)
    assert np.isfinite(run.train.scalar("epoch_loss")).all()
    assert np.isnan(run.validation.scalar("epoch_loss")).all()
    for name in _layers(2):
        assert run.train.scalar(f"grad_nonfinite/{name}").sum() == 0
        assert np.isfinite(run.train.scalar(f"grad_mean_abs/{name}")).all()
    # Without the validation loss the same figures read as a finite run.
    g = {n: run.train.scalar(f"grad_mean_abs/{n}") for n in _layers(2)}
    assert judge(g, run.train.scalar("epoch_loss")).label != "non-finite"
    result = verdict.run_verdict(run)
    assert (result.label, result.reason) == ("non-finite", "the loss is NaN or Inf")
    assert verdict.verdict_of(tmp_path).label == "non-finite"
