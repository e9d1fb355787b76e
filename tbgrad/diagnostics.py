"""Why a gradient vanishes: signals measured in the training pass itself.

* :class:`UpdateRatios`: how far each optimizer step moves the weights.
* :class:`ActivationHealth`: saturated and dead units, from the outputs of
  the training forward pass (no extra forward pass).
* :class:`ClipStats`: how often gradient clipping changed the gradients, and
  their norm before it.

The update-to-weight ratio:

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
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from tbgrad import _compat, tags

# The rule of thumb (cs231n.github.io/neural-networks-3, "Ratio of weights:
# updates"): updates about a thousandth of the weights.
REFERENCE_UPDATE_RATIO = 1e-3


class UpdateRatios:
    """Accumulates each kernel's update-to-weight ratio over an epoch.

    Args:
        kernels: The tracked variables (``KernelLayer.kernel``), in layer
            order.
        on_nonfinite: Called inside the step with a boolean tensor, per
            kernel, of those the update left NaN or Inf.
        due: Called inside the step before the update: a boolean tensor,
            whether to measure this step (``stats_every``); None measures
            every step. A step left out reads no kernel (one ``If`` op,
            :func:`tbgrad._compat.functional_cond`); under XLA (``masked``)
            or several replicas every step is measured and the ones left
            out are masked.
        masked: Mask the steps left out rather than skip them (XLA).

    Call :meth:`before_update` and :meth:`after_update` inside the train
    step, around the optimizer's update (:class:`tbgrad.hook.OptimizerHook`
    does). Create it in the distribution strategy's scope (if any).

    Example:
        >>> ratios = UpdateRatios([layer.kernel for layer in layers])
        >>> ratios.epoch_scalars()[tags.UPDATE_RATIO]  # one value per kernel
    """

    def __init__(self, kernels: list, on_nonfinite=None, due=None, masked: bool = False):
        self.kernels = list(kernels)
        self.due = due
        self.masked = masked
        # Called in the step with a per-kernel boolean tensor: which kernels
        # the update left NaN or Inf.
        self.on_nonfinite = on_nonfinite
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
        if not self.kernels:
            return

        def read():
            # A read is a snapshot: TensorFlow copies a variable's buffer
            # before an update writes into it while a read still holds it.
            return [_float32(k) for k in self.kernels]

        gate = self._gate()
        if gate is None or self._masking():
            before = read()
        else:
            # A step left out keeps an empty tensor per kernel: no copy.
            before = _compat.functional_cond(
                gate, read, lambda: [tf.zeros([0]) for _ in self.kernels]
            )
        self._before[threading.get_ident()] = (before, gate)

    def _gate(self):
        if self.due is None or tf.executing_eagerly():
            return None
        return self.due()

    def _masking(self) -> bool:
        # XLA runs a cond as a conditional that costs more than it saves, and
        # an assignment in a cond branch cannot merge replicas.
        replica = tf.distribute.get_replica_context()
        return self.masked or (replica is not None and replica.num_replicas_in_sync > 1)

    def after_update(self) -> None:
        """Adds the step's ratios (call inside the train step, after the
        update); does nothing without a :meth:`before_update` in this trace."""
        found = self._before.pop(threading.get_ident(), None)
        if found is None:
            return
        before, gate = found
        if gate is None:
            self._add(before)
        elif self._masking():
            self._add(before, gate)
        else:

            def add():
                self._add(before)
                return tf.constant(True)

            _compat.functional_cond(gate, add, lambda: tf.constant(False))

    def _add(self, before: list[tf.Tensor], due=None) -> None:
        # Half squared norms (l2_loss, one op each): their ratio's square
        # root is the ratio of the norms. Squares of weights past ~1e19
        # overflow float32: a step whose norms are not finite is redone in
        # float64 (one functional If, rarely taken), which also tells a
        # weight turned NaN or Inf from a norm that overflowed. Under XLA,
        # which compiles both branches of an If (the float64 one took 25 s
        # of a 31 s compile of the 20 x 256 step), the norms are scaled.
        if self.masked:
            ratio, bad = self._scaled(before)
        else:
            moved = tf.stack([tf.nn.l2_loss(_float32(k) - w) for k, w in zip(self.kernels, before)])
            size = tf.stack([tf.nn.l2_loss(w) for w in before])
            finite = tf.reduce_all(tf.math.is_finite(tf.concat([moved, size], axis=0)))
            ratio, bad = _compat.functional_cond(
                finite,
                lambda: (_ratio(moved, size), tf.zeros_like(moved, tf.bool)),
                lambda: self._exact(before),
            )
        if self.on_nonfinite is not None:
            self.on_nonfinite(bad)
        if due is not None:
            ratio = tf.where(due, ratio, tf.zeros_like(ratio))
        self._sums.assign_add(ratio)
        self._steps.assign_add(1 if due is None else tf.cast(due, tf.int64))

    def _scaled(self, before: list[tf.Tensor]):
        # In float32 with no If: each kernel's norms are taken of it divided
        # by its largest |w| before or after the update, which leaves their
        # ratio as it is and keeps the squares within float32 (XLA fuses the
        # scaling into the reductions). A NaN or Inf weight gives NaN.
        moved, size, bad = [], [], []
        for k, w in zip(self.kernels, before):
            after = _float32(k)
            scale = tf.maximum(tf.reduce_max(tf.abs(w)), tf.reduce_max(tf.abs(after)))
            inverse = tf.math.divide_no_nan(tf.ones_like(scale), scale)
            moved.append(tf.nn.l2_loss((after - w) * inverse))
            size.append(tf.nn.l2_loss(w * inverse))
            bad.append(tf.logical_not(tf.reduce_all(tf.math.is_finite(after))))
        return _ratio(tf.stack(moved), tf.stack(size)), tf.stack(bad)

    def _exact(self, before: list[tf.Tensor]):
        # In float64, and which kernels hold a NaN or Inf after the update.
        after = [tf.cast(tf.convert_to_tensor(k), tf.float64) for k in self.kernels]
        before = [tf.cast(w, tf.float64) for w in before]
        moved = tf.stack([tf.nn.l2_loss(k - w) for k, w in zip(after, before)])
        size = tf.stack([tf.nn.l2_loss(w) for w in before])
        bad = tf.stack([tf.logical_not(tf.reduce_all(tf.math.is_finite(k))) for k in after])
        return tf.cast(_ratio(moved, size), tf.float32), bad

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


def _ratio(moved: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    # sqrt(moved / size) of half squared norms. A kernel that did not move
    # has ratio 0, even when it is all zeros; a zero kernel that moved has
    # ratio inf; NaN (a weight turned NaN) stays NaN.
    moved_or_bad = tf.logical_or(moved > 0, tf.math.is_nan(moved))
    return tf.where(moved_or_bad, tf.sqrt(moved) / tf.sqrt(size), tf.zeros_like(moved))


def _float32(variable) -> tf.Tensor:
    return tf.cast(tf.convert_to_tensor(variable), tf.float32)


def _variable(value, name: str) -> tf.Variable:
    # Updated inside the train step by the first replica only.
    return tf.Variable(
        value,
        name=name,
        trainable=False,
        synchronization=tf.VariableSynchronization.ON_WRITE,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


# -- activation health ----------------------------------------------------

TANH, SIGMOID, RELU = "tanh", "sigmoid", "relu"
# A tanh unit is saturated beyond |a| > 0.97 (Karpathy, "makemore" part 3):
# its local gradient 1 - a^2 is then below 0.06. A sigmoid unit likewise
# below 0.03 or above 0.97 (local gradient a(1 - a) below 0.03).
TANH_SATURATED_ABOVE = 0.97
SIGMOID_SATURATED = (0.03, 0.97)
ACTIVATION_KINDS = (TANH, SIGMOID, RELU)


@dataclass(frozen=True)
class ActivationLayer:
    """A layer whose outputs tbgrad watches: its tag name, the layer, the
    activation (:data:`ACTIVATION_KINDS`) and its number of units."""

    name: str
    layer: keras.layers.Layer
    kind: str
    units: int


def activation_layers(model: keras.Model, layers) -> list[ActivationLayer]:
    """The layers of ``model`` among ``layers`` (from
    :func:`tbgrad.stats.tracked_variables`, by their kernels) whose activation
    is tanh, sigmoid or relu, in model order.

    Only layers whose output units are known and that apply their
    activation once per call: ``Dense`` and the channels-last convolutions
    (``Conv1D``/``2D``/``3D`` and their transposes); not recurrent cells,
    which apply theirs at every time step inside a loop.
    """
    names = {id(layer.kernel): layer.name for layer in layers if layer.is_kernel}
    out = []
    for layer in _walk(model):
        kernel = getattr(layer, "kernel", None)
        kind = getattr(getattr(layer, "activation", None), "__name__", None)
        units = _output_units(layer)
        if kernel is None or id(kernel) not in names or kind not in ACTIVATION_KINDS:
            continue
        if units is not None:
            out.append(ActivationLayer(names[id(kernel)], layer, kind, units))
    return sorted(out, key=lambda a: list(names.values()).index(a.name))


def _output_units(layer) -> int | None:
    # The size of the output's last axis, for the layers watched; None for
    # any other layer.
    if isinstance(layer, keras.layers.Dense):
        return int(layer.units)
    convolutions = (
        keras.layers.Conv1D,
        keras.layers.Conv2D,
        keras.layers.Conv3D,
        keras.layers.Conv1DTranspose,
        keras.layers.Conv2DTranspose,
        keras.layers.Conv3DTranspose,
    )
    if isinstance(layer, convolutions) and not isinstance(
        layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
    ):
        if getattr(layer, "data_format", "channels_last") == "channels_last":
            return int(layer.filters)
    return None


def _walk(layer):
    yield layer
    for sub in _compat.sublayers(layer):
        yield from _walk(sub)


class ActivationHealth:
    """Saturated and dead units of the watched layers, over an epoch.

    Per layer and training step, from the layer's outputs in the training
    forward pass: for tanh and sigmoid the share of outputs that are
    saturated (:data:`TANH_SATURATED_ABOVE`, :data:`SIGMOID_SATURATED`); for
    relu the share that are 0, and per unit whether it was positive for any
    sample (a unit never positive in the epoch is dead). The epoch's first
    counted step also buckets each layer's outputs for a histogram. Under
    several replicas the shares and dead units cover every replica's part
    of the batch; the histogram is the first replica's part.

    :meth:`install` wraps each layer's activation
    (:func:`tbgrad._compat.wrap_activation`): the wrapper keeps the outputs of
    a ``training=True`` call, and :class:`tbgrad.stats.GradientStats` adds
    them up in the same train step, where the optimizer applies the
    gradients. A forward pass and optimizer step in different
    ``tf.function`` s (or one of them eager) add nothing.
    """

    def __init__(self, layers: list[ActivationLayer], bucket_count: int):
        self.layers = list(layers)
        self.bucket_count = bucket_count
        m = max(len(self.layers), 1)
        relu = [a for a in self.layers if a.kind == RELU]
        self._relu_units = int(sum(a.units for a in relu))
        self._shares = _variable(tf.zeros([m]), "tbgrad_activation_shares")
        self._steps = _variable(tf.constant(0, tf.int64), "tbgrad_activation_steps")
        self._alive = _variable(tf.zeros([max(self._relu_units, 1)], tf.bool), "tbgrad_alive")
        self._hist = _variable(tf.zeros([m, bucket_count + 2]), "tbgrad_activation_hist")
        self._pending: dict[int, dict[int, tf.Tensor]] = {}
        self._installed: list = []
        self._limits = None

    # -- the forward pass -------------------------------------------------

    def install(self) -> None:
        """Wraps the activation of every watched layer."""
        for i, watched in enumerate(self.layers):
            if _compat.wrap_activation(watched.layer, self._seen_by(i)):
                self._installed.append((watched.layer, watched.layer.activation))

    def remove(self) -> None:
        """Restores the layers' activations (those still wrapped by this
        object: another logger may have wrapped a layer since)."""
        for layer, wrapper in self._installed:
            if layer.activation is wrapper:
                _compat.unwrap_activation(layer)
        self._installed = []
        self._pending.clear()

    def _seen_by(self, i: int):
        def seen(output):
            if not tf.executing_eagerly() and _compat.keras_training():
                self._pending.setdefault(threading.get_ident(), {})[i] = output

        return seen

    def take(self) -> list[tf.Tensor] | None:
        """The outputs kept in this trace's forward pass, one per layer, or
        None when a layer's is missing (or from another graph)."""
        pending = self._pending.pop(threading.get_ident(), {})
        if not self.layers or tf.executing_eagerly():
            return None
        # This graph and the ones it is nested in: the optimizer's step may
        # run in a cond branch (LossScaleOptimizer, gradient accumulation).
        graphs, graph = [], tf.compat.v1.get_default_graph()
        while graph is not None:
            graphs.append(graph)
            graph = getattr(graph, "outer_graph", None)
        outputs = [pending.get(i) for i in range(len(self.layers))]
        for watched, a in zip(self.layers, outputs):
            if a is None or not any(getattr(a, "graph", None) is g for g in graphs):
                return None
            if a.shape.rank is None or a.shape[-1] != watched.units:
                return None  # not the layer's output as watched
        return outputs

    # -- inside the train step ----------------------------------------------

    def update(self, outputs: list[tf.Tensor], due=None) -> None:
        """Adds one step's outputs (``due``: a boolean tensor, False leaves
        the step out)."""
        outputs = [tf.cast(a, tf.float32) for a in outputs]
        if all(a.shape.rank == 2 for a in outputs) and len(outputs) > 1:
            counts, sizes, positive = self._flat_counts(outputs)
        else:
            counts, sizes, positive = self._layer_counts(outputs)
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            # Each replica saw its part of the batch (maybe none): the counts
            # add up; a unit is alive if it is in any replica.
            counts, sizes = replica.all_reduce(tf.distribute.ReduceOp.SUM, [counts, sizes])
            if positive is not None:
                positive = replica.all_reduce(tf.distribute.ReduceOp.SUM, positive)
        shares = tf.math.divide_no_nan(counts, sizes)
        if due is not None:
            shares = tf.where(due, shares, tf.zeros_like(shares))
        self._shares.assign_add(shares)
        self._steps.assign_add(1 if due is None else tf.cast(due, tf.int64))
        if positive is not None:
            alive = positive > 0
            if due is not None:
                alive = tf.logical_and(alive, due)
            self._alive.assign(tf.logical_or(self._alive, alive))

    def _flat_counts(self, outputs):
        # Every layer's [batch, units] outputs side by side, tested against
        # per-unit limits in a dozen ops whatever the depth: a few ops per
        # layer cost more than the tests themselves on small layers (20 x
        # 256, batch 32: 1.3 ms a step layer by layer, in docs/benchmarks.md).
        if self._limits is None:
            self._limits = _unit_limits(self.layers)
        low, high, segments, relu = self._limits
        flat = tf.concat(outputs, axis=1)
        flags = tf.cast(tf.logical_or(flat < low, flat > high), tf.float32)
        per_unit = tf.reduce_sum(flags, axis=0)
        counts = tf.math.unsorted_segment_sum(per_unit, segments, len(self.layers))
        rows = tf.cast(tf.shape(flat)[0], tf.float32)
        sizes = rows * tf.constant([float(a.units) for a in self.layers])
        positive = None
        if relu is not None:
            # A relu unit is positive where it is not flagged (flagged: 0).
            positive = tf.gather(rows - per_unit, relu)
        return counts, sizes, positive

    def _layer_counts(self, outputs):
        # Layer by layer, for outputs of any rank (a unit: the last axis).
        counts, sizes, positive = [], [], []
        for watched, a in zip(self.layers, outputs):
            if watched.kind == TANH:
                flags = tf.abs(a) > TANH_SATURATED_ABOVE
            elif watched.kind == SIGMOID:
                low, high = SIGMOID_SATURATED
                flags = tf.logical_or(a < low, a > high)
            else:
                flags = tf.logical_not(a > 0)
                units = tf.reshape(tf.cast(a > 0, tf.float32), [-1, watched.units])
                positive.append(tf.reduce_sum(units, axis=0))
            counts.append(tf.reduce_sum(tf.cast(flags, tf.float32)))
            sizes.append(tf.cast(tf.size(flags), tf.float32))
        positive = tf.concat(positive, axis=0) if positive else None
        return tf.stack(counts), tf.stack(sizes), positive

    def capture(self, outputs: list[tf.Tensor], when=None) -> None:
        """Keeps the histogram buckets of ``outputs`` (where ``when``, a
        boolean tensor, is true; always when None)."""
        hist = tf.stack([_buckets(a, self.bucket_count) for a in outputs])
        self._hist.assign(hist if when is None else tf.where(when, hist, self._hist))

    # -- between epochs (eager) ---------------------------------------------

    def reset(self) -> None:
        """Starts a new epoch."""
        self._shares.assign(tf.zeros_like(self._shares))
        self._steps.assign(0)
        self._alive.assign(tf.zeros_like(self._alive))
        self._hist.assign(tf.zeros_like(self._hist))

    def snapshot_tensors(self) -> dict:
        """The epoch's sums as tensors (graph or eager)."""
        return {
            "activation_shares": self._shares.read_value(),
            "activation_steps": self._steps.read_value(),
            "activation_alive": self._alive.read_value(),
            "activation_hist": self._hist.read_value(),
        }

    def epoch_values(self, snapshot: dict | None, histograms: bool) -> dict:
        """``{tag: value}`` of the epoch: shares as floats, histograms as
        ``[bucket_count, 3]`` arrays; ``{}`` when no step was counted."""
        if snapshot is None:
            snapshot = {k: v.numpy() for k, v in self.snapshot_tensors().items()}
        steps = int(snapshot.get("activation_steps", 0))
        if steps == 0 or not self.layers:
            return {}
        shares = np.asarray(snapshot["activation_shares"], np.float64) / steps
        alive = np.asarray(snapshot["activation_alive"], bool)
        hist = np.asarray(snapshot["activation_hist"], np.float64)
        out, start = {}, 0
        for i, watched in enumerate(self.layers):
            if watched.kind == RELU:
                units = alive[start : start + watched.units]
                start += watched.units
                out[tags.layer_tag(tags.ACTIVATION_ZERO, watched.name)] = float(shares[i])
                out[tags.layer_tag(tags.ACTIVATION_DEAD, watched.name)] = float(1 - units.mean())
            else:
                out[tags.layer_tag(tags.ACTIVATION_SATURATED, watched.name)] = float(shares[i])
            if histograms and hist[i, 2:].sum() > 0:
                lo, hi = hist[i, 0], hist[i, 1]
                edges = np.linspace(lo, hi, self.bucket_count + 1)
                buckets = np.stack([edges[:-1], edges[1:], hist[i, 2:]], axis=1)
                out[tags.layer_tag(tags.ACTIVATIONS, watched.name)] = buckets
        return out


