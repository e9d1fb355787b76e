"""A real TensorBoard server over two runs of train.py, asked through its HTTP API.

The routes are those of the installed tensorboard package:
core ``/data/runs`` and ``/data/plugins_listing``
(``tensorboard/plugins/core/core_plugin.py``, ``backend/application.py``),
``/data/plugin/<name>/...`` from each plugin's ``get_plugin_apps``
(scalars and histograms ``/tags``, hparams ``/experiment`` and
``/session_groups``, custom_scalars ``/layout``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tbgrad import layout, tags
from tbgrad.cli.train import main as train_main
from tbgrad.eventlog import load_run
from tbgrad.hparams import METRICS
from tbgrad.lab.config import HPARAM_DOMAINS, HPARAMS

pytestmark = pytest.mark.slow

RUNS = {
    "tanh-uniform01-d2-w5-sgd-s1": ["--act", "tanh", "--init", "uniform01"],
    "relu-he_uniform-d2-w5-sgd-s1": ["--act", "relu", "--init", "he_uniform"],
}
LAYERS = ["hidden_1", "hidden_2", "output"]
READY_TIMEOUT = 120  # seconds; TensorBoard loads event files in the background
VERDICT_TAGS = {tags.VERDICT, tags.VERDICT_WEAKEST_RATIO, tags.VERDICT_STRONGEST_RATIO}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, path: str, **params):
    url = base + path
    if params:
        url += "?" + urllib.parse.urlencode({k: json.dumps(v) for k, v in params.items()})
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _tensorboard_command() -> list[str]:
    exe = Path(sys.executable).with_name("tensorboard")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tensorboard.main"]


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logs")
    for name, flags in RUNS.items():
        args = [*flags, "--depth", "2", "--epochs", "2", "--logdir", str(logdir), "--quiet"]
        assert train_main(args) == 0  # scripts/train.py's main, in this process
        assert (logdir / name).is_dir()
    return logdir


@pytest.fixture(scope="module")
def server(logdir):
    port = _free_port()
    proc = subprocess.Popen(
        _tensorboard_command()
        + ["--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # The working tree's tbgrad (its dashboard plugin), not an installed copy.
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])),
    )
    base = f"http://127.0.0.1:{port}"
    expected = {f"{name}/{split}" for name in RUNS for split in ("train", "validation")}
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tensorboard exited with {proc.returncode}: {proc.stderr.read()}")
            try:
                runs = set(_get(base, "/data/runs"))
                if expected <= runs:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tensorboard on port {port} not ready in {READY_TIMEOUT}s")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_both_runs_and_the_plugins_are_served(server):
    runs = set(_get(server, "/data/runs"))
    # Each run folder is a run (its HParams) with train/ and validation/.
    assert runs == {f"{n}{s}" for n in RUNS for s in ("", "/train", "/validation")}
    listing = _get(server, "/data/plugins_listing")
    for plugin in ("scalars", "histograms", "hparams", "custom_scalars"):
        assert listing[plugin]["enabled"], plugin


def test_every_histogram_and_scalar_tag_of_both_runs_is_served(server, logdir):
    histograms = _get(server, "/data/plugin/histograms/tags")
    scalars = _get(server, "/data/plugin/scalars/tags")
    for name, flags in RUNS.items():
        act = flags[flags.index("--act") + 1]
        expected = tags.layer_tags(
            LAYERS, activations={"hidden_1": act, "hidden_2": act, "output": "sigmoid"}
        )
        want_histograms = {t for t, p in expected.items() if p == "histograms"}
        want_scalars = {t for t, p in expected.items() if p == "scalars"} | {
            tags.epoch_tag(m) for m in ("loss", "accuracy", "learning_rate")
        }
        keras_histograms = {
            f"mlp/{layer}/{w}/histogram" for layer in LAYERS for w in ("kernel", "bias")
        }
        assert set(histograms[f"{name}/train"]) == want_histograms | keras_histograms
        assert set(scalars[f"{name}/train"]) == want_scalars
        assert set(scalars[f"{name}/validation"]) == {
            *(f"epoch_{m}" for m in ("loss", "accuracy")),
            *(f"evaluation_{m}_vs_iterations" for m in ("loss", "accuracy")),
        }
        assert set(scalars[name]) == VERDICT_TAGS  # the run folder itself
    # Values served equal the values in the event files.
    name = next(iter(RUNS))
    query = urllib.parse.urlencode({"run": f"{name}/train", "tag": tags.GRAD_RATIO})
    with urllib.request.urlopen(f"{server}/data/plugin/scalars/scalars?{query}") as r:
        points = json.loads(r.read())  # [[wall_time, step, value], ...]
    run = load_run(logdir / name)
    assert [p[1] for p in points] == [0, 1]
    assert [p[2] for p in points] == pytest.approx(list(run.train.scalar(tags.GRAD_RATIO)))


def verdict_figures(run) -> dict[str, float]:
    """The verdict's metrics computed here from the run's grad_mean_abs scalars."""
    g = np.stack([run.train.scalar(f"grad_mean_abs/{layer}") for layer in LAYERS], axis=1)
    quotients = g[:, :-1] / g[:, -1:]  # every hidden layer over the output layer
    weakest = float(np.median(quotients.min(axis=1)))
    strongest = float(np.median(quotients.max(axis=1)))
    code = -1 if weakest < 0.1 else 1 if strongest > 100 else 0
    return {
        tags.VERDICT: code,
        tags.VERDICT_WEAKEST_RATIO: weakest,
        tags.VERDICT_STRONGEST_RATIO: strongest,
    }


def test_hparams_experiment_lists_every_column_with_its_type(server):
    # What the HParams page asks (tf-hparams-query-pane: hparamsLimit 1000).
    experiment = _get(
        server,
        "/data/plugin/hparams/experiment",
        request={"experimentName": "", "hparamsLimit": 1000},
    )
    infos = experiment["hparamInfos"]
    # The server sorts the columns by name, whatever order the runs wrote.
    assert [h["name"] for h in infos] == sorted(HPARAMS)
    assert {h["name"]: h["type"] for h in infos} == {
        name: "DATA_TYPE_FLOAT64" if name in ("lr", "momentum") else "DATA_TYPE_STRING"
        for name in HPARAMS
    }
    for info in infos:
        assert info.get("domainDiscrete", []) == list(HPARAM_DOMAINS.get(info["name"], []))
    metrics = [
        (m["name"]["tag"], m["name"]["group"], m["displayName"]) for m in experiment["metricInfos"]
    ]
    assert metrics == list(METRICS)
    assert ("verdict/weakest_ratio", "") in [(tag, group) for tag, group, _ in metrics[:5]]


def test_hparams_rows_hold_config_and_last_metric_values(server, logdir):
    request = {
        "experimentName": "",
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [{"hparam": name} for name in HPARAMS]
        + [{"metric": {"tag": tag, "group": group}} for tag, group, _ in METRICS],
        "startIndex": 0,
        "sliceSize": 100,
        "includeMetrics": True,
    }
    groups = _get(server, "/data/plugin/hparams/session_groups", request=request)
    rows = {g["name"]: g for g in groups["sessionGroups"]}
    assert set(rows) == set(RUNS)
    for name, flags in RUNS.items():
        row = rows[name]
        assert row["hparams"] == {
            "act": flags[1],
            "init": flags[3],
            "output_init": "default",
            "depth": "2",  # integers as text: HParams prints numbers as 2.0000
            "width": "5",
            "optimizer": "sgd",
            "lr": 0.01,
            "momentum": 0.9,
            "batch_size": "32",
            "epochs": "2",
            "seed": "1",
            "loop": "fit",
            "dataset": "circles-a",
            "preset": "none",
        }
        metrics = {(m["name"]["group"], m["name"]["tag"]): m["value"] for m in row["metricValues"]}
        assert set(metrics) == {(group, tag) for tag, group, _ in METRICS}
        run = load_run(logdir / name)
        for split in ("train", "validation"):
            for tag in ("epoch_accuracy", "epoch_loss"):
                assert metrics[(split, tag)] == pytest.approx(run.splits[split].scalar(tag)[-1])
        assert metrics[("train", tags.GRAD_RATIO)] == pytest.approx(
            run.train.scalar(tags.GRAD_RATIO)[-1]
        )
        for tag, value in verdict_figures(run).items():
            assert metrics[("", tag)] == pytest.approx(value, rel=1e-6), (name, tag)
    # The two runs this test trains: one vanishes, one does not.
    codes = {name: rows[name]["metricValues"] for name in RUNS}
    verdicts = {
        name: next(m["value"] for m in values if m["name"]["tag"] == tags.VERDICT)
        for name, values in codes.items()
    }
    assert verdicts == {"tanh-uniform01-d2-w5-sgd-s1": -1, "relu-he_uniform-d2-w5-sgd-s1": 0}


def test_custom_scalars_layout_is_served_once_for_both_runs(server):
    served = _get(server, "/data/plugin/custom_scalars/layout")
    want = layout.gradient_flow_layout(LAYERS[:-1])  # the output layer is the reference
    assert [(c["title"], c.get("closed", False)) for c in served["category"]] == [
        (c.title, c.closed) for c in want.category
    ]
    for category, wanted in zip(served["category"], want.category):
        assert [(c["title"], c["multiline"]["tag"]) for c in category["chart"]] == [
            (c.title, list(c.multiline.tag)) for c in wanted.chart
        ]
    assert [c["title"] for c in served["category"][0]["chart"]] == ["hidden_1", "hidden_2"]
