"""The benchmark behind ``scripts/bench.py``: what logging gradients costs.

Ways to train the same model on the same data, run side by side:

* ``fit``: ``model.fit`` with no callback, the floor every ratio refers to;
* ``fit(A/A)``: the same again, always run: its ratio to ``fit`` is the
  table's noise floor (a difference smaller than it explains nothing);
* ``fit+keras_tb``: ``model.fit`` with ``keras.callbacks.TensorBoard(histogram_freq=1)``;
* ``fit+tbgrad``: ``model.fit`` with ``tbgrad.TensorBoard(histogram_freq=1)``
  and its defaults (diagnostics measured on every 16th step);
* ``fit+tbgrad(diag1)``: the callback with ``diagnostics_every=1`` (the
  diagnostics measured on every step);
* ``fit+tbgrad(no-diag)``: the callback with ``diagnostics=False`` (no
  update ratios, activation health or clipping statistics);
* ``fit+tbgrad(h0)``: the callback with ``histogram_freq=0``;
* ``fit+tbgrad(every8)``: the callback with ``stats_every=8``;
* ``fit+tbgrad(every8,no-diag)``: ``stats_every=8``, ``diagnostics=False``;
* ``fit-xla``, ``fit-xla+tbgrad``: ``fit`` and ``fit+tbgrad`` compiled with
  ``jit_compile=True`` (Keras's default ``"auto"`` resolves to XLA only on a
  machine with a GPU; each variant's resolved value is printed);
* ``fit-xla+tbgrad(every8)``: ``stats_every=8`` under XLA;
* ``fit-epoch``, ``fit-epoch+tbgrad``: ``fit`` and ``fit+tbgrad`` compiled
  with ``steps_per_execution`` = the steps of an epoch (one call per epoch);
* ``tape``: :func:`tbgrad.train_with_tape` (histograms every epoch);
* ``tape+xla``: the same with ``jit_compile=True`` (each step compiled by XLA);
* ``eager_ref``: the eager GradientTape loop of study B (part 2), the loop a
  user would otherwise write: a Python loop over a shuffled, batched
  ``tf.data`` data set, one tape per step, the first step's kernel
  gradients of every epoch copied to numpy.

Only tbgrad's public API is used (``tbgrad.TensorBoard``,
``tbgrad.GradientLogger``, ``tbgrad.train_with_tape``), so that the bench
times what a user runs.

The workloads (:data:`WORKLOADS`): study A's MLP, deeper and wider MLPs, a
small CNN and a two-block transformer encoder, each on synthetic data drawn
with a fixed seed.

Every variant runs once per repeat and the variants alternate (their order
rotates each repeat), so a change of machine load hits them all alike. A
warm-up round (two epochs of each) comes first. The end of every epoch is
timed, in wall time and in CPU time (``time.process_time()``, every thread of
the process; on a shared machine it moves far less than wall time): by a last
callback for ``model.fit``, by the loop itself for the eager loop, and at
each epoch's write for the tape loop. Reported medians over the repeats:

* ``first_s``: from the call to the end of the first epoch: set-up, tracing
  and one epoch;
* ``fixed_s``: the first epoch less a steady one: what a ``fit`` pays once
  (tracing, writers, layout);
* ``epoch_ms``: the steady per-epoch time, the median of the later epochs;
* ``total_s``: the whole call, everything included;
* ``bytes_per_epoch``: the size of the run folder over ``epochs``;
* each with a ``cpu_`` twin in CPU time, and the ratios to ``fit``.

``--train-step`` isolates the per-step cost of the gradient statistics from
the rest of an epoch: it times the workload's compiled train step (forward,
backward, optimizer update on one batch) without and with a
:class:`tbgrad.GradientLogger` attached before the step is traced
(:data:`STEP_VARIANTS`), in alternating rounds of many steps, each round an
epoch of the logger's (its ``end_epoch`` runs after the round, untimed). It
prints the median wall and CPU ms per step and the ratio of each to the
plain step; ``step(A/A)`` (``step-xla(A/A)``) is the plain step timed twice.
"""

from __future__ import annotations

import functools
import gc
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