def _unit_limits(layers: list[ActivationLayer]):
    # Per unit of the layers side by side: an output below ``low`` or above
    # ``high`` is flagged (saturated; for relu, 0: below the smallest
    # positive float32); the layer of each unit; where the relu units are.
    low, high, segments, relu, start = [], [], [], [], 0
    limits = {
        TANH: (-TANH_SATURATED_ABOVE, TANH_SATURATED_ABOVE),
        SIGMOID: SIGMOID_SATURATED,
        RELU: (float(np.finfo(np.float32).tiny), np.inf),
    }
    for i, watched in enumerate(layers):
        lo, hi = limits[watched.kind]
        low += [lo] * watched.units
        high += [hi] * watched.units
        segments += [i] * watched.units
        if watched.kind == RELU:
            relu += range(start, start + watched.units)
        start += watched.units
    # numpy, not tensors: a tensor belongs to the graph it was made in.
    return (
        np.array(low, np.float32),
        np.array(high, np.float32),
        np.array(segments, np.int32),
        np.array(relu, np.int32) if relu else None,
    )


def _buckets(a: tf.Tensor, k: int) -> tf.Tensor:
    # [lo, hi, count_1..count_k] of the finite entries of ``a``, bucketed as
    # tbgrad.stats.histogram_buckets does (equal buckets from the minimum to
    # the maximum, the maximum in the last one). A segment sum, not
    # tf.histogram_fixed_width, which XLA cannot compile.
    a = tf.reshape(tf.cast(a, tf.float32), [-1])
    finite = tf.math.is_finite(a)
    lo = tf.reduce_min(tf.where(finite, a, np.inf))
    hi = tf.reduce_max(tf.where(finite, a, -np.inf))
    lo, hi = tf.where(lo <= hi, lo, 0.0), tf.where(lo <= hi, hi, 0.0)
    span = tf.where(hi > lo, hi - lo, 1.0)
    index = tf.cast(tf.floor((tf.where(finite, a, lo) - lo) / span * k), tf.int32)
    index = tf.clip_by_value(index, 0, k - 1)
    counts = tf.math.unsorted_segment_sum(tf.cast(finite, tf.float32), index, k)
    return tf.concat([tf.stack([lo, hi]), counts], axis=0)


