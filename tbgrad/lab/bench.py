"""The benchmark behind ``scripts/bench.py``: what logging gradients costs.

Ten ways to train the same model on the same data, run side by side:

* ``fit``: ``model.fit`` with no callback, the floor every ratio refers to;
* ``fit+keras_tb``: ``model.fit`` with ``keras.callbacks.TensorBoard(histogram_freq=1)``;
* ``fit+tbgrad``: ``model.fit`` with ``tbgrad.GradientTensorBoard(histogram_freq=1)``;
* ``fit-noxla``, ``fit-noxla+tbgrad``: ``fit`` and ``fit+tbgrad`` compiled
  with ``jit_compile=False`` (on a CPU, Keras compiles the train step with XLA by
  default);
* ``fit-epoch``, ``fit-epoch+tbgrad``: ``fit`` and ``fit+tbgrad`` compiled
  with ``steps_per_execution`` = the steps of an epoch (one call per epoch);
* ``tape``: :func:`tbgrad.train_with_tape` (histograms every epoch);
* ``tape+xla``: the same with ``jit_compile=True`` (each step compiled by XLA);
* ``eager_ref``: the eager GradientTape loop of study B (part 2), the loop a
  user would otherwise write: a Python loop over a shuffled
  ``tf.data`` ``batch(32)`` data set, one tape per step, the first step's
  kernel gradients of every epoch copied to numpy.

Every variant runs once per repeat and the variants alternate (their order
rotates each repeat), so a change of machine load hits them all alike. A
warm-up round (two epochs of each) comes first. The end of every epoch is
timed: by a last callback for ``model.fit``, by the loop itself for the
eager loop, and by the wall time the event file records for each epoch of
the tape loop. Reported medians over the repeats:

* ``first_s``: from the call to the end of the first epoch: set-up, tracing
  and one epoch;
* ``epoch_ms``: the steady per-epoch time, the median of the later epochs;
* ``total_s``: the whole call, everything included;
* ``bytes_per_epoch``: the size of the run folder over ``epochs``.

``--train-step`` isolates the per-step cost of the gradient statistics from
the rest of an epoch: it times the workload's compiled train step (forward,
backward, optimizer update on one batch) without and with tbgrad's optimizer
hook, without and with XLA, in alternating rounds of many steps, and prints
the median ms per step and the ratio of each hooked step to its plain one.
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
    "fit+keras_tb",
    "fit+tbgrad",
    "fit-noxla",
    "fit-noxla+tbgrad",
    "fit-epoch",
    "fit-epoch+tbgrad",
    "tape",
    "tape+xla",
    "eager_ref",
)
FLOOR = "fit"


@dataclass(frozen=True)
class Workload:
    """A model and its data."""

    name: str
    depth: int
    width: int
    samples: int  # training samples (study A: the 500 of circles-a)
    batch_size: int
    epochs: int  # default number of epochs of the timed run
    validation: bool
    optimizer: str
    learning_rate: float
    momentum: float
    description: str


WORKLOADS = {
    "study-a": Workload(
        "study-a", 5, 5, 500, 32, 10, True, "sgd", 0.01, 0.9,
        "study A (A3): 5 hidden x Dense(5, relu), 500 samples, batch 32, "
        "validation on the other 500, SGD 0.01 momentum 0.9",
    ),
    "mlp-20x256": Workload(
        "mlp-20x256", 20, 256, 100_000, 32, 2, False, "sgd", 0.01, 0.9,
        "20 hidden x Dense(256, relu), 100k samples, batch 32",
    ),
    "depth-5": Workload(
        "depth-5", 5, 64, 4_000, 32, 3, False, "sgd", 0.01, 0.9,
        "5 hidden x Dense(64, relu), 4000 samples, batch 32",
    ),
    "depth-20": Workload(
        "depth-20", 20, 64, 4_000, 32, 3, False, "sgd", 0.01, 0.9,
        "20 hidden x Dense(64, relu), 4000 samples, batch 32",
    ),
    "depth-50": Workload(
        "depth-50", 50, 64, 4_000, 32, 3, False, "sgd", 0.01, 0.9,
        "50 hidden x Dense(64, relu), 4000 samples, batch 32",
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


# -- data and models ------------------------------------------------------


def load_data(workload: Workload, samples: int | None = None):
    """(x, y, validation or None) of ``workload``; ``samples`` overrides its size."""
    import numpy as np
    from sklearn.datasets import make_circles
    from sklearn.preprocessing import MinMaxScaler

    from tbgrad.lab.data import load_dataset

    n = samples or workload.samples
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


def _model(workload: Workload):
    import keras

    from tbgrad.lab.models import build_mlp, make_optimizer

    keras.backend.clear_session()
    keras.utils.set_random_seed(1)
    model = build_mlp(depth=workload.depth, width=workload.width, activation="relu")
    optimizer = make_optimizer(workload.optimizer, workload.learning_rate, workload.momentum)
    return model, optimizer


# -- the variants -----------------------------------------------------------


def _epoch_clock(ends: list[float]):
    import keras

    class EpochClock(keras.callbacks.Callback):
        # Only on_epoch_end: Keras keeps its asynchronous batch dispatch.
        def on_epoch_end(self, epoch, logs=None):
            ends.append(time.perf_counter())

    return EpochClock()


def _run_fit(callback_factory, jit_compile="auto", whole_epoch=False):
    def run(workload, data, epochs, log_dir, ends):
        model, optimizer = _model(workload)
        x, y, val = data
        model.compile(
            optimizer,
            "binary_crossentropy",
            metrics=["accuracy"],
            jit_compile=jit_compile,
            steps_per_execution=-(-len(x) // workload.batch_size) if whole_epoch else 1,
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


def _tbgrad_callback(log_dir):
    from tbgrad.gradient_tensorboard import GradientTensorBoard

    return GradientTensorBoard(log_dir, histogram_freq=1)


def _run_tape(workload, data, epochs, log_dir, ends, jit_compile=False):
    from tensorboard.backend.event_processing import event_accumulator

    from tbgrad.tape import train_with_tape

    model, optimizer = _model(workload)
    x, y, val = data
    train_with_tape(
        model,
        x,
        y,
        epochs=epochs,
        batch_size=workload.batch_size,
        optimizer=optimizer,
        validation_data=val,
        log_dir=log_dir,
        histogram_freq=1,
        seed=1,
        verbose=0,
        jit_compile=jit_compile,
    )
    # The writer stamps each epoch's event with the time it was written, at
    # the end of the epoch (the event file's clock is time.time()).
    offset = time.perf_counter() - time.time()
    events = event_accumulator.EventAccumulator(
        os.path.join(log_dir, "train"), size_guidance={event_accumulator.TENSORS: 0}
    )
    events.Reload()
    ends += [event.wall_time + offset for event in events.Tensors("epoch_loss")]
    return model


def _run_eager_reference(workload, data, epochs, log_dir, ends):
    """Study B's gradient loop (part 2), as written there, eager.

    A shuffled (buffer 1024) ``batch(32)`` data set, one tape per step, the
    kernel gradients (biases skipped) of each epoch's first step copied to
    numpy, the loss kept per epoch. Validation data, where the workload has
    some, is evaluated once per epoch in one call.
    """
    import keras
    import tensorflow as tf

    model, optimizer = _model(workload)
    x, y, val = data
    loss_fn = keras.losses.BinaryCrossentropy()
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y.reshape(-1, 1)))
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
            float(loss_fn(val[1].reshape(-1, 1), model(val[0], training=False)))
        ends.append(time.perf_counter())
    return model


RUNNERS: dict[str, Callable] = {
    "fit": _run_fit(None),
    "fit+keras_tb": _run_fit(_keras_tensorboard),
    "fit+tbgrad": _run_fit(_tbgrad_callback),
    "fit-noxla": _run_fit(None, jit_compile=False),
    "fit-noxla+tbgrad": _run_fit(_tbgrad_callback, jit_compile=False),
    "fit-epoch": _run_fit(None, whole_epoch=True),
    "fit-epoch+tbgrad": _run_fit(_tbgrad_callback, whole_epoch=True),
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


def _timed(variant: str, workload: Workload, data, epochs: int, scratch: str):
    """(seconds to the first epoch's end, steady ms per epoch, total s, bytes, params)."""
    log_dir = tempfile.mkdtemp(prefix=f"{variant.replace('+', '_')}-", dir=scratch)
    ends: list[float] = []
    gc.collect()
    start = time.perf_counter()
    model = RUNNERS[variant](workload, data, epochs, log_dir, ends)
    seconds = time.perf_counter() - start
    size = _folder_bytes(log_dir)
    shutil.rmtree(log_dir, ignore_errors=True)
    if len(ends) != epochs:
        raise RuntimeError(f"{variant}: timed {len(ends)} epochs of {epochs}")
    steady = statistics.median(b - a for a, b in zip(ends, ends[1:])) * 1000
    return ends[0] - start, steady, seconds, size, model.count_params()


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
    results: dict[str, list[tuple]] = {v: [] for v in variants}
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
                        f"{result[0]:.2f}s, then {result[1]:.1f} ms/epoch, total {result[2]:.2f}s"
                    )
    return _median_rows(workload, variants, epochs, results)


