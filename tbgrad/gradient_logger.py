"""``GradientLogger``: tbgrad's gradient tags from your own training loop.

Once attached, it observes the gradients where the optimizer applies them
(the same :class:`~tbgrad.hook.OptimizerHook` the callback installs), runs
the statistics (:class:`~tbgrad.collector.Collector`) inside your train
step, compiled or eager, and writes each epoch through
:class:`~tbgrad.summary.SummaryLogger`: the tags and folders of
:class:`tbgrad.TensorBoard`. The callback and :func:`tbgrad.train_with_tape`
are built on it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from typing import Literal

import keras
import tensorflow as tf

from tbgrad import _compat, _multi_worker, _paths, tags
from tbgrad import step as _step
from tbgrad._validate import (
    EPOCH,
    check_histogram_freq,
    check_int,
    check_keras_backend,
    check_update_freq,
    check_variables,
)
from tbgrad.collector import Collector, Epoch
from tbgrad.hook import OptimizerHook
from tbgrad.statistics import REGISTRY, Setup
from tbgrad.statistics.activations import activation_layers
from tbgrad.statistics.clipping import clip_limits
from tbgrad.summary import SummaryLogger
from tbgrad.variables import KERNELS, MATRICES, output_matrix, tracked_variables

VAL_PREFIX = "val_"


class GradientLogger:
    """Logs per-layer gradients and weights of your own training loop.

    :meth:`attach` it before your train step first runs; it then sees every
    gradient ``optimizer.apply_gradients`` (or ``apply``) applies, inside a
    ``tf.function`` or eagerly. Call :meth:`end_epoch` after each epoch and
    :meth:`close` at the end (or use it as a context manager, which attaches
    and closes it).

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
        variables: ``"matrices"`` (every weight matrix: kernels,
            embeddings and language-model heads, recurrent kernels, LoRA
            factors), ``"kernels"`` (every layer's kernel), ``"all"`` (every
            trainable variable) or a predicate ``callable(variable) -> bool``
            (see :func:`tbgrad.variables.tracked_variables` for the names).
        optimizer: The optimizer whose applied gradients are logged; default
            ``model.optimizer``. With neither, pass the gradients yourself
            with :meth:`observe`.
        jit_compile: Whether the train step is compiled with XLA (a step a
            cadence leaves out is then computed and masked: the same numbers).
        stats_every: The gradient record (``grad_*``) over the epoch's steps
            0, N, 2N, ... only. Default 1: every step, exact.
        diagnostics: Also log why a gradient vanishes: update-to-weight
            ratios, saturated (tanh, sigmoid) and dead (relu) units of the
            training forward pass, clipping. False: the record only.
        diagnostics_every: The diagnostics on the epoch's first step and
            every this many after it (default 16; 1: every step).
        statistics: The statistic classes (default
            :data:`tbgrad.statistics.REGISTRY`; add your own
            :class:`tbgrad.statistics.Statistic`).
        reference: The tag name of the weight matrix the ratios
            (``grad_log10_ratio``, ``grad_ratio``) and the verdict compare
            every layer with. Default: the matrix that produces the model's
            output, found from the model's graph (a language model's head,
            tied or not; a classifier's last dense; under LoRA the trainable
            matrix nearest the output); see
            :func:`tbgrad.variables.output_matrix`.

    The first step and layer whose gradient or weights turn NaN or Inf are
    kept in :attr:`first_nonfinite` and written once as the text tag
    ``first_nonfinite``.

    Raises:
        ValueError: A bad argument, or Keras runs on a backend other than
            TensorFlow.

    Example:
        Three lines added to a GradientTape loop (``train_step`` calls
        ``optimizer.apply_gradients``)::

            logger = tbgrad.GradientLogger(model, "logs/b", optimizer=optimizer).attach()
            for epoch in range(100):
                for xb, yb in dataset:
                    loss = train_step(xb, yb)
                logger.end_epoch(epoch, {"loss": loss})
            logger.close()
    """

    def __init__(
        self,
        model: keras.Model,
        log_dir: str | os.PathLike,
        histogram_freq: int = 1,
        update_freq: Literal["epoch"] | int = EPOCH,
        variables: Literal["matrices", "kernels", "all"] | Callable = MATRICES,
        *,
        optimizer: keras.optimizers.Optimizer | None = None,
        jit_compile: bool = False,
        stats_every: int = 1,
        diagnostics: bool = True,
        diagnostics_every: int = _step.DEFAULT_DIAGNOSTICS_EVERY,
        statistics=REGISTRY,
        reference: str | None = None,
    ):
        check_keras_backend(f"tbgrad.{type(self).__name__}")
        self.stats_every = check_int("stats_every", stats_every, 1)
        self.diagnostics_every = check_int("diagnostics_every", diagnostics_every, 1)
        check_histogram_freq(histogram_freq)
        check_update_freq(update_freq)
        if update_freq != EPOCH and not _step.ON_TENSORFLOW:
            raise ValueError(
                f"tbgrad.{type(self).__name__}(update_freq=N) writes from inside a "
                "TensorFlow train step; on Keras's "
                f"{keras.backend.backend()!r} backend write per epoch, or every N steps "
                f"with logger.end_interval(step, index). Received: update_freq={update_freq!r}"
            )
        check_variables(variables)
        self.model = model
        self.requested_log_dir = os.fspath(log_dir)
        self.log_dir = self.requested_log_dir
        self.histogram_freq = histogram_freq
        self.update_freq = update_freq
        self.variables = variables
        self.optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)
        self.jit_compile = bool(jit_compile)
        self.diagnostics = bool(diagnostics)
        self.statistics = tuple(statistics)
        self.reference = reference
        # {"what", "layer", "epoch", "step_in_epoch", "step"} of the first
        # non-finite gradient or weight of the run, or None.
        self.first_nonfinite: dict | None = None
        self.epoch = 0
        self.summary: SummaryLogger | None = None
        self._temporary_log_dir = False
        self._nonfinite = _RunNonfinite()
        self._collector: Collector | None = None
        self._step: tf.Variable | None = None
        self._hook: OptimizerHook | None = None
        self._checked = False
        self._attached = False

    # -- attaching ------------------------------------------------------------

    def attach(self) -> GradientLogger:
        """Hooks the optimizer (if any) and opens the run folder; returns self.

        A train step traced before this has no statistics in it.
        """
        if self.summary is None:
            # Under a multi-worker strategy only the chief writes into
            # log_dir; the others into a temporary folder, removed on close.
            self.log_dir, self._temporary_log_dir = _multi_worker.writable_log_dir(
                self.requested_log_dir, getattr(self.model, "distribute_strategy", None)
            )
            # Before anything is hooked: one clear error, not one at a flush.
            _paths.make_writable(self.log_dir, "tbgrad")
            self.summary = SummaryLogger(self.log_dir)
        if self.optimizer is not None and self._hook is None:
            self._hook = OptimizerHook(self.optimizer, lambda: self)
            self._hook.install()
        self._attached = True
        if self._collector is not None:
            self._attach_collector()
        elif _compat.all_layers_built(self.model):
            self.collector  # noqa: B018 - made now, attached with the logger
        return self

    def _attach_collector(self) -> None:
        collector = self._collector
        collector.attach()
        if _step.ON_JAX and self._hook is not None:
            _compat.track_in_optimizer(self._hook.optimizer, collector.step_variables)
            _compat.track_in_model(self.model, collector.forward_variables)
        self.summary.describe_run(collector.names, collector.kernel_names, collector.compared_names)

    def close(self) -> None:
        """Detaches from the optimizer and the model, and flushes and closes
        the event files. Safe to call more than once; every epoch ended is on
        disk after it."""
        if self._hook is not None:
            if self._collector is not None and _step.ON_JAX:
                _compat.untrack_from_optimizer(self._hook.optimizer, self._collector.variables)
                _compat.untrack_from_model(self.model, self._collector.variables)
            self._hook.remove()
            self._hook = None
        if self._collector is not None:
            self._collector.detach()
        self._attached = False
        if self.summary is not None:
            self.summary.close()
        if self._temporary_log_dir:
            _multi_worker.remove_temporary(self.log_dir)
            self._temporary_log_dir = False

    def __enter__(self) -> GradientLogger:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def collector(self) -> Collector:
        """The statistics (made when the model's layers are built: from inside
        the first trace of a train step when the model is built only there)."""
        if self._collector is None:
            with tf.init_scope():
                self._collector = self._make_collector()
                self._collector.reset(capture=self.histograms_due(self.epoch))
            if self._attached:
                self._attach_collector()
        return self._collector

    # -- inside the train step ------------------------------------------------

    def observe(self, grads, variables) -> None:
        """Adds one step's gradients; for loops that apply them some other way.

        Args:
            grads: The gradients applied, aligned with ``variables``.
            variables: The trainable variables they belong to.
        """
        self.update(list(grads), list(variables))
        self.end_update()

    # The optimizer hook's StepSink (tbgrad.hook): the statistics, then the
    # per-step tags of an integer update_freq.
    def begin_update(self, unclipped) -> None:
        self.collector.begin_update(unclipped)

    def update(self, grads, variables) -> None:
        self.collector.update(grads, variables)

    def end_update(self) -> None:
        self.collector.end_update()
        if self.update_freq != EPOCH:
            self._write_step()

    def skip(self) -> None:
        self.collector.skip()

    # -- between epochs -------------------------------------------------------

    def begin_epoch(self, epoch: int) -> None:
        """Starts ``epoch``, forgetting the steps observed since the last
        :meth:`end_epoch`. Needed only to start at another epoch than the
        one after the last :meth:`end_epoch` (0 at first)."""
        self.epoch = epoch
        if self._collector is not None:
            self._collector.reset(capture=self.histograms_due(epoch))

    def end_epoch(
        self,
        epoch: int,
        logs: Mapping[str, float] | None = None,
        val_logs: Mapping[str, float] | None = None,
        *,
        reset: bool = True,
        snapshot: Mapping | None = None,
        flush: bool = True,
        statistics: bool = True,
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
            snapshot: ``collector.snapshot_tensors()`` read inside a compiled
                epoch, as numpy (:func:`tbgrad.train_with_tape` does so and
                resets the statistics there).
            flush: Push the epoch to the event files now, so that a process
                killed later keeps it (the callback flushes once it has
                written Keras's part of the epoch too).
            statistics: Write the statistics' tags and start the next
                epoch's. False writes the metrics only (the statistics run
                by interval: :meth:`end_interval`).
        """
        train = {k: v for k, v in (logs or {}).items() if not k.startswith(VAL_PREFIX)}
        val = {k[len(VAL_PREFIX) :]: v for k, v in (logs or {}).items() if k not in train}
        val.update(val_logs or {})
        if "learning_rate" not in train:
            lr = learning_rate(self.optimizer)
            if lr is not None:
                train["learning_rate"] = lr
        if statistics:
            values = self.collector.epoch(snapshot, self.histograms_due(epoch))
            if not self._checked:
                self._check_observed(epoch, values)
            self._open().write_epoch(epoch, train, val, values.values)
            self._note_nonfinite(epoch, values)
        else:
            self._open().write_epoch(epoch, train, val)
        if flush:
            self.summary.flush()
        self.epoch = epoch + 1
        if reset and statistics:
            self.begin_epoch(epoch + 1)

    def end_interval(self, step: int, index: int) -> bool:
        """Writes the statistics of the steps since the last interval at the
        TensorBoard step ``step`` (the global step, so that the x axis is
        steps) and starts the next interval; the statistics of one interval
        are exact over its applied steps, as an epoch's are.

        Args:
            step: The global step the interval ends at.
            index: The interval's number (0 first): histograms are written
                every ``histogram_freq``-th.

        Returns:
            Whether anything was written (False when the interval saw no
            applied step).

        For long epochs: call it every N steps instead of (or beside)
        :meth:`end_epoch`, which then writes the epoch's metrics only
        (``end_epoch(..., statistics=False)``).
        """
        values = self.collector.epoch(None, self.histograms_due(index))
        written = values.seen > 0 or bool(values.skipped)
        if written:
            if not self._checked:
                self._check_observed(index, values)
            self._open().write_epoch(step, values=values.values)
            self._note_nonfinite(index, values)
            self.summary.flush()
        self.collector.reset(capture=self.histograms_due(index + 1 if written else index))
        return written

    def histograms_due(self, epoch: int) -> bool:
        """Whether ``epoch`` writes histograms (every ``histogram_freq``)."""
        return bool(self.histogram_freq) and epoch % self.histogram_freq == 0

    # -- helpers --------------------------------------------------------------

    def _open(self) -> SummaryLogger:
        if self.summary is None:
            self.attach()
        return self.summary

    def _make_collector(self) -> Collector:
        hooked = self._hook.optimizer if self._hook is not None else None
        counts_skips = self._hook is not None and self._hook.counts_skips
        return make_collector(
            self.model,
            self.variables,
            hooked,
            counts_skips,
            self.jit_compile,
            self.diagnostics,
            self.stats_every,
            self.diagnostics_every,
            self.statistics,
            self.reference,
        )

    def _write_step(self) -> None:
        # The per-step tags, written from inside the train step on the steps
        # update_freq selects (a Python ``if`` cannot test a step count that
        # lives in the graph).
        if self._step is None:
            with tf.init_scope():
                self._step = tf.Variable(tf.constant(0, tf.int64), trainable=False)
                self._open().writer(tags.TRAIN_DIR)
        step = self._step.assign_add(1)
        # Out of the optimizer's name scope, which would prefix the tags.
        with tf.compat.v1.name_scope(None):
            self.summary.write_step_in_graph(
                step, self.collector.step_tensors(), tf.equal(step % self.update_freq, 0)
            )

    def _note_nonfinite(self, epoch: int, values: Epoch) -> None:
        # Keeps the run's first non-finite gradient or weight and writes it
        # once, as text, at its epoch.
        if self._nonfinite.add(epoch, values) and self.first_nonfinite is None:
            self.first_nonfinite = self._nonfinite.first
            text = describe_nonfinite(self.first_nonfinite)
            self.summary.write_text(tags.FIRST_NONFINITE, text, epoch)

    def _check_observed(self, epoch: int, values: Epoch) -> None:
        self._checked = True
        if self.collector.names and values.seen == 0 and not values.skipped:
            warnings.warn(
                f"tbgrad.GradientLogger saw no gradient in epoch {epoch}: attach it "
                "(logger.attach()) before your train step first runs (a tf.function "
                "traced before has no hook), pass optimizer=, or call "
                "logger.observe(grads, variables).",
                stacklevel=3,
            )


