"""The verdict's explanation: event files written with tf.summary, read back
with TensorBoard's reader (load_run), figures checked against numpy on the
values written; then a real tiny run."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tbgrad
from tbgrad import tags, verdict
from tbgrad.eventlog import load_run
from tbgrad.hparams import write_hparams
from tbgrad.verdict import (
    DEAD_ABOVE,
    SATURATED_ABOVE,
    UPDATE_RATIO_ABOVE,
    UPDATE_RATIO_BELOW,
    Explanation,
    judge,
    layer_span,
    verdict_of,
)

EPOCHS = 10
HIDDEN = ["hidden_1", "hidden_2", "hidden_3", "hidden_4"]
OUTPUT = 0.05


def write_run(run_dir, scalars: dict[str, list[float]], hparams: dict | None = None):
    """Writes ``{tag: value per epoch}`` into ``run_dir/train`` with tf.summary
    (each tag's epochs in turn, in the order given), and HParams when given."""
    writer = tf.summary.create_file_writer(str(run_dir / tags.TRAIN_DIR))
    with writer.as_default():
        for tag, values in scalars.items():
            for step, value in enumerate(values):
                tf.summary.scalar(tag, value, step=step)
    writer.close()
    if hparams is not None:
        write_hparams(run_dir, hparams)
    return run_dir


def gradients(quotients: dict[str, list[float]]) -> dict[str, list[float]]:
    """grad_mean_abs tags whose hidden/output quotients per epoch are the given ones."""
    out = {
        f"{tags.GRAD_MEAN_ABS}/{name}": [q * OUTPUT for q in qs] for name, qs in quotients.items()
    }
    out[f"{tags.GRAD_MEAN_ABS}/output"] = [OUTPUT] * EPOCHS
    out[tags.epoch_tag("loss")] = list(np.linspace(0.7, 0.6, EPOCHS))
    return out


def family(name: str, values: dict[str, list[float]]) -> dict[str, list[float]]:
    return {f"{name}/{layer}": v for layer, v in values.items()}


def vanishing_in_the_last_two(rng) -> dict[str, list[float]]:
    """hidden_3 and hidden_4 at 0.02 x the output in epochs 0-6, 0.5 after."""
    weak = [0.02] * 7 + [0.5] * 3
    scalars = gradients(
        {"hidden_1": [1.0] * EPOCHS, "hidden_2": [0.8] * EPOCHS, "hidden_3": weak, "hidden_4": weak}
    )
    saturated = {
        "hidden_1": rng.uniform(0.1, 0.3, EPOCHS),
        "hidden_2": rng.uniform(0.2, 0.4, EPOCHS),
        "hidden_3": rng.uniform(0.85, 0.99, EPOCHS),
        "hidden_4": rng.uniform(0.9, 1.0, EPOCHS),
    }
    scalars |= family(tags.ACTIVATION_SATURATED, {k: list(v) for k, v in saturated.items()})
    scalars |= family(tags.UPDATE_RATIO, {n: list(rng.uniform(1e-4, 1e-3, EPOCHS)) for n in HIDDEN})
    return scalars


def test_vanishing_names_the_weak_layers_their_epochs_and_the_saturation(tmp_path):
    rng = np.random.default_rng(0)
    written = vanishing_in_the_last_two(rng)
    hparams = {"act": "tanh", "init": "uniform01", "depth": 4}
    found = verdict_of(write_run(tmp_path, written, hparams))
    why = found.explanation
    assert load_run(tmp_path).hparams == {"act": "tanh", "init": "uniform01", "depth": "4"}

    assert found.label == "vanishing"
    assert why.layers == ("hidden_3", "hidden_4")
    assert why.epochs == (0, 6)
    assert why.rule == f"weakest/output < 0.1 (median {found.weakest_ratio:.3g})"
    # Independently: each layer's median over the epochs concerned (0-6).
    sat = {n: np.median(written[f"activation_saturated/{n}"][:7]) for n in HIDDEN}
    np.testing.assert_allclose(
        why.signals["saturated"], np.mean([sat["hidden_3"], sat["hidden_4"]]), rtol=1e-6
    )
    flagged = [n for n in HIDDEN if sat[n] > SATURATED_ABOVE]
    assert flagged == ["hidden_3", "hidden_4"]
    share = np.mean([sat[n] for n in flagged])
    assert why.notes == (f"hidden_3, hidden_4 saturated ({share:.0%})",)
    assert why.suggestion == (
        f"hidden_3, hidden_4 saturated ({share:.0%}) with tanh and RandomUniform(0, 1) "
        "weights: try glorot_uniform, or relu with he_uniform"
    )
    ratios = [np.median(written[f"update_ratio/{n}"][:7]) for n in ("hidden_3", "hidden_4")]
    np.testing.assert_allclose(why.signals["update_ratio"], np.median(ratios), rtol=1e-6)
    assert why.signals["epochs_concerned"] == 7 and why.signals["epochs"] == EPOCHS
    # The note opens the suggestion: said once.
    assert str(why) == f"why: {why.rule} in hidden_3, hidden_4, epochs 0-6\ntry: {why.suggestion}"


def test_without_hparams_the_suggestion_speaks_from_the_tags(tmp_path):
    found = verdict_of(write_run(tmp_path, vanishing_in_the_last_two(np.random.default_rng(1))))
    assert load_run(tmp_path).hparams == {}
    note = found.explanation.notes[0]
    assert found.explanation.suggestion == (
        f"saturating activations ({note}): try glorot_uniform or he init, or relu"
    )


def test_glorot_already_suggests_relu(tmp_path):
    written = vanishing_in_the_last_two(np.random.default_rng(2))
    found = verdict_of(write_run(tmp_path, written, {"act": "sigmoid", "init": "glorot_uniform"}))
    assert found.explanation.suggestion.endswith(
        "with sigmoid and glorot_uniform weights: try relu with he_uniform, or fewer layers"
    )


@pytest.mark.parametrize(
    "act, init, fix",
    [
        ("sigmoid", "normal", ": sigmoid's slope is at most 0.25, a factor paid at every layer: "
         "try relu with he_uniform, or tanh with glorot_uniform"),
        ("relu", "normal", " with relu and RandomNormal(0, 1) weights: try he_uniform"),
        ("tanh", "uniform01", " with tanh and RandomUniform(0, 1) weights: try glorot_uniform"),
        ("relu", "he_uniform",
         " with relu and he_uniform: try fewer layers, or batch normalization"),
    ],
)  # fmt: skip
def test_vanishing_without_saturation_suggests_from_the_config(tmp_path, act, init, fix):
    written = gradients({"hidden_1": [1.0] * EPOCHS, "hidden_2": [0.02] * EPOCHS})
    found = verdict_of(write_run(tmp_path, written, {"act": act, "init": init}))
    assert found.explanation.notes == ()
    assert found.explanation.suggestion == f"hidden_2 gets too little gradient{fix}"


def healthy_relu(dead: list[float], update: float = 1e-3) -> dict[str, list[float]]:
    scalars = gradients({n: [0.5] * EPOCHS for n in HIDDEN})
    scalars |= family(
        tags.ACTIVATION_DEAD,
        {
            "hidden_1": [0.0] * EPOCHS,
            "hidden_2": dead,
            "hidden_3": [0.2] * EPOCHS,
            "hidden_4": [0.0] * EPOCHS,
        },
    )
    scalars |= family(tags.ACTIVATION_ZERO, {n: [0.5] * EPOCHS for n in HIDDEN})
    scalars |= family(tags.UPDATE_RATIO, {n: [update] * EPOCHS for n in HIDDEN})
    return scalars


def test_healthy_run_without_alarms_has_no_notes_and_no_suggestion(tmp_path):
    found = verdict_of(
        write_run(tmp_path, healthy_relu([0.1] * EPOCHS), {"act": "relu", "init": "he_uniform"})
    )
    why = found.explanation
    assert found.label == "healthy"
    assert (why.layers, why.epochs, why.notes, why.suggestion) == ((), None, (), "")
    assert why.signals["dead"] == pytest.approx(0.2)  # the most dead layer
    assert why.signals["zero"] == pytest.approx(0.5)
    assert str(why) == f"why: {why.rule}"


def test_dead_relu_units_are_an_alarm_even_in_a_healthy_run(tmp_path):
    dead = [0.4, 0.6, 0.7, 0.8, 0.8, 0.8, 0.9, 0.9, 0.9, 0.9]
    found = verdict_of(write_run(tmp_path, healthy_relu(dead), {"act": "relu", "init": "normal"}))
    why = found.explanation
    assert np.median(dead) > DEAD_ABOVE
    assert why.notes == (f"hidden_2: up to {np.median(dead):.0%} of units dead",)
    assert why.suggestion == f"{why.notes[0]}: try he_uniform, a lower learning rate, or leaky_relu"


@pytest.mark.parametrize(
    "update, flag, fix",
    [(UPDATE_RATIO_BELOW / 3, "down to", "raise"), (UPDATE_RATIO_ABOVE * 3, "up to", "lower")],
)
def test_an_update_ratio_far_from_1e_3_is_flagged(tmp_path, update, flag, fix):
    found = verdict_of(write_run(tmp_path, healthy_relu([0.0] * EPOCHS, update)))
    assert found.explanation.notes == (
        f"hidden_1..hidden_4 update ratio {flag} {update:.1e} (~1e-3 usual)",
    )
    assert found.explanation.suggestion == f"{found.explanation.notes[0]}: {fix} the learning rate"


def test_exploding_names_the_strong_layer_spikes_and_clipping(tmp_path):
    written = gradients(
        {
            "hidden_1": [300.0] * 8 + [50.0] * 2,
            "hidden_2": [2.0] * EPOCHS,
            "hidden_3": [1.0] * EPOCHS,
            "hidden_4": [1.0] * EPOCHS,
        }
    )
    peaks = np.linspace(2, 6, EPOCHS)
    written |= {
        f"grad_mean_abs_max/{n}": list(np.array(written[f"grad_mean_abs/{n}"]) * peaks)
        for n in HIDDEN
    }
    written[tags.CLIP_SHARE] = list(np.linspace(0, 0.9, EPOCHS))
    written[tags.CLIP_NORM_BEFORE_MAX] = list(np.linspace(5, 50, EPOCHS))
    found = verdict_of(write_run(tmp_path, written, {"act": "tanh", "init": "normal"}))
    why = found.explanation
    assert found.label == "exploding"
    assert (why.layers, why.epochs) == (("hidden_1",), (0, 7))
    # Over the epochs concerned (0-7) and the layer concerned.
    np.testing.assert_allclose(why.signals["grad_spike"], peaks[:8].max(), rtol=1e-6)
    np.testing.assert_allclose(
        why.signals["clipped"], np.mean(written[tags.CLIP_SHARE][:8]), rtol=1e-6
    )
    np.testing.assert_allclose(
        why.signals["clip_norm_before_max"], written[tags.CLIP_NORM_BEFORE_MAX][7], rtol=1e-6
    )
    assert why.suggestion == (
        "lower the learning rate or clip the gradients (clipnorm=1.0); RandomNormal(0, 1) "
        "weights: try glorot_uniform, or he_uniform with relu"
    )


def test_non_finite_names_the_layers_and_epochs_with_nan(tmp_path):
    written = gradients({n: [0.5] * EPOCHS for n in HIDDEN})
    written |= family(tags.GRAD_NONFINITE, {n: [0.0] * EPOCHS for n in HIDDEN})
    written["grad_nonfinite/hidden_2"] = [0, 0, 0, 4, 7, 0, 0, 0, 0, 0]
    write_run(tmp_path, written)
    # The library's text tag of the first NaN or Inf, at its epoch.
    writer = tf.summary.create_file_writer(str(tmp_path / tags.TRAIN_DIR))
    with writer.as_default():
        tf.summary.text(tags.FIRST_NONFINITE, "gradient of hidden_2, step 98", step=3)
    writer.close()
    found = verdict_of(tmp_path)
    assert found.explanation.notes == (
        "first NaN or Inf in epoch 3: gradient of hidden_2, step 98",
    )
    assert found.label == "non-finite"
    assert found.explanation.layers == ("hidden_2",)
    assert found.explanation.epochs == (3, 4)
    assert found.explanation.rule == found.reason == "11 non-finite gradient entries"


def test_to_dict_adds_the_explanation_and_keeps_the_old_keys(tmp_path):
    found = verdict_of(write_run(tmp_path, vanishing_in_the_last_two(np.random.default_rng(3))))
    d = found.to_dict()
    assert {"label", "weakest_ratio", "strongest_ratio", "reason"} < set(d)
    assert d["label"] == found.label and d["reason"] == found.reason
    explanation = json.loads(json.dumps(d, allow_nan=False))["explanation"]
    assert explanation["layers"] == ["hidden_3", "hidden_4"]
    assert explanation["epochs"] == [0, 6]
    assert explanation["text"] == str(found.explanation)
    assert set(explanation) == {
        "rule",
        "layers",
        "epochs",
        "signals",
        "notes",
        "suggestion",
        "text",
    }


def test_judge_alone_keeps_its_contract():
    found = judge({"hidden_1": [0.02], "hidden_2": [0.001], "output": [0.05]})
    assert found.explanation is None
    assert found.to_dict()["explanation"] is None


def test_unknown_explains_what_is_missing(tmp_path):
    found = verdict_of(write_run(tmp_path, {f"{tags.GRAD_MEAN_ABS}/output": [0.1, 0.2]}))
    assert found.label == "unknown"
    assert found.explanation.rule == found.reason
    assert "two kernel layers" in found.explanation.suggestion


@pytest.mark.parametrize(
    "layers, text",
    [([], ""), (["a"], "a"), (["a", "b"], "a, b"), (["h3", "h4", "h5"], "h3..h5")],
)
def test_layer_span(layers, text):
    assert layer_span(layers) == text


def test_explanation_str_without_a_suggestion_is_one_line():
    assert str(Explanation("rule")) == "why: rule"
    assert "\n" in str(Explanation("rule", suggestion="do this"))


def test_real_run_saturation_signal_matches_the_logged_scalars(tmp_path, circles):
    """A tiny tanh model with all-positive weights: the explanation's figures
    are the medians of the activation_saturated scalars the run logged."""
    keras.utils.set_random_seed(4)
    model = tbgrad.lab.build_mlp(depth=3, width=8, activation="tanh", init="uniform01")
    model.compile(keras.optimizers.SGD(0.01), "binary_crossentropy")
    model.fit(
        circles.x_train,
        circles.y_train,
        epochs=4,
        batch_size=64,
        verbose=0,
        callbacks=[tbgrad.TensorBoard(tmp_path, histogram_freq=0)],
    )
    run = load_run(tmp_path)
    found = verdict_of(tmp_path)
    why = found.explanation
    kernels = run.train.kernels
    hidden = kernels[:-1]
    # Independently: the epochs where some hidden layer is below 0.1 x the
    # output layer (all epochs unless vanishing), each layer's median there.
    g = np.stack([run.train.scalar(f"grad_mean_abs/{n}") for n in kernels], axis=1)
    below = (g[:, :-1] / g[:, -1:] < verdict.VANISHING_BELOW).any(axis=1)
    rows = np.flatnonzero(below) if found.label == "vanishing" else np.arange(len(g))
    sat = {n: np.median(run.train.scalar(f"activation_saturated/{n}")[rows]) for n in hidden}
    assert all(0 <= v <= 1 for v in sat.values())
    focus = list(why.layers) or hidden
    expected = np.mean([sat[n] for n in focus])
    np.testing.assert_allclose(why.signals["saturated"], expected, rtol=1e-6)
    flagged = [n for n in hidden if sat[n] > SATURATED_ABOVE]
    assert bool(flagged) == any("saturated" in note for note in why.notes)
    assert math.isfinite(why.signals["update_ratio"])


@pytest.mark.slow
def test_train_prints_the_explanation_and_stores_it(tmp_path, capsys):
    from tbgrad.cli.train import main as train_main

    args = ["--preset", "A2", "--epochs", "3", "--logdir", str(tmp_path), "--quiet"]
    assert train_main(args) == 0
    (run_dir,) = tmp_path.iterdir()
    stored = json.loads((run_dir / "tbgrad_run.json").read_text())["verdict"]
    expected = verdict_of(run_dir).explanation
    assert stored["explanation"] == json.loads(json.dumps(expected.to_dict()))
    assert stored["explanation"]["layers"] and stored["explanation"]["suggestion"]
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("verdict: "))
    explained = str(expected).splitlines()
    assert lines[at + 1 : at + 1 + len(explained)] == [f"  {line}" for line in explained]
    assert lines[at + 1].startswith("  why: weakest/output < 0.1")
    assert lines[at + 2].startswith("  try: ")
    assert lines[at + 1 + len(explained)].startswith("view: tensorboard --logdir")


def test_explain_takes_a_folder_or_a_run_read_back(tmp_path):
    write_run(tmp_path, vanishing_in_the_last_two(np.random.default_rng(5)), {"act": "tanh"})
    expected = verdict_of(tmp_path).explanation
    assert tbgrad.explain(tmp_path) == expected
    assert tbgrad.explain(load_run(tmp_path)) == expected
    assert isinstance(expected, tbgrad.Explanation)