VARIANTS = (
    "fit",
    "fit(A/A)",
    "fit+keras_tb",
    "fit+tbgrad",
    "fit+tbgrad(diag1)",
    "fit+tbgrad(no-diag)",
    "fit+tbgrad(h0)",
    "fit+tbgrad(every8)",
    "fit+tbgrad(every8,no-diag)",
    "fit-xla",
    "fit-xla+tbgrad",
    "fit-xla+tbgrad(every8)",
    "fit-epoch",
    "fit-epoch+tbgrad",
    "tape",
    "tape+xla",
    "eager_ref",
)
FLOOR = "fit"
# The floor run again: always run with it, its ratio is the noise floor.
AA = "fit(A/A)"

# The synthetic data of the CNN and the transformer.
DATA_SEED = 1
IMAGE_SHAPE = (32, 32, 3)
SEQUENCE_LENGTH = 32  # tokens per sample
VOCABULARY = 1_000
EMBEDDING = 64  # the transformer's width
HEADS = 4
FEED_FORWARD = 128


@dataclass(frozen=True)
class Workload:
    """A model and its data."""

    name: str
    model: str  # "mlp", "cnn", "transformer" or "gpt2" (see _build_model)
    samples: int  # training samples (study A: the 500 of circles-a)
    batch_size: int
    epochs: int  # default number of epochs of the timed run
    validation: bool
    optimizer: str
    learning_rate: float
    description: str
    momentum: float = 0.0
    depth: int = 0  # the MLP's hidden layers
    width: int = 0  # the MLP's units per hidden layer
    classes: int = 1  # 1: one sigmoid unit; more: softmax over integer labels

    @property
    def loss(self):
        """The Keras loss of its labels."""
        if self.model == "gpt2":
            import keras

            return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return "binary_crossentropy" if self.classes == 1 else "sparse_categorical_crossentropy"


def _mlp(name, depth, width, samples, description, epochs=3, validation=False) -> Workload:
    # The MLPs of the studies: relu, SGD 0.01 with momentum 0.9, batch 32.
    return Workload(
        name, "mlp", samples, 32, epochs, validation, "sgd", 0.01, description,
        momentum=0.9, depth=depth, width=width,
    )  # fmt: skip


WORKLOADS = {
    "study-a": _mlp(
        "study-a", 5, 5, 500,
        "study A (A3): 5 hidden x Dense(5, relu), 500 samples, batch 32, "
        "validation on the other 500, SGD 0.01 momentum 0.9",
        epochs=10, validation=True,
    ),
    "mlp-20x256": _mlp(
        "mlp-20x256", 20, 256, 8_192, "20 hidden x Dense(256, relu), 8192 samples, batch 32"
    ),
    "depth-5": _mlp("depth-5", 5, 64, 4_000, "5 hidden x Dense(64, relu), 4000 samples, batch 32"),
    "depth-20": _mlp(
        "depth-20", 20, 64, 4_000, "20 hidden x Dense(64, relu), 4000 samples, batch 32"
    ),
    "depth-50": _mlp(
        "depth-50", 50, 64, 4_000, "50 hidden x Dense(64, relu), 4000 samples, batch 32"
    ),
    "cnn": Workload(
        "cnn", "cnn", 2_048, 64, 3, False, "adam", 0.001,
        "4 x Conv2D(3x3, relu; 16, 16, 32, 32 filters, max-pooled after each pair) "
        "+ Dense(64, relu) + Dense(10, softmax), 32x32x3 Gaussian images labelled by a "
        "fixed random linear map, 2048 samples, batch 64, Adam 0.001",
        classes=10,
    ),
    "transformer": Workload(
        "transformer", "transformer", 2_048, 32, 3, False, "adam", 0.001,
        "Embedding(1000, 64) + 2 encoder blocks (MultiHeadAttention 4 heads x 16, "
        "LayerNormalization, Dense(128, relu), Dense(64)), average-pooled, "
        "Dense(10, softmax), 32 random tokens labelled by a fixed random score per "
        "token, 2048 samples, batch 32, Adam 0.001",
        classes=10,
    ),
    "gpt2": Workload(
        "gpt2", "gpt2", 1_024, 16, 3, False, "adam", 0.001,
        "KerasHub GPT2CausalLM built from config (no download): vocabulary 1000, "
        "4 blocks, hidden 64, 4 heads, feed-forward 128, dropout 0.1, 32 random tokens "
        "predicting the next, 1024 samples, batch 16, Adam 0.001",
        classes=VOCABULARY,
    ),
}  # fmt: skip


