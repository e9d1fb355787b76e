"""The verdict of models with repeated blocks (transformers): the rule on
hand-made figures, on event files written with tf.summary, then on real runs
read back."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import GPT2_BLOCK_MATRICES
from keras import ops

import tbgrad
from tbgrad import tags
from tbgrad.dashboard import metadata as dashboard_metadata
from tbgrad.eventlog import load_run
from tbgrad.verdict import (
    BLOCK_EXPLODING_ABOVE,
    BLOCK_VANISHING_BELOW,
    block_ratios,
    block_structure,
    describe_blocks,
    judge,
    layer_span,
    verdict_of,
)

KINDS = GPT2_BLOCK_MATRICES
# The levels of a healthy 12-block GPT-2 (docs/verdict.md): attention's
# query and key get about a hundredth of the other matrices' mean |g|.
LEVEL = {kind: 1e-6 if kind.endswith(("query", "key")) else 1e-4 for kind in KINDS}
EPOCHS = 5


def gpt2_figures(blocks=12, lower=6, scale=1.0, kinds=KINDS, epochs=EPOCHS):
    """``grad_mean_abs`` of a GPT-2's matrices in model order, the tied token
    embedding (the reference) last: each kind at its level in every block,
    the kinds ``kinds`` of blocks ``0 .. lower - 1`` times ``scale``."""
    out = {"position_embedding/embeddings": [6e-4] * epochs}
    for i in range(blocks):
        for kind in KINDS:
            factor = scale if i < lower and kind in kinds else 1.0
            out[f"transformer_layer_{i}/{kind}"] = [LEVEL[kind] * factor] * epochs
    out["token_embedding/embeddings"] = [2e-3] * epochs
    return out


# -- recognising the blocks ------------------------------------------------------


def test_gpt2_names_make_one_family_of_blocks_and_kinds():
    names = list(gpt2_figures(blocks=3))
    structure = block_structure(names[:-1])
    assert list(structure.families) == ["transformer_layer"]
    kinds = structure.families["transformer_layer"]
    assert tuple(kinds) == KINDS
    assert kinds["self_attention/query"] == {
        i: f"transformer_layer_{i}/self_attention/query" for i in range(3)
    }
    assert structure.blocks == [("transformer_layer", i) for i in range(3)]
    assert structure.top("transformer_layer") == "transformer_layer_2"
    # Embeddings are never members of a block.
    assert "position_embedding/embeddings" not in structure.members
    assert len(structure.members) == 3 * len(KINDS)


@pytest.mark.parametrize(
    "names",
    [
        ["hidden_1", "hidden_2", "hidden_3", "hidden_4", "hidden_5"],  # the studies' MLPs
        ["dense", "dense_1", "dense_2"],  # Keras's own numbering
        # Stacked LSTMs: one kind of matrix inside each numbered layer.
        ["lstm", "lstm/recurrent_kernel", "lstm_1", "lstm_1/recurrent_kernel"],
        # A single block is not a repeated one.
        [f"transformer_layer_0/{kind}" for kind in KINDS],
        ["token_embedding/embeddings", "position_embedding/embeddings"],
    ],
)
def test_models_without_repeated_blocks(names):
    assert block_structure(names) is None


def test_a_bare_first_block_is_block_0_as_keras_numbers_layers():
    names = [f"{block}/{kind}" for block in ("blk", "blk_1", "blk_2") for kind in ("q", "ffn")]
    structure = block_structure(names)
    assert structure.families == {
        "blk": {
            "q": {0: "blk/q", 1: "blk_1/q", 2: "blk_2/q"},
            "ffn": {0: "blk/ffn", 1: "blk_1/ffn", 2: "blk_2/ffn"},
        }
    }


def test_encoder_and_decoder_are_two_families_under_their_parents():
    names = [
        f"{part}/layer_{i}/{kind}"
        for part in ("encoder", "decoder")
        for i in range(3)
        for kind in ("attention", "ffn")
    ]
    structure = block_structure(names + ["pooler"])
    assert list(structure.families) == ["encoder/layer", "decoder/layer"]
    assert structure.labels[("decoder/layer", 2)] == "decoder/layer_2"
    assert "pooler" not in structure.members
    blocks = [("encoder/layer", 0), ("encoder/layer", 1), ("decoder/layer", 0)]
    assert describe_blocks(blocks, structure) == (
        "blocks 0-1 (encoder/layer_0 .. encoder/layer_1); block 0 (decoder/layer_0)"
    )


def test_lora_factors_are_kinds_of_their_blocks():
    names = [
        f"transformer_layer_{i}/self_attention/{m}/lora_kernel_{ab}"
        for i in range(4)
        for m in ("query", "value")
        for ab in "ab"
    ]
    # The reference (the last block's value lora_kernel_b) is left out:
    # that kind's top block is then block 2.
    structure = block_structure(names[:-1])
    kinds = structure.families["transformer_layer"]
    assert len(kinds) == 4
    assert max(kinds["self_attention/value/lora_kernel_b"]) == 2


# -- the rule on hand-made figures -----------------------------------------------


def test_attention_query_and_key_far_below_the_head_is_healthy():
    figures = gpt2_figures()
    found = judge(figures)
    assert found.label == "healthy", found
    assert found.weakest_ratio == pytest.approx(1.0)
    assert found.strongest_ratio == pytest.approx(1.0)
    assert "block/top block" in found.reason
    # The same figures without their block names are judged against the
    # head, as an MLP: query and key at 1e-6 against 2e-3 read vanishing.
    flat = {name.replace("/", "__"): series for name, series in figures.items()}
    assert block_structure(list(flat)[:-1]) is None
    assert judge(flat).label == "vanishing"
    assert judge(flat).weakest_ratio == pytest.approx(1e-6 / 2e-3)


def test_lower_blocks_a_thousand_times_weaker_vanish():
    found = judge(gpt2_figures(scale=1e-3))
    assert found.label == "vanishing", found
    assert found.weakest_ratio == pytest.approx(1e-3)
    assert found.reason.endswith(f"; 0.001 < {BLOCK_VANISHING_BELOW:g}")


def test_lower_blocks_a_thousand_times_stronger_explode():
    found = judge(gpt2_figures(scale=1e3))
    assert found.label == "exploding", found
    assert found.strongest_ratio == pytest.approx(1e3)


@pytest.mark.parametrize(
    "scale, label",
    [(0.099, "vanishing"), (0.101, "healthy"), (99.0, "healthy"), (101.0, "exploding")],
)
def test_thresholds(scale, label):
    assert (BLOCK_VANISHING_BELOW, BLOCK_EXPLODING_ABOVE) == (0.1, 100.0)
    assert judge(gpt2_figures(scale=scale)).label == label


def test_a_single_weak_block_is_enough():
    # Blocks are compared with the top block one by one: the weakest decides.
    figures = gpt2_figures()
    for kind in KINDS:
        figures[f"transformer_layer_4/{kind}"] = [LEVEL[kind] * 1e-3] * EPOCHS
    blocks, ratios = block_ratios(figures, block_structure(list(figures)[:-1]))
    assert len(blocks) == 11  # the top block is the yardstick, not judged
    np.testing.assert_allclose(ratios[:, blocks.index(("transformer_layer", 4))], 1e-3)
    assert judge(figures).label == "vanishing"


def test_kinds_are_compared_like_with_like_and_the_median_over_kinds_decides():
    # Query and key of the lower blocks alone at 1e-3: two kinds of six, the
    # blocks as a whole still receive their share.
    kinds = ("self_attention/query", "self_attention/key")
    assert judge(gpt2_figures(scale=1e-3, kinds=kinds)).label == "healthy"
    # Four kinds of six: the median is among them.
    kinds = KINDS[:4]
    assert judge(gpt2_figures(scale=1e-3, kinds=kinds)).label == "vanishing"


def test_the_median_over_epochs_ignores_one_vanished_epoch():
    figures = gpt2_figures()
    for kind in KINDS:
        for i in range(6):
            figures[f"transformer_layer_{i}/{kind}"][0] *= 1e-3
    assert judge(figures).label == "healthy"


def test_a_block_with_no_gradient_counts_as_vanished():
    found = judge(gpt2_figures(scale=0.0))
    assert (found.label, found.weakest_ratio) == ("vanishing", 0.0)


def test_embeddings_and_the_reference_do_not_decide():
    figures = gpt2_figures()
    # An embedding's mean |g| averages over the rows no token of the batch
    # touched: small by nature, not judged.
    figures["position_embedding/embeddings"] = [1e-9] * EPOCHS
    figures["token_embedding/embeddings"] = [1e3] * EPOCHS
    assert judge(figures).label == "healthy"


# -- names stay readable -----------------------------------------------------------


def test_layer_span_names_blocks_not_hundreds_of_layers():
    names = list(gpt2_figures(blocks=48))
    assert len(names) == 290
    text = layer_span(names)
    assert text == (
        "transformer_layer_0..transformer_layer_47 (288 matrices), "
        "position_embedding/embeddings, token_embedding/embeddings"
    )
    left_out = ("transformer_layer_4", "transformer_layer_40")
    two_kinds = [
        n for n in names if n.endswith(("query", "key")) and n.split("/")[0] not in left_out
    ]
    assert layer_span(two_kinds) == (
        "transformer_layer_0..transformer_layer_47 "
        "(blocks 0-3, 5-39, 41-47; self_attention/query and self_attention/key)"
    )


@pytest.mark.parametrize(
    "layers, text",
    [
        (["hidden_1", "hidden_2"], "hidden_1, hidden_2"),
        (["hidden_2", "hidden_3", "hidden_5"], "hidden_2..hidden_5"),
        ([f"hidden_{i}" for i in range(1, 21)], "hidden_1..hidden_20"),
    ],
)
def test_layer_span_of_plain_layers_is_unchanged(layers, text):
    assert layer_span(layers) == text


# -- the explanation, from event files -----------------------------------------------


def write_run(run_dir, figures: dict[str, list[float]]):
    """Writes ``figures`` as ``grad_mean_abs`` tags in the library's order
    (model order: the tied token embedding first) with a falling loss, and
    the layer-order summary naming the compared matrices, the reference last."""
    names = list(figures)
    model_order = [names[-1], *names[:-1]]
    writer = tf.summary.create_file_writer(str(run_dir / tags.TRAIN_DIR))
    dashboard_metadata.write_layers(writer, model_order, names)
    with writer.as_default():
        for step in range(EPOCHS):
            for name in model_order:
                tf.summary.scalar(f"{tags.GRAD_MEAN_ABS}/{name}", figures[name][step], step=step)
            tf.summary.scalar(tags.epoch_tag("loss"), 5.3 - 0.01 * step, step=step)
    writer.close()
    return run_dir


def test_vanishing_blocks_are_named_with_transformer_advice(tmp_path):
    found = verdict_of(write_run(tmp_path, gpt2_figures(scale=1e-3)))
    why = found.explanation
    assert load_run(tmp_path).train.kernels[-1] == "token_embedding/embeddings"
    assert found.label == "vanishing"
    assert why.rule == "weakest block/top block < 0.1 (median 0.001)"
    assert why.layers == tuple(f"transformer_layer_{i}/{k}" for i in range(6) for k in KINDS)
    assert why.epochs == (0, EPOCHS - 1)
    where = (
        "blocks 0-5 (transformer_layer_0 .. transformer_layer_5) receive 0.001 times the "
        "mean |g| of the top block (transformer_layer_11), kind by kind"
    )
    assert why.notes == (where,)
    assert why.suggestion.startswith(f"{where}: check the blocks' initialisation scale")
    assert "pre-LN" in why.suggestion and "warm the learning rate up" in why.suggestion
    assert "glorot" not in why.suggestion and "batch normalization" not in why.suggestion
    assert str(why) == (
        f"why: {why.rule} in transformer_layer_0..transformer_layer_5 (36 matrices), "
        f"epochs 0-4\ntry: {why.suggestion}"
    )
    assert why.signals["blocks"] == 12
    assert why.signals["embedding_ratio/position_embedding/embeddings"] == pytest.approx(0.3)


def test_exploding_blocks_get_the_mirror_advice(tmp_path):
    found = verdict_of(write_run(tmp_path, gpt2_figures(lower=3, scale=1e3)))
    why = found.explanation
    assert found.label == "exploding"
    assert why.rule == "strongest block/top block > 100 (median 1e+03)"
    assert why.suggestion.startswith(
        "blocks 0-2 (transformer_layer_0 .. transformer_layer_2) receive 1e+03 times"
    )
    assert "lower the learning rate and warm it up" in why.suggestion


def test_healthy_blocks_have_no_suggestion(tmp_path):
    found = verdict_of(write_run(tmp_path, gpt2_figures()))
    why = found.explanation
    assert found.label == "healthy"
    assert (why.layers, why.epochs, why.notes, why.suggestion) == ((), None, (), "")
    assert why.rule == (
        "weakest block/top block >= 0.1 and strongest block/top block <= 100 (medians 1, 1)"
    )


def test_kinds_stuck_in_healthy_blocks_are_noted(tmp_path):
    kinds = ("self_attention/query", "self_attention/key")
    found = verdict_of(write_run(tmp_path, gpt2_figures(scale=1e-3, kinds=kinds)))
    assert found.label == "healthy"
    assert found.explanation.notes == (
        "self_attention/query and self_attention/key of blocks 0-5 (transformer_layer_0 .. "
        "transformer_layer_5) receive 0.001 times the top block's mean |g|; the blocks' "
        "other matrices do not",
    )


# -- real runs ---------------------------------------------------------------------

VOCABULARY, SEQUENCE, WIDTH, BLOCKS = 50, 8, 16, 3


class Block(keras.layers.Layer):
    """A pre-LN transformer block with one attention head: the matrices of
    KerasHub's blocks (query, key, value, attention output, feed-forward in
    and out), as plain dense layers (quicker to trace than attention layers)."""

    def __init__(self, width: int, **kwargs):
        super().__init__(**kwargs)
        self.attention_norm = keras.layers.LayerNormalization(name="attention_norm")
        self.query, self.key, self.value, self.attention_output = (
            keras.layers.Dense(width, name=name)
            for name in ("query", "key", "value", "attention_output")
        )
        self.feedforward_norm = keras.layers.LayerNormalization(name="feedforward_norm")
        self.intermediate = keras.layers.Dense(
            2 * width, activation="gelu", name="feedforward_intermediate_dense"
        )
        self.out = keras.layers.Dense(width, name="feedforward_output_dense")

    def call(self, x):
        h = self.attention_norm(x)
        scores = ops.einsum("btd,bsd->bts", self.query(h), self.key(h)) / WIDTH**0.5
        causal = ops.tril(ops.ones((SEQUENCE, SEQUENCE), "bool"))
        weights = ops.softmax(ops.where(causal, scores, -1e9), axis=-1)
        x = x + self.attention_output(ops.einsum("bts,bsd->btd", weights, self.value(h)))
        return x + self.out(self.intermediate(self.feedforward_norm(x)))


def train_language_model(log_dir, weaken: int = 0):
    """A tiny causal language model on random tokens, Adam, 3 epochs; every
    weight of its first ``weaken`` blocks times 1e-3 (kernels, biases and
    normalisation scales: Adam regrows kernels alone within an epoch)."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((SEQUENCE,), dtype="int32")
    x = keras.layers.Embedding(VOCABULARY, WIDTH, name="token_embedding")(ids)
    for i in range(BLOCKS):
        x = Block(WIDTH, name=f"transformer_layer_{i}")(x)
    x = keras.layers.LayerNormalization(name="final_norm")(x)
    model = keras.Model(ids, keras.layers.Dense(VOCABULARY, name="lm_head")(x))
    for i in range(weaken):
        for variable in model.get_layer(f"transformer_layer_{i}").trainable_weights:
            variable.assign(variable * 1e-3)
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    tokens = np.random.default_rng(0).integers(0, VOCABULARY, (128, SEQUENCE + 1))
    callback = tbgrad.TensorBoard(log_dir, histogram_freq=0, write_graph=False, diagnostics=False)
    model.fit(
        tokens[:, :-1], tokens[:, 1:], epochs=3, batch_size=32, verbose=0, callbacks=[callback]
    )
    return log_dir


