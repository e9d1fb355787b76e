"""Trains one :class:`RunConfig` into a new run folder (either loop)."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from tbgrad import _multi_worker, _paths, tags
from tbgrad.eventlog import RunData, load_split
from tbgrad.hparams import write_hparams, write_verdict
from tbgrad.lab.config import HPARAM_DOMAINS, RunConfig
from tbgrad.lab.data import load_dataset
from tbgrad.lab.distribute import make_strategy
from tbgrad.lab.models import build_mlp, make_optimizer
from tbgrad.lab.runs import create_run_dir
from tbgrad.tape import train_with_tape
from tbgrad.tensorboard import TensorBoard
from tbgrad.verdict import run_verdict, verdict_of

# The run folder's record of its config and final figures; a sweep counts a
# run folder holding it as finished.
RESULT_FILE = "tbgrad_run.json"
# The studies' validation sets (500 or 1,000 samples) are evaluated in one
# step each epoch rather than in training-sized batches: the same loss and
# accuracy up to float32 rounding, at a fraction of the cost on tiny models.
VALIDATION_BATCH_SIZE = 1024


@dataclass
class RunResult:
    """What one run produced."""

    run_dir: _paths.RunPath  # a Path, or a string for a URL (gs://...)
    config: RunConfig
    history: dict[str, list[float]]
    train_accuracy: float
    test_accuracy: float
    train_loss: float
    test_loss: float
    seconds: float
    extra: dict = field(default_factory=dict)
    # False on a worker other than the chief: its run folder was temporary.
    writes: bool = True

    def to_dict(self) -> dict:
        return {
            "run_dir": str(self.run_dir),
            "config": self.config.to_dict(),
            "train_accuracy": self.train_accuracy,
            "test_accuracy": self.test_accuracy,
            "train_loss": self.train_loss,
            "test_loss": self.test_loss,
            "seconds": self.seconds,
            **self.extra,
        }


class EpochProgress(keras.callbacks.Callback):
    """One progress bar over the epochs (Keras's per-step bars would print
    hundreds of lines for a 500-epoch run), showing each epoch's own loss and
    accuracy: the values the run logs for that epoch."""

    def __init__(self, epochs: int):
        super().__init__()
        self._epochs = epochs
        self._bar = None

    def on_epoch_end(self, epoch, logs=None):
        values = [(k, float(v)) for k, v in (logs or {}).items() if "accuracy" in k or "loss" in k]
        if self._bar is None:
            # Progbar averages every value over the updates so far unless it
            # is named stateful; an epoch's logs are already its own figures.
            # interval=0: a line for every epoch, not one per 0.05 s.
            self._bar = keras.utils.Progbar(
                self._epochs,
                unit_name="epoch",
                interval=0,
                stateful_metrics=[k for k, _ in values],
            )
        self._bar.update(epoch + 1, values=values, finalize=epoch + 1 == self._epochs)


def build(config: RunConfig, strategy: tf.distribute.Strategy | None = None):
    """Returns (dataset, model, optimizer) for ``config``, seeded, built in
    ``strategy``'s scope (default: the current strategy)."""
    keras.utils.set_random_seed(config.seed)
    data = load_dataset(config.dataset)
    with (strategy or tf.distribute.get_strategy()).scope():
        model = build_mlp(
            depth=config.depth,
            width=config.width,
            activation=config.act,
            init=config.init,
            output_init=config.output_init,
            input_dim=data.input_dim,
        )
        optimizer = make_optimizer(config.optimizer, config.learning_rate, config.momentum_value)
    return data, model, optimizer


def run(
    config: RunConfig,
    logdir: str | os.PathLike = "logs",
    run_name: str | None = None,
    verbose: int = 1,
    on_start=None,
    multi_worker: bool = False,
) -> RunResult:
    """Trains ``config`` into a new folder under ``logdir`` and returns the result.

    Args:
        config: A validated run configuration.
        logdir: The folder of runs, local or a URL (``gs://bucket/logs``,
            any filesystem of ``tf.io.gfile``); created if missing.
        run_name: The run folder's name (default ``config.run_name()``); a
            taken name gets a ``-2``, ``-3``, ... suffix, never reused.
        verbose: 0 silent, 1 a progress bar over the epochs.
        on_start: Called with the run folder once it exists.
        multi_worker: Train under ``MultiWorkerMirroredStrategy`` (see
            :func:`tbgrad.lab.distribute.start_multi_worker`), with the tape
            loop. Only the chief writes the run, named
            ``<config.run_name()>-w<workers>`` by default; the other workers
            train in a temporary folder, removed at the end, and their
            result has ``writes=False``.

    With ``config.deterministic``, TensorFlow's op determinism is turned on
    for the rest of the process (it cannot be turned off again). With
    ``config.replicas`` > 1 the devices must exist: see
    :func:`tbgrad.lab.distribute.configure_cpu_replicas`.
    """
    config.validate()
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if multi_worker and config.loop == "fit":
        raise _multi_worker.fit_unsupported("The fit loop", "loop='fit', multi_worker=True")
    strategy = make_strategy(config.replicas, multi_worker)
    data, model, optimizer = build(config, strategy)
    chief = _multi_worker.is_chief(strategy)
    run_dir = _run_folder(config, logdir, run_name, strategy, chief)
    try:
        write_hparams(run_dir, config.hparams(), domains=HPARAM_DOMAINS)
        if on_start is not None and chief:
            on_start(run_dir)
        start = time.perf_counter()
        if config.loop == "fit":
            history = _fit(config, data, model, optimizer, strategy, run_dir, verbose)
        else:
            history = _tape(config, data, model, optimizer, run_dir, verbose)
        seconds = time.perf_counter() - start
        result = _result(config, run_dir, data, model, history, seconds, chief)
    finally:
        if not chief:
            _multi_worker.remove_temporary(run_dir)
    result.writes = chief
    if multi_worker:
        result.extra["workers"] = _multi_worker.worker_count(strategy)
    return result


