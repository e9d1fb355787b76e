"""The Gradient-flow tab at scale: a 12-block GPT-2's rows grouped by block,
folded, filtered by kind, the reference (its tied token embedding) at the
bottom.

The kinds, blocks and row order are unit-tested on names of real models
(KerasHub's GPT-2, Llama with and without LoRA, BERT). A tiny 12-block
KerasHub GPT-2 and an MLP are trained here with ``tbgrad.TensorBoard``;
the plugin's answers are read through TensorBoard's data provider and
compared with the event files, then a real ``tensorboard`` serves them and
headless Chromium, driven over the DevTools protocol, folds, unfolds and
filters the rows.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import statistics
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import keras
import keras_hub
import numpy as np
import pytest
from conftest import GPT2_BLOCK_MATRICES
from numpy.testing import assert_allclose
from test_dashboard import CHROMIUM, FRAME, PLUGIN, get, query, tensorboard

import tbgrad
from tbgrad import tags, verdict
from tbgrad.dashboard.plugin import (
    ATTENTION,
    EMBEDDING,
    FEED_FORWARD,
    HEAD,
    OTHER,
    block_names,
    display_order,
    matrix_kind,
    weakest_layer,
)
from tbgrad.eventlog import load_run

BLOCKS = 12
EPOCHS = 2
BLOCK_MATRICES = list(GPT2_BLOCK_MATRICES)
# The GPT-2's rows as the tab shows them: model order, but the tied token
# embedding (the head, first in model order) at the bottom.
GPT2_ROWS = [
    "position_embedding/embeddings",
    *(f"transformer_layer_{b}/{m}" for b in range(BLOCKS) for m in BLOCK_MATRICES),
    "token_embedding/embeddings",
]
MLP_LAYERS = [f"hidden_{i}" for i in range(1, 4)] + ["output"]


# -- kinds, blocks and order, from the names of real models -----------------------


@pytest.mark.parametrize(
    ("name", "reference", "kind"),
    [
        ("transformer_layer_3/self_attention/query", None, ATTENTION),
        ("transformer_layer_3/self_attention/attention_output", None, ATTENTION),
        ("transformer_layer_0/self_attention_layer/key", None, ATTENTION),  # BERT
        ("transformer_layer_1/self_attention/value/lora_kernel_b", None, ATTENTION),
        ("multi_head_attention/query", None, ATTENTION),  # keras.layers.MultiHeadAttention
        ("transformer_layer_3/feedforward_intermediate_dense", None, FEED_FORWARD),
        ("transformer_layer_3/feedforward_gate_dense", None, FEED_FORWARD),  # Llama
        ("transformer_layer_3/feedforward_output_dense", None, FEED_FORWARD),
        ("h_2/mlp/c_fc", None, FEED_FORWARD),
        ("encoder_1/ffn/dense", None, FEED_FORWARD),
        ("token_embedding/embeddings", None, EMBEDDING),
        ("position_embedding/embeddings", "token_embedding/embeddings", EMBEDDING),
        ("token_embedding/reverse_embeddings", None, EMBEDDING),
        ("token_embedding/embeddings", "token_embedding/embeddings", HEAD),  # GPT-2, tied
        ("token_embedding/reverse_embeddings", "token_embedding/reverse_embeddings", HEAD),
        ("logits", "logits", HEAD),
        ("output", "output", HEAD),
        ("hidden_1", "output", OTHER),
        ("pooled_dense", "logits", OTHER),
        ("conv2d_3/bias", None, OTHER),
    ],
)
def test_matrix_kind_from_the_name(name, reference, kind):
    assert matrix_kind(name, reference) == kind


def test_block_names_group_a_models_repeated_blocks():
    names = [
        "token_embedding/embeddings",
        "transformer_layer_0/self_attention/query",
        "transformer_layer_0/feedforward_output_dense",
        "transformer_layer_1/self_attention/query",
        "transformer_layer_1/self_attention/query/bias",
        "transformer_layer_1/feedforward_output_dense",
        "pooled_dense",
    ]
    assert block_names(names) == [
        None,
        "transformer_layer_0",
        "transformer_layer_0",
        "transformer_layer_1",
        "transformer_layer_1",
        "transformer_layer_1",
        None,
    ]
    # Nested: the block is the whole path to its indexed component; a
    # single block of a stem repeats nothing.
    nested = [
        "encoder/layer_0/query", "encoder/layer_0/ffn",
        "encoder/layer_1/query", "encoder/layer_1/ffn",
        "decoder/layer_0/query",
    ]  # fmt: skip
    assert block_names(nested) == [*["encoder/layer_0"] * 2, *["encoder/layer_1"] * 2, None]


def test_an_mlp_has_no_block():
    # hidden_<i> are layers named by their index, not blocks: with
    # variables="all" their biases are tracked, the kernels alone compared.
    names = ["hidden_1", "hidden_1/bias", "hidden_2", "hidden_2/bias", "output", "output/bias"]
    assert block_names(names, ["hidden_1", "hidden_2", "output"]) == [None] * 6
    assert block_names(MLP_LAYERS) == [None] * 4
    # One block of a stem is no repetition.
    assert block_names(["stage_1/conv", "head/dense"]) == [None, None]


def test_display_order_puts_blocks_by_index_and_the_reference_last():
    names = [
        "token_embedding/embeddings",  # the tied head: first in model order
        "layer_10/query",
        "layer_2/query",
        "layer_2/value",
        "norm",
        "layer_10/value",
    ]
    order = display_order(names, block_names(names), "token_embedding/embeddings")
    assert [names[i] for i in order] == [
        "layer_2/query",
        "layer_2/value",
        "layer_10/query",
        "layer_10/value",
        "norm",
        "token_embedding/embeddings",
    ]
    # An MLP with variables="all": model order, the output's bias stays with it.
    mlp = ["hidden_1", "hidden_1/bias", "output", "output/bias"]
    assert display_order(mlp, [None] * 4, "output", ["hidden_1", "output"]) == [0, 1, 2, 3]
    # LoRA: the reference is a factor inside the last block; it leaves its block.
    lora = [
        "layer_0/query/lora_kernel_a",
        "layer_1/value/lora_kernel_b",
        "layer_1/query/lora_kernel_a",
    ]
    order = display_order(lora, block_names(lora), lora[1], lora)
    assert [lora[i] for i in order] == [lora[0], lora[2], lora[1]]


# -- real runs ------------------------------------------------------------------


def _fit_gpt2(run_dir: Path) -> None:
    """A 12-block GPT-2 causal LM from config, 2 epochs of one step each."""
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=200,
        num_layers=BLOCKS,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=16,
    )
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    # Eagerly: tracing a 12-block train step costs far more than its steps.
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )
    tokens = np.random.default_rng(0).integers(0, 200, size=(16, 17))
    x = {"token_ids": tokens[:, :-1], "padding_mask": np.ones((16, 16), "int32")}
    callback = tbgrad.TensorBoard(run_dir, histogram_freq=0)
    model.fit(
        x,
        tokens[:, 1:],
        batch_size=16,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[callback],
    )


def _fit_mlp(run_dir: Path) -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((2,))]
        + [keras.layers.Dense(4, "tanh", name=name) for name in MLP_LAYERS[:-1]]
        + [keras.layers.Dense(1, name=MLP_LAYERS[-1])]
    )
    model.compile(keras.optimizers.SGD(0.01), "mse")
    x = np.random.default_rng(0).normal(size=(32, 2)).astype("float32")
    callback = tbgrad.TensorBoard(run_dir, histogram_freq=0)
    model.fit(x, x[:, :1], batch_size=16, epochs=EPOCHS, verbose=0, callbacks=[callback])


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scale_logs")
    _fit_gpt2(root / "gpt2")
    _fit_mlp(root / "mlp")
    return root


def _scalars(logdir: Path, run: str, stat: str, layers) -> np.ndarray:
    train = load_run(logdir / run).train
    return np.stack([train.scalar(tags.layer_tag(stat, name)) for name in layers])


def test_a_gpt2s_rows_come_by_block_with_the_reference_last(logdir, plugin_get):
    got = plugin_get(logdir, "/heatmaps", query(run="gpt2", stat=tags.GRAD_MEAN_ABS))
    (gpt2,) = got["runs"]
    assert gpt2["layers"] == GPT2_ROWS
    assert gpt2["reference"] == "token_embedding/embeddings"
    assert load_run(logdir / "gpt2").train.kernels[-1] == gpt2["reference"]
    blocks = [None] + [f"transformer_layer_{b}" for b in range(BLOCKS) for _ in BLOCK_MATRICES]
    assert gpt2["blocks"] == blocks + [None]
    assert Counter(gpt2["kinds"]) == {ATTENTION: 48, FEED_FORWARD: 24, EMBEDDING: 1, HEAD: 1}
    assert gpt2["kinds"][-1] == HEAD
    expected = _scalars(logdir, "gpt2", tags.GRAD_MEAN_ABS, GPT2_ROWS)
    assert_allclose(np.array(gpt2["values"], dtype=float), expected, rtol=1e-6)
    # The relative view divides by the reference, wherever it is in model order.
    got = plugin_get(logdir, "/heatmaps", query(run="gpt2", stat=tags.GRAD_MEAN_ABS, relative=1))
    relative = np.array(got["runs"][0]["values"], dtype=float)
    assert_allclose(relative, expected / expected[-1:], rtol=1e-6)
    assert_allclose(relative[-1], 1.0)


def test_the_verdict_compares_the_gpt2s_matrices_with_its_reference(logdir, plugin_get):
    (run,) = [r for r in plugin_get(logdir, "/runs") if r["name"] == "gpt2"]
    assert run["reference"] == "token_embedding/embeddings"
    # What the plugin hands verdict.judge: the compared matrices, reference
    # last, as the run's layer-order summary lists them.
    train = load_run(logdir / "gpt2").train
    series = {
        name: train.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS, name)) for name in train.kernels
    }
    loss = tags.epoch_tag("loss")
    nonfinite = sum(
        float(np.nansum(train.scalar(t))) for t in train.scalars if t.startswith("grad_nonfinite/")
    )
    expected = verdict.judge(series, train.scalar(loss), nonfinite)
    assert (run["verdict"]["label"], run["verdict"]["reason"]) == (expected.label, expected.reason)
    # The same as the library's verdict of the run folder, explanation included.
    found = verdict.verdict_of(logdir / "gpt2")
    assert (found.label, found.reason) == (expected.label, expected.reason)
    assert run["verdict"]["explanation"] == json.loads(json.dumps(found.explanation.to_dict()))
    # No single weakest matrix is named: a query gets far less than its
    # value by nature; the verdict compares each kind along depth.
    assert run["weakest_layer"] is None and run["weakest_layer_ratio"] is None


def test_the_weakest_layer_is_not_an_embedding(logdir, plugin_get):
    (run,) = [r for r in plugin_get(logdir, "/runs") if r["name"] == "mlp"]
    train = load_run(logdir / "mlp").train
    g = np.stack([train.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS, n)) for n in MLP_LAYERS], 1)
    medians = np.median(g[:, :-1] / g[:, -1:], axis=0)
    assert run["weakest_layer"] == MLP_LAYERS[int(np.argmin(medians))]
    # An embedding's mean |g| is small by nature: never the one named.
    series = {"token_embedding/embeddings": [1e-6], "dense": [1e-2], "logits": [1e-1]}
    assert weakest_layer(series) == ("dense", pytest.approx(0.1))


def test_an_mlp_run_keeps_its_rows(logdir, plugin_get):
    (mlp,) = plugin_get(logdir, "/heatmaps", query(run="mlp", stat=tags.GRAD_MEAN_ABS))["runs"]
    assert mlp["layers"] == MLP_LAYERS and mlp["blocks"] == [None] * 4
    assert mlp["kinds"] == [OTHER, OTHER, OTHER, HEAD] and mlp["reference"] == "output"
    expected = _scalars(logdir, "mlp", tags.GRAD_MEAN_ABS, MLP_LAYERS)
    assert_allclose(np.array(mlp["values"], dtype=float), expected, rtol=1e-6)


# -- a real server and a real browser -----------------------------------------------


@pytest.fixture(scope="module")
def server(logdir, tmp_path_factory):
    """TensorBoard (the Python multiplexer) over the GPT-2 and the MLP."""

    def ready(base):
        status, _, runs = get(base, f"{PLUGIN}/runs")
        return status == 200 and {r["name"]: r["epochs"] for r in runs} == {
            "gpt2": EPOCHS,
            "mlp": EPOCHS,
        }

    log = tmp_path_factory.mktemp("tb_scale") / "tensorboard.log"
    with tensorboard(logdir, False, log, ready) as base:
        yield base


@pytest.mark.slow
def test_heatmaps_of_a_12_block_gpt2_answer_well_under_a_second(server):
    path = f"{PLUGIN}/heatmaps?" + query(run=["gpt2", "mlp"], stat=tags.GRAD_MEAN_ABS)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        status, _, body = get(server, path)
        times.append(time.perf_counter() - start)
        assert status == 200 and len(body["runs"][0]["layers"]) == len(GPT2_ROWS)
    assert statistics.median(times) < 0.5, times


class DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe
    (``--remote-debugging-pipe``: JSON messages ending in NUL on fds 3, 4)."""

    def __init__(self, profile: Path):
        self._to_chrome = os.pipe()
        self._from_chrome = os.pipe()
        self._buffer = b""
        self._id = 0

        command = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--remote-debugging-pipe", "--window-size=1600,1200",
        ]  # fmt: skip
        # Chromium's ends on fds 3 and 4, where it expects them; moved above
        # 9 first, so that neither dup2 overwrites the other's source.
        ends = [
            fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            for fd in (self._to_chrome[0], self._from_chrome[1])
        ]
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        moves = [(ends[0], 3), (ends[1], 4), (devnull, 1), (devnull, 2)]
        self.pid = os.posix_spawn(
            CHROMIUM, command, os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, *m) for m in moves]
        )
        for fd in (*ends, devnull, self._to_chrome[0], self._from_chrome[1]):
            os.close(fd)
        self.session = None

    def send(self, method: str, **params) -> dict:
        """The result of one command (of the page's session once attached)."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_chrome[1], json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply["result"]

    def _receive(self, timeout: float = 30) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_chrome[0]], [], [], timeout)
            assert ready, "no answer from Chromium"
            chunk = os.read(self._from_chrome[0], 1 << 16)
            assert chunk, "Chromium closed its pipe"
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", url=url)["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]

    def js(self, expression: str):
        """The JSON value of ``expression`` in the page (a promise is awaited)."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while not (value := self.js(expression)):
            assert time.monotonic() < deadline, f"not true in {timeout}s: {expression}"
            time.sleep(0.2)
        return value

    def close(self) -> None:
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.1)
        os.close(self._to_chrome[1])
        os.close(self._from_chrome[0])