@dataclass
class Row:
    """The medians of one variant on one workload."""

    workload: str
    variant: str
    epochs: int
    params: int
    first_s: float
    epoch_ms: float
    total_s: float
    epoch_ratio: float
    total_ratio: float
    bytes_per_epoch: float
    epoch_ms_all: list[float]
    total_s_all: list[float]
    jit_compile: str = ""
    fixed_s: float = float("nan")
    cpu_first_s: float = float("nan")
    cpu_fixed_s: float = float("nan")
    cpu_epoch_ms: float = float("nan")
    cpu_total_s: float = float("nan")
    cpu_epoch_ratio: float = float("nan")
    cpu_total_ratio: float = float("nan")
    cpu_epoch_ms_all: list[float] | None = None


# -- data and models ------------------------------------------------------


def load_data(workload: Workload, samples: int | None = None):
    """(x, y, validation or None) of ``workload``; ``samples`` overrides its size."""
    n = samples or workload.samples
    if workload.model == "cnn":
        return (*_images(n, workload.classes), None)
    if workload.model == "transformer":
        return (*_tokens(n, workload.classes), None)
    if workload.model == "gpt2":
        return (*_next_tokens(n), None)
    return _circles(workload, n)


def _circles(workload: Workload, n: int):
    import numpy as np
    from sklearn.datasets import make_circles
    from sklearn.preprocessing import MinMaxScaler

    from tbgrad.lab.data import load_dataset

    if workload.name == "study-a" and n == 500:
        data = load_dataset("circles-a")
        return data.x_train, data.y_train, (data.x_test, data.y_test)
    # The same circles, scaled like study A's, in the number of samples asked.
    x, y = make_circles(n_samples=2 * n if workload.validation else n, noise=0.1, random_state=1)
    x = MinMaxScaler(feature_range=(-1, 1)).fit_transform(x).astype(np.float32)
    y = y.astype(np.float32)
    if workload.validation:
        return x[:n], y[:n], (x[n:], y[n:])
    return x, y, None


def _images(n: int, classes: int):
    # Gaussian images labelled by a fixed random linear map: labels a CNN
    # can learn, so its gradients and activations move as in training.
    import numpy as np

    rng = np.random.default_rng(DATA_SEED)
    projection = rng.standard_normal((int(np.prod(IMAGE_SHAPE)), classes)).astype(np.float32)
    x = rng.standard_normal((n, *IMAGE_SHAPE), dtype=np.float32)
    y = np.argmax(x.reshape(n, -1) @ projection, axis=1).astype(np.int32)
    return x, y


def _tokens(n: int, classes: int):
    # Random tokens labelled by a fixed random score per token, summed over
    # the sequence: a bag of words, which needs no position embedding.
    import numpy as np

    rng = np.random.default_rng(DATA_SEED)
    scores = rng.standard_normal((VOCABULARY, classes)).astype(np.float32)
    x = rng.integers(0, VOCABULARY, (n, SEQUENCE_LENGTH), dtype=np.int32)
    y = np.argmax(scores[x].sum(axis=1), axis=1).astype(np.int32)
    return x, y


def _next_tokens(n: int):
    # Random token ids; the target of each token is the next one.
    import numpy as np

    rng = np.random.default_rng(DATA_SEED)
    ids = rng.integers(0, VOCABULARY, (n, SEQUENCE_LENGTH + 1), dtype=np.int32)
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((n, SEQUENCE_LENGTH), np.int32)}
    return x, ids[:, 1:]


def _model(workload: Workload, clear_session: bool = True):
    """A fresh model of ``workload`` (seeded: the same weights every time) and
    a fresh optimizer."""
    import keras

    from tbgrad.lab.models import make_optimizer

    if clear_session:
        keras.backend.clear_session()
    keras.utils.set_random_seed(1)
    model = _build_model(workload)
    optimizer = make_optimizer(workload.optimizer, workload.learning_rate, workload.momentum)
    return model, optimizer


def _build_model(workload: Workload):
    from tbgrad.lab.models import build_mlp

    if workload.model == "cnn":
        return _cnn(workload.classes)
    if workload.model == "transformer":
        return _transformer(workload.classes)
    if workload.model == "gpt2":
        return _gpt2()
    return build_mlp(depth=workload.depth, width=workload.width, activation="relu")


