"""The benchmark behind ``scripts/bench.py``: what logging gradients costs.

Ways to train the same model on the same data, run side by side:

* ``fit``: ``model.fit`` with no callback, the floor every ratio refers to;
* ``fit(A/A)``: the same again, always run: its ratio to ``fit`` is the
  table's noise floor (a difference smaller than it explains nothing);
* ``fit+keras_tb``: ``model.fit`` with ``keras.callbacks.TensorBoard(histogram_freq=1)``;
* ``fit+tbgrad``: ``model.fit`` with tbgrad's callback (``histogram_freq=1``);
* ``fit+tbgrad(h0)``: the callback with ``histogram_freq=0``;
* ``fit+tbgrad(every8)``: the callback with ``stats_every=8``;
* ``fit+tbgrad(every8,no-diag)``: ``stats_every=8``, ``diagnostics=False``;
* ``fit+tbgrad(no-diag)``: the callback with ``diagnostics=False`` (no
  update ratios, activation health or clipping statistics);
* ``fit+tbgrad(epoch-work)``: ``histogram_freq=0``, ``diagnostics=False``
  and the statistics' per-step update a no-op: what the callback costs
  besides the per-step statistics (its writers, reading the kernels back,
  weight statistics, the writes);
* ``fit-xla``, ``fit-xla+tbgrad``: ``fit`` and ``fit+tbgrad`` compiled with
  ``jit_compile=True`` (Keras's default ``"auto"`` resolves to XLA only on a
  machine with a GPU; each variant's resolved value is printed);
* ``fit-xla+tbgrad(every8)``: ``stats_every=8`` under XLA, where the steps
  left out run a second train function, compiled without the statistics;
  ``fit-xla+tbgrad(every8,in-step)``: the callback's earlier form, one
  train function for every step, which computes the statistics every step
  and masks the steps left out;
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
backward, optimizer update on one batch) without and with tbgrad's optimizer
hook (:data:`STEP_VARIANTS`, and any form of :mod:`tbgrad.lab.stat_forms`),
in alternating rounds of many steps, and prints the median wall and CPU ms
per step and the ratio of each to the plain step; ``step(A/A)`` is the plain
step timed twice. ``step+stats`` is what the hook does in ``fit``: the
gradient statistics, the update-to-weight ratios and the activation health;
``step+stats(no-act)`` leaves out the activation health,
``step+grad-stats`` (``diagnostics=False``) and the forms both.
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
    "fit+tbgrad(h0)",
    "fit+tbgrad(every8)",
    "fit+tbgrad(every8,no-diag)",
    "fit+tbgrad(no-diag)",
    "fit+tbgrad(epoch-work)",
    "fit-xla",
    "fit-xla+tbgrad",
    "fit-xla+tbgrad(every8)",
    "fit-xla+tbgrad(every8,in-step)",
    "fit-epoch",
    "fit-epoch+tbgrad",
    "tape",
    "tape+xla",
    "eager_ref",
)
FLOOR = "fit"
# The floor run again: always run with it, its ratio is the noise floor.
AA = "fit(A/A)"


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
        "mlp-20x256", 20, 256, 8_192, 32, 3, False, "sgd", 0.01, 0.9,
        "20 hidden x Dense(256, relu), 8192 samples, batch 32",
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


def _tbgrad_callback(log_dir, histogram_freq=1, stats_every=1, diagnostics=True):
    from tbgrad.gradient_tensorboard import GradientTensorBoard

    return GradientTensorBoard(
        log_dir, histogram_freq=histogram_freq, stats_every=stats_every, diagnostics=diagnostics
    )


def _in_step_callback(log_dir, stats_every=8):
    # The callback as it was before it chose stats_every's steps between
    # fit's steps under XLA: one train function, which picks its steps.
    from tbgrad.gradient_tensorboard import GradientTensorBoard

    class InStep(GradientTensorBoard):
        def _selects_steps(self) -> bool:
            return False

    return InStep(log_dir, stats_every=stats_every)


def _epoch_work_callback(log_dir):
    from tbgrad.gradient_tensorboard import GradientTensorBoard

    class EpochWorkOnly(GradientTensorBoard):
        # The callback with its statistics' per-step update a no-op (the
        # bench's models are built, so the statistics exist from here on)
        # and no diagnostics (whose update ratios run around the update).
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            self._stats.update = lambda grads, variables: None

    return EpochWorkOnly(log_dir, histogram_freq=0, diagnostics=False)


def _run_tape(workload, data, epochs, log_dir, ends, jit_compile=False):
    from tbgrad.summary import SummaryLogger
    from tbgrad.tape import train_with_tape

    model, optimizer = _model(workload)
    x, y, val = data
    # The loop's epochs end where it writes them: clock each write.
    write_epoch = SummaryLogger.write_epoch

    def clocked(self, *args, **kwargs):
        write_epoch(self, *args, **kwargs)
        ends.append(_now())

    SummaryLogger.write_epoch = clocked
    try:
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
    finally:
        SummaryLogger.write_epoch = write_epoch
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
        ends.append(_now())
    return model


RUNNERS: dict[str, Callable] = {
    "fit": _run_fit(None),
    AA: _run_fit(None),
    "fit+keras_tb": _run_fit(_keras_tensorboard),
    "fit+tbgrad": _run_fit(_tbgrad_callback),
    "fit+tbgrad(h0)": _run_fit(functools.partial(_tbgrad_callback, histogram_freq=0)),
    "fit+tbgrad(every8)": _run_fit(functools.partial(_tbgrad_callback, stats_every=8)),
    "fit+tbgrad(every8,no-diag)": _run_fit(
        functools.partial(_tbgrad_callback, stats_every=8, diagnostics=False)
    ),
    "fit+tbgrad(no-diag)": _run_fit(functools.partial(_tbgrad_callback, diagnostics=False)),
    "fit+tbgrad(epoch-work)": _run_fit(_epoch_work_callback),
    "fit-xla": _run_fit(None, jit_compile=True),
    "fit-xla+tbgrad": _run_fit(_tbgrad_callback, jit_compile=True),
    "fit-xla+tbgrad(every8)": _run_fit(
        functools.partial(_tbgrad_callback, stats_every=8), jit_compile=True
    ),
    "fit-xla+tbgrad(every8,in-step)": _run_fit(_in_step_callback, jit_compile=True),
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


STEP_VARIANTS = (
    "step",
    "step(A/A)",
    "step+stats",
    "step+stats(no-act)",
    "step+grad-stats",
    "step+stats(every8)",
    "step-xla",
    "step-xla+stats",
)
# The plain steps every hooked step is compared with; both are always run.
STEP_FLOORS = ("step", "step(A/A)")
# Step variants whose statistics leave out the diagnostics (update ratios,
# activation health): the gradient statistics alone, and every form.
GRADIENTS_ONLY = ("step+grad-stats",)
# Step variants with the update ratios but without the activation health.
NO_ACTIVATIONS = ("step+stats(no-act)",)
# The names of tbgrad.lab.stat_forms.FORMS (listed here: the command line
# checks its flags before TensorFlow is imported).
FORMS = ("before", "lowered-cond", "two-conds", "xla-sums", "xla-fast", "no-cond")


def form_variant(form: str) -> str:
    """The step variant that hooks a form of :data:`tbgrad.lab.stat_forms.FORMS`."""
    return f"step+{form}"


def bench_train_step(
    workload: Workload,
    rounds: int,
    steps: int = 100,
    progress: Callable[[str], None] | None = None,
    variants: Sequence[str] = STEP_VARIANTS,
    forms: Sequence[str] = (),
) -> list[dict]:
    """Times ``workload``'s bare compiled train step with and without the
    statistics (``variants`` of :data:`STEP_VARIANTS`, then one variant per
    form of :mod:`tbgrad.lab.stat_forms`): ``rounds`` alternating rounds of
    ``steps`` steps each, after a warm-up, their order rotating. Returns one
    row per variant with the median wall and CPU ms per step and their
    ratios to the same step without the statistics.
    """
    import tensorflow as tf

    model, optimizer = _model(workload)
    optimizer.build(model.trainable_variables)
    x, y, _ = load_data(workload, workload.batch_size)
    batch = (
        tf.constant(x[: workload.batch_size]),
        tf.constant(y[: workload.batch_size].reshape(-1, 1)),
    )
    names = list(dict.fromkeys([*STEP_FLOORS, *variants, *map(form_variant, forms)]))
    fns = {name: _train_step(model, optimizer, batch, name) for name in names}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for r in range(rounds + 1):  # round 0 warms up
        for name in names[r % len(names) :] + names[: r % len(names)]:
            ms = _time_steps(fns[name], batch, steps)
            if r:
                times[name].append(ms)
        if r and progress:
            progress(
                f"{workload.name} round {r}/{rounds}: "
                + ", ".join(f"{n} {times[n][-1][0]:.2f}" for n in names)
                + " ms/step"
            )
    return _step_rows(workload, times)


def _stats_factory(name: str):
    """The GradientStats class (or factory) a step variant hooks; None for none."""
    from tbgrad.lab.stat_forms import FORMS
    from tbgrad.stats import GradientStats

    if name.startswith("step+") and name[len("step+") :] in FORMS:
        return FORMS[name[len("step+") :]]
    if "+stats" not in name and name not in GRADIENTS_ONLY:
        return None
    if name.endswith("(every8)"):
        return functools.partial(GradientStats, stats_every=8)
    return GradientStats


def _gradients_only(name: str) -> bool:
    return name in GRADIENTS_ONLY or name[len("step+") :] in FORMS


def _train_step(model, optimizer, batch, name: str):
    """The compiled train step of variant ``name`` on ``batch``, traced with
    tbgrad's optimizer hook when the variant has statistics."""
    import keras
    import tensorflow as tf

    from tbgrad.diagnostics import activation_layers
    from tbgrad.hook import OptimizerHook
    from tbgrad.stats import kernel_layers

    loss_fn = keras.losses.BinaryCrossentropy()
    xla = name.startswith("step-xla")

    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    compiled = tf.function(step, jit_compile=xla)
    make_stats = _stats_factory(name)
    if make_stats is None:
        compiled(*batch)
    else:
        layers = kernel_layers(model)
        if _gradients_only(name):
            stats = make_stats(layers, jit_compile=xla, diagnostics=False)
        elif name in NO_ACTIVATIONS:
            stats = make_stats(layers, jit_compile=xla)
        else:
            stats = make_stats(
                layers, jit_compile=xla, activations=activation_layers(model, layers)
            )
        activations = stats.activations
        if activations is not None:
            activations.install()
        # The hook and the activations' wrappers are read when the step is
        # traced: trace it with them installed.
        try:
            with OptimizerHook(optimizer, stats):
                compiled(*batch)
        finally:
            if activations is not None:
                activations.remove()
    return compiled


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
        base = times["step-xla" if name.startswith("step-xla") else "step"]
        wall = statistics.median(t[0] for t in runs)
        cpu = statistics.median(t[1] for t in runs)
        rows.append(
            {
                "workload": workload.name,
                "variant": name,
                "jit_compile": name.startswith("step-xla"),
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
