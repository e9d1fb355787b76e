"""``TensorBoard``: Keras's TensorBoard callback, with per-layer gradients.

A subclass of ``keras.callbacks.TensorBoard`` that takes every argument of
Keras's with the same meaning and adds tbgrad's tags. The gradients logged
are the ones the optimizer applied in ``model.fit``'s real training steps:
a :class:`~tbgrad.gradient_logger.GradientLogger` hooks the optimizer's
update step (after loss-scale unscaling, gradient clipping and
accumulation), accumulates per-layer statistics inside the compiled train
step, and writes them once per epoch. Nothing is recomputed on another batch
or on validation data.

Its class name is ``TensorBoard`` because KerasTuner gives a callback of that
name a folder per trial and the trial's HParams.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Literal

import keras

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
from tbgrad.gradient_logger import GradientLogger
from tbgrad.statistics import REGISTRY
from tbgrad.statistics.buckets import histogram_buckets
from tbgrad.summary import float_logs
from tbgrad.variables import MATRICES


class TensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback plus per-layer gradients and weights.

    Everything Keras's callback writes for the same arguments is written
    too, in the same folders, under the same tags and at the same steps
    (the ``epoch_*`` and ``batch_*`` scalars, ``evaluation_*_vs_iterations``
    after each validation and ``evaluate``, the ``keras`` model tag and the
    train graph, the per-weight ``<weight path>/histogram`` histograms and
    images, the Projector's embeddings, profiles, and a layer's own
    ``tf.summary`` calls in training and validation). Beside them, for every
    weight matrix (or every variable ``variables`` selects), the tags
    of :mod:`tbgrad.tags` (``gradients/<layer>``, ``grad_mean_abs/<layer>``,
    ``weights/<layer>``, ...). One default differs from Keras's:
    ``histogram_freq=1`` (histograms are the point; ``histogram_freq=0``
    is Keras's default).

    The statistics are accumulated inside the compiled train step, so every
    step counts also under ``model.compile(steps_per_execution=N)``.

    Args:
        log_dir: The run folder.
        histogram_freq: Gradient and weight histograms every this many
            epochs; 0 writes none (Keras's default). Scalars are written
            every epoch.
        write_graph: Write the Keras model's graph (the ``keras`` tag of
            ``train/``), as Keras does.
        write_images: Write the weights as images every ``histogram_freq``
            epochs, as Keras does.
        write_steps_per_second: Write ``epoch_steps_per_second`` (and with
            an integer ``update_freq``, ``batch_steps_per_second``).
        update_freq: ``"epoch"``, ``"batch"`` (1) or an integer N to also
            write ``batch_*`` scalars every N training steps at the global
            step. With ``steps_per_execution`` > 1 fit has logs only at the
            end of each execution: they are written there, at its last step,
            whenever the execution crossed a multiple of N.
        profile_batch: Batches to profile, as in Keras (0: none).
        embeddings_freq: Save the embeddings every this many epochs for the
            Projector, as Keras does.
        embeddings_metadata: Metadata files of the embedding layers, as in
            Keras.
        variables: ``"matrices"`` (every weight matrix: kernels,
            embeddings and language-model heads, recurrent kernels, LoRA
            factors), ``"kernels"``, ``"all"`` or a predicate
            ``callable(variable) -> bool``: the trainable variables logged
            (see :func:`tbgrad.variables.tracked_variables`).
        stats_every: Compute the gradient record on every this many
            training steps only (the epoch's steps 0, N, 2N, ...): the
            epoch's ``grad_*`` tags are then over those steps. Default 1:
            every step, exact.
        diagnostics: Also log the update-to-weight ratio per layer, the
            saturated and dead units of each tanh, sigmoid or relu layer
            (from the training forward pass) and, with a clipping optimizer,
            how often clipping changed the gradients. False: the gradient
            and weight statistics only (see :class:`tbgrad.GradientLogger`).
        diagnostics_every: Measure the diagnostics on the epoch's first
            step and every this many after it (default 16; 1: every step).
        statistics: The statistic classes to run (default
            :data:`tbgrad.statistics.REGISTRY`).
        reference: The tag name of the weight matrix the ratios
            (``grad_log10_ratio``, ``grad_ratio``) and the verdict compare
            every layer with. Default: the matrix that produces the model's
            output, found from the model's graph (a language model's head,
            tied or not; a classifier's last dense; under LoRA the trainable
            matrix nearest the output); see
            :func:`tbgrad.variables.output_matrix`.
        stats_freq: ``"epoch"`` (the default), or an integer N: every
            statistic, histogram and diagnostic is written over each interval
            of N training steps instead, exact over its applied steps, at the
            global step (the x axis is steps; ``epoch_*`` stay per epoch).
            For one or a few long epochs. Intervals run on across epochs; the
            steps after the last whole interval are written when ``fit``
            ends. With ``steps_per_execution`` > 1 an interval ends at the
            end of the execution that crossed its multiple of N.

    The first step and layer whose gradient or weights turn NaN or Inf are
    in :attr:`first_nonfinite` after ``fit`` (and the text tag
    ``first_nonfinite``).

    Example:
        >>> model.fit(x, y, epochs=10, validation_data=(xv, yv),
        ...           callbacks=[tbgrad.TensorBoard("logs/run1")])
    """

    def __init__(
        self,
        log_dir: str | os.PathLike = "logs",
        histogram_freq: int = 1,
        write_graph: bool = True,
        write_images: bool = False,
        write_steps_per_second: bool = False,
        update_freq: Literal["epoch", "batch"] | int = EPOCH,
        profile_batch: int | tuple[int, int] = 0,
        embeddings_freq: int = 0,
        embeddings_metadata: str | Mapping[str, str] | None = None,
        *,
        variables: Literal["matrices", "kernels", "all"] | Callable = MATRICES,
        stats_every: int = 1,
        diagnostics: bool = True,
        diagnostics_every: int = _step.DEFAULT_DIAGNOSTICS_EVERY,
        statistics=REGISTRY,
        reference: str | None = None,
        stats_freq: Literal["epoch"] | int = EPOCH,
    ):
        check_keras_backend(f"tbgrad.{type(self).__name__}")
        _multi_worker.check_fit(f"tbgrad.{type(self).__name__}")
        check_histogram_freq(histogram_freq)
        check_int("stats_every", stats_every, 1)
        check_int("diagnostics_every", diagnostics_every, 1)
        update_freq = 1 if update_freq == "batch" else update_freq
        check_update_freq(update_freq)
        check_variables(variables)
        check_update_freq(stats_freq, "stats_freq")
        super().__init__(
            log_dir=os.fspath(log_dir),
            histogram_freq=histogram_freq,
            write_graph=write_graph,
            write_images=write_images,
            write_steps_per_second=write_steps_per_second,
            update_freq=update_freq,
            profile_batch=profile_batch,
            embeddings_freq=embeddings_freq,
            embeddings_metadata=embeddings_metadata,
        )
        self.variables = variables
        self.stats_every = stats_every
        self.diagnostics = bool(diagnostics)
        self.diagnostics_every = diagnostics_every
        self.statistics = tuple(statistics)
        self.reference = reference
        self.stats_freq = stats_freq
        self._intervals = 0
        self.first_nonfinite: dict | None = None
        self._gradients: GradientLogger | None = None
        # The model whose fit this callback is in (None between fits).
        self._hooked_model = None
        self._model_summary_due = False
        self._global_step = 0
        self._epoch_first_step = 0

    @property
    def collector(self):
        """The statistics of the last ``fit`` (a
        :class:`tbgrad.collector.Collector`), or None before one."""
        return self._gradients.collector if self._gradients is not None else None

    @property
    def async_safe(self) -> bool:
        """Whether fit may run the batch hooks asynchronously: with nothing
        to do per batch (keras/src/callbacks/callback_list.py reads this;
        otherwise overriding ``on_train_batch_end`` makes every step wait)."""
        return self.update_freq == EPOCH and self.stats_freq == EPOCH and not self._should_trace

    # -- Keras hooks ----------------------------------------------------------

    def on_train_begin(self, logs=None):
        if self._hooked_model is not None:
            self.close()  # a fit an exception ended, maybe of another model
        if self.model.optimizer is None:
            raise ValueError(
                f"tbgrad.{type(self).__name__} needs a compiled model with an optimizer. "
                f"Received: model.optimizer={self.model.optimizer!r}"
            )
        # A subclassed model is built only when fit first traces its train
        # step: the statistics are then made from inside that trace.
        self._gradients = GradientLogger(
            self.model,
            self.log_dir,
            self.histogram_freq,
            variables=self.variables,
            jit_compile=self.model.jit_compile,
            stats_every=self.stats_every,
            diagnostics=self.diagnostics,
            diagnostics_every=self.diagnostics_every,
            statistics=self.statistics,
            reference=self.reference,
        ).attach()
        self._hooked_model = self.model
        # A train function traced before this fit would not call the hook.
        self.model.make_train_function(force=True)
        # An exception out of fit skips on_train_end: the next fit undoes
        # this one first (the next train function is made without tbgrad).
        _compat.before_next_train_function(self.model, self.close)
        self._global_step = 0
        self._intervals = 0
        super().on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._epoch_first_step = self._global_step
        if self.stats_freq == EPOCH:
            self._gradients.begin_epoch(epoch)
        else:
            self._gradients.epoch = epoch  # intervals run on across epochs

    def on_train_batch_end(self, batch, logs=None):
        if self.async_safe:
            return  # nothing per batch: the train graph is written at the epoch's end
        # Keras's part: the train graph, batch_steps_per_second, profiling.
        # Its batch_<metric> scalars are written below, at tbgrad's step.
        super().on_train_batch_end(batch, None)
        # ``batch`` is the epoch's index of the last step just run: with
        # ``steps_per_execution`` > 1, fit calls this once per execution, so
        # the steps are counted from it, not from the calls (fit's index runs
        # past a short last execution: it is capped at the epoch's steps).
        # The logs exist only at the end of an execution: they are written
        # there when an execution crossed a multiple of update_freq (an
        # interval of stats_freq ends there too).
        done = batch + 1
        steps = (self.params or {}).get("steps")
        if steps:
            done = min(done, steps)
        previous = self._global_step
        self._global_step = self._epoch_first_step + done
        if self.update_freq != EPOCH and crossed(previous, self._global_step, self.update_freq):
            _compat.sync_training_state(self.model)  # JAX: the step's state
            scalars = {tags.batch_tag(k): v for k, v in float_logs(logs).items()}
            scalars.update(self._gradients.collector.step_tensors())
            self._gradients.summary.write_step(self._global_step, scalars)
        if self.stats_freq != EPOCH and crossed(previous, self._global_step, self.stats_freq):
            self._end_interval()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.write_steps_per_second:
            logs["steps_per_second"] = self._compute_steps_per_second()
        by_epoch = self.stats_freq == EPOCH
        self._gradients.end_epoch(epoch, logs, reset=False, flush=False, statistics=by_epoch)
        self._write_model_graph()
        if self._gradients.histograms_due(epoch):
            self._log_weights(epoch)
        if self.embeddings_freq and epoch % self.embeddings_freq == 0:
            self._log_embeddings(epoch)
        # A process killed later (out of memory, preempted) keeps this epoch.
        self._gradients.summary.flush()

    def on_train_end(self, logs=None):
        if self.stats_freq != EPOCH:
            self._end_interval()  # the steps since the last whole interval
        super().on_train_end(logs)
        self.close()

    def _end_interval(self) -> None:
        _compat.sync_training_state(self.model)  # JAX: read, then reset
        if self._gradients.end_interval(self._global_step, self._intervals):
            self._intervals += 1

    def on_test_begin(self, logs=None):
        if self._hooked_model is None:
            # model.evaluate outside fit: the model is built by now.
            self._write_model_summary()
        super().on_test_begin(logs)

    def on_test_end(self, logs=None):
        # Keras's: evaluation_<metric>_vs_iterations into validation/.
        super().on_test_end(logs or {})
        if self._hooked_model is None:
            # model.evaluate outside fit: nothing else will flush it.
            self._val_writer.flush()

    def close(self) -> None:
        """Restores the optimizer and the model, and flushes and closes the
        event files.

        ``model.fit`` calls this at the end of training. When training stops
        by an exception, the model's next ``fit`` (or this callback's next
        ``fit``) calls it first, and every finished epoch is on disk already;
        call it yourself to close the files sooner. Safe to call more than
        once.
        """
        model, self._hooked_model = self._hooked_model, None
        if model is not None:
            # What Keras's on_train_end undoes, if an exception skipped it.
            if self.update_freq != EPOCH:
                while self._prev_summary_state:
                    self._pop_writer()  # the default writer, pushed per batch
            if self._is_tracing:
                self._stop_trace()
        if self._gradients is not None:
            self._gradients.close()
            self.first_nonfinite = self._gradients.first_nonfinite
        if model is not None:
            _compat.forget_next_train_function(model)
            # Later fits without this callback must not keep updating our
            # statistics: the next fit traces its train step anew.
            model.make_train_function(force=True)

    # -- Keras's private parts (tbgrad._compat.KERAS_TENSORBOARD_*) ------------

    @property
    def _train_writer(self):
        # One writer per folder, shared with tbgrad's tags: one event file.
        if self._gradients is None:
            return super()._train_writer
        return self._gradients.summary.writer(tags.TRAIN_DIR)

    @property
    def _val_writer(self):
        if self._gradients is None:
            return super()._val_writer
        return self._gradients.summary.writer(tags.VALIDATION_DIR)

    def _write_keras_model_summary(self):
        # Keras writes the model summary in set_model, before fit has built
        # the model and before tbgrad's writers exist: it is written at the
        # end of the first epoch instead (at step 0, as Keras's).
        self._model_summary_due = True

    def _write_model_summary(self):
        if self._model_summary_due:
            self._model_summary_due = False
            # Keras writes it in set_model, where no record_if of an integer
            # update_freq can leave it out.
            with self.summary.record_if(True):
                super()._write_keras_model_summary()

    def _write_model_graph(self):
        self._write_model_summary()
        if self._should_write_train_graph:
            self._should_write_train_graph = False
            self._write_keras_model_train_graph()

    def _log_weights(self, epoch):
        # Keras's per-weight histograms, bucketed on the host from one read
        # of each weight (Keras's runs one eager summary op per weight), and
        # its weight images.
        weights = [w for layer in self.model.layers for w in layer.weights]
        values = {
            f"{w.path.replace(':', '_')}/histogram": histogram_buckets(
                keras.ops.convert_to_numpy(w)
            )
            for w in weights
        }
        self._gradients.summary.write_epoch(epoch, values=values)
        if self.write_images:
            with self._train_writer.as_default():
                for weight in weights:
                    name = weight.path.replace(":", "_")
                    self._log_weight_as_image(weight, f"{name}/image", epoch)

    def _configure_embeddings(self):
        # Keras writes projector_config.pbtxt into log_dir without creating it.
        _paths.gfile().makedirs(self.log_dir)
        super()._configure_embeddings()


def crossed(before: int, after: int, every: int) -> bool:
    """Whether the steps from ``before`` to ``after`` passed a multiple of ``every``."""
    return after // every > before // every


__all__ = ["TensorBoard"]