# -- gradient clipping ----------------------------------------------------

CLIP_OPTIONS = ("clipnorm", "clipvalue", "global_clipnorm")


def clips(optimizer) -> bool:
    """Whether ``optimizer`` clips its gradients (any of :data:`CLIP_OPTIONS`)."""
    return any(getattr(optimizer, option, None) is not None for option in CLIP_OPTIONS)


class ClipStats:
    """How often clipping changed the gradients, and their norm before it.

    Args:
        optimizer: The clipping optimizer (its ``clipnorm``, ``clipvalue``
            and ``global_clipnorm``).

    :class:`tbgrad.hook.OptimizerHook` calls :meth:`update` with every step's
    gradients before the optimizer clipped them (every gradient it applies,
    not only the tracked ones). A step counts as clipped when a gradient
    exceeds a limit: a variable's norm above ``clipnorm``, an entry above
    ``clipvalue`` in size, the global norm above ``global_clipnorm`` (Keras
    rescales also gradients within the limit, by 1 up to rounding, so a
    comparison of the values before and after would count every step). Per
    epoch: the share of clipped steps, and the global norm of the gradients
    before clipping, its mean and largest value over the epoch's steps.
    """

    def __init__(self, optimizer):
        self.limits = {option: getattr(optimizer, option, None) for option in CLIP_OPTIONS}
        # [steps clipped, sum of norms, steps], and the largest norm.
        self._sums = _variable(tf.zeros([3]), "tbgrad_clip_sums")
        self._max = _variable(tf.constant(0.0), "tbgrad_clip_max")

    def update(self, unclipped: list, clipped: list | None = None) -> None:
        """Adds one step (call inside the train step)."""
        grads = [tf.cast(_dense(g), tf.float32) for g in unclipped if g is not None]
        if not grads:
            return
        norms = tf.sqrt(2.0 * tf.stack([tf.nn.l2_loss(g) for g in grads]))
        norm = tf.norm(norms)
        exceeded = []
        if self.limits["clipnorm"] is not None:
            exceeded.append(tf.reduce_any(norms > self.limits["clipnorm"]))
        if self.limits["global_clipnorm"] is not None:
            exceeded.append(norm > self.limits["global_clipnorm"])
        if self.limits["clipvalue"] is not None:
            largest = tf.reduce_max(tf.stack([tf.reduce_max(tf.abs(g)) for g in grads]))
            exceeded.append(largest > self.limits["clipvalue"])
        changed = tf.cast(tf.reduce_any(tf.stack(exceeded)), tf.float32)
        self._sums.assign_add(tf.stack([changed, norm, 1.0]))
        self._max.assign(tf.maximum(self._max, norm))

    def reset(self) -> None:
        self._sums.assign(tf.zeros_like(self._sums))
        self._max.assign(0.0)

    def snapshot_tensors(self) -> dict:
        return {"clip_sums": self._sums.read_value(), "clip_max": self._max.read_value()}

    def epoch_values(self, snapshot: dict | None) -> dict:
        """``{tag: value}``: :data:`tbgrad.tags.CLIP_SHARE`,
        :data:`~tbgrad.tags.CLIP_NORM_BEFORE` and its max; ``{}`` without a step."""
        if snapshot is None:
            snapshot = {k: v.numpy() for k, v in self.snapshot_tensors().items()}
        changed, norms, steps = (float(v) for v in snapshot["clip_sums"])
        if steps == 0:
            return {}
        return {
            tags.CLIP_SHARE: changed / steps,
            tags.CLIP_NORM_BEFORE: norms / steps,
            tags.CLIP_NORM_BEFORE_MAX: float(snapshot["clip_max"]),
        }


def _dense(gradient):
    if isinstance(gradient, tf.IndexedSlices):
        return gradient.values
    return gradient
