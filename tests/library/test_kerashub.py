"""KerasHub models as people fine-tune them, built from a config (no download).

Each model trains one epoch in ``fit`` with ``tbgrad.TensorBoard`` and the
learning rate at 0 (the weights stay put), then the same batches are replayed
through an independent ``tf.GradientTape``: every weight matrix the default
tracks (kernels, embeddings with sparse and tied gradients, untied heads,
LoRA factors) must log the tape's mean |g|, and the ratios' reference must be
the matrix that produces the model's output.
"""

from __future__ import annotations

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from conftest import expected_histogram

import tbgrad
from tbgrad import tags
from tbgrad.variables import is_weight_matrix

VOCAB, LENGTH, BATCH, STEPS = 48, 8, 4, 3
LM_LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def token_batches(seed: int, segments: bool = False):
    rng = np.random.default_rng(seed)
    # A small vocabulary: every batch repeats token ids (the sparse gradient
    # of the embedding then holds one row per occurrence, summed by id).
    ids = rng.integers(0, VOCAB, size=(BATCH * STEPS, LENGTH + 1)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((BATCH * STEPS, LENGTH), "int32")}
    if segments:
        x["segment_ids"] = np.zeros((BATCH * STEPS, LENGTH), "int32")
    return x, ids[:, 1:]


def gpt2():
    keras.utils.set_random_seed(1)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        dropout=0.0,
        max_sequence_length=LENGTH,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def llama():
    keras.utils.set_random_seed(2)
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
    )
    return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)


def gemma_lora():
    keras.utils.set_random_seed(3)
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
        head_dim=8,
    )
    backbone.enable_lora(2)
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)


def bert_classifier():
    keras.utils.set_random_seed(4)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        dropout=0.0,
        max_sequence_length=LENGTH,
    )
    return keras_hub.models.BertTextClassifier(backbone, 3, preprocessor=None, dropout=0.0)


def vit_classifier():
    keras.utils.set_random_seed(5)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(16, 16, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    return keras_hub.models.ViTImageClassifier(backbone, 3, preprocessor=None)


def classifier_data(kind: str):
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, size=BATCH * STEPS).astype("int32")
    if kind == "text":
        x, _ = token_batches(8, segments=True)
        return x, y
    return rng.normal(size=(BATCH * STEPS, 16, 16, 3)).astype("float32"), y


CASES = {
    # name: (model, data, loss, expected reference)
    "gpt2 (tied head)": (gpt2, lambda: token_batches(0), LM_LOSS, "token_embedding/embeddings"),
    "llama (untied head)": (
        llama,
        lambda: token_batches(1),
        LM_LOSS,
        "token_embedding/reverse_embeddings",
    ),
    "bert classifier": (bert_classifier, lambda: classifier_data("text"), LM_LOSS, "logits"),
    "vit classifier": (vit_classifier, lambda: classifier_data("image"), LM_LOSS, None),
    "gemma lora": (
        gemma_lora,
        lambda: token_batches(2),
        LM_LOSS,
        "decoder_block_1/attention/value/lora_kernel_b",
    ),
}


def _slice(x, start, stop):
    return tf.nest.map_structure(lambda a: a[start:stop], x)


@pytest.fixture(scope="module", params=list(CASES))
def trained(request, tmp_path_factory):
    make, data, loss, reference = CASES[request.param]
    model = make()
    x, y = data()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)
    log_dir = tmp_path_factory.mktemp("kerashub")
    model.fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
        callbacks=[tbgrad.TensorBoard(log_dir, write_graph=False)],
    )  # fmt: skip
    layers = tbgrad.tracked_variables(model)
    per_step = {layer.name: [] for layer in layers}
    first = {}
    for start in range(0, BATCH * STEPS, BATCH):
        xb, yb = _slice(x, start, start + BATCH), y[start : start + BATCH]
        with tf.GradientTape() as tape:
            value = loss(yb, model(xb, training=True))
        grads = tape.gradient(value, [layer.kernel.value for layer in layers])
        for layer, g in zip(layers, grads):
            dense = tf.convert_to_tensor(g).numpy()  # an IndexedSlices' rows summed by id
            per_step[layer.name].append(float(np.mean(np.abs(dense.astype(np.float64)))))
            first.setdefault(layer.name, dense)
    return {
        "case": request.param,
        "model": model,
        "run": tbgrad.load_run(log_dir),
        "layers": layers,
        "expected": {name: float(np.mean(v)) for name, v in per_step.items()},
        "first": first,
        "reference": reference,
    }


