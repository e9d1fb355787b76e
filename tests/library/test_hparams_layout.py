"""HParams, the verdict's metrics and the Custom Scalars layout, read back
with TensorBoard's reader and checked against numbers computed here from
the run's own event files."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

import tbgrad
from tbgrad import layout, tags, verdict
from tbgrad.eventlog import load_run, load_split
from tbgrad.hparams import METRICS, write_hparams, write_verdict
from tbgrad.lab import experiment
from tbgrad.lab.config import HPARAM_DOMAINS, HPARAMS, make_config
from tbgrad.statistics.gradients import log10_ratio

LAYERS = ["hidden_1", "hidden_2", "output"]
INTEGER_COLUMNS = ("depth", "width", "batch_size", "epochs", "seed")


def _accumulator(path):
    acc = event_accumulator.EventAccumulator(str(path), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def _plugin_content(acc, tag) -> bytes:
    return acc.SummaryMetadata(tag).plugin_data.content


def _experiment(run_dir) -> api_pb2.Experiment:
    acc = _accumulator(run_dir)
    content = _plugin_content(acc, hparams_metadata.EXPERIMENT_TAG)
    return hparams_metadata.parse_experiment_plugin_data(content)


def _layout(path) -> layout_pb2.Layout:
    acc = _accumulator(path)
    tag = layout.LAYOUT_TAG
    assert acc.SummaryMetadata(tag).plugin_data.plugin_name == "custom_scalars"
    events = acc.Tensors(tag)
    assert [e.step for e in events] == [0]
    proto = layout_pb2.Layout()
    proto.ParseFromString(events[0].tensor_proto.string_val[0])
    return proto


def grad_mean_abs(run_dir, layers=LAYERS) -> np.ndarray:
    """epochs x layers of the logged grad_mean_abs, in model order."""
    train = load_run(run_dir).train
    return np.stack([train.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS, n)) for n in layers], 1)


def expected_verdict_scalars(run_dir) -> dict[str, float]:
    """The verdict's figures, computed here from the event files alone.

    Per epoch, each hidden layer's mean |g| over the output layer's; the
    weakest (strongest) figure is the median over epochs of their min (max).
    """
    g = grad_mean_abs(run_dir)
    quotients = g[:, :-1] / g[:, -1:]
    weakest = float(np.median(quotients.min(axis=1)))
    strongest = float(np.median(quotients.max(axis=1)))
    code = -1 if weakest < 0.1 else 1 if strongest > 100 else 0
    return {
        "verdict/code": code,
        "verdict/weakest_ratio": weakest,
        "verdict/strongest_ratio": strongest,
    }


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


# -- HParams --------------------------------------------------------------------


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
        # Integers as text: HParams prints every number with 5 digits (2.0000).
        "depth": "2",
        "width": "5",
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "batch_size": "32",
        "epochs": "2",
        "seed": "7",
        "loop": loop,
        "dataset": "circles-a",
        "preset": "A2",
    }
    assert info.group_name == result.run_dir.name


def test_hparams_columns_have_their_types_and_the_lab_choices_as_domains(runs):
    exp = _experiment(runs["fit"].run_dir)
    assert [h.name for h in exp.hparam_infos] == list(HPARAMS)
    types = {h.name: api_pb2.DataType.Name(h.type) for h in exp.hparam_infos}
    assert types == {
        name: "DATA_TYPE_FLOAT64" if name in ("lr", "momentum") else "DATA_TYPE_STRING"
        for name in HPARAMS
    }
    for info in exp.hparam_infos:
        domain = list(info.domain_discrete.values)
        if info.name in HPARAM_DOMAINS:
            assert [v.string_value for v in domain] == list(HPARAM_DOMAINS[info.name])
        else:  # integers and numbers: any value
            assert info.name in INTEGER_COLUMNS + ("lr", "momentum")
            assert domain == [] and not info.HasField("domain_interval")
    assert {"tanh", "relu"} <= set(HPARAM_DOMAINS["act"])
    assert {"none", "A2", "A3"} <= set(HPARAM_DOMAINS["preset"])


def test_hparams_metrics_name_scalars_the_run_has(runs):
    result = runs["fit"]
    exp = _experiment(result.run_dir)
    metrics = [(m.name.tag, m.name.group, m.display_name) for m in exp.metric_infos]
    assert metrics == list(METRICS)
    assert [(tag, group) for tag, group, _ in METRICS][:5] == [
        ("verdict/code", ""),
        ("verdict/weakest_ratio", ""),
        ("epoch_accuracy", "validation"),
        ("epoch_loss", "validation"),
        ("verdict/strongest_ratio", ""),
    ]
    # Every metric column names a scalar the run really has, so the dashboard
    # shows a value, the last epoch's; the verdict's only at the last epoch.
    run = load_run(result.run_dir)
    folders = {**run.splits, "": load_split(result.run_dir)}
    for tag, group, _ in METRICS:
        want = [1] if group == "" else [0, 1]
        assert folders[group].steps(tag) == want, (group, tag)
    np.testing.assert_allclose(
        run.validation.scalar("epoch_loss")[-1], result.history["val_loss"][-1], rtol=1e-6
    )


@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_verdict_metrics_equal_a_computation_from_the_event_files(runs, loop):
    result = runs[loop]
    root = load_split(result.run_dir)
    written = {tag: float(root.scalar(tag)[-1]) for tag in root.scalars}
    want = expected_verdict_scalars(result.run_dir)
    assert set(written) == set(want)
    assert written == pytest.approx(want, rel=1e-6)
    label = result.extra["verdict"]["label"]
    assert written["verdict/code"] == verdict.CODES[label]


def test_write_hparams_writes_integers_as_text_and_checks_its_input(tmp_path):
    write_hparams(tmp_path / "r", {"n": np.int64(3), "flag": True, "lr": np.float32(0.5)})
    exp = _experiment(tmp_path / "r")
    types = {h.name: api_pb2.DataType.Name(h.type) for h in exp.hparam_infos}
    assert types == {"n": "DATA_TYPE_STRING", "flag": "DATA_TYPE_BOOL", "lr": "DATA_TYPE_FLOAT64"}
    with pytest.raises(TypeError, match=r"str, bool, int or float\. Received: seed=None"):
        write_hparams(tmp_path / "a", {"seed": None})
    with pytest.raises(ValueError, match=r"lacks the run's value\. Received: act='gelu'"):
        write_hparams(tmp_path / "b", {"act": "gelu"}, domains={"act": ["relu", "tanh"]})
    with pytest.raises(ValueError, match=r"domains name columns hparams lacks\. .*\['init'\]"):
        write_hparams(tmp_path / "c", {"act": "relu"}, domains={"init": ["zeros"]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_write_hparams_rejects_a_non_mapping(tmp_path):
    # The library takes a plain mapping; a lab config must be converted first.
    with pytest.raises(TypeError, match=r"hparams must be a mapping.*Received: RunConfig\("):
        write_hparams(tmp_path, make_config("A2"))
    assert list(tmp_path.iterdir()) == []


def test_write_verdict_leaves_out_figures_a_verdict_lacks(tmp_path):
    non_finite = verdict.Verdict(verdict.NON_FINITE, None, None, "the loss is NaN or Inf")
    assert write_verdict(tmp_path / "nf", non_finite, step=4) == {"verdict/code": 2.0}
    assert load_split(tmp_path / "nf").scalars == {"verdict/code": [(4, 2.0)]}
    unknown = verdict.Verdict(verdict.UNKNOWN, None, None, "no epoch logged")
    assert write_verdict(tmp_path / "unknown", unknown, step=0) == {}
    assert not (tmp_path / "unknown").exists()


# -- Custom Scalars ---------------------------------------------------------------


@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_layout_has_one_chart_per_layer_in_model_order(runs, loop):
    run_dir = runs[loop].run_dir
    proto = _layout(run_dir / "train")
    assert [c.title for c in proto.category] == [layout.CATEGORY, layout.OVERVIEW_CATEGORY]
    per_layer, overview = proto.category
    assert not per_layer.closed and overview.closed
    scalar_tags = set(load_run(run_dir).train.scalars)

    def selected(chart):
        regexes = chart.multiline.tag
        return sorted(t for t in scalar_tags if any(re.search(r, t) for r in regexes))

    # The output layer is every ratio's reference (always 0): no chart.
    assert [c.title for c in per_layer.chart] == ["hidden_1", "hidden_2"]
    for chart in per_layer.chart:
        assert selected(chart) == [f"grad_log10_ratio/{chart.title}"]
    charts = {c.title: selected(c) for c in overview.chart}
    assert charts == {
        "grad_log10_ratio: every layer": [f"grad_log10_ratio/{n}" for n in LAYERS],
        "grad_ratio": ["grad_ratio"],
    }


@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_log10_ratio_tags_equal_a_computation_from_grad_mean_abs(runs, loop):
    run_dir = runs[loop].run_dir
    train = load_run(run_dir).train
    g = grad_mean_abs(run_dir).astype(np.float64)
    for i, layer in enumerate(LAYERS):
        logged = train.scalar(tags.layer_tag(tags.GRAD_LOG10_RATIO, layer))
        np.testing.assert_allclose(logged, np.log10(g[:, i] / g[:, -1]), rtol=1e-5, atol=1e-6)
    assert list(train.scalar("grad_log10_ratio/output")) == [0.0, 0.0]


def test_log10_ratio_is_minus_infinity_for_a_dead_layer():
    out = log10_ratio(np.array([0.0, 0.01, 0.1]), reference=2)
    np.testing.assert_array_equal(out, [-np.inf, -1.0, 0.0])
    assert np.isnan(log10_ratio(np.array([0.0, 0.0]), reference=1)).all()


def test_layout_is_written_for_a_user_model_with_the_callback(tmp_path, circles):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((2,))
    h = keras.layers.Dense(3, activation="tanh", name="encoder")(inputs)
    h = keras.layers.Dense(3, activation="tanh", name="mix.1")(h)  # a regex character
    out = keras.layers.Dense(1, activation="sigmoid", name="head")(h)
    model = keras.Model(inputs, out)
    model.compile("adam", "binary_crossentropy")
    model.fit(
        circles.x_train[:64],
        circles.y_train[:64],
        epochs=1,
        batch_size=32,
        verbose=0,
        callbacks=[tbgrad.TensorBoard(tmp_path)],
    )
    proto = _layout(tmp_path / "train")
    assert proto == layout.gradient_flow_layout(["encoder", "mix.1"])
    train_tags = load_run(tmp_path).train.scalars
    for chart, layer in zip(proto.category[0].chart, ["encoder", "mix.1"]):
        (regex,) = chart.multiline.tag
        assert [t for t in train_tags if re.search(regex, t)] == [f"grad_log10_ratio/{layer}"]


def test_gradient_flow_layout_rejects_a_single_name():
    with pytest.raises(TypeError, match=r"sequence of layer names\. Received: 'hidden_1'"):
        layout.gradient_flow_layout("hidden_1")