def _cnn(classes: int):
    """Four 3x3 relu convolutions (max-pooled after each pair) and two Dense layers."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(IMAGE_SHAPE, name="images"),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_1"),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_2"),
            layers.MaxPooling2D(name="pool_1"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_3"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_4"),
            layers.MaxPooling2D(name="pool_2"),
            layers.Flatten(name="flatten"),
            layers.Dense(64, activation="relu", name="dense"),
            layers.Dense(classes, activation="softmax", name="output"),
        ],
        name="cnn",
    )


def _transformer(classes: int):
    """Token embedding, two post-norm encoder blocks, average pooling, a classifier."""
    import keras
    from keras import layers

    tokens = keras.Input((SEQUENCE_LENGTH,), dtype="int32", name="tokens")
    h = layers.Embedding(VOCABULARY, EMBEDDING, name="embedding")(tokens)
    for i in (1, 2):
        attention = layers.MultiHeadAttention(
            HEADS, EMBEDDING // HEADS, name=f"block_{i}_attention"
        )(h, h)
        h = layers.LayerNormalization(name=f"block_{i}_norm_1")(
            layers.Add(name=f"block_{i}_add_1")([h, attention])
        )
        f = layers.Dense(FEED_FORWARD, activation="relu", name=f"block_{i}_ff_1")(h)
        f = layers.Dense(EMBEDDING, name=f"block_{i}_ff_2")(f)
        h = layers.LayerNormalization(name=f"block_{i}_norm_2")(
            layers.Add(name=f"block_{i}_add_2")([h, f])
        )
    pooled = layers.GlobalAveragePooling1D(name="pool")(h)
    outputs = layers.Dense(classes, activation="softmax", name="output")(pooled)
    return keras.Model(tokens, outputs, name="transformer")


def _gpt2():
    """A KerasHub GPT-2 causal language model built from a config."""
    try:
        import keras_hub
    except ImportError as e:
        raise SystemExit("the gpt2 workload needs keras-hub: pip install keras-hub") from e
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCABULARY,
        num_layers=4,
        num_heads=HEADS,
        hidden_dim=EMBEDDING,
        intermediate_dim=FEED_FORWARD,
        max_sequence_length=SEQUENCE_LENGTH,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def _loss_fn(workload: Workload):
    import keras

    if workload.model == "gpt2":
        return workload.loss
    if workload.classes == 1:
        return keras.losses.BinaryCrossentropy()
    return keras.losses.SparseCategoricalCrossentropy()


def _targets(workload: Workload, y):
    # A sigmoid unit's targets as a column, like its (batch, 1) output.
    return y.reshape(-1, 1) if workload.classes == 1 else y


# -- the variants -----------------------------------------------------------


def _now() -> tuple[float, float]:
    """(wall, CPU) seconds: ``time.perf_counter()`` and ``time.process_time()``."""
    return time.perf_counter(), time.process_time()


def _epoch_clock(ends: list[tuple[float, float]]):
    import keras

    class EpochClock(keras.callbacks.Callback):
        # Only on_epoch_end: Keras keeps its asynchronous batch dispatch.
        def on_epoch_end(self, epoch, logs=None):
            ends.append(_now())

    return EpochClock()


def _run_fit(callback_factory, jit_compile="auto", whole_epoch=False):
    def run(workload, data, epochs, log_dir, ends):
        model, optimizer = _model(workload)
        x, y, val = data
        model.compile(
            optimizer,
            workload.loss,
            metrics=["accuracy"],
            jit_compile=jit_compile,
            steps_per_execution=-(-len(y) // workload.batch_size) if whole_epoch else 1,
        )
        callbacks = [callback_factory(log_dir)] if callback_factory else []
        callbacks.append(_epoch_clock(ends))  # last: after the logging
        model.fit(
            x,
            y,
            batch_size=workload.batch_size,
            epochs=epochs,
            validation_data=val,
            callbacks=callbacks,
            verbose=0,
        )
        return model

    return run


def _keras_tensorboard(log_dir):
    import keras

    return keras.callbacks.TensorBoard(log_dir, histogram_freq=1)


def _tbgrad_callback(log_dir, histogram_freq=1, **options):
    import tbgrad

    return tbgrad.TensorBoard(log_dir, histogram_freq=histogram_freq, **options)


def _tbgrad(**options):
    return functools.partial(_tbgrad_callback, **options)


def _run_tape(workload, data, epochs, log_dir, ends, jit_compile=False):
    import tbgrad

    model, optimizer = _model(workload)
    x, y, val = data
    # train_with_tape takes no callback: its epochs end where its
    # GradientLogger (tape.py: "the GradientLogger ... writes the epochs")
    # ends them, so clock each GradientLogger.end_epoch, a public method. If
    # a release stops calling it, _timed raises "timed 0 epochs".
    end_epoch = tbgrad.GradientLogger.end_epoch

    @functools.wraps(end_epoch)
    def clocked(self, *args, **kwargs):
        end_epoch(self, *args, **kwargs)
        ends.append(_now())

    tbgrad.GradientLogger.end_epoch = clocked
    try:
        tbgrad.train_with_tape(
            model,
            x,
            y,
            epochs=epochs,
            batch_size=workload.batch_size,
            optimizer=optimizer,
            loss=workload.loss,
            validation_data=val,
            log_dir=log_dir,
            histogram_freq=1,
            seed=1,
            verbose=0,
            jit_compile=jit_compile,
        )
    finally:
        tbgrad.GradientLogger.end_epoch = end_epoch
    return model


def _run_eager_reference(workload, data, epochs, log_dir, ends):
    """Study B's gradient loop (part 2), as written there, eager.

    A shuffled (buffer 1024), batched data set, one tape per step, the
    kernel gradients (biases skipped) of each epoch's first step copied to
    numpy, the loss kept per epoch. Validation data, where the workload has
    some, is evaluated once per epoch in one call.
    """
    import tensorflow as tf

    model, optimizer = _model(workload)
    x, y, val = data
    loss_fn = _loss_fn(workload)
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, _targets(workload, y)))
        .shuffle(1024)
        .batch(workload.batch_size)
    )
    gradients, losses = [], []
    for _ in range(epochs):
        for step, (xb, yb) in enumerate(dataset):
            with tf.GradientTape() as tape:
                pred = model(xb, training=True)
                loss = loss_fn(yb, pred)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            if step == 0:
                gradients.append(
                    {
                        v.path: g.numpy()
                        for v, g in zip(model.trainable_variables, grads)
                        if "kernel" in v.path
                    }
                )
        losses.append(float(loss))
        if val is not None:
            float(loss_fn(_targets(workload, val[1]), model(val[0], training=False)))
        ends.append(_now())
    return model


RUNNERS: dict[str, Callable] = {
    "fit": _run_fit(None),
    AA: _run_fit(None),
    "fit+keras_tb": _run_fit(_keras_tensorboard),
    "fit+tbgrad": _run_fit(_tbgrad()),
    "fit+tbgrad(diag1)": _run_fit(_tbgrad(diagnostics_every=1)),
    "fit+tbgrad(no-diag)": _run_fit(_tbgrad(diagnostics=False)),
    "fit+tbgrad(h0)": _run_fit(_tbgrad(histogram_freq=0)),
    "fit+tbgrad(every8)": _run_fit(_tbgrad(stats_every=8)),
    "fit+tbgrad(every8,no-diag)": _run_fit(_tbgrad(stats_every=8, diagnostics=False)),
    "fit-xla": _run_fit(None, jit_compile=True),
    "fit-xla+tbgrad": _run_fit(_tbgrad(), jit_compile=True),
    "fit-xla+tbgrad(every8)": _run_fit(_tbgrad(stats_every=8), jit_compile=True),
    "fit-epoch": _run_fit(None, whole_epoch=True),
    "fit-epoch+tbgrad": _run_fit(_tbgrad(), whole_epoch=True),
    "tape": _run_tape,
    "tape+xla": functools.partial(_run_tape, jit_compile=True),
    "eager_ref": _run_eager_reference,
}


# -- measuring --------------------------------------------------------------


def _folder_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


@dataclass(frozen=True)
class Timing:
    """One run of one variant: wall and CPU seconds, bytes written."""

    first: tuple[float, float]  # the call to the first epoch's end
    steady: tuple[float, float]  # the median later epoch
    total: tuple[float, float]  # the whole call
    size: int
    params: int
    jit_compile: str


def _timed(variant: str, workload: Workload, data, epochs: int, scratch: str) -> Timing:
    """Runs ``variant`` once and times it (see :class:`Timing`)."""
    log_dir = tempfile.mkdtemp(prefix=f"{_slug(variant)}-", dir=scratch)
    ends: list[tuple[float, float]] = []
    gc.collect()
    start = _now()
    model = RUNNERS[variant](workload, data, epochs, log_dir, ends)
    end = _now()
    size = _folder_bytes(log_dir)
    shutil.rmtree(log_dir, ignore_errors=True)
    if len(ends) != epochs:
        raise RuntimeError(f"{variant}: timed {len(ends)} epochs of {epochs}")

    def steady(k):
        return statistics.median(b[k] - a[k] for a, b in zip(ends, ends[1:]))

    return Timing(
        first=(ends[0][0] - start[0], ends[0][1] - start[1]),
        steady=(steady(0), steady(1)),
        total=(end[0] - start[0], end[1] - start[1]),
        size=size,
        params=model.count_params(),
        jit_compile=_resolved_jit(variant, model),
    )


def _slug(variant: str) -> str:
    return "".join(c if c.isalnum() or c == "-" else "_" for c in variant)


def _resolved_jit(variant: str, model) -> str:
    # What the train step was compiled with: fit's resolved jit_compile (Keras
    # resolves "auto"), the tape loop's argument, or eager.
    if variant.startswith("fit"):
        return str(bool(model.jit_compile))
    if variant.startswith("tape"):
        return str(variant == "tape+xla")
    return "eager"


def bench_workload(
    workload: Workload,
    variants: Sequence[str],
    repeats: int,
    epochs: int | None = None,
    samples: int | None = None,
    warmup: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Times ``variants`` on ``workload``, alternating; returns their medians."""
    epochs = epochs or workload.epochs
    if epochs < 2:
        raise ValueError(f"epochs must be >= 2 (a first and a steady epoch). Received: {epochs}")
    data = load_data(workload, samples)
    results: dict[str, list[Timing]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="tbgrad-bench-") as scratch:
        if warmup:
            for variant in variants:
                _timed(variant, workload, data, 2, scratch)
        for r in range(repeats):
            # Rotate the order each repeat so no variant always runs first.
            order = list(variants[r % len(variants) :]) + list(variants[: r % len(variants)])
            for variant in order:
                result = _timed(variant, workload, data, epochs, scratch)
                results[variant].append(result)
                if progress:
                    progress(
                        f"{workload.name} repeat {r + 1}/{repeats} {variant}: first epoch "
                        f"{result.first[0]:.2f}s, then {result.steady[0] * 1000:.1f} ms/epoch "
                        f"(CPU {result.steady[1] * 1000:.1f}), total {result.total[0]:.2f}s"
                    )
    return _median_rows(workload, variants, epochs, results)


