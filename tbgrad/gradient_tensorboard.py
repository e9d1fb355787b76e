"""``GradientTensorBoard``: Keras's TensorBoard callback, with gradients back.

The gradients logged are the ones the optimizer applied in the real training
steps of ``model.fit``. The callback hooks the optimizer's update step (after
loss-scale unscaling, gradient clipping and accumulation, i.e. on exactly the
values that move the weights), accumulates per-layer statistics in
``tf.Variable``s inside the compiled train step, and writes them once per
epoch. Nothing is recomputed on another batch or on validation data.
"""

from __future__ import annotations

import os
import warnings
from typing import Literal

import keras
import tensorflow as tf

from tbgrad import _compat
from tbgrad._validate import check_histogram_freq, check_update_freq
from tbgrad.hook import OptimizerHook
from tbgrad.stats import GradientStats, kernel_layers
from tbgrad.summary import SummaryLogger


class GradientTensorBoard(keras.callbacks.Callback):
    """Logs per-layer gradients and weights of ``model.fit`` to TensorBoard.

    A drop-in for ``keras.callbacks.TensorBoard``: the same ``train/`` and
    ``validation/`` folders and ``epoch_*`` scalars, plus for every layer with
    a kernel the tags of :mod:`tbgrad.tags` (``gradients/<layer>``,
    ``grad_mean_abs/<layer>``, ``grad_std/<layer>``, ``weights/<layer>``, ...).

    The statistics are accumulated inside the compiled train step, so every
    step counts also when ``model.compile(steps_per_execution=N)`` runs N
    steps per call: on small models, a whole epoch per call
    (``steps_per_execution`` = steps per epoch) saves fit's Python work
    between steps and logs the same values (docs/benchmarks.md).

    Args:
        log_dir: The run folder.
        histogram_freq: Write the gradient and weight histograms every this
            many epochs; 0 writes none. Scalars are written every epoch.
        update_freq: ``"epoch"``, or an integer N to also write ``batch_*``
            scalars every N training steps at the global step. With
            ``steps_per_execution`` > 1 fit has logs only at the end of each
            execution: they are written there, at its last step, whenever
            the execution crossed a multiple of N.

    Example:
        >>> model.fit(x, y, epochs=10, validation_data=(xv, yv),
        ...           callbacks=[tbgrad.GradientTensorBoard("logs/run1")])
    """

    def __init__(
        self,
        log_dir: str | os.PathLike = "logs",
        histogram_freq: int = 1,
        update_freq: Literal["epoch"] | int = "epoch",
    ):
        super().__init__()
        check_histogram_freq(histogram_freq)
        check_update_freq(update_freq)
        self.log_dir = os.fspath(log_dir)
        self.histogram_freq = histogram_freq
        self.update_freq = update_freq
        self._stats: GradientStats | None = None
        self._logger: SummaryLogger | None = None
        self._hook = None
        self._global_step = 0
        self._epoch_first_step = 0
        if update_freq == "epoch":
            # Keep Keras's default no-op batch hook: a callback that overrides
            # it turns off Keras 3's asynchronous batch-end dispatch and makes
            # every step wait for its logs.
            self.on_train_batch_end = super().on_train_batch_end

    # -- Keras hooks ----------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._stats = None
        self._logger = None
        self._global_step = 0
        self._capture = self._histograms_due(0)
        # A subclassed model is built only when fit first traces its train
        # step; its kernels exist from then on. Built models get their
        # statistics now, the others from inside that first trace.
        if _compat.all_layers_built(self.model):
            self._make_stats()
        self._install_hook()

    def on_epoch_begin(self, epoch, logs=None):
        self._capture = self._histograms_due(epoch)
        self._epoch_first_step = self._global_step
        if self._stats is not None:
            self._stats.reset(capture=self._capture)

    def on_train_batch_end(self, batch, logs=None):
        # ``batch`` is the epoch's index of the last step just run: with
        # ``steps_per_execution`` > 1, fit calls this once per execution, so
        # the steps are counted from it, not from the calls (fit's index runs
        # past a short last execution: it is capped at the epoch's steps).
        # The logs exist only at the end of an execution: they are written
        # there when an execution crossed a multiple of update_freq.
        done = batch + 1
        steps = (self.params or {}).get("steps")
        if steps:
            done = min(done, steps)
        previous = self._global_step
        self._global_step = self._epoch_first_step + done
        if self._global_step // self.update_freq > previous // self.update_freq:
            self._get_logger().write_step(self._global_step, logs)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        lr = _learning_rate(self.model.optimizer)
        if lr is not None:
            train.setdefault("learning_rate", lr)
        self._get_logger().write_epoch(epoch, train, val, histograms=self._histograms_due(epoch))

    def on_train_end(self, logs=None):
        self.close()

    def close(self) -> None:
        """Restores the optimizer and flushes and closes the event files.

        ``model.fit`` calls this at the end of training; call it yourself when
        training stops by an exception (KeyboardInterrupt, say) so that every
        finished epoch is on disk. Safe to call more than once.
        """
        self._remove_hook()
        if self._logger is not None:
            self._logger.close()

    # -- helpers --------------------------------------------------------------

    def _make_stats(self) -> GradientStats:
        layers = kernel_layers(self.model)
        if not layers:
            warnings.warn(
                f"GradientTensorBoard: model {self.model.name!r} has no layer with a "
                "kernel; only the epoch_* scalars will be written.",
                stacklevel=3,
            )
        with self.model.distribute_strategy.scope():
            # fit compiles its train step with XLA when model.jit_compile is
            # True (Keras's "auto" resolves to True on TensorFlow).
            self._stats = GradientStats(layers, jit_compile=self.model.jit_compile)
        self._stats.reset(capture=self._capture)
        return self._stats

    def _get_stats(self) -> GradientStats:
        if self._stats is None:
            # Called from inside the first trace of the train step: create the
            # variables eagerly, outside the function being traced.
            with tf.init_scope():
                self._make_stats()
        return self._stats

    def _get_logger(self) -> SummaryLogger:
        if self._logger is None:
            self._logger = SummaryLogger(self.log_dir, self._get_stats())
        return self._logger

    def _histograms_due(self, epoch: int) -> bool:
        return bool(self.histogram_freq) and epoch % self.histogram_freq == 0

    def _install_hook(self):
        if self.model.optimizer is None:
            raise ValueError(
                "GradientTensorBoard needs a compiled model with an optimizer. "
                f"Received: model.optimizer={self.model.optimizer!r}"
            )
        self._hook = OptimizerHook(self.model.optimizer, self._get_stats)
        self._hook.install()
        # A train function traced before this fit would not call the hook.
        self.model.train_function = None
        self.model.make_train_function(force=True)

    def _remove_hook(self):
        if self._hook is None:
            return
        self._hook.remove()
        self._hook = None
        # Later fits without this callback must not keep updating our stats.
        self.model.train_function = None


def _learning_rate(optimizer) -> float | None:
    try:
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except Exception:  # noqa: BLE001 - schedules or custom optimizers: skip it.
        return None


__all__ = ["GradientTensorBoard"]