def _run_folder(config: RunConfig, logdir, run_name: str | None, strategy, chief: bool):
    """A new run folder under ``logdir``; on a worker other than the chief, a
    temporary local folder instead."""
    if not chief:
        return tempfile.mkdtemp(prefix=_multi_worker.TEMP_PREFIX)
    if run_name is None:
        run_name = config.run_name()
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            run_name += f"-w{_multi_worker.worker_count(strategy)}"
    return create_run_dir(logdir, run_name)


def _fit(config: RunConfig, data, model, optimizer, strategy, run_dir, verbose: int) -> dict:
    """Trains with ``model.fit`` and :class:`TensorBoard`; returns the history."""
    with strategy.scope():
        model.compile(
            optimizer,
            "binary_crossentropy",
            metrics=["accuracy"],
            steps_per_execution=_steps_per_execution(config, len(data.x_train)),
        )
    callback = TensorBoard(
        run_dir,
        histogram_freq=config.histogram_freq,
        update_freq=config.update_freq,
        diagnostics_every=config.diagnostics_every,
    )
    callbacks = [callback] + ([EpochProgress(config.epochs)] if verbose else [])
    try:
        return model.fit(
            data.x_train,
            data.y_train,
            epochs=config.epochs,
            batch_size=config.batch_size,
            validation_data=(data.x_test, data.y_test),
            validation_batch_size=VALIDATION_BATCH_SIZE,
            callbacks=callbacks,
            verbose=0,
        ).history
    finally:
        # On an exception fit skips on_train_end: close the files anyway
        # so that every finished epoch stays readable.
        callback.close()


def _tape(config: RunConfig, data, model, optimizer, run_dir, verbose: int) -> dict:
    """Trains with :func:`tbgrad.train_with_tape`; returns the history."""
    return train_with_tape(
        model,
        data.x_train,
        data.y_train,
        epochs=config.epochs,
        batch_size=config.batch_size,
        optimizer=optimizer,
        validation_data=(data.x_test, data.y_test),
        validation_batch_size=VALIDATION_BATCH_SIZE,
        log_dir=run_dir,
        histogram_freq=config.histogram_freq,
        update_freq=config.update_freq,
        diagnostics_every=config.diagnostics_every,
        seed=config.seed,
        verbose=verbose,
    )


def _result(
    config: RunConfig, run_dir, data, model, history: dict, seconds: float, chief: bool = True
) -> RunResult:
    """The trained model's figures on all of both halves, and the run's verdict,
    also written into the run folder for HParams (:func:`write_verdict`)."""
    train_loss, train_acc = evaluate(model, data.x_train, data.y_train)
    test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
    result = RunResult(
        run_dir=run_dir,
        config=config,
        history={k: [float(v) for v in vs] for k, vs in history.items()},
        train_accuracy=train_acc,
        test_accuracy=test_acc,
        train_loss=train_loss,
        test_loss=test_loss,
        seconds=seconds,
        writes=chief,
    )
    if chief:
        found = verdict_of(run_dir)
    else:
        # A worker other than the chief: its temporary folder holds no run.
        found = run_verdict(RunData(run_dir, {}))
    epochs = len(result.history.get("loss", ()))
    if epochs:
        write_verdict(run_dir, found, step=epochs - 1)
    result.extra["verdict"] = found.to_dict()
    first = load_split(_paths.join(run_dir, tags.TRAIN_DIR)).first_nonfinite
    if first is not None:
        result.extra["first_nonfinite"] = {"epoch": first[0], "where": first[1]}
    return result


def write_result(result: RunResult) -> _paths.RunPath | None:
    """Writes :data:`RESULT_FILE` (config and final figures) into the run
    folder, whole or not at all; returns its path. A worker other than the
    chief writes nothing and returns None."""
    if not result.writes:
        return None
    path = _paths.join(result.run_dir, RESULT_FILE)
    _paths.write_text(path, json.dumps(result.to_dict(), indent=2, sort_keys=True))
    return path


def _steps_per_execution(config: RunConfig, samples: int) -> int:
    # With per-epoch logs only, fit runs a whole epoch per compiled call:
    # the same steps and the same logs, without fit's Python work between
    # steps, which is most of a step's time on the studies' tiny models. With
    # an integer update_freq, one step per call keeps batch_* at every Nth step.
    if config.update_freq != "epoch":
        return 1
    return math.ceil(samples / config.batch_size)


def evaluate(model: keras.Model, x, y) -> tuple[float, float]:
    """The binary cross-entropy and accuracy of ``model`` on all of ``x``.

    One forward pass over every sample: what ``model.evaluate`` reports, up
    to float32 rounding, without tracing its test function for a couple of
    calls.
    """
    pred = model(np.asarray(x, "float32"), training=False)
    y = np.asarray(y, "float32").reshape(tuple(pred.shape))
    loss = keras.ops.mean(keras.losses.binary_crossentropy(y, pred))
    accuracy = keras.ops.mean(keras.metrics.binary_accuracy(y, pred))
    return float(loss), float(accuracy)