def _median_rows(
    workload: Workload, variants: Sequence[str], epochs: int, results: dict[str, list[Timing]]
) -> list[Row]:
    """One row of medians per variant, with its ratios to :data:`FLOOR`."""
    rows = []
    for variant in variants:
        runs = results[variant]

        def median(field, k, scale=1.0, runs=runs):
            return statistics.median(getattr(t, field)[k] for t in runs) * scale

        rows.append(
            Row(
                workload=workload.name,
                variant=variant,
                epochs=epochs,
                params=runs[0].params,
                first_s=median("first", 0),
                epoch_ms=median("steady", 0, 1000),
                total_s=median("total", 0),
                epoch_ratio=float("nan"),
                total_ratio=float("nan"),
                bytes_per_epoch=statistics.median(t.size for t in runs) / epochs,
                epoch_ms_all=[t.steady[0] * 1000 for t in runs],
                total_s_all=[t.total[0] for t in runs],
                jit_compile=runs[0].jit_compile,
                fixed_s=statistics.median(t.first[0] - t.steady[0] for t in runs),
                cpu_first_s=median("first", 1),
                cpu_fixed_s=statistics.median(t.first[1] - t.steady[1] for t in runs),
                cpu_epoch_ms=median("steady", 1, 1000),
                cpu_total_s=median("total", 1),
                cpu_epoch_ms_all=[t.steady[1] * 1000 for t in runs],
            )
        )
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[Row]) -> None:
    floor = next((row for row in rows if row.variant == FLOOR), None)
    if floor is None:
        return
    for row in rows:
        row.epoch_ratio = row.epoch_ms / floor.epoch_ms
        row.total_ratio = row.total_s / floor.total_s
        row.cpu_epoch_ratio = row.cpu_epoch_ms / floor.cpu_epoch_ms
        row.cpu_total_ratio = row.cpu_total_s / floor.cpu_total_s


