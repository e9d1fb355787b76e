"""The Gradient-flow plugin in a real TensorBoard over real training runs.

Two tiny runs trained here with ``tbgrad.TensorBoard`` (one that
vanishes: 5 tanh layers with RandomUniform(0, 1) kernels; one healthy:
relu with he_uniform), plus a run written with plain ``tf.summary`` and no
``tbgrad/layers`` summary (an older tbgrad run). A ``tensorboard``
subprocess serves them with ``--load_fast=false`` (the Python multiplexer)
and ``--load_fast=true`` (the Rust data server); the plugin's routes are
asked over HTTP and their values compared with the event files read by
:func:`tbgrad.eventlog.load_run`. Headless Chromium renders the page.
"""

from __future__ import annotations

import html
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from numpy.testing import assert_allclose
from sklearn.datasets import make_circles

import tbgrad
from tbgrad import tags, verdict
from tbgrad.dashboard import metadata
from tbgrad.eventlog import load_run
from tbgrad.hparams import write_hparams

pytestmark = pytest.mark.slow

LAYERS = [f"hidden_{i}" for i in range(1, 6)] + ["output"]
EPOCHS = 4
RUNS = {
    "vanishing": ("tanh", keras.initializers.RandomUniform(0.0, 1.0)),
    "healthy": ("relu", "he_uniform"),
}
# An older run: scalars only, written out of order, no layer-order summary.
LEGACY = "legacy"
LEGACY_WRITE_ORDER = ["output", "hidden_10", "hidden_2", "hidden_1"]
LEGACY_NATURAL_ORDER = ["hidden_1", "hidden_2", "hidden_10", "output"]
READY_TIMEOUT = 60  # seconds; TensorBoard loads event files in the background
PLUGIN = f"/data/plugin/{metadata.PLUGIN_NAME}"
FRAME = f"/data/plugin_entry.html?name={metadata.PLUGIN_NAME}"
CHROMIUM = "/usr/bin/chromium"
EMPTY_SENTENCE = "No tbgrad runs in this log folder"
# The vanishing run's HParams; the others have none.
CONFIG = {"act": "tanh", "init": "uniform01", "depth": 5, "lr": 0.01}


# -- runs -----------------------------------------------------------------------