def make_collector(
    model,
    variables,
    optimizer,
    counts_skips,
    jit,
    diagnostics,
    every,
    diagnostics_every,
    statistics,
    reference=None,
) -> Collector:
    """The collector of ``model``'s tracked variables, in its strategy's scope."""
    layers = tracked_variables(model, variables)
    output = output_matrix(model, layers, reference)
    if not layers:
        what = {
            KERNELS: "layer with a trainable kernel",
            MATRICES: "trainable weight matrix",
        }.get(variables, f"trainable variable that variables={variables!r} selects")
        warnings.warn(
            f"tbgrad: model {model.name!r} has no {what}; only the epoch_* "
            "scalars will be written.",
            stacklevel=6,
        )
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    setup = Setup(
        tuple(layers),
        activations=tuple(activation_layers(model, layers)) if diagnostics else (),
        clip_limits=clip_limits(optimizer) if optimizer is not None else None,
        diagnostics=diagnostics,
        count_skips=counts_skips,
        reference=output,
    )
    policy = _step.ExecutionPolicy.for_mode(jit, strategy.num_replicas_in_sync)
    with strategy.scope():
        return Collector(setup, policy, every, diagnostics_every, statistics)


class _RunNonfinite:
    """The run's first non-finite gradient or weight, from its epochs."""

    def __init__(self):
        self.steps_done = 0
        self.first: dict | None = None

    def add(self, epoch: int, values: Epoch) -> bool:
        """Counts the epoch's steps; True when it holds the run's first."""
        steps_before, self.steps_done = self.steps_done, self.steps_done + values.seen
        found = values.first_nonfinite
        if found is None or self.first is not None:
            return False
        index = found["step"]
        self.first = {
            "what": found["what"],
            "layer": found["layer"],
            "epoch": epoch,
            "step_in_epoch": index,
            "step": None if index is None else steps_before + index,
        }
        return True


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