# -- the train step alone -----------------------------------------------------

STEP_VARIANTS = (
    "step",
    "step(A/A)",
    "step+tbgrad",
    "step+tbgrad(diag1)",
    "step+tbgrad(no-diag)",
    "step+tbgrad(every8)",
    "step-xla",
    "step-xla(A/A)",
    "step-xla+tbgrad",
)
# The plain step every hooked step is compared with, and its A/A twin:
# always run. The XLA pair is run with any XLA variant, its floor.
STEP_FLOORS = ("step", "step(A/A)")
XLA_STEP_FLOORS = ("step-xla", "step-xla(A/A)")
# The GradientLogger options of the step variants with tbgrad.
STEP_LOGGERS: dict[str, dict] = {
    "step+tbgrad": {},
    "step+tbgrad(diag1)": {"diagnostics_every": 1},
    "step+tbgrad(no-diag)": {"diagnostics": False},
    "step+tbgrad(every8)": {"stats_every": 8},
    "step-xla+tbgrad": {},
}


def _xla(step_variant: str) -> bool:
    return step_variant.startswith("step-xla")


def step_variants(selected: Sequence[str]) -> list[str]:
    """``selected`` and the floors they need, in the order of :data:`STEP_VARIANTS`."""
    names = {*STEP_FLOORS, *selected}
    if any(map(_xla, selected)):
        names.update(XLA_STEP_FLOORS)
    return [name for name in STEP_VARIANTS if name in names]