def train(run_dir: Path, activation: str, init, x: np.ndarray, y: np.ndarray) -> None:
    """Trains a 5 x 5 MLP with named layers, logging with GradientTensorBoard."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((2,))
    h = inputs
    for name in LAYERS[:-1]:
        h = keras.layers.Dense(5, activation=activation, kernel_initializer=init, name=name)(h)
    out = keras.layers.Dense(1, activation="sigmoid", name=LAYERS[-1])(h)
    model = keras.Model(inputs, out)
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9), "binary_crossentropy", metrics=["accuracy"]
    )
    callback = tbgrad.TensorBoard(run_dir, histogram_freq=0)
    model.fit(
        x, y, batch_size=64, epochs=EPOCHS, validation_data=(x[:64], y[:64]), verbose=0,
        callbacks=[callback],
    )  # fmt: skip


def write_legacy_run(run_dir: Path) -> None:
    """A run with grad_mean_abs scalars only, its layers written out of model order."""
    writer = tf.summary.create_file_writer(str(run_dir / tags.TRAIN_DIR))
    with writer.as_default():
        for epoch in range(3):
            for i, layer in enumerate(LEGACY_WRITE_ORDER):
                value = 10.0 ** -(i + 1) * (epoch + 1)
                tf.summary.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS, layer), value, step=epoch)
    writer.close()


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    """The vanishing and the healthy run, trained here, and the legacy run."""
    logdir = tmp_path_factory.mktemp("dashboard_logs")
    x, y = make_circles(256, noise=0.05, factor=0.5, random_state=0)
    for name, (activation, init) in RUNS.items():
        train(logdir / name, activation, init, x.astype("float32"), y.astype("float32"))
    write_hparams(logdir / "vanishing", CONFIG)
    write_legacy_run(logdir / LEGACY)
    return logdir


# -- TensorBoard ----------------------------------------------------------------


def _free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base: str, path: str) -> tuple[int, str, object]:
    """``(status, content type, JSON body)`` of a GET; 4xx answers too."""
    try:
        with urllib.request.urlopen(base + path, timeout=30) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], json.loads(e.read())


def query(**params) -> str:
    """A query string; a list value repeats its key (``run=a&run=b``)."""
    return urllib.parse.urlencode(params, doseq=True)


@contextmanager
def tensorboard(logdir: Path, load_fast: bool, log: Path, ready):
    """A ``tensorboard`` subprocess on a free port; yields its base URL once ``ready(base)``."""
    exe = Path(sys.executable).with_name("tensorboard")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "tensorboard.main"]
    port = _free_port()
    command += ["--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)]
    command += [f"--load_fast={str(load_fast).lower()}"]
    base = f"http://127.0.0.1:{port}"
    with open(log, "w") as log_file:
        # The working tree's tbgrad (its dashboard plugin), not an installed copy.
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not _is_ready(ready, base):
                if proc.poll() is not None:
                    pytest.fail(f"tensorboard exited with {proc.returncode}: {log.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"tensorboard not ready in {READY_TIMEOUT}s: {log.read_text()}")
                time.sleep(0.5)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _is_ready(ready, base: str) -> bool:
    """``ready(base)``, False while the server does not answer yet."""
    try:
        return ready(base)
    except (urllib.error.URLError, ConnectionError):
        return False


def _all_runs_loaded(base: str) -> bool:
    """Whether /runs holds every epoch of the three runs (loading is in the background)."""
    status, _, runs = get(base, f"{PLUGIN}/runs")
    epochs = {r["name"]: r["epochs"] for r in runs} if status == 200 else {}
    return epochs == {"vanishing": EPOCHS, "healthy": EPOCHS, LEGACY: 3}


@pytest.fixture(
    scope="module", params=[False, True], ids=["load_fast=false", "load_fast=true"]
)  # fmt: skip
def server(request, logdir, tmp_path_factory):
    """TensorBoard over ``logdir``, with --load_fast=false and then --load_fast=true."""
    load_fast = request.param
    if load_fast:
        import tensorboard_data_server

        if tensorboard_data_server.server_binary() is None:
            pytest.skip("the tensorboard-data-server package ships no binary for this platform")
    log = tmp_path_factory.mktemp("tb") / "tensorboard.log"
    # load_fast=true exits (does not fall back) when the data server cannot
    # start, so a server that answers here reads through the Rust data server.
    with tensorboard(logdir, load_fast, log, _all_runs_loaded) as base:
        yield base


@pytest.fixture(scope="module")
def empty_server(tmp_path_factory):
    """TensorBoard over an empty folder."""
    empty = tmp_path_factory.mktemp("empty_logs")
    log = tmp_path_factory.mktemp("tb_empty") / "tensorboard.log"
    ready = lambda base: get(base, "/data/plugins_listing")[0] == 200  # noqa: E731
    with tensorboard(empty, False, log, ready) as base:
        yield base


# -- HTTP API -------------------------------------------------------------------


def test_plugin_is_listed_enabled_as_an_iframe_tab(server):
    status, _, listing = get(server, "/data/plugins_listing")
    assert status == 200
    entry = listing[metadata.PLUGIN_NAME]
    assert entry["enabled"] is True
    assert entry["tab_name"] == "Gradient flow"
    assert entry["loading_mechanism"] == {
        "type": "IFRAME",
        "module_path": f"{PLUGIN}/index.js",
    }
    with urllib.request.urlopen(f"{server}{PLUGIN}/index.js", timeout=30) as response:
        assert "javascript" in response.headers["Content-Type"]
        assert "export async function render()" in response.read().decode()


def test_runs_lists_layers_in_model_order_and_the_verdicts(server, logdir):
    status, content_type, runs = get(server, f"{PLUGIN}/runs")
    assert status == 200 and content_type.startswith("application/json")
    by_name = {r["name"]: r for r in runs}
    assert [r["name"] for r in runs] == ["healthy", LEGACY, "vanishing"]
    for name in RUNS:
        run = by_name[name]
        assert run["run"] == f"{name}/{tags.TRAIN_DIR}"
        assert run["layers"] == LAYERS and run["layer_order"] == "summary"
        # The described families first, in the registry's order.
        assert run["statistics"][:3] == [
            tags.GRAD_MEAN_ABS,
            tags.GRAD_STD,
            tags.GRAD_MEAN_ABS_MAX,
        ]
        # Activation health: the sigmoid output saturates or not, the
        # hidden layers' families follow their activation.
        hidden = (
            [tags.ACTIVATION_ZERO, tags.ACTIVATION_DEAD]
            if RUNS[name][0] == "relu"
            else [tags.ACTIVATION_SATURATED]
        )
        per_layer = tags.families(kind="scalar", per_layer=True)
        expected_families = {*per_layer, tags.ACTIVATION_SATURATED, *hidden}
        assert set(run["statistics"]) == expected_families
        # The verdict is verdict.py's, read from the same event files.
        expected = verdict.verdict_of(logdir / name)
        assert run["verdict"]["label"] == expected.label
        assert run["verdict"]["reason"] == expected.reason
        assert run["verdict"]["weakest_ratio"] == pytest.approx(expected.weakest_ratio)
        # Its explanation too, with the run's HParams (the vanishing run's).
        assert run["verdict"]["explanation"] == json.loads(
            json.dumps(expected.explanation.to_dict())
        )
        # The weakest layer: smallest median ratio to the output layer.
        train = load_run(logdir / name).train
        g = np.stack([train.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS, n)) for n in LAYERS], 1)
        medians = np.median(g[:, :-1] / g[:, -1:], axis=0)
        assert run["weakest_layer"] == LAYERS[int(np.argmin(medians))]
        assert run["weakest_layer_ratio"] == pytest.approx(medians.min())
    assert by_name["vanishing"]["verdict"]["label"] == verdict.VANISHING
    assert by_name["healthy"]["verdict"]["label"] == verdict.HEALTHY
    legacy = by_name[LEGACY]
    assert legacy["layers"] == LEGACY_NATURAL_ORDER and legacy["layer_order"] == "natural"
    assert legacy["statistics"] == [tags.GRAD_MEAN_ABS]
    # The run folder's HParams, every field in the order written (integers as text).
    assert by_name["vanishing"]["config"] == [
        ["act", "tanh"], ["init", "uniform01"], ["depth", "5"], ["lr", 0.01]
    ]  # fmt: skip
    assert by_name["healthy"]["config"] == [] and legacy["config"] == []


@pytest.mark.parametrize(
    "stat", [tags.GRAD_MEAN_ABS, tags.GRAD_STD, tags.WEIGHT_STD, tags.UPDATE_RATIO]
)
def test_heatmap_values_equal_the_event_files(server, logdir, stat):
    for name in RUNS:
        status, _, body = get(server, f"{PLUGIN}/heatmap?" + query(run=name, stat=stat))
        assert status == 200
        train = load_run(logdir / name).train
        expected = np.stack([train.scalar(tags.layer_tag(stat, n)) for n in LAYERS])
        assert body["layers"] == LAYERS and body["stat"] == stat
        assert body["epochs"] == list(range(EPOCHS)) and body["scale"] == "log"
        assert_allclose(np.array(body["values"], dtype=float), expected, rtol=1e-6)
        status, _, rel = get(server, f"{PLUGIN}/heatmap?" + query(run=name, stat=stat, relative=1))
        assert status == 200 and rel["relative"] is True
        assert_allclose(np.array(rel["values"], dtype=float), expected / expected[-1:], rtol=1e-6)


def test_heatmaps_returns_several_runs_on_one_scale(server, logdir):
    names = ["vanishing", f"healthy/{tags.TRAIN_DIR}"]  # folder or TensorBoard's name
    status, _, body = get(server, f"{PLUGIN}/heatmaps?" + query(run=names, stat="weight_mean"))
    assert status == 200
    assert body["scale"] == "linear" and body["relative"] is False
    assert [m["name"] for m in body["runs"]] == ["vanishing", "healthy"]
    for heatmap in body["runs"]:
        train = load_run(logdir / heatmap["name"]).train
        expected = np.stack([train.scalar(tags.layer_tag(tags.WEIGHT_MEAN, n)) for n in LAYERS])
        assert_allclose(np.array(heatmap["values"], dtype=float), expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("params", "code", "message"),
    [
        ({"stat": tags.GRAD_MEAN_ABS}, 400, "missing parameter run"),
        ({"run": "vanishing"}, 400, "missing parameter stat"),
        ({"run": "no-such-run", "stat": tags.GRAD_MEAN_ABS}, 404, "unknown run 'no-such-run'"),
        ({"run": "vanishing", "stat": "bogus"}, 400, "unknown statistic 'bogus'"),
        ({"run": LEGACY, "stat": tags.GRAD_STD}, 400, "unknown statistic 'grad_std'"),
        ({"run": "vanishing", "stat": tags.GRAD_STD, "relative": "maybe"}, 400, "relative must"),
        ({"run": "vanishing", "stat": tags.WEIGHT_MEAN, "relative": "1"}, 400, "relative=1"),
        ({"run": ["vanishing", "healthy"], "stat": tags.GRAD_STD}, 400, "one run"),
    ],
)
def test_bad_requests_get_a_json_message(server, params, code, message):
    status, content_type, body = get(server, f"{PLUGIN}/heatmap?" + query(**params))
    assert status == code
    assert content_type.startswith("application/json")
    assert message in body["error"]


def test_empty_logdir_lists_no_run(empty_server):
    status, _, runs = get(empty_server, f"{PLUGIN}/runs")
    assert (status, runs) == (200, [])
    status, _, listing = get(empty_server, "/data/plugins_listing")
    assert listing[metadata.PLUGIN_NAME]["enabled"] is False


# -- browser --------------------------------------------------------------------


def chromium(url: str, profile: Path, *flags: str) -> str:
    """Headless Chromium's stdout for ``url``; skips (fails under CI) without Chromium."""
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} not found (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=20000",
        *flags, url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_page_shows_every_layer_and_both_runs(server, logdir, tmp_path):
    # TensorBoard shows a dynamic plugin in an iframe of this URL, so the
    # plugin's DOM is in this page's dump, not in the main page's.
    dom = chromium(server + FRAME, tmp_path / "profile", "--dump-dom")
    for name in RUNS:
        assert f'data-run="{name}/{tags.TRAIN_DIR}"' in dom
        assert f">{name}</h2>" in dom
    for layer in LAYERS:
        assert f">{layer}</text>" in dom
    assert 'class="colourbar"' in dom and "10⁻" in dom  # decades on the colour bar
    assert "near 1e-3 is healthy" in dom  # update_ratio's reference
    assert "vanishing</span>" in dom and "healthy</span>" in dom  # the verdict badges
    # Each verdict explained below its badge: why, and for the vanishing run what to try.
    assert dom.count('class="explanation"') == len(RUNS) + 1  # and the legacy run's
    why = str(verdict.verdict_of(logdir / "vanishing").explanation)
    for line in why.splitlines():
        head, rest = line.split(": ", 1)
        assert f"<b>{head}:</b> {html.escape(rest, quote=False)}</div>" in dom
    # The vanishing run's configuration, every field of its HParams.
    assert '<div class="config">act <b>tanh</b> · init <b>uniform01</b> · depth <b>5</b>' in dom
    assert dom.count('class="config"') == 1
    shot = tmp_path / "dashboard.png"
    chromium(
        f"{server}/?forceSVG=true#{metadata.PLUGIN_NAME}",
        tmp_path / "profile",
        "--window-size=1600,1000",
        "--hide-scrollbars",
        f"--screenshot={shot}",
    )
    assert png_size(shot) == (1600, 1000)


def test_page_of_an_empty_logdir_says_so(empty_server, tmp_path):
    dom = chromium(empty_server + FRAME, tmp_path / "profile", "--dump-dom")
    assert EMPTY_SENTENCE in dom