@pytest.fixture(scope="module")
def healthy_lm(tmp_path_factory):
    return train_language_model(tmp_path_factory.mktemp("healthy"))


@pytest.fixture(scope="module")
def vanishing_lm(tmp_path_factory):
    return train_language_model(tmp_path_factory.mktemp("vanishing"), weaken=2)


def per_block_by_hand(run) -> np.ndarray:
    """``[epoch, block]``: per kind, each lower block's mean |g| over the top
    block's, the median over the kinds; from the logged scalars."""
    kinds = [n.split("/", 1)[1] for n in run.train.kernels if n.startswith("transformer_layer_0/")]
    top = BLOCKS - 1

    def g(block, kind):
        return run.train.scalar(f"grad_mean_abs/transformer_layer_{block}/{kind}")

    return np.stack(
        [np.median([g(b, k) / g(top, k) for k in kinds], axis=0) for b in range(top)], axis=1
    )


def test_a_healthy_language_model_reads_healthy(healthy_lm):
    run = load_run(healthy_lm)
    kernels = run.train.kernels
    # Embeddings are tracked, the head is the reference.
    assert kernels[0] == "token_embedding/embeddings" and kernels[-1] == "lm_head"
    assert len(kernels) == 2 + BLOCKS * len(KINDS)
    found = verdict_of(healthy_lm)
    assert found.label == "healthy", found
    ratios = per_block_by_hand(run)
    np.testing.assert_allclose(found.weakest_ratio, np.median(ratios.min(axis=1)), rtol=1e-6)
    np.testing.assert_allclose(found.strongest_ratio, np.median(ratios.max(axis=1)), rtol=1e-6)
    # Against the head, as an MLP's layers, the weakest matrix (a query or
    # key) reads over ten times lower than any block does.
    g = {n: run.train.scalar(f"grad_mean_abs/{n}") for n in kernels}
    flat = {n.replace("/", "__"): s for n, s in g.items()}
    assert judge(flat).weakest_ratio < 0.1 * found.weakest_ratio