def bench_train_step(
    workload: Workload,
    rounds: int,
    steps: int = 100,
    progress: Callable[[str], None] | None = None,
    variants: Sequence[str] = STEP_VARIANTS,
) -> list[dict]:
    """Times ``workload``'s bare compiled train step with and without a
    :class:`tbgrad.GradientLogger` (``variants`` of :data:`STEP_VARIANTS` and
    their floors), in alternating rounds (:func:`_time_rounds`). Returns one
    row per variant with the median wall and CPU ms per step and their
    ratios to the same step without tbgrad.
    """
    import keras
    import tensorflow as tf

    names = step_variants(variants)
    size = workload.batch_size
    x, y, _ = load_data(workload, size)
    batch = (tf.constant(x[:size]), tf.constant(_targets(workload, y[:size])))
    steps_of: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory(prefix="tbgrad-bench-step-") as scratch:
        keras.backend.clear_session()
        try:
            for name in names:
                steps_of[name] = _train_step(workload, name, batch, scratch)
            times = _time_rounds(workload, steps_of, batch, rounds, steps, progress)
        finally:
            for _, logger in steps_of.values():
                if logger is not None:
                    logger.close()
    return _step_rows(workload, times)


def _time_rounds(workload: Workload, steps_of: dict, batch, rounds: int, steps: int, progress):
    """{variant: [(wall, CPU) ms per step of each round]}: a warm-up round,
    then ``rounds`` rounds of ``steps`` steps of every variant, their order
    rotating; each logger ends an epoch after each round, untimed."""
    names = list(steps_of)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for r in range(rounds + 1):  # round 0 warms up
        for name in names[r % len(names) :] + names[: r % len(names)]:
            step, logger = steps_of[name]
            ms = _time_steps(step, batch, steps)
            if logger is not None:
                logger.end_epoch(r)
            if r:
                times[name].append(ms)
        if r and progress:
            progress(
                f"{workload.name} round {r}/{rounds}: "
                + ", ".join(f"{n} {times[n][-1][0]:.2f}" for n in names)
                + " ms/step"
            )
    for name, (step, _) in steps_of.items():
        # TensorFlow warns of retracing when many functions are traced in a
        # row, as here; a step traced again would have timed its tracing.
        if step.experimental_get_tracing_count() != 1:
            raise RuntimeError(f"{name}: traced {step.experimental_get_tracing_count()} times")
    return times


