"""``train_with_tape``: a compiled GradientTape loop that logs like the callback.

The whole epoch runs inside one ``tf.function`` (the dataset is iterated in
the graph), so a Python-level step costs nothing; each step computes the
gradients with ``tf.GradientTape`` and applies them with the optimizer. A
:class:`~tbgrad.gradient_logger.GradientLogger`, the object the callback is
built on, observes them where the optimizer applies them and writes the
epochs, so the tags and the folder layout are those of
:class:`tbgrad.TensorBoard`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from tbgrad import _compat, _multi_worker, tags
from tbgrad import step as _step
from tbgrad._validate import (
    EPOCH,
    TENSORFLOW,
    check_histogram_freq,
    check_int,
    check_keras_backend,
    check_update_freq,
    check_variables,
)
from tbgrad.gradient_logger import GradientLogger
from tbgrad.variables import MATRICES


def train_with_tape(
    model: keras.Model,
    x,
    y,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    optimizer: str | keras.optimizers.Optimizer = "rmsprop",
    loss: str | keras.losses.Loss = "binary_crossentropy",
    metrics: Sequence[str] = ("accuracy",),
    validation_data: tuple | None = None,
    validation_batch_size: int | None = None,
    log_dir: str | os.PathLike | None = None,
    histogram_freq: int = 1,
    update_freq: Literal["epoch"] | int = EPOCH,
    shuffle: bool = True,
    shuffle_buffer: int | None = None,
    seed: int | None = None,
    verbose: int = 1,
    jit_compile: bool = False,
    variables: Literal["matrices", "kernels", "all"] | Callable = MATRICES,
    diagnostics: bool = True,
    diagnostics_every: int = _step.DEFAULT_DIAGNOSTICS_EVERY,
) -> dict[str, list[float]]:
    """Trains ``model`` with a compiled GradientTape loop and logs its gradients.

    Args:
        model: A built Keras model.
        x, y: Training inputs and targets (arrays).
        epochs: Passes over the training data.
        batch_size: Samples per step.
        optimizer: An optimizer name (a fresh one is made) or a new optimizer
            instance. Keras 3 optimizers cannot be shared between models.
        loss: A Keras loss name or instance.
        metrics: Metric names; ``"accuracy"`` picks binary or sparse
            categorical accuracy from the output width.
        validation_data: ``(x_val, y_val)``, evaluated after every epoch.
        validation_batch_size: Samples per evaluation step (default
            ``batch_size``, as in ``model.fit``). Larger batches evaluate
            faster and give the same figures up to float32 rounding.
        log_dir: The run folder, local or a URL (``gs://...``); None trains
            without logging. Under ``MultiWorkerMirroredStrategy`` give every
            worker the same one: only the chief writes it.
        histogram_freq: Histograms every this many epochs (0: none).
        update_freq: ``"epoch"`` or an integer N: ``batch_*`` scalars every N
            steps at the global step.
        shuffle: Reshuffle the training data every epoch.
        shuffle_buffer: The shuffle buffer (default: the whole data set).
        seed: Seed of the shuffling. Needed to shuffle on several workers
            (``MultiWorkerMirroredStrategy``): each takes its share of every
            global batch, so all must shuffle alike.
        verbose: 0 silent, 1 a progress bar over the epochs.
        jit_compile: Compile each training and evaluation step with XLA
            (ignored under a multi-replica strategy or with op determinism).
            It compiles for a few seconds at the start; whether it pays
            depends on the layers' size (docs/benchmarks.md).
        variables: ``"matrices"`` (every weight matrix: kernels,
            embeddings and language-model heads, recurrent kernels, LoRA
            factors), ``"kernels"``, ``"all"`` or a predicate
            ``callable(variable) -> bool``: the trainable variables logged
            (see :func:`tbgrad.variables.tracked_variables`).
        diagnostics: Also log update-to-weight ratios, saturated and dead
            units and clipping (see :class:`tbgrad.GradientLogger`).
        diagnostics_every: Measure the diagnostics on the epoch's first
            step and every this many after it (default 16; 1: every step).

    Returns:
        The history: ``{"loss": [...], "accuracy": [...], "val_loss": ...}``.

    Example:
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(5, "tanh"),
        ...                           keras.layers.Dense(1, "sigmoid")])
        >>> history = tbgrad.train_with_tape(
        ...     model, x, y, epochs=100, optimizer="rmsprop", log_dir="logs/tape")
    """
    x, y = _float_arrays(x, y)
    _check_arguments(locals())
    loop = _TapeLoop(model, x.shape[1:], optimizer, loss, metrics, jit_compile)
    train_ds = _train_dataset(x, y, batch_size, shuffle, shuffle_buffer, seed)
    val_ds = _validation_dataset(validation_data, validation_batch_size or batch_size)
    if log_dir is not None:
        loop.log_to(log_dir, histogram_freq, update_freq, variables, diagnostics, diagnostics_every)
    return loop.fit(train_ds, val_ds, epochs, histogram_freq, verbose)


class _TapeLoop:
    """The parts of one ``train_with_tape`` call: steps, one epoch, the loop."""

    def __init__(self, model, input_shape, optimizer, loss, metrics, jit):
        self.model = model
        self.strategy = _replica_strategy(model)
        # XLA is not used under a multi-replica strategy, nor with op
        # determinism, which XLA does not honour for every op (as in model.fit).
        self.jit = bool(jit) and self.strategy is None and not _compat.op_determinism_enabled()
        # Under a multi-replica strategy (the model built in its scope), our
        # variables are mirrored too; a single device needs no scope.
        with self._scope():
            self.optimizer = (
                keras.optimizers.get(optimizer) if isinstance(optimizer, str) else optimizer
            )
            self.loss_fn = keras.losses.get(loss) if isinstance(loss, str) else loss
            if not model.built:
                model.build((None, *input_shape))
            outputs = getattr(model, "outputs", None)
            self.out_units = int(outputs[0].shape[-1]) if outputs else 1
            self.metrics = [_metric(name, self.out_units) for name in metrics]
            self.loss_tracker = keras.metrics.Mean(name="loss")
        self.gradients: GradientLogger | None = None
        self.collector = self.logger = None
        self.update_freq = EPOCH
        self.log_steps = False
        self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.progbar = None
        if self.jit:
            self.train_step = tf.function(self.train_step, jit_compile=True)
            self.eval_step = tf.function(self.eval_step, jit_compile=True)

    def _scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def log_to(self, log_dir, histogram_freq, update_freq, variables, diagnostics, every):
        # The GradientLogger hooks the optimizer and makes the statistics (in
        # the model's strategy scope); the per-step batch_* scalars, which
        # need the loss and metrics, are written by after_step.
        self.gradients = GradientLogger(
            self.model,
            log_dir,
            histogram_freq,
            variables=variables,
            optimizer=self.optimizer,
            jit_compile=self.jit,
            diagnostics=diagnostics,
            diagnostics_every=every,
        ).attach()
        self.collector, self.logger = self.gradients.collector, self.gradients.summary
        self.update_freq = update_freq
        self.log_steps = update_freq != EPOCH

    # -- one step -----------------------------------------------------------

    def compute_loss(self, yb, pred):
        yb = tf.reshape(yb, tf.shape(pred)) if self.out_units == 1 else yb
        value = tf.reduce_mean(self.loss_fn(yb, pred))
        if self.model.losses:
            value += tf.add_n(self.model.losses)
        return value

    def update_metrics(self, yb, pred, value, n):
        # The loss weighted by the batch's n samples, and every metric.
        self.loss_tracker.update_state(value, sample_weight=n)
        yb = tf.reshape(yb, tf.shape(pred)) if self.out_units == 1 else yb
        for metric in self.metrics:
            metric.update_state(yb, pred)

    def train_step(self, xb, yb):
        with tf.GradientTape() as tape:
            pred = self.model(xb, training=True)
            value = self.compute_loss(yb, pred)
        variables = self.model.trainable_variables
        self.optimizer.apply(tape.gradient(value, variables), variables)
        self.update_metrics(yb, pred, value, tf.cast(tf.shape(xb)[0], tf.float32))

    def eval_step(self, xb, yb):
        pred = self.model(xb, training=False)
        value = self.compute_loss(yb, pred)
        self.update_metrics(yb, pred, value, tf.cast(tf.shape(xb)[0], tf.float32))

    # Each replica takes its share of the global batch; the optimizer sums
    # the replicas' gradients (and the statistics log that sum), so each
    # replica's loss is weighted by its share of the samples: the sum is then
    # the gradient of the global batch's mean loss, as on one device.
    def replica_loss(self, xb, yb, training):
        n = tf.cast(tf.shape(xb)[0], tf.float32)
        total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, n)
        pred = self.model(xb, training=training)
        # A replica can get no sample of the last batch: its loss is 0, not NaN.
        value = tf.where(n > 0, self.compute_loss(yb, pred), 0.0)
        return pred, value, n, tf.math.divide_no_nan(n, total)

    def replica_train_step(self, xb, yb):
        with tf.GradientTape() as tape:
            pred, value, n, share = self.replica_loss(xb, yb, training=True)
            scaled = value * share
        variables = self.model.trainable_variables
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        self.update_metrics(yb, pred, value, n)

    def replica_eval_step(self, xb, yb):
        self.update_metrics(yb, *self.replica_loss(xb, yb, training=False)[:3])

    def after_step(self):
        self.global_step.assign_add(1)
        if self.log_steps:
            # The per-step summaries are written in the graph, at the global
            # step, only on the steps update_freq selects; the values are the
            # running epoch averages, like the batch_* logs of model.fit.
            scalars = {tags.batch_tag(k): v for k, v in self.results().items()}
            scalars.update(self.collector.step_tensors())
            self.logger.write_step_in_graph(
                self.global_step, scalars, tf.equal(self.global_step % self.update_freq, 0)
            )

    # -- one epoch ----------------------------------------------------------

    # Both loops run over an iterator, not the dataset: autograph turns a loop
    # over a dataset into a dataset reduce whose body runs in tf.data's
    # function runtime, many times slower per step than the while loop it
    # builds over an iterator. The per-step summaries of an integer
    # update_freq cannot be written from that while loop, so with them the
    # epoch keeps the dataset loop.
    def train_epoch(self, batches):
        for xb, yb in batches:
            if self.strategy is None:
                self.train_step(xb, yb)
                self.after_step()
            else:
                self.strategy.run(self.replica_train_step, args=(xb, yb))
                # One global step and one writer, outside the replicas. The
                # loop over a distributed dataset is a tf.while_loop whose
                # "while/" name scope would prefix the batch_* tags: reset it.
                with tf.compat.v1.name_scope(None):
                    self.after_step()

    def evaluate(self, batches):
        for xb, yb in batches:
            if self.strategy is None:
                self.eval_step(xb, yb)
            else:
                self.strategy.run(self.replica_eval_step, args=(xb, yb))

    def results(self):
        return {"loss": self.loss_tracker.result(), **{m.name: m.result() for m in self.metrics}}

    def reset_metrics(self):
        self.loss_tracker.reset_state()
        for metric in self.metrics:
            metric.reset_state()

    def run_epoch(self, batches, val_batches, capture):
        # One compiled call per epoch: the resets, the training loop, the
        # evaluation and every value the epoch's summaries need, returned
        # together, rather than a few dozen eager reads and resets per epoch.
        if self.collector is not None:
            self.collector.reset(capture)
        self.reset_metrics()
        self.train_epoch(batches)
        out = {"train": self.results()}
        if val_batches is not None:
            self.reset_metrics()
            self.evaluate(val_batches)
            out["val"] = self.results()
        if self.logger is not None:
            out["snapshot"] = self.collector.snapshot_tensors()
            out["learning_rate"] = tf.cast(self.optimizer.learning_rate, tf.float32)
        return out

    # -- the loop -------------------------------------------------------------

    def fit(self, train_ds, val_ds, epochs, histogram_freq, verbose):
        if self.strategy is not None:
            train_ds = self.strategy.experimental_distribute_dataset(train_ds)
            if val_ds is not None:
                val_ds = self.strategy.experimental_distribute_dataset(val_ds)
        # Slot variables (momentum, ...) created lazily inside the compiled
        # epoch would make tf.function trace it twice (variables may only be
        # created on the first trace) and need a lifted initializer, which
        # fails across replicas: create them now.
        if not self.optimizer.built:
            with self._scope():
                self.optimizer.build(self.model.trainable_variables)
        run_epoch = tf.function(self.run_epoch)
        history: dict[str, list[float]] = {}
        try:
            if self.log_steps:
                self.logger.writer(tags.TRAIN_DIR)  # created eagerly, used inside the graph
            for epoch in range(epochs):
                histograms = bool(histogram_freq) and epoch % histogram_freq == 0
                out = run_epoch(
                    train_ds if self.log_steps else iter(train_ds),
                    iter(val_ds) if val_ds is not None else None,
                    tf.constant(histograms),
                )
                self._end_epoch(epoch, out, history, verbose, epochs)
        finally:
            if self.gradients is not None:
                self.gradients.close()
        return history

    def _end_epoch(self, epoch, out, history, verbose, epochs):
        out = tf.nest.map_structure(lambda t: t.numpy(), out)
        train_logs = {k: float(v) for k, v in out["train"].items()}
        val_logs = {k: float(v) for k, v in out.get("val", {}).items()}
        for key, value in train_logs.items():
            history.setdefault(key, []).append(value)
        for key, value in val_logs.items():
            history.setdefault(f"val_{key}", []).append(value)
        if self.gradients is not None:
            # The compiled epoch read the statistics and reset them itself.
            self.gradients.end_epoch(
                epoch,
                {**train_logs, "learning_rate": float(out["learning_rate"])},
                val_logs,
                reset=False,
                snapshot=out["snapshot"],
            )
        if verbose:
            values = list(train_logs.items()) + [(f"val_{k}", v) for k, v in val_logs.items()]
            if self.progbar is None:
                # Every value is the epoch's own: without stateful_metrics the
                # bar would show their running average over the epochs so far.
                names = [name for name, _ in values]
                self.progbar = keras.utils.Progbar(
                    epochs, unit_name="epoch", stateful_metrics=names
                )
            self.progbar.update(epoch + 1, values=values, finalize=epoch + 1 == epochs)


def _check_arguments(args: dict) -> None:
    # Every argument of train_with_tape, checked before anything is built.
    check_keras_backend("tbgrad.train_with_tape", (TENSORFLOW,))
    check_int("epochs", args["epochs"])
    check_int("batch_size", args["batch_size"])
    check_int("diagnostics_every", args["diagnostics_every"])
    for name in ("shuffle_buffer", "validation_batch_size"):
        if args[name] is not None:
            check_int(name, args[name])
    check_histogram_freq(args["histogram_freq"])
    check_update_freq(args["update_freq"])
    check_variables(args["variables"])
    x, y = args["x"], args["y"]
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length. Received: len(x)={len(x)}, len(y)={len(y)}")
    strategy = _model_strategy(args["model"])
    if args["shuffle"] and args["seed"] is None and _multi_worker.is_multi_worker(strategy):
        raise ValueError(
            "shuffling on several workers needs a seed, the same on every worker, so "
            "that they split the same global batches. Received: shuffle=True, seed=None"
        )


def _validation_dataset(validation_data, batch_size: int) -> tf.data.Dataset | None:
    if validation_data is None:
        return None
    xv, yv = _float_arrays(*validation_data)
    return tf.data.Dataset.from_tensor_slices((xv, yv)).batch(batch_size)


def _train_dataset(x, y, batch_size, shuffle, shuffle_buffer, seed) -> tf.data.Dataset:
    # Reshuffled every epoch over the whole data set unless a buffer is given.
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        buffer = shuffle_buffer or len(x)
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(2)


def _float_arrays(x, y):
    return np.asarray(x, dtype="float32"), np.asarray(y, dtype="float32")


def _model_strategy(model):
    # The strategy the model was built under.
    return getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()


def _replica_strategy(model):
    # The strategy the model was built under, if it spans several replicas.
    strategy = _model_strategy(model)
    return strategy if strategy.num_replicas_in_sync > 1 else None


def _metric(name, out_units: int):
    if name in ("accuracy", "acc"):
        if out_units == 1:
            return keras.metrics.BinaryAccuracy(name="accuracy")
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    if isinstance(name, str):
        return keras.metrics.get(name)
    return name