def test_a_language_model_with_weakened_lower_blocks_reads_vanishing(vanishing_lm):
    found = verdict_of(vanishing_lm)
    why = found.explanation
    assert found.label == "vanishing", found
    np.testing.assert_allclose(
        found.weakest_ratio,
        np.median(per_block_by_hand(load_run(vanishing_lm)).min(axis=1)),
        rtol=1e-6,
    )
    assert {name.split("/")[0] for name in why.layers} == {
        "transformer_layer_0",
        "transformer_layer_1",
    }
    assert why.suggestion.startswith(
        "blocks 0-1 (transformer_layer_0 .. transformer_layer_1) receive"
    )
    assert "pre-LN" in why.suggestion
    assert "transformer_layer_0..transformer_layer_1 (12 matrices)" in str(why)


@pytest.mark.slow
@pytest.mark.parametrize("weaken, label", [(0, "healthy"), (6, "vanishing")])
def test_a_12_block_kerashub_gpt2(tmp_path, weaken, label):
    """The 12-block GPT-2 of docs/verdict.md, built from its config with
    random weights, 5 epochs of Adam on random tokens; the vanishing one with
    every variable of blocks 0-5 times 1e-3."""
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=200,
        num_layers=12,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=16,
    )
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    for i in range(weaken):
        for variable in backbone.get_layer(f"transformer_layer_{i}").trainable_weights:
            variable.assign(variable * 1e-3)
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    tokens = np.random.default_rng(0).integers(0, 200, (256, 17))
    x = {"token_ids": tokens[:, :-1], "padding_mask": np.ones((256, 16), bool)}
    model.fit(
        x,
        tokens[:, 1:],
        epochs=5,
        batch_size=32,
        verbose=0,
        callbacks=[tbgrad.TensorBoard(tmp_path)],
    )
    run = load_run(tmp_path)
    assert run.train.kernels[-1] == "token_embedding/embeddings"
    assert "position_embedding/embeddings" in run.train.kernels
    found = verdict_of(tmp_path)
    assert found.label == label, found
    if label == "vanishing":
        assert found.explanation.suggestion.startswith(
            "blocks 0-5 (transformer_layer_0 .. transformer_layer_5) receive"
        )
