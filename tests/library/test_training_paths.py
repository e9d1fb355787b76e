"""Both training paths: tags, layout and values against an independent tape."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import expected_histogram, reference_sgd_gradients, tiny_mlp

import tbgrad
from tbgrad import layout, tags
from tbgrad.dashboard import metadata as dashboard_metadata
from tbgrad.eventlog import load_run

EPOCHS = 3
BATCH = 64
LR = 0.05
N = 200  # 3 steps of 64 and one of 8 per epoch
LAYERS = ["hidden_1", "hidden_2", "output"]
ACTIVATIONS = {"hidden_1": "tanh", "hidden_2": "tanh", "output": "sigmoid"}
# model.fit with the callback, one step per call and three (the 4 steps of an
# epoch run as executions of 3 and 1); train_with_tape without and with XLA.
LOOPS = ["fit", "fit+spe", "tape", "tape+xla"]
STEPS_PER_EXECUTION = 3


def _train(path, loop, x, y, xv, yv, **kwargs):
    model = tiny_mlp()
    initial = model.get_weights()
    if loop.startswith("fit"):
        model.compile(
            keras.optimizers.SGD(LR),
            "binary_crossentropy",
            metrics=["accuracy"],
            steps_per_execution=STEPS_PER_EXECUTION if loop == "fit+spe" else 1,
        )
        history = model.fit(
            x,
            y,
            epochs=EPOCHS,
            batch_size=BATCH,
            shuffle=False,
            validation_data=(xv, yv),
            verbose=0,
            callbacks=[tbgrad.TensorBoard(path, **kwargs)],
        ).history
    else:
        history = tbgrad.train_with_tape(
            model,
            x,
            y,
            epochs=EPOCHS,
            batch_size=BATCH,
            shuffle=False,
            optimizer=keras.optimizers.SGD(LR),
            validation_data=(xv, yv),
            log_dir=path,
            verbose=0,
            jit_compile=loop == "tape+xla",
            **kwargs,
        )
    return model, initial, history


@pytest.fixture(scope="module")
def runs(tmp_path_factory, circles):
    x, y = circles.x_train[:N], circles.y_train[:N]
    xv, yv = circles.x_test[:100], circles.y_test[:100]
    out = {}
    histories = {}
    for loop in LOOPS:
        path = tmp_path_factory.mktemp(loop.replace("+", "_"))
        model, initial, histories[loop] = _train(path, loop, x, y, xv, yv)
        out[loop] = (load_run(path), model, path)
    reference_model = tiny_mlp()
    reference_model.set_weights(initial)
    expected = reference_sgd_gradients(reference_model, x, y, BATCH, EPOCHS, LR)
    return out, expected, histories


def _ours(plugins: dict) -> dict:
    # Without what only Keras's callback writes (tests/library/test_keras_scenarios.py):
    # the model's config, the per-weight histograms, evaluation_*_vs_iterations.
    return {
        tag: plugin
        for tag, plugin in plugins.items()
        if tag != "keras" and not tag.endswith(("/histogram", "_vs_iterations"))
    }


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOPS)
def test_every_tag_in_the_right_folder_and_plugin(runs, loop):
    run, _, path = runs[0][loop]
    expected = {
        **{tags.epoch_tag(m): "scalars" for m in ("loss", "accuracy", "learning_rate")},
        **tags.layer_tags(LAYERS, activations=ACTIVATIONS),
    }
    assert _ours(run.train.plugins) == {
        **expected,
        layout.LAYOUT_TAG: "custom_scalars",
        dashboard_metadata.LAYERS_TAG: dashboard_metadata.PLUGIN_NAME,
    }
    assert _ours(run.validation.plugins) == {"epoch_loss": "scalars", "epoch_accuracy": "scalars"}
    for tag in expected:
        assert run.train.steps(tag) == list(range(EPOCHS)), tag
    # One event file per folder, and nothing else in the run folder.
    assert sorted(p.name for p in path.iterdir()) == ["train", "validation"]
    assert len(run.train.event_files) == 1
    assert len(run.validation.event_files) == 1


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit+spe", "tape", "tape+xla"])
def test_both_paths_write_identical_tags_and_values(runs, loop):
    fit, tape = runs[0]["fit"][0], runs[0][loop][0]
    for split in ("train", "validation"):
        a, b = fit.splits[split], tape.splits[split]
        assert _ours(a.plugins) == _ours(b.plugins)
        for tag in _ours(a.scalars):
            np.testing.assert_allclose(
                a.scalar(tag), b.scalar(tag), rtol=1e-5, atol=1e-7, err_msg=tag
            )


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOPS)
def test_grad_mean_abs_is_the_mean_over_every_step(runs, loop):
    run = runs[0][loop][0]
    expected = runs[1]
    for layer in LAYERS:
        want = [np.mean([np.abs(g).mean() for g in epoch[layer]]) for epoch in expected]
        got = run.train.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS, layer))
        np.testing.assert_allclose(got, want, rtol=1e-4, err_msg=layer)
        want_std = [np.mean([g.std() for g in epoch[layer]]) for epoch in expected]
        got_std = run.train.scalar(tags.layer_tag(tags.GRAD_STD, layer))
        np.testing.assert_allclose(got_std, want_std, rtol=1e-3, err_msg=layer)
        np.testing.assert_array_equal(
            run.train.scalar(tags.layer_tag(tags.GRAD_NONFINITE, layer)), 0
        )


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOPS)
def test_gradient_histogram_is_the_first_step_of_each_epoch(runs, loop):
    run = runs[0][loop][0]
    expected = runs[1]
    for layer in LAYERS:
        series = run.train.histograms[tags.layer_tag(tags.GRADIENTS, layer)]
        for epoch, (step, hist) in enumerate(series):
            g = expected[epoch][layer][0]
            assert step == epoch
            assert hist.shape == (30, 3)
            assert hist[:, 2].sum() == g.size
            np.testing.assert_allclose(hist[0, 0], g.min(), rtol=1e-5)
            np.testing.assert_allclose(hist[-1, 1], g.max(), rtol=1e-5)
            want = expected_histogram(g)
            np.testing.assert_allclose(hist[:, :2], want[:, :2], rtol=1e-4, atol=1e-9)
            # Values within float32 rounding of a bucket edge may land on
            # either side; everything else must match bucket for bucket.
            assert np.abs(hist[:, 2] - want[:, 2]).sum() <= 2


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOPS)
def test_weight_tags_match_the_trained_kernels(runs, loop):
    run, model, _ = runs[0][loop]
    for layer in LAYERS:
        kernel = model.get_layer(layer).kernel.numpy()
        last = EPOCHS - 1
        assert run.train.scalar(f"weight_mean/{layer}")[last] == pytest.approx(
            kernel.mean(), rel=1e-5, abs=1e-7
        )
        assert run.train.scalar(f"weight_std/{layer}")[last] == pytest.approx(
            kernel.std(), rel=1e-4
        )
        assert run.train.scalar(f"weight_l1/{layer}")[last] == pytest.approx(
            np.abs(kernel).sum(), rel=1e-5
        )
        hist = run.train.histograms[f"weights/{layer}"][last][1]
        assert hist[:, 2].sum() == kernel.size
        assert hist[0, 0] == pytest.approx(kernel.min(), rel=1e-6)
        assert hist[-1, 1] == pytest.approx(kernel.max(), rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOPS)
def test_epoch_scalars_match_the_history(runs, loop):
    run, model, _ = runs[0][loop]
    loss = run.train.scalar("epoch_loss")
    assert loss.shape == (EPOCHS,)
    assert np.all(np.isfinite(loss))
    np.testing.assert_allclose(run.train.scalar("epoch_learning_rate"), LR)
    # Every figure of the history returned by fit / train_with_tape, epoch by
    # epoch, in its folder: loss and accuracy in train/, val_* in validation/.
    history = runs[2][loop]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history)
    for key, values in history.items():
        assert len(values) == EPOCHS, key
        if key.startswith("val_"):
            split, tag = run.validation, tags.epoch_tag(key[len("val_") :])
        else:
            split, tag = run.train, tags.epoch_tag(key)
        assert split.steps(tag) == list(range(EPOCHS)), key
        np.testing.assert_allclose(split.scalar(tag), values, rtol=1e-6, err_msg=key)
    # The loss and accuracy differ between epochs and from the validation
    # figures, so a value written under the wrong step or folder shows.
    assert len(set(history["loss"])) == EPOCHS
    assert history["loss"] != history["val_loss"]


@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_histogram_freq_and_update_freq(tmp_path, circles, loop):
    x, y = circles.x_train[:N], circles.y_train[:N]
    _train(tmp_path, loop, x, y, x[:50], y[:50], histogram_freq=2, update_freq=3)
    run = load_run(tmp_path)
    assert run.train.steps("gradients/output") == [0, 2]
    assert run.train.steps("weights/hidden_1") == [0, 2]
    assert run.train.steps("grad_mean_abs/output") == [0, 1, 2]
    # 4 steps per epoch, 12 in all: per-step scalars at global steps 3, 6, ...
    for tag in ("batch_loss", "batch_accuracy", "batch_grad_mean_abs/hidden_1"):
        assert run.train.steps(tag) == [3, 6, 9, 12], tag


def test_update_freq_counts_steps_not_executions(tmp_path, circles):
    # Executions of 3 and 1 steps end at global steps 3, 4, 7, 8, 11, 12: fit
    # has logs only there, so the multiples 3, 6, 9, 12 are written at the
    # end of the execution that crossed them.
    x, y = circles.x_train[:N], circles.y_train[:N]
    _train(tmp_path, "fit+spe", x, y, x[:50], y[:50], update_freq=3)
    run = load_run(tmp_path)
    for tag in ("batch_loss", "batch_grad_mean_abs/hidden_1"):
        assert run.train.steps(tag) == [3, 7, 11, 12], tag
    assert run.train.steps("grad_mean_abs/output") == [0, 1, 2]


def test_histogram_freq_zero_writes_no_histograms(tmp_path, circles):
    _train(
        tmp_path,
        "fit",
        circles.x_train[:64],
        circles.y_train[:64],
        circles.x_test[:8],
        circles.y_test[:8],
        histogram_freq=0,
    )
    run = load_run(tmp_path)
    assert run.train.histograms == {}
    assert "grad_mean_abs/output" in run.train.scalars


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOPS)
def test_grad_ratio_is_first_over_last_layer(runs, loop):
    run = runs[0][loop][0]
    first = run.train.scalar("grad_mean_abs/hidden_1")
    last = run.train.scalar("grad_mean_abs/output")
    np.testing.assert_allclose(run.train.scalar("grad_ratio"), first / last, rtol=1e-5)


def test_validation_batch_size_gives_the_same_figures(circles):
    # One evaluation step over all 500 samples, or 16 steps of 32.
    x, y = circles.x_train[:N], circles.y_train[:N]
    histories = []
    for validation_batch_size in (None, 1024):
        histories.append(
            tbgrad.train_with_tape(
                tiny_mlp(),
                x,
                y,
                epochs=2,
                batch_size=32,
                shuffle=False,
                optimizer=keras.optimizers.SGD(LR),
                validation_data=(circles.x_test, circles.y_test),
                validation_batch_size=validation_batch_size,
                verbose=0,
            )
        )
    steps, one = histories
    np.testing.assert_allclose(steps["val_loss"], one["val_loss"], rtol=1e-6)
    np.testing.assert_array_equal(steps["val_accuracy"], one["val_accuracy"])
    np.testing.assert_array_equal(steps["loss"], one["loss"])
