"""Taps the gradients an optimizer applies, for :class:`GradientStats`.

Every Keras 3 optimizer ends ``apply()`` in ``_backend_update_step(grads,
variables, learning_rate)``, after loss-scale unscaling, gradient clipping
and gradient accumulation: the gradients it receives are exactly the ones
that move the weights. :class:`OptimizerHook` wraps that method on one
optimizer instance (not its class) so that both ``model.fit`` and the tape
loop feed the statistics from the same place.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from tbgrad.stats import GradientStats

HOOKED_METHOD = "_backend_update_step"


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
    """

    def __init__(
        self,
        optimizer: keras.optimizers.Optimizer,
        stats: GradientStats | Callable[[], GradientStats],
    ):
        target = inner_optimizer(optimizer)
        if not hasattr(target, HOOKED_METHOD):
            raise TypeError(
                "tbgrad needs a Keras 3 optimizer (with "
                f"{HOOKED_METHOD}). Received: optimizer={optimizer!r}"
            )
        self.optimizer = target
        self.stats = stats
        self._installed = False

    def install(self) -> None:
        if self._installed:
            return
        original = getattr(self.optimizer, HOOKED_METHOD)
        stats = self.stats

        def update_step(grads, trainable_variables, learning_rate):
            grads = list(grads)
            trainable_variables = list(trainable_variables)
            target = stats() if callable(stats) else stats
            target.update(grads, trainable_variables)
            return original(grads, trainable_variables, learning_rate)

        # An instance attribute shadows the class's method for this optimizer
        # only; remove() deletes it and the class's method shows through again.
        setattr(self.optimizer, HOOKED_METHOD, update_step)
        self._installed = True

    def remove(self) -> None:
        if self._installed:
            self.optimizer.__dict__.pop(HOOKED_METHOD, None)
            self._installed = False

    def __enter__(self) -> OptimizerHook:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
