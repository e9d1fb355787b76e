"""``train_with_tape``: a compiled GradientTape loop that logs like the callback.

The whole epoch runs inside one ``tf.function`` (the dataset is iterated in
the graph), so a Python-level step costs nothing; each step computes the
gradients with ``tf.GradientTape`` and applies them with the optimizer, whose
update step feeds :class:`GradientStats` through the same
:class:`~tbgrad.hook.OptimizerHook` the callback uses. The epoch's summaries
go through the same :class:`SummaryLogger`, so the tags and the folder layout
are those of :class:`tbgrad.GradientTensorBoard`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from tbgrad.gradient_tensorboard import validate_update_freq
from tbgrad.hook import OptimizerHook
from tbgrad.stats import GradientStats, kernel_layers
from tbgrad.summary import SummaryLogger


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
    update_freq: Literal["epoch"] | int = "epoch",
    shuffle: bool = True,
    shuffle_buffer: int | None = None,
    seed: int | None = None,
    verbose: int = 1,
    jit_compile: bool = False,
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
        log_dir: The run folder; None trains without logging.
        histogram_freq: Histograms every this many epochs (0: none).
        update_freq: ``"epoch"`` or an integer N: ``batch_*`` scalars every N
            steps at the global step.
        shuffle: Reshuffle the training data every epoch.
        shuffle_buffer: The shuffle buffer (default: the whole data set).
        seed: Seed of the shuffling.
        verbose: 0 silent, 1 a progress bar over the epochs.
        jit_compile: Compile each training and evaluation step with XLA
            (ignored under a multi-replica strategy or with op determinism).
            It compiles for a few seconds at the start, helps per epoch on
            large layers and costs on width-64 ones (docs/benchmarks.md).

    Returns:
        The history: ``{"loss": [...], "accuracy": [...], "val_loss": ...}``.

    Example:
        >>> model = tbgrad.build_mlp(depth=4, activation="tanh", init="normal")
        >>> history = tbgrad.train_with_tape(
        ...     model, x, y, epochs=100, optimizer="rmsprop", log_dir="logs/tape")
    """
    _check_positive_int("epochs", epochs)
    _check_positive_int("batch_size", batch_size)
    if isinstance(histogram_freq, bool) or not isinstance(histogram_freq, int):
        raise TypeError(
            f"histogram_freq must be an int. Received: histogram_freq={histogram_freq!r}"
        )
    if histogram_freq < 0:
        raise ValueError(f"histogram_freq must be >= 0. Received: histogram_freq={histogram_freq}")
    update_freq = validate_update_freq(update_freq)
    if shuffle_buffer is not None:
        _check_positive_int("shuffle_buffer", shuffle_buffer)
    if validation_batch_size is not None:
        _check_positive_int("validation_batch_size", validation_batch_size)

    x = np.asarray(x, dtype="float32")
    y = np.asarray(y, dtype="float32")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length. Received: len(x)={len(x)}, len(y)={len(y)}")
    strategy = _replica_strategy(model)
    # XLA fuses each step's elementwise ops (activations, optimizer updates,
    # the gradient statistics) into a few kernels, which pays on large layers
    # but measured slower on width-64 ones, after seconds of compiling
    # (docs/benchmarks.md). Not under a multi-replica strategy, nor with op
    # determinism, which XLA does not honour for every op (as in model.fit).
    jit = bool(jit_compile) and strategy is None and not _op_determinism_enabled()
    # Under a multi-replica strategy (the model built in its scope), our
    # variables are mirrored too; a single device needs no scope.
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        if isinstance(optimizer, str):
            optimizer = keras.optimizers.get(optimizer)
        loss_fn = keras.losses.get(loss) if isinstance(loss, str) else loss
        if not model.built:
            model.build((None,) + x.shape[1:])
        out_units = int(model.outputs[0].shape[-1]) if getattr(model, "outputs", None) else 1
        metric_objs = [_metric(name, out_units) for name in metrics]
        loss_tracker = keras.metrics.Mean(name="loss")
        stats = GradientStats(kernel_layers(model), jit_compile=jit)
    logger = SummaryLogger(log_dir, stats) if log_dir is not None else None

    n = len(x)
    train_ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        train_ds = train_ds.shuffle(shuffle_buffer or n, seed=seed, reshuffle_each_iteration=True)
    train_ds = train_ds.batch(batch_size).prefetch(2)
    val_ds = None
    if validation_data is not None:
        xv, yv = (np.asarray(a, dtype="float32") for a in validation_data)
        val_ds = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(
            validation_batch_size or batch_size
        )

    global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    log_steps = logger is not None and update_freq != "epoch"

    def compute_loss(yb, pred):
        yb = tf.reshape(yb, tf.shape(pred)) if out_units == 1 else yb
        value = tf.reduce_mean(loss_fn(yb, pred))
        if model.losses:
            value += tf.add_n(model.losses)
        return value

    def update_metrics(yb, pred, value, n):
        # The loss weighted by the batch's n samples, and every metric.
        loss_tracker.update_state(value, sample_weight=n)
        for metric in metric_objs:
            metric.update_state(tf.reshape(yb, tf.shape(pred)) if out_units == 1 else yb, pred)

    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            pred = model(xb, training=True)
            value = compute_loss(yb, pred)
        variables = model.trainable_variables
        grads = tape.gradient(value, variables)
        optimizer.apply(grads, variables)
        update_metrics(yb, pred, value, tf.cast(tf.shape(xb)[0], tf.float32))

    def eval_step(xb, yb):
        pred = model(xb, training=False)
        update_metrics(yb, pred, compute_loss(yb, pred), tf.cast(tf.shape(xb)[0], tf.float32))

    if jit:
        train_step = tf.function(train_step, jit_compile=True)
        eval_step = tf.function(eval_step, jit_compile=True)

    def after_step():
        global_step.assign_add(1)
        if log_steps:
            # The per-step summaries are written in the graph, at the global
            # step, only on the steps update_freq selects.
            logger.write_step_in_graph(
                global_step,
                # Running epoch averages, like the batch_* logs of model.fit.
                {"loss": loss_tracker.result(), **{m.name: m.result() for m in metric_objs}},
                tf.equal(global_step % update_freq, 0),
            )

    # Both loops run over an iterator, not the dataset: autograph turns a
    # loop over a dataset into a dataset reduce whose body runs in tf.data's
    # function runtime, about 20x slower per step here than the while loop
    # it builds over an iterator (see docs/benchmarks.md). The per-step
    # summaries of an integer update_freq are not written from that while
    # loop, so with them the epoch keeps the dataset loop.
    def train_epoch(batches):
        for xb, yb in batches:
            train_step(xb, yb)
            after_step()

    def evaluate(iterator):
        for xb, yb in iterator:
            eval_step(xb, yb)

    if strategy is not None:
        # Each replica takes its share of the global batch; the optimizer sums
        # the replicas' gradients (and GradientStats logs that sum), so each
        # replica's loss is weighted by its share of the samples: the sum is
        # then the gradient of the global batch's mean loss, as on one device.
        def replica_loss(xb, yb, training):
            n = tf.cast(tf.shape(xb)[0], tf.float32)
            total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, n)
            pred = model(xb, training=training)
            # A replica can get no sample of the last batch: its loss is 0, not NaN.
            value = tf.where(n > 0, compute_loss(yb, pred), 0.0)
            return pred, value, n, tf.math.divide_no_nan(n, total)

        def replica_train_step(xb, yb):
            with tf.GradientTape() as tape:
                pred, value, n, share = replica_loss(xb, yb, training=True)
                scaled = value * share
            variables = model.trainable_variables
            optimizer.apply(tape.gradient(scaled, variables), variables)
            update_metrics(yb, pred, value, n)

        def replica_eval_step(xb, yb):
            update_metrics(yb, *replica_loss(xb, yb, training=False)[:3])

        def train_epoch(dataset):
            for xb, yb in dataset:
                strategy.run(replica_train_step, args=(xb, yb))
                # One global step and one writer, outside the replicas. The
                # loop over a distributed dataset is a tf.while_loop whose
                # "while/" name scope would prefix the batch_* tags: reset it.
                with tf.compat.v1.name_scope(None):
                    after_step()

        def evaluate(dataset):
            for xb, yb in dataset:
                strategy.run(replica_eval_step, args=(xb, yb))

        train_ds = strategy.experimental_distribute_dataset(train_ds)
        if val_ds is not None:
            val_ds = strategy.experimental_distribute_dataset(val_ds)

    def results():
        return {"loss": loss_tracker.result(), **{m.name: m.result() for m in metric_objs}}

    # One compiled call per epoch: the resets, the training loop, the
    # evaluation and every value the epoch's summaries need, returned
    # together. Done eagerly, those reads and resets were a few dozen ops
    # per epoch, as long as the training itself on study-sized models.
    @tf.function
    def run_epoch(batches, val_batches, capture):
        stats.reset(capture)
        _reset(loss_tracker, metric_objs)
        train_epoch(batches)
        out = {"train": results()}
        if val_batches is not None:
            _reset(loss_tracker, metric_objs)
            evaluate(val_batches)
            out["val"] = results()
        if logger is not None:
            out["snapshot"] = stats.snapshot_tensors()
            out["learning_rate"] = tf.cast(optimizer.learning_rate, tf.float32)
        return out

    # Slot variables (momentum, ...) created lazily inside the compiled epoch
    # would make tf.function trace it twice (variables may only be created
    # on the first trace) and need a lifted initializer, which fails across
    # replicas: create them now.
    if not optimizer.built:
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            optimizer.build(model.trainable_variables)

    history: dict[str, list[float]] = {}
    progbar = keras.utils.Progbar(epochs, verbose=verbose, unit_name="epoch") if verbose else None
    hook = OptimizerHook(optimizer, stats)
    hook.install()
    try:
        if logger is not None and log_steps:
            logger.writer("train")  # created eagerly, used inside the graph
        for epoch in range(epochs):
            histograms = bool(histogram_freq) and epoch % histogram_freq == 0
            out = run_epoch(
                train_ds if log_steps else iter(train_ds),
                iter(val_ds) if val_ds is not None else None,
                tf.constant(histograms),
            )
            out = tf.nest.map_structure(lambda t: t.numpy(), out)
            train_logs = {k: float(v) for k, v in out["train"].items()}
            val_logs = {k: float(v) for k, v in out.get("val", {}).items()}
            for key, value in train_logs.items():
                history.setdefault(key, []).append(value)
            for key, value in val_logs.items():
                history.setdefault(f"val_{key}", []).append(value)
            if logger is not None:
                logger.write_epoch(
                    epoch,
                    {**train_logs, "learning_rate": float(out["learning_rate"])},
                    val_logs,
                    histograms=histograms,
                    snapshot=out["snapshot"],
                )
            if progbar is not None:
                values = list(train_logs.items()) + [(f"val_{k}", v) for k, v in val_logs.items()]
                progbar.update(epoch + 1, values=values, finalize=epoch + 1 == epochs)
    finally:
        hook.remove()
        if logger is not None:
            logger.close()
    return history


def _replica_strategy(model):
    # The strategy the model was built under, if it spans several replicas.
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    return strategy if strategy.num_replicas_in_sync > 1 else None


def _op_determinism_enabled() -> bool:
    from tensorflow.python.framework.config import is_op_determinism_enabled

    return is_op_determinism_enabled()


def _metric(name, out_units: int):
    if name in ("accuracy", "acc"):
        if out_units == 1:
            return keras.metrics.BinaryAccuracy(name="accuracy")
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    if isinstance(name, str):
        return keras.metrics.get(name)
    return name


def _reset(loss_tracker, metrics):
    loss_tracker.reset_state()
    for metric in metrics:
        metric.reset_state()


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int. Received: {name}={value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1. Received: {name}={value}")
