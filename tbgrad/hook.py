"""Taps the gradients an optimizer applies, for the statistics.

Every Keras 3 optimizer ends ``apply()`` in one update step, after
loss-scale unscaling, gradient clipping and gradient accumulation: the
gradients it receives are exactly the ones that move the weights.
:class:`OptimizerHook` wraps that step on one optimizer instance (not its
class, see :func:`tbgrad._compat.wrap_update_step`) so that both
``model.fit`` and the tape loop feed the statistics from the same place.

It hands a :class:`StepSink` (:class:`tbgrad.collector.Collector`) three
moments of each step: the gradients before clipping, while the weights have
not moved (:meth:`StepSink.begin_update`); the gradients applied
(:meth:`StepSink.update`); the weights moved (:meth:`StepSink.end_update`).
A LossScaleOptimizer skips a step whose loss-scaled gradients are not finite
without reaching the update step; the hook reports those
(:meth:`StepSink.skip`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import keras

from tbgrad import _compat


class StepSink(Protocol):
    """What the hook feeds, inside the train step."""

    def begin_update(self, unclipped: list) -> None: ...

    def update(self, grads: list, variables: list) -> None: ...

    def end_update(self) -> None: ...

    def skip(self) -> None: ...


def inner_optimizer(optimizer):
    """The optimizer that updates the variables (unwraps LossScaleOptimizer)."""
    while optimizer is not None and hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer


class OptimizerHook:
    """Feeds a :class:`StepSink` with every gradient ``optimizer`` applies.

    Args:
        optimizer: A Keras 3 optimizer.
        sink: A function that returns the sink, called when a train step is
            traced (the model may be built only by its first trace).

    Use as a context manager, or call :meth:`install` and :meth:`remove`.
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer, sink: Callable[[], StepSink]):
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
        self.sink = sink
        self._installed = False

    def install(self) -> None:
        if self._installed:
            return
        sink = self.sink
        _compat.wrap_update_step(
            self.optimizer,
            lambda grads, variables: sink().update(grads, variables),
            lambda: sink().end_update(),
        )
        if _compat.has_clip_gradients(self.optimizer):
            _compat.wrap_clip_gradients(
                self.optimizer, lambda unclipped, clipped: sink().begin_update(unclipped)
            )
        if self.counts_skips:
            _compat.wrap_skip_step(self.outer, lambda: sink().skip())
        self._installed = True

    def remove(self) -> None:
        if self._installed:
            _compat.unwrap_update_step(self.optimizer)
            _compat.unwrap_clip_gradients(self.optimizer)
            _compat.unwrap_skip_step(self.outer)
            self._installed = False

    def __enter__(self) -> OptimizerHook:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
