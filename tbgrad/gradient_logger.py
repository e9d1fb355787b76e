"""``GradientLogger``: tbgrad's gradient tags from your own training loop.

It observes the gradients where the optimizer applies them (the same
:class:`~tbgrad.hook.OptimizerHook` the callback installs), accumulates them
in :class:`~tbgrad.stats.GradientStats` inside your train step, compiled or
eager, and writes each epoch through :class:`~tbgrad.summary.SummaryLogger`:
the tags and folders of :class:`tbgrad.TensorBoard`. The callback and
:func:`tbgrad.train_with_tape` are built on it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from typing import Literal

import keras
import tensorflow as tf

from tbgrad import _compat, _multi_worker, tags
from tbgrad._validate import (
    EPOCH,
    check_histogram_freq,
    check_int,
    check_keras_backend,
    check_update_freq,
    check_variables,
)
from tbgrad.diagnostics import activation_layers, clips
from tbgrad.hook import OptimizerHook
from tbgrad.stats import KERNELS, GradientStats, tracked_variables
from tbgrad.summary import SummaryLogger

VAL_PREFIX = "val_"


class GradientLogger:
    """Logs per-layer gradients and weights of your own training loop.

    Create it before your train step first runs; it then sees every gradient
    ``optimizer.apply_gradients`` (or ``apply``) applies, inside a
    ``tf.function`` or eagerly. Call :meth:`end_epoch` after each epoch and
    :meth:`close` at the end (or use it as a context manager).

    Args:
        model: The Keras model being trained.
        log_dir: The run folder (``train/`` and ``validation/`` go under it),
            local or a URL (``gs://...``). Under ``MultiWorkerMirroredStrategy``
            (the model built in its scope) give every worker the same one:
            only the chief writes it, the others a temporary local folder.
        histogram_freq: Gradient and weight histograms every this many
            epochs; 0 writes none.
        update_freq: ``"epoch"``, or an integer N to also write
            ``batch_grad_mean_abs/<layer>`` every N observed steps (at the
            number of steps observed so far).
        variables: ``"kernels"`` (every layer's kernel), ``"all"`` (every
            trainable variable) or a predicate ``callable(variable) -> bool``
            (see :func:`tbgrad.stats.tracked_variables` for the names).
        optimizer: The optimizer whose applied gradients are logged; default
            ``model.optimizer``. With neither, pass the gradients yourself
            with :meth:`observe`.
        jit_compile: Whether the train step is compiled with XLA
            (``tf.function(jit_compile=True)``): the statistics then take
            their XLA form (the same numbers).
        stats_every: Compute the gradient statistics on every this many
            training steps only (the epoch's steps 0, N, 2N, ...): the
            epoch's ``grad_mean_abs``, ``grad_std`` and ``grad_nonfinite``
            are then over those steps. For very large models, where the
            statistics cost more than a few percent of a step. Default 1:
            every step.
        diagnostics: Also log why a gradient vanishes: the update-to-weight
            ratio per layer, the saturated (tanh, sigmoid) and dead (relu)
            units of each layer's outputs in the training forward pass, and,
            with a clipping optimizer, how often clipping changed the
            gradients. False logs the gradient and weight statistics only
            (cheaper: the update ratio reads every kernel twice a step).
        caller_selects_steps: With ``stats_every`` > 1, you run a train
            function traced in :meth:`paused` on the steps not counted, and
            report the steps seen with ``stats.set_seen`` before
            :meth:`end_epoch` (``tbgrad.TensorBoard`` does so in ``fit``
            under XLA).

    The first step and layer whose gradient or weights turn NaN or Inf are
    kept in :attr:`first_nonfinite` and written once as the text tag
    ``first_nonfinite``.

    Raises:
        ValueError: A bad argument, or Keras runs on a backend other than
            TensorFlow.

    Example:
        Study B's loop (shuffle buffer 1024, batch 32), three lines added::

            logger = tbgrad.GradientLogger(model, "logs/b", optimizer=optimizer)  # added

            @tf.function
            def train_step(xb, yb):
                with tf.GradientTape() as tape:
                    loss = loss_fn(yb, model(xb, training=True))
                grads = tape.gradient(loss, model.trainable_variables)
                optimizer.apply_gradients(zip(grads, model.trainable_variables))
                return loss

            for epoch in range(100):
                for xb, yb in dataset:
                    loss = train_step(xb, yb)
                logger.end_epoch(epoch, {"loss": loss})  # added
            logger.close()  # added
    """

    def __init__(
        self,
        model: keras.Model,
        log_dir: str | os.PathLike,
        histogram_freq: int = 1,
        update_freq: Literal["epoch"] | int = EPOCH,
        variables: Literal["kernels", "all"] | Callable = KERNELS,
        *,
        optimizer: keras.optimizers.Optimizer | None = None,
        jit_compile: bool = False,
        stats_every: int = 1,
        diagnostics: bool = True,
        caller_selects_steps: bool = False,
    ):
        check_keras_backend(f"tbgrad.{type(self).__name__}")
        self.stats_every = check_int("stats_every", stats_every, 1)
        check_histogram_freq(histogram_freq)
        check_update_freq(update_freq)
        check_variables(variables)
        self.model = model
        # Under a multi-worker strategy only the chief writes into log_dir;
        # the other workers write into a temporary folder, removed on close.
        self.log_dir, self._temporary_log_dir = _multi_worker.writable_log_dir(
            os.fspath(log_dir), getattr(model, "distribute_strategy", None)
        )
        self.histogram_freq = histogram_freq
        self.update_freq = update_freq
        self.variables = variables
        self.optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)
        self.jit_compile = bool(jit_compile)
        self.diagnostics = bool(diagnostics)
        self.caller_selects_steps = bool(caller_selects_steps)
        # {"what", "layer", "epoch", "step_in_epoch", "step"} of the first
        # non-finite gradient or weight of the run, or None.
        self.first_nonfinite: dict | None = None
        self._steps_done = 0
        self.summary = SummaryLogger(self.log_dir, None)
        self.epoch = 0
        self._stats: GradientStats | None = None
        self._step: tf.Variable | None = None
        self._hook: OptimizerHook | None = None
        self._checked = False
        if self.optimizer is not None:
            # The hook calls update() and skip() below in every train step.
            self._hook = OptimizerHook(self.optimizer, self)
            self._hook.install()
        if _compat.all_layers_built(model):
            self._get_stats()

    @property
    def stats(self) -> GradientStats:
        """The statistics (created when the model's layers are built)."""
        return self._get_stats()

    # -- inside the train step ------------------------------------------------

    def observe(self, grads, variables) -> None:
        """Adds one step's gradients; for loops that apply them some other way.

        Args:
            grads: The gradients applied, aligned with ``variables``.
            variables: The trainable variables they belong to.
        """
        self._get_stats().update(list(grads), list(variables))
        if self.update_freq != EPOCH:
            self._write_step()

    # OptimizerHook feeds the logger as it would feed a GradientStats.
    update = observe

    def skip(self) -> None:
        """Counts a step the optimizer skipped (LossScaleOptimizer)."""
        self._get_stats().skip()

    def paused(self):
        """A context in which a train step traced has no statistics (see
        :meth:`OptimizerHook.paused <tbgrad.hook.OptimizerHook.paused>`)."""
        if self._hook is None:
            raise ValueError("GradientLogger.paused needs an optimizer to hook; it has none")
        return self._hook.paused()

    # -- between epochs -------------------------------------------------------

    def begin_epoch(self, epoch: int) -> None:
        """Starts ``epoch``, forgetting the steps observed since the last
        :meth:`end_epoch`. Needed only to start at another epoch than the
        one after the last :meth:`end_epoch` (0 at first)."""
        self.epoch = epoch
        if self._stats is not None:
            self._stats.reset(capture=self.histograms_due(epoch))

    def end_epoch(
        self,
        epoch: int,
        logs: Mapping[str, float] | None = None,
        val_logs: Mapping[str, float] | None = None,
        *,
        reset: bool = True,
        snapshot: Mapping | None = None,
    ) -> None:
        """Writes epoch ``epoch`` and starts the next one.

        Args:
            epoch: The epoch number, the TensorBoard step of its tags.
            logs: Training metrics, written as ``train/epoch_<name>``; names
                starting with ``val_`` go to ``validation/`` (as in Keras's
                logs). Floats, numpy values or eager tensors.
            val_logs: Validation metrics (names without ``val_``).
            reset: Start the next epoch's statistics now. False leaves it to
                :meth:`begin_epoch` (the callback calls it at Keras's
                ``on_epoch_begin``).
            snapshot: ``stats.snapshot_tensors()`` read inside a compiled
                epoch, as numpy (:func:`tbgrad.train_with_tape` does so and
                resets the statistics there).
        """
        train = {k: v for k, v in (logs or {}).items() if not k.startswith(VAL_PREFIX)}
        val = {k[len(VAL_PREFIX) :]: v for k, v in (logs or {}).items() if k not in train}
        val.update(val_logs or {})
        if "learning_rate" not in train:
            lr = learning_rate(self.optimizer)
            if lr is not None:
                train["learning_rate"] = lr
        if snapshot is None and not self._checked:
            self._check_observed(epoch)
        self.summary.write_epoch(
            epoch, train, val, histograms=self.histograms_due(epoch), snapshot=snapshot
        )
        self._note_nonfinite(epoch)
        self.epoch = epoch + 1
        if reset:
            self.begin_epoch(epoch + 1)

    def histograms_due(self, epoch: int) -> bool:
        """Whether ``epoch`` writes histograms (every ``histogram_freq``)."""
        return bool(self.histogram_freq) and epoch % self.histogram_freq == 0

    def close(self) -> None:
        """Restores the optimizer and flushes and closes the event files.

        Safe to call more than once; every epoch ended is on disk after it.
        """
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._stats is not None and self._stats.activations is not None:
            self._stats.activations.remove()
        self.summary.close()
        if self._temporary_log_dir:
            _multi_worker.remove_temporary(self.log_dir)

    def __enter__(self) -> GradientLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------

    def _get_stats(self) -> GradientStats:
        if self._stats is None:
            # Called from inside the first trace of a train step when the
            # model is built only there: create the variables eagerly.
            with tf.init_scope():
                self._make_stats()
        return self._stats

    def _make_stats(self) -> None:
        layers = tracked_variables(self.model, self.variables)
        if not layers:
            what = (
                "layer with a kernel"
                if self.variables == KERNELS
                else f"trainable variable that variables={self.variables!r} selects"
            )
            warnings.warn(
                f"tbgrad: model {self.model.name!r} has no {what}; only the epoch_* "
                "scalars will be written.",
                stacklevel=4,
            )
        strategy = getattr(self.model, "distribute_strategy", None) or tf.distribute.get_strategy()
        with strategy.scope():
            self._stats = GradientStats(
                layers,
                jit_compile=self.jit_compile,
                count_skips=self._hook is not None and self._hook.counts_skips,
                stats_every=self.stats_every,
                activations=activation_layers(self.model, layers) if self.diagnostics else (),
                diagnostics=self.diagnostics,
                clipping=self._hook.optimizer if self._clips() else None,
                caller_selects_steps=self.caller_selects_steps,
            )
        if self._stats.activations is not None:
            self._stats.activations.install()
        self._stats.reset(capture=self.histograms_due(self.epoch))
        self.summary.stats = self._stats

    def _write_step(self) -> None:
        # The per-step tags, written from inside the train step on the steps
        # update_freq selects (a Python ``if`` cannot test a step count that
        # lives in the graph).
        if self._step is None:
            with tf.init_scope():
                self._step = tf.Variable(tf.constant(0, tf.int64), trainable=False)
                self.summary.writer(tags.TRAIN_DIR)
        step = self._step.assign_add(1)
        # Out of the optimizer's name scope, which would prefix the tags.
        with tf.compat.v1.name_scope(None):
            self.summary.write_step_in_graph(step, {}, tf.equal(step % self.update_freq, 0))

    def _clips(self) -> bool:
        return self._hook is not None and clips(self._hook.optimizer)

    def _note_nonfinite(self, epoch: int) -> None:
        # Keeps the run's first non-finite gradient or weight and writes it
        # once, as text, at its epoch.
        values = self.summary.last_epoch_values
        if values is None:
            return
        steps_before, self._steps_done = self._steps_done, self._steps_done + values.seen
        found = values.first_nonfinite
        if found is None or self.first_nonfinite is not None:
            return
        index = found["step"]
        self.first_nonfinite = {
            "what": found["what"],
            "layer": found["layer"],
            "epoch": epoch,
            "step_in_epoch": index,
            "step": None if index is None else steps_before + index,
        }
        self.summary.write_text(
            tags.FIRST_NONFINITE, describe_nonfinite(self.first_nonfinite), epoch
        )

    def _check_observed(self, epoch: int) -> None:
        self._checked = True
        stats = self._get_stats()
        if stats.layers and int(stats.epoch_stats()["steps"]) == 0 and not stats.count_skips:
            warnings.warn(
                f"tbgrad.GradientLogger saw no gradient in epoch {epoch}: create it before "
                "your train step first runs (a tf.function traced before has no hook), pass "
                "optimizer=, or call logger.observe(grads, variables).",
                stacklevel=3,
            )


def describe_nonfinite(found: dict) -> str:
    """One line on the first non-finite gradient or weight
    (:attr:`GradientLogger.first_nonfinite`)."""
    what = "gradient" if found["what"] == "gradient" else "weights"
    if found["step"] is None:
        return f"{found['layer']} {what} NaN or Inf by the end of epoch {found['epoch']}"
    return (
        f"{found['layer']} {what} turned NaN or Inf at step {found['step']} "
        f"(epoch {found['epoch']}, step {found['step_in_epoch']} of the epoch)"
    )


def learning_rate(optimizer) -> float | None:
    """The optimizer's current learning rate, or None (none, or a custom one)."""
    if optimizer is None:
        return None
    try:
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except Exception:  # noqa: BLE001 - schedules or custom optimizers: skip it.
        return None


__all__ = ["GradientLogger"]