def _train_step(workload: Workload, name: str, batch, scratch: str):
    """(step, logger): the compiled train step of variant ``name`` on its own
    model and optimizer, traced on ``batch``, and the GradientLogger hooked
    into it (None for a plain step)."""
    import tensorflow as tf

    import tbgrad

    # Every step its own model (the same weights) and optimizer, so that
    # each logger hooks an optimizer of its own; the Keras session is
    # cleared once, before the first, not under the steps traced before.
    model, optimizer = _model(workload, clear_session=False)
    optimizer.build(model.trainable_variables)
    loss_fn = _loss_fn(workload)
    xla = _xla(name)
    logger = None
    if name in STEP_LOGGERS:
        # Attached before the step is traced: the trace calls its hook.
        log_dir = tempfile.mkdtemp(prefix=f"{_slug(name)}-", dir=scratch)
        logger = tbgrad.GradientLogger(
            model, log_dir, optimizer=optimizer, jit_compile=xla, **STEP_LOGGERS[name]
        ).attach()

    @tf.function(jit_compile=xla)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    step(*batch)  # traced (and compiled) here, before the warm-up round
    return step, logger


def _time_steps(fn, batch, steps: int) -> tuple[float, float]:
    """Wall and CPU milliseconds per step of ``steps`` calls of ``fn`` on ``batch``."""
    start = _now()
    for _ in range(steps):
        loss = fn(*batch)
    float(loss)
    end = _now()
    return (end[0] - start[0]) / steps * 1000, (end[1] - start[1]) / steps * 1000


def _step_rows(workload: Workload, times: dict[str, list[tuple[float, float]]]) -> list[dict]:
    """One row per step variant: its medians and the ratios to the plain step."""
    rows = []
    for name, runs in times.items():
        base = times[XLA_STEP_FLOORS[0] if _xla(name) else STEP_FLOORS[0]]
        wall = statistics.median(t[0] for t in runs)
        cpu = statistics.median(t[1] for t in runs)
        rows.append(
            {
                "workload": workload.name,
                "variant": name,
                "jit_compile": _xla(name),
                "step_ms": wall,
                "ratio": wall / statistics.median(t[0] for t in base),
                "cpu_step_ms": cpu,
                "cpu_ratio": cpu / statistics.median(t[1] for t in base),
                "step_ms_all": [t[0] for t in runs],
                "cpu_step_ms_all": [t[1] for t in runs],
            }
        )
    return rows


def format_step_table(rows: Sequence[dict]) -> str:
    """A Markdown table of :func:`bench_train_step`'s rows."""
    lines = [
        "| workload | variant | jit_compile | ms/step | x step | CPU ms/step | x step (CPU) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['variant']} | {r['jit_compile']} | {r['step_ms']:.2f} "
            f"| {r['ratio']:.2f} | {r['cpu_step_ms']:.2f} | {r['cpu_ratio']:.2f} |"
        )
    return "\n".join(lines)


def environment() -> dict[str, str]:
    """Machine and versions, for the report."""
    import keras
    import tensorboard
    import tensorflow as tf

    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "tensorboard": tensorboard.__version__,
        "nproc": str(os.cpu_count()),
        "machine": platform.machine(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", ""),
        "load_average": load_average(),
    }


def load_average() -> str:
    """The machine's 1, 5 and 15 minute load averages (other jobs' load too)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table of the medians, wall time and CPU time side by side."""
    head = (
        "| workload | variant | first epoch s | fixed s (CPU) | steady ms/epoch | x fit "
        "| CPU ms/epoch | x fit (CPU) | total s | CPU s | x fit (CPU) | bytes/epoch |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r.workload} | {r.variant} | {r.first_s:.2f} | {r.fixed_s:.2f} "
            f"({r.cpu_fixed_s:.2f}) | {r.epoch_ms:.1f} | {r.epoch_ratio:.2f} "
            f"| {r.cpu_epoch_ms:.1f} | {r.cpu_epoch_ratio:.2f} | {r.total_s:.2f} "
            f"| {r.cpu_total_s:.2f} | {r.cpu_total_ratio:.2f} | {r.bytes_per_epoch:,.0f} |"
        )
    return "\n".join(lines)


def jit_summary(rows: Sequence) -> str:
    """The header line naming each variant's resolved ``jit_compile``."""
    seen = {}
    for r in rows:
        variant = r.variant if isinstance(r, Row) else r["variant"]
        jit = r.jit_compile if isinstance(r, Row) else r["jit_compile"]
        seen.setdefault(variant, str(jit))
    return "resolved jit_compile: " + ", ".join(f"{v} {j}" for v, j in seen.items())
