"""How far each optimizer step moves the weights: the update-to-weight ratio.

:class:`UpdateRatios` measures, in every compiled train step, each tracked
kernel's ``||w_after - w_before|| / ||w_before||`` over one optimizer update,
and averages it over the epoch's updates. ``w_before`` is read where the
optimizer has clipped the gradients and is about to apply weight decay
(:func:`tbgrad._compat.wrap_clip_gradients`), ``w_after`` once its update
step has run (:func:`tbgrad._compat.wrap_update_step`): the ratio is the
optimizer's whole move, whatever the optimizer, learning-rate schedule,
weight decay, clipping or loss scaling. Constraints Keras applies after the
update (``kernel_constraint``) are not part of it.

CS231n's rule of thumb puts a healthy ratio near 1e-3
(:data:`REFERENCE_UPDATE_RATIO`): far below, the layer hardly learns; far
above, the step is too large for it.
"""

from __future__ import annotations

import threading

import numpy as np
import tensorflow as tf

from tbgrad import tags

# The rule of thumb (cs231n.github.io/neural-networks-3, "Ratio of weights:
# updates"): updates about a thousandth of the weights.
REFERENCE_UPDATE_RATIO = 1e-3


class UpdateRatios:
    """Accumulates each kernel's update-to-weight ratio over an epoch.

    Args:
        kernels: The tracked variables (``KernelLayer.kernel``), in layer
            order.

    Call :meth:`before_update` and :meth:`after_update` inside the train
    step, around the optimizer's update (:class:`tbgrad.hook.OptimizerHook`
    does). Create it in the distribution strategy's scope (if any).

    Example:
        >>> ratios = UpdateRatios([layer.kernel for layer in layers])
        >>> ratios.epoch_scalars()[tags.UPDATE_RATIO]  # one value per kernel
    """

    def __init__(self, kernels: list):
        self.kernels = list(kernels)
        kwargs = dict(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_WRITE,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        n = max(len(self.kernels), 1)
        self._sums = tf.Variable(tf.zeros([n]), name="tbgrad_update_ratio_sums", **kwargs)
        self._steps = tf.Variable(tf.constant(0, tf.int64), name="tbgrad_update_steps", **kwargs)
        # The weights read by before_update, for after_update of the same
        # trace, by thread: a MirroredStrategy traces each replica's step in
        # a thread of its own, at the same time.
        self._before: dict[int, list[tf.Tensor]] = {}

    # -- inside the compiled train step ------------------------------------

    def before_update(self) -> None:
        """Reads every kernel before the optimizer moves it (call inside the
        train step, before weight decay and the update)."""
        if self.kernels:
            # A read is a snapshot: TensorFlow copies a variable's buffer
            # before an update writes into it while a read still holds it.
            self._before[threading.get_ident()] = [_float32(k) for k in self.kernels]

    def after_update(self) -> None:
        """Adds the step's ratios (call inside the train step, after the
        update); does nothing without a :meth:`before_update` in this trace."""
        before = self._before.pop(threading.get_ident(), None)
        if before is None:
            return
        # Half squared norms (l2_loss, one op each): their ratio's square
        # root is the ratio of the norms.
        moved = tf.stack([tf.nn.l2_loss(_float32(k) - w) for k, w in zip(self.kernels, before)])
        size = tf.stack([tf.nn.l2_loss(w) for w in before])
        # A kernel that did not move has ratio 0 even when it is all zeros;
        # a zero kernel that moved has ratio inf.
        ratio = tf.where(moved > 0, tf.sqrt(moved) / tf.sqrt(size), tf.zeros_like(moved))
        self._sums.assign_add(ratio)
        self._steps.assign_add(1)

    # -- between epochs (eager) -------------------------------------------

    def reset(self) -> None:
        """Starts a new epoch."""
        self._sums.assign(tf.zeros_like(self._sums))
        self._steps.assign(0)

    def snapshot_tensors(self) -> dict:
        """The epoch's running sums and update count (graph or eager), for
        :meth:`epoch_scalars` as numpy."""
        return {
            "update_ratio_sums": self._sums.read_value(),
            "update_steps": self._steps.read_value(),
        }

    def epoch_scalars(self, snapshot: dict | None = None) -> dict[str, np.ndarray]:
        """``{tags.UPDATE_RATIO: per-kernel epoch mean}``; ``{}`` when no
        update was measured this epoch (or ``snapshot`` holds none).

        Args:
            snapshot: Values of :meth:`snapshot_tensors` as numpy; None reads
                the variables (eager).
        """
        if snapshot is None:
            snapshot = {k: v.numpy() for k, v in self.snapshot_tensors().items()}
        steps = int(snapshot.get("update_steps", 0))
        if steps == 0 or not self.kernels:
            return {}
        sums = np.asarray(snapshot["update_ratio_sums"], dtype=np.float64)
        return {tags.UPDATE_RATIO: sums[: len(self.kernels)] / steps}


def _float32(variable) -> tf.Tensor:
    return tf.cast(tf.convert_to_tensor(variable), tf.float32)