def _median_rows(
    workload: Workload, variants: Sequence[str], epochs: int, results: dict[str, list[tuple]]
) -> list[Row]:
    """One row of medians per variant, with its ratios to :data:`FLOOR`."""
    rows = []
    for variant in variants:
        first, steady, total, size, params = zip(*results[variant])
        rows.append(
            Row(
                workload=workload.name,
                variant=variant,
                epochs=epochs,
                params=params[0],
                first_s=statistics.median(first),
                epoch_ms=statistics.median(steady),
                total_s=statistics.median(total),
                epoch_ratio=float("nan"),
                total_ratio=float("nan"),
                bytes_per_epoch=statistics.median(size) / epochs,
                epoch_ms_all=list(steady),
                total_s_all=list(total),
            )
        )
    floor = next((row for row in rows if row.variant == FLOOR), None)
    if floor is not None:
        for row in rows:
            row.epoch_ratio = row.epoch_ms / floor.epoch_ms
            row.total_ratio = row.total_s / floor.total_s
    return rows


STEP_VARIANTS = ("step", "step+stats", "step-xla", "step-xla+stats")


def bench_train_step(
    workload: Workload,
    rounds: int,
    steps: int = 100,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Times ``workload``'s bare compiled train step with and without the
    statistics (:data:`STEP_VARIANTS`): ``rounds`` alternating rounds of
    ``steps`` steps each, after a warm-up. Returns one row per variant with
    the median ms per step and its ratio to the same step without them.
    """
    import tensorflow as tf

    model, optimizer = _model(workload)
    optimizer.build(model.trainable_variables)
    x, y, _ = load_data(workload, workload.batch_size)
    batch = (
        tf.constant(x[: workload.batch_size]),
        tf.constant(y[: workload.batch_size].reshape(-1, 1)),
    )
    fns = {
        name: _train_step(model, optimizer, batch, xla="xla" in name, stats=name.endswith("+stats"))
        for name in STEP_VARIANTS
    }
    times: dict[str, list[float]] = {name: [] for name in STEP_VARIANTS}
    for r in range(rounds + 1):  # round 0 warms up
        for name, fn in fns.items():
            ms = _time_steps(fn, batch, steps)
            if r:
                times[name].append(ms)
        if r and progress:
            progress(
                f"{workload.name} round {r}/{rounds}: "
                + ", ".join(f"{n} {times[n][-1]:.2f}" for n in STEP_VARIANTS)
                + " ms/step"
            )
    return _step_rows(workload, times)


def _train_step(model, optimizer, batch, xla: bool, stats: bool):
    """The compiled train step on ``batch``, traced with tbgrad's optimizer hook if ``stats``."""
    import keras
    import tensorflow as tf

    from tbgrad.hook import OptimizerHook
    from tbgrad.stats import GradientStats, kernel_layers

    loss_fn = keras.losses.BinaryCrossentropy()

    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    compiled = tf.function(step, jit_compile=xla)
    if stats:
        # The hook is read when the step is traced: trace it installed.
        with OptimizerHook(optimizer, GradientStats(kernel_layers(model), jit_compile=xla)):
            compiled(*batch)
    return compiled


def _time_steps(fn, batch, steps: int) -> float:
    """Milliseconds per step of ``steps`` calls of ``fn`` on ``batch``."""
    start = time.perf_counter()
    for _ in range(steps):
        loss = fn(*batch)
    float(loss)
    return (time.perf_counter() - start) / steps * 1000


def _step_rows(workload: Workload, times: dict[str, list[float]]) -> list[dict]:
    """One row per step variant: its median and the ratio to the plain step."""
    rows = []
    for name in STEP_VARIANTS:
        ms = statistics.median(times[name])
        base = statistics.median(times[name.removesuffix("+stats")])
        rows.append(
            {
                "workload": workload.name,
                "variant": name,
                "step_ms": ms,
                "ratio": ms / base,
                "step_ms_all": times[name],
            }
        )
    return rows


def format_step_table(rows: Sequence[dict]) -> str:
    """A Markdown table of :func:`bench_train_step`'s rows."""
    lines = ["| workload | variant | ms/step | x same step without |", "|---|---|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['variant']} | {r['step_ms']:.2f} | {r['ratio']:.2f} |"
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
        "tensorboard": tensorboard.__version__,
        "nproc": str(os.cpu_count()),
        "machine": platform.machine(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", ""),
    }


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table of the medians."""
    head = (
        "| workload | variant | epochs | first epoch s | steady ms/epoch | x floor "
        "| total s | x floor | bytes/epoch |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r.workload} | {r.variant} | {r.epochs} | {r.first_s:.2f} | {r.epoch_ms:.1f} "
            f"| {r.epoch_ratio:.2f} | {r.total_s:.2f} | {r.total_ratio:.2f} "
            f"| {r.bytes_per_epoch:,.0f} |"
        )
    return "\n".join(lines)