def test_every_weight_matrix_is_tracked(trained):
    names = {layer.name for layer in trained["layers"]}
    matrices = [v for v in trained["model"].trainable_variables if is_weight_matrix(v)]
    assert len(names) == len(matrices)
    assert {id(layer.kernel) for layer in trained["layers"]} == {id(v) for v in matrices}
    if "lora" in trained["case"]:
        assert all("lora_kernel" in name for name in names)
    elif trained["case"] != "vit classifier":
        assert any(name.endswith("embeddings") for name in names)


def test_mean_abs_gradient_equals_the_tape(trained):
    train = trained["run"].train
    for name, expected in trained["expected"].items():
        logged = train.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS, name))
        assert logged.shape == (1,), name
        np.testing.assert_allclose(logged[0], expected, rtol=1e-4, err_msg=name)


def test_reference_is_the_output_matrix(trained):
    train = trained["run"].train
    reference = trained["reference"]
    if reference is None:  # the vision head: the classifier's output dense
        output = trained["model"].layers[-1]
        reference = next(x.name for x in trained["layers"] if x.kernel is output.kernel)
    assert train.kernels[-1] == reference
    ratio = train.scalar(tags.layer_tag(tags.GRAD_LOG10_RATIO, reference))
    assert tags.layer_tag(tags.GRAD_LOG10_RATIO, reference) not in train.scalars or ratio[0] == 0
    other = next(n for n in train.kernels[:-1] if trained["expected"][n] > 0)
    expected = np.log10(trained["expected"][other] / trained["expected"][reference])
    logged = train.scalar(tags.layer_tag(tags.GRAD_LOG10_RATIO, other))
    np.testing.assert_allclose(logged[0], expected, rtol=1e-3, atol=1e-5)


def test_first_step_histograms_equal_numpy(trained):
    # An embedding's histogram covers its whole matrix: the rows its sparse
    # gradient leaves out are zeros, counted without being made.
    histograms = trained["run"].train.histograms
    for name, dense in trained["first"].items():
        if dense.min() == dense.max():
            continue  # one value (a LoRA factor whose partner is still 0)
        (_, logged), *_ = histograms[tags.layer_tag(tags.GRADIENTS, name)]
        expected = expected_histogram(dense)
        # fit's program and the tape's round differently in the last bits:
        # edges to a ten-thousandth of the range, an entry on an edge may
        # fall either side.
        span = dense.max() - dense.min()
        np.testing.assert_allclose(logged[:, :2], expected[:, :2], atol=1e-4 * span, err_msg=name)
        np.testing.assert_allclose(logged[:, 2], expected[:, 2], atol=1, err_msg=name)
        assert logged[:, 2].sum() == dense.size, name
    if trained["case"] in ("llama (untied head)", "bert classifier"):
        rows = trained["first"]["token_embedding/embeddings"]
        assert (rows == 0).all(axis=1).any()  # the batch left rows untouched


def test_update_ratio_leaves_embeddings_out(trained):
    # An embedding's ratio would copy its whole table at every measured step.
    logged = {
        n
        for n in trained["expected"]
        if tags.layer_tag(tags.UPDATE_RATIO, n) in trained["run"].train.scalars
    }
    assert logged == {n for n in trained["expected"] if not n.endswith("embeddings")}