@contextmanager
def devtools(profile: Path):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    browser = DevTools(profile)
    try:
        yield browser
    finally:
        browser.close()


# The labels of a run's map, top to bottom, and a click on one.
LABELS = """[...document.querySelectorAll('section[data-run="RUN/train"] svg.map text')]
  .filter((t) => t.classList.contains('layer') || t.classList.contains('block'))
  .map((t) => t.textContent)"""
CLICK_LABEL = """[...document.querySelectorAll('text.block')].find((t) => t.textContent === LABEL)
  .dispatchEvent(new MouseEvent('click', {bubbles: true}))"""


def labels(browser: DevTools, run: str) -> list[str]:
    return browser.js(LABELS.replace("RUN", run))


@pytest.mark.slow
def test_the_page_folds_unfolds_and_filters_a_gpt2s_blocks(server, tmp_path):
    with devtools(tmp_path / "profile") as browser:
        browser.open(server + FRAME)
        browser.wait_for("document.querySelectorAll('svg.map').length === 2")
        # 74 rows: every block folded at first, one row each, in the order
        # of their index (2 before 10); the head last, marked.
        folded = [f"▸ transformer_layer_{b} (6)" for b in range(BLOCKS)]
        expected = ["position_embedding/embeddings", *folded, "token_embedding/embeddings"]
        assert labels(browser, "gpt2") == expected
        assert browser.js("document.querySelector('text.reference').textContent") == (
            "token_embedding/embeddings"
        )
        assert browser.js("document.querySelectorAll('text.mark').length") == 2  # and the MLP's
        note = browser.js(
            "document.querySelector('section[data-run=\"gpt2/train\"] .rows-note').textContent"
        )
        assert "the median of its rows shown" in note and "12 collapsed" in note
        # The MLP: its layers' names, in model order, no block.
        assert labels(browser, "mlp") == MLP_LAYERS
        # One block unfolded: its name, then its six matrices by their short names.
        browser.js(CLICK_LABEL.replace("LABEL", json.dumps("▸ transformer_layer_10 (6)")))
        rows = labels(browser, "gpt2")
        at = rows.index("▾ transformer_layer_10")
        assert rows[at + 1 : at + 7] == BLOCK_MATRICES
        assert rows[at - 1] == "▸ transformer_layer_9 (6)" and rows[-1] == expected[-1]
        # The kind filter: without attention a folded block has 2 rows.
        counts = browser.js(
            "Object.fromEntries([...document.querySelectorAll('input.kind')]"
            ".map((b) => [b.value, +b.parentNode.querySelector('.count').textContent]))"
        )
        assert counts == {ATTENTION: 48, FEED_FORWARD: 24, EMBEDDING: 1, HEAD: 2, OTHER: 3}
        browser.js("document.querySelector('input.kind[value=attention]').click()")
        rows = labels(browser, "gpt2")
        assert "▸ transformer_layer_0 (2)" in rows and not any("self_attention" in r for r in rows)
        assert rows[rows.index("▾ transformer_layer_10") + 1 :][:2] == BLOCK_MATRICES[4:]
        # Every block unfolded: the 24 feed-forward matrices under 12 names.
        browser.js("document.getElementById('expand-all').click()")
        rows = labels(browser, "gpt2")
        assert len(rows) == 1 + BLOCKS * 3 + 1 and rows[-1] == expected[-1]
        shot = browser.send("Page.captureScreenshot", format="png")["data"]
        assert len(shot) > 1000
