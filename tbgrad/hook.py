"""Taps the gradients an optimizer applies, for :class:`GradientStats`.

Every Keras 3 optimizer ends ``apply()`` in one update step, after
loss-scale unscaling, gradient clipping and gradient accumulation: the
gradients it receives are exactly the ones that move the weights.
:class:`OptimizerHook` wraps that step on one optimizer instance (not its
class, see :func:`tbgrad._compat.wrap_update_step`) so that both
``model.fit`` and the tape loop feed the statistics from the same place.

Around the update it also reads every tracked kernel (before weight decay
and after the update step) for the update-to-weight ratios of
:class:`tbgrad.diagnostics.UpdateRatios`, and hands the gradients before and
after clipping to :class:`tbgrad.diagnostics.ClipStats`.

A LossScaleOptimizer skips a step whose loss-scaled gradients are not
finite without reaching that update step; the hook counts those steps
(:meth:`GradientStats.skip`) where the optimizer handles them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import keras

from tbgrad import _compat
from tbgrad.diagnostics import UpdateRatios
from tbgrad.stats import GradientStats


def inner_optimizer(optimizer):
    """The optimizer that updates the variables (unwraps LossScaleOptimizer)."""
    while optimizer is not None and hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer


class OptimizerHook:
    """Feeds ``stats`` with every gradient ``optimizer`` applies.

    Args:
        optimizer: A Keras 3 optimizer.
        stats: The accumulator to update inside the train step, or a
            function that returns it (called at the first traced step, when
            every layer of the model is built).

    Use as a context manager, or call :meth:`install` and :meth:`remove`.
    With a LossScaleOptimizer the statistics should count skipped steps
    (``GradientStats(..., count_skips=hook.counts_skips)``).
    """

    def __init__(
        self,
        optimizer: keras.optimizers.Optimizer,
        stats: GradientStats | Callable[[], GradientStats],
    ):
        target = inner_optimizer(optimizer)
        if not _compat.has_update_step(target):
            raise TypeError(
                "tbgrad needs a Keras 3 optimizer (with "
                f"{_compat.OPTIMIZER_UPDATE_STEP}). Received: optimizer={optimizer!r}"
            )
        self.optimizer = target
        self.outer = optimizer
        # Whether the optimizer can skip steps (a LossScaleOptimizer).
        self.counts_skips = _compat.has_skip_step(optimizer)
        self.stats = stats
        self._installed = False
        self._paused = False

    def install(self) -> None:
        if self._installed:
            return
        stats = self.stats

        def get():
            return stats() if callable(stats) else stats

        def before_update(grads, variables):
            if not self._paused:
                get().update(grads, variables)

        def before_weights_move(unclipped, clipped):
            if self._paused:
                return
            _diagnostics(get()).before_update()
            clip = getattr(_gradient_stats(get()), "clip", None)
            if clip is not None:
                clip.update(unclipped, clipped)

        def after_update():
            if not self._paused:
                _diagnostics(get()).after_update()

        _compat.wrap_update_step(self.optimizer, before_update, after_update)
        if _compat.has_clip_gradients(self.optimizer):
            _compat.wrap_clip_gradients(self.optimizer, before_weights_move)
        if self.counts_skips:
            _compat.wrap_skip_step(self.outer, lambda: None if self._paused else get().skip())
        self._installed = True

    def remove(self) -> None:
        if self._installed:
            _compat.unwrap_update_step(self.optimizer)
            _compat.unwrap_clip_gradients(self.optimizer)
            _compat.unwrap_skip_step(self.outer)
            self._installed = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """A train step traced in this block has no statistics: the hook is
        read when a step is traced, so a ``tf.function`` first called here
        stays the plain step on later calls too (``stats_every``'s other
        steps run such a function)."""
        paused, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = paused

    def __enter__(self) -> OptimizerHook:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class _NoDiagnostics:
    # For a duck-typed accumulator without update ratios.
    def before_update(self) -> None:
        pass

    def after_update(self) -> None:
        pass


def _gradient_stats(target) -> GradientStats | None:
    # ``target``: a GradientStats, or a GradientLogger (whose ``stats`` is one).
    return target if isinstance(target, GradientStats) else getattr(target, "stats", None)


def _diagnostics(target) -> UpdateRatios | _NoDiagnostics:
    """The update ratios of ``target`` (see :func:`_gradient_stats`)."""
    return getattr(_gradient_stats(target), "update_ratios", None) or _NoDiagnostics()
