"""HParams and the Custom Scalars layout, read back with TensorBoard's reader."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

import tbgrad
from tbgrad import layout, tags
from tbgrad.eventlog import load_run
from tbgrad.hparams import METRICS, write_hparams
from tbgrad.lab import experiment
from tbgrad.lab.config import HPARAMS, make_config


def _accumulator(path):
    acc = event_accumulator.EventAccumulator(str(path), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def _plugin_content(acc, tag) -> bytes:
    return acc.SummaryMetadata(tag).plugin_data.content


def _layout(path) -> layout_pb2.Layout:
    acc = _accumulator(path)
    tag = layout.LAYOUT_TAG
    assert acc.SummaryMetadata(tag).plugin_data.plugin_name == "custom_scalars"
    events = acc.Tensors(tag)
    assert [e.step for e in events] == [0]
    proto = layout_pb2.Layout()
    proto.ParseFromString(events[0].tensor_proto.string_val[0])
    return proto


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logs")
    out = {}
    for loop in ("fit", "tape"):
        config = make_config(
            "A2", depth=2, epochs=2, loop=loop, seed=7, lr=0.05, output_init="glorot_uniform"
        )
        out[loop] = experiment.run(config, logdir, verbose=0)
    return out


@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_hparams_record_the_config_of_either_loop(runs, loop):
    result = runs[loop]
    acc = _accumulator(result.run_dir)
    info = hparams_metadata.parse_session_start_info_plugin_data(
        _plugin_content(acc, hparams_metadata.SESSION_START_INFO_TAG)
    )
    values = {}
    for name, value in info.hparams.items():
        kind = value.WhichOneof("kind")
        values[name] = getattr(value, kind)
    assert values == {
        "act": "tanh",
        "init": "uniform01",
        "output_init": "glorot_uniform",
        "depth": 2.0,  # HParams store numbers as doubles
        "width": 5.0,
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "batch_size": 32.0,
        "epochs": 2.0,
        "seed": 7.0,
        "loop": loop,
        "dataset": "circles-a",
        "preset": "A2",
    }
    assert info.group_name == result.run_dir.name


def test_hparams_experiment_columns_and_metrics_exist_in_the_run(runs):
    result = runs["fit"]
    acc = _accumulator(result.run_dir)
    exp = hparams_metadata.parse_experiment_plugin_data(
        _plugin_content(acc, hparams_metadata.EXPERIMENT_TAG)
    )
    assert [h.name for h in exp.hparam_infos] == list(HPARAMS)
    metrics = [(m.name.tag, m.name.group) for m in exp.metric_infos]
    assert metrics == [
        ("epoch_accuracy", "validation"),
        ("epoch_loss", "validation"),
        ("epoch_accuracy", "train"),
        ("epoch_loss", "train"),
        ("grad_ratio", "train"),
    ]
    # Every metric column names a scalar the run really has, so the dashboard
    # shows a value, the last epoch's.
    run = load_run(result.run_dir)
    for tag, group, _ in METRICS:
        assert run.splits[group].steps(tag) == [0, 1], (group, tag)
    np.testing.assert_allclose(
        run.validation.scalar("epoch_loss")[-1], result.history["val_loss"][-1], rtol=1e-6
    )


def test_write_hparams_rejects_a_non_mapping(tmp_path):
    # The library takes a plain mapping; a lab config must be converted first.
    with pytest.raises(TypeError, match=r"hparams must be a mapping.*Received: RunConfig\("):
        write_hparams(tmp_path, make_config("A2"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_layout_charts_select_every_layer_of_the_run(runs, loop):
    run_dir = runs[loop].run_dir
    proto = _layout(run_dir / "train")
    assert [c.title for c in proto.category] == ["gradient flow"]
    charts = {c.title: list(c.multiline.tag) for c in proto.category[0].chart}
    assert list(charts) == ["grad_mean_abs: every layer", "grad_std: every layer", "grad_ratio"]
    scalar_tags = set(load_run(run_dir).train.scalars)

    def selected(regexes):
        return sorted(t for t in scalar_tags if any(re.search(r, t) for r in regexes))

    assert selected(charts["grad_mean_abs: every layer"]) == [
        "grad_mean_abs/hidden_1",
        "grad_mean_abs/hidden_2",
        "grad_mean_abs/output",
    ]
    assert selected(charts["grad_std: every layer"]) == [
        "grad_std/hidden_1",
        "grad_std/hidden_2",
        "grad_std/output",
    ]
    assert selected(charts["grad_ratio"]) == ["grad_ratio"]


def test_layout_is_written_for_a_user_model_with_the_callback(tmp_path, circles):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((2,))
    h = keras.layers.Dense(3, activation="tanh", name="encoder")(inputs)
    out = keras.layers.Dense(1, activation="sigmoid", name="head")(h)
    model = keras.Model(inputs, out)
    model.compile("adam", "binary_crossentropy")
    model.fit(
        circles.x_train[:64],
        circles.y_train[:64],
        epochs=1,
        batch_size=32,
        verbose=0,
        callbacks=[tbgrad.GradientTensorBoard(tmp_path)],
    )
    proto = _layout(tmp_path / "train")
    assert proto == layout.gradient_flow_layout()
    regex = proto.category[0].chart[0].multiline.tag[0]
    train_tags = load_run(tmp_path).train.scalars
    assert sorted(t for t in train_tags if re.search(regex, t)) == [
        tags.layer_tag(tags.GRAD_MEAN_ABS, "encoder"),
        tags.layer_tag(tags.GRAD_MEAN_ABS, "head"),
    ]
