"""Per-layer kernel-gradient statistics, accumulated inside the train step.

:class:`GradientStats` owns a few ``tf.Variable``s that the compiled train
step updates with the gradients the optimizer is about to apply. Both the
callback (through a hook on the optimizer) and the tape loop (directly) call
:meth:`GradientStats.update`, so the two paths compute identical numbers.

Per step and per layer it adds mean |g| and std(g) of the kernel gradient and
the number of non-finite entries; at the first step of an epoch it also keeps
a copy of every kernel gradient for the histogram. The hot path is three
float32 reductions per kernel (sum |g|, sum g, sum g^2), one stack and one
``assign_add``; a single ``tf.cond`` sends the rare steps (the epoch's first,
whose gradients are kept, and any step whose sums are not finite, which are
recounted over the finite entries in float64) to the work they need. In an
XLA-compiled step (``jit_compile=True``) the sums are instead one
matrix-vector product per group of same-size kernels, always over the finite
entries, with no ``tf.cond`` (see :func:`_finite_sums_xla`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from tbgrad import _compat, tags
from tbgrad import diagnostics as _diagnostics
from tbgrad._validate import check_int

# Columns of the per-layer statistics matrix.
MEAN_ABS, STD, NONFINITE = 0, 1, 2
N_STATS = 3

# TensorBoard's own default (tensorboard/plugins/histogram/summary_v2.py).
DEFAULT_BUCKET_COUNT = 30

# In the finite-only recount and under XLA, kernels up to this many entries
# are stacked with the others of their size and reduced in one op; a bigger
# one is reduced alone, since stacking would copy it for no saving.
STACK_MAX_SIZE = 16384


@dataclass(frozen=True)
class EpochValues:
    """Every number of one epoch that the writer serialises, per layer.

    ``scalars[family][i]`` is layer i's value of a family of
    :data:`tbgrad.tags.EPOCH_SCALAR_FAMILIES`; ``histograms[family][i]`` its
    ``[bucket_count, 3]`` buckets of a family of
    :data:`tbgrad.tags.HISTOGRAM_FAMILIES` (empty when no histogram is due);
    ``grad_ratio`` is the first kernel's mean |g| over the last's (None with
    fewer than two kernels). ``steps`` counts the steps whose gradients were
    applied; in an epoch without one, the gradient families are left out
    (there is no gradient to show). ``skipped`` counts the steps a
    LossScaleOptimizer skipped (None when the statistics do not count them).
    """

    scalars: dict[str, np.ndarray]
    histograms: dict[str, list[np.ndarray]]
    grad_ratio: float | None
    steps: int
    skipped: int | None = None
    # Other tags of the epoch, named in full (``activation_dead/hidden_1``,
    # ``clip/share``): a float for a scalar, a [k, 3] array for a histogram.
    named: dict = field(default_factory=dict)
    # The first non-finite gradient or weight of the epoch, or None:
    # {"what": "gradient" or "weight", "layer": name, "step": the step's index
    # in the epoch, None when only the epoch's final weights showed it}.
    first_nonfinite: dict | None = None
    # Every step of the epoch the statistics saw (also those stats_every
    # leaves out; not those a LossScaleOptimizer skipped).
    seen: int = 0


# The ``variables=`` choices of the callback, GradientLogger and the tape loop.
KERNELS = "kernels"
ALL = "all"


@dataclass(frozen=True)
class KernelLayer:
    """A variable tbgrad logs: its tag name and the variable.

    ``kernel`` is the variable logged: a layer's kernel by default, any
    trainable variable with ``variables="all"`` or a predicate (see
    :func:`tracked_variables`). ``is_kernel`` says whether it is its layer's
    kernel (``grad_ratio`` compares the first and last of those).
    """

    name: str
    kernel: keras.Variable
    is_kernel: bool = True


def kernel_layers(model: keras.Model) -> list[KernelLayer]:
    """Returns the layers of ``model`` (nested ones included) that have a kernel.

    The same as ``tracked_variables(model, "kernels")``.
    """
    return tracked_variables(model, KERNELS)


def tracked_variables(model: keras.Model, variables=KERNELS) -> list[KernelLayer]:
    """Returns the trainable variables of ``model`` that tbgrad logs, named.

    Args:
        model: A built Keras model (nested and subclassed models included).
        variables: ``"kernels"`` (every layer's trainable ``kernel``),
            ``"all"`` (every trainable variable) or a predicate
            ``callable(variable) -> bool`` over the trainable variables.

    A layer's kernel is named by the layer (``dense_1``), its other variables
    by the layer and the variable (``lstm/recurrent_kernel``,
    ``embedding/embeddings``, ``dense_1/bias``). A recurrent layer's cell
    takes the recurrent layer's name (``lstm``, not ``lstm_cell``). Where two
    names collide (nested models with the same layer names), the variable's
    path is used instead (less its last part for a kernel), so names are
    unique and depend only on the model's layer and variable names.

    Example:
        >>> [v.name for v in tracked_variables(model, "all")]
        ['embedding/embeddings', 'lstm', 'lstm/recurrent_kernel', 'lstm/bias', ...]
    """
    found = [
        (name, var, is_kernel)
        for name, var, is_kernel in _candidates(model)
        if (is_kernel if variables == KERNELS else variables == ALL or variables(var))
    ]
    names = [_unique_name(name, var, is_kernel, found) for name, var, is_kernel in found]
    seen: dict[str, int] = {}
    out = []
    for name, (_, var, is_kernel) in zip(names, found):
        # A last resort against a name taken twice even by path.
        seen[name] = seen.get(name, 0) + 1
        name = name if seen[name] == 1 else f"{name}_{seen[name]}"
        out.append(KernelLayer(name=name, kernel=var, is_kernel=is_kernel))
    return out


def _candidates(model):
    # (name, variable, is_kernel) of every trainable variable, in the order
    # of a depth-first walk over the layers: each layer's kernel first, then
    # the other variables it holds itself (not through a sub-layer).
    aliases: dict[int, str] = {}
    seen: set[int] = set()
    for layer in (model, *_walk(model)):
        cell = getattr(layer, "cell", None)
        if isinstance(cell, keras.layers.Layer):
            # An RNN's cell holds its weights: name them by the RNN layer.
            aliases[id(cell)] = aliases.get(id(layer), layer.name)
        name = aliases.get(id(layer), layer.name)
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and getattr(kernel, "trainable", False) and id(kernel) not in seen:
            seen.add(id(kernel))
            yield name, kernel, True
        for var in _own_trainable_variables(layer):
            if id(var) not in seen:
                seen.add(id(var))
                yield name, var, False


def _own_trainable_variables(layer) -> list:
    inner = {id(v) for sub in _compat.sublayers(layer) for v in sub.trainable_weights}
    return [v for v in layer.trainable_weights if id(v) not in inner]


def _unique_name(name: str, var, is_kernel: bool, found) -> str:
    tag = name if is_kernel else f"{name}/{var.name}"
    taken = sum(1 for n, v, k in found if (n if k else f"{n}/{v.name}") == tag)
    if taken == 1:
        return tag
    return var.path.rsplit("/", 1)[0] if is_kernel else var.path


def _walk(layer):
    # Depth-first over tracked sub-layers, so subclassed models and nested
    # Sequential/functional models are covered as well as plain ones.
    for sub in _compat.sublayers(layer):
        yield sub
        yield from _walk(sub)


class GradientStats:
    """Accumulates per-layer kernel-gradient statistics over an epoch.

    Args:
        layers: The layers to track, from :func:`kernel_layers`.
        jit_compile: Whether the train step that calls :meth:`update` is
            compiled with XLA. The numbers are the same either way (up to
            float32 rounding); only how the per-layer sums are computed
            differs (see :func:`_finite_sums_xla`).
        count_skips: Count the steps the optimizer skips (:meth:`skip`, for
            a LossScaleOptimizer) and report them per epoch.
        activations: The layers whose outputs to watch
            (:func:`tbgrad.diagnostics.activation_layers`), for the saturated
            and dead units of :class:`tbgrad.diagnostics.ActivationHealth`.
        diagnostics: Measure the update-to-weight ratios, the activations'
            health and (with ``clipping``) the clipping statistics. False
            leaves only the gradient and weight statistics.
        clipping: The optimizer, when it clips its gradients: count how
            often (:class:`tbgrad.diagnostics.ClipStats`); None otherwise.
        stats_every: Compute the statistics on every this many steps only:
            the epoch's steps 0, N, 2N, ... (its first step, whose gradients
            the histograms show, is always one). The epoch's averages are
            then over those steps. 1 (the default) counts every step. Without
            XLA and on one device the other steps skip the statistics' work;
            with XLA or several replicas they compute and discard it (a
            ``tf.cond`` costs more there than it saves).
        caller_selects_steps: With ``stats_every`` > 1, the caller runs the
            train step traced with the statistics on the steps to count only,
            and another, traced without them (:meth:`OptimizerHook.paused
            <tbgrad.hook.OptimizerHook.paused>`), on the others, as
            ``tbgrad.TensorBoard`` does in ``fit`` under XLA: no step then
            pays for the selection. The caller reports the steps seen (:meth:`set_seen`).

    Create it in the distribution strategy's scope (if any): its variables
    are then mirrored and updated by the first replica only.
    """

    def __init__(
        self,
        layers: list[KernelLayer],
        jit_compile: bool = False,
        count_skips: bool = False,
        stats_every: int = 1,
        activations=(),
        diagnostics: bool = True,
        clipping=None,
        caller_selects_steps: bool = False,
    ):
        diagnostics_on = bool(diagnostics)
        self.stats_every = check_int("stats_every", stats_every, 1)
        self.caller_selects_steps = bool(caller_selects_steps)
        # Whether the train step itself picks the steps stats_every counts.
        self._gated = self.stats_every > 1 and not self.caller_selects_steps
        self.layers = list(layers)
        self.jit_compile = bool(jit_compile)
        self.count_skips = bool(count_skips)
        self.names = [layer.name for layer in self.layers]
        n = max(len(self.layers), 1)
        kwargs = dict(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_WRITE,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        # Running sums over the epoch's steps: [mean|g|, std(g), #nonfinite].
        self._sums = tf.Variable(tf.zeros([n, N_STATS]), name="tbgrad_sums", **kwargs)
        # The last step's statistics, for per-step (update_freq=N) scalars.
        self._last = tf.Variable(tf.zeros([n, N_STATS]), name="tbgrad_last", **kwargs)
        # Steps counted in the sums, and every step seen (for stats_every).
        self._steps = tf.Variable(tf.constant(0, tf.int64), name="tbgrad_steps", **kwargs)
        self._seen = tf.Variable(tf.constant(0, tf.int64), name="tbgrad_seen", **kwargs)
        # The epoch's largest per-step mean |g| of each layer.
        self._peak = tf.Variable(tf.zeros([n]), name="tbgrad_peak", **kwargs)
        # The epoch's first non-finite gradient (0) or weight (1): [what,
        # step index in the epoch, layer index]; what is -1 until one is seen.
        self._first_bad = tf.Variable(
            tf.constant([-1, -1, -1], tf.int64), name="tbgrad_first_nonfinite", **kwargs
        )
        # Steps the optimizer skipped (non-finite loss-scaled gradients).
        self._skipped = tf.Variable(tf.constant(0, tf.int64), name="tbgrad_skipped", **kwargs)
        # Whether to keep the epoch's first gradients for the histograms.
        self._capture = tf.Variable(True, name="tbgrad_capture", **kwargs)
        self._captured = [
            tf.Variable(
                tf.zeros(layer.kernel.shape, layer.kernel.dtype),
                name=f"tbgrad_grad_{i}",
                **kwargs,
            )
            for i, layer in enumerate(self.layers)
        ]
        self._index = {id(layer.kernel): i for i, layer in enumerate(self.layers)}
        self._path_index = {layer.kernel.path: i for i, layer in enumerate(self.layers)}
        # The update-to-weight ratios, measured around the optimizer's update
        # (the hook calls before_update and after_update).
        self.update_ratios = _diagnostics.UpdateRatios(
            [layer.kernel for layer in self.layers] if diagnostics_on else [],
            on_nonfinite=lambda bad: self._record_nonfinite(1, self._step_index(), bad),
            # The steps stats_every counts (_seen is this step's index until
            # update() counts it); under XLA masked, as the statistics.
            due=((lambda: tf.equal(self._seen % self.stats_every, 0)) if self._gated else None),
            masked=self.jit_compile,
        )
        self.activations = (
            _diagnostics.ActivationHealth(list(activations), DEFAULT_BUCKET_COUNT)
            if diagnostics_on and activations
            else None
        )
        self.clip = (
            _diagnostics.ClipStats(clipping) if diagnostics_on and clipping is not None else None
        )
        self._groups, self._order = _size_groups(self.layers)
        self._sizes = np.array(
            [np.prod(layer.kernel.shape) for layer in self.layers], dtype=np.float32
        )
        # Scales the per-kernel [sum |g|, sum g, sum g^2 / 2] to means (0 for
        # an empty variable, as divide_no_nan gives).
        inverse = np.divide(1.0, self._sizes, out=np.zeros_like(self._sizes), where=self._sizes > 0)
        self._to_means = np.stack([inverse, inverse, 2 * inverse], axis=1)
        # Keras traces fit's train step twice; as a tf.function of its own,
        # the step's statistics are traced once (and inlined when it runs).
        self._update_fn = tf.function(self._update_step, autograph=False)

    # -- inside the compiled train step ------------------------------------

    def update(self, grads, variables) -> None:
        """Adds one training step's gradients (call inside the train step).

        Args:
            grads: The gradients the optimizer applies, aligned with
                ``variables``.
            variables: The trainable variables they belong to.
        """
        outputs = self.activations.take() if self.activations is not None else None
        kernel_grads = self._select(grads, variables)
        if kernel_grads is None:
            return
        replica = tf.distribute.get_replica_context()
        distributed = replica is not None and replica.num_replicas_in_sync > 1
        if distributed:
            # The optimizer all-reduces (sums) the replicas' gradients after
            # this point; reduce our copy the same way so that what we log is
            # what is applied to the weights.
            kernel_grads = replica.all_reduce(tf.distribute.ReduceOp.SUM, kernel_grads)
        kernel_grads = [tf.convert_to_tensor(g) for g in kernel_grads]
        due = None
        if self._gated:
            seen = self._seen.assign_add(1) - 1
            due = tf.equal(seen % self.stats_every, 0)
        if distributed or self.jit_compile:
            self._update_selecting(kernel_grads, due, outputs)
        elif due is None:
            self._update_fn(kernel_grads, outputs)
        else:
            _compat.functional_cond(
                due,
                lambda: self._update_fn(kernel_grads, outputs),
                lambda: tf.constant(0, tf.int64),
            )

    def _update_step(self, kernel_grads, outputs=None) -> tf.Tensor:
        # The common step is one float32 reduction per statistic and kernel,
        # with no copy. A step whose sums are not finite (it needs the
        # finite-only recount) and the epoch's first step (whose gradients the
        # histograms keep) take one rarely run branch: one cond, not one per
        # purpose, and not lowered to Switch/Merge (see
        # _compat.functional_cond), as each cond costs every step.
        step = self._fast_stats(kernel_grads)
        finite = tf.reduce_all(tf.math.is_finite(step))
        first = tf.logical_and(tf.equal(self._steps, 0), self._capture)
        step = _compat.functional_cond(
            tf.logical_or(first, tf.logical_not(finite)),
            lambda: self._rare_step(kernel_grads, step, finite, first, outputs),
            lambda: step,
        )
        self._sums.assign_add(step)
        self._last.assign(step)
        self._peak.assign(tf.maximum(self._peak, step[:, MEAN_ABS]))
        if outputs is not None:
            self.activations.update(outputs)
        return self._steps.assign_add(1)

    def _rare_step(self, kernel_grads, step, finite, first, outputs) -> tf.Tensor:
        exact = tf.cond(finite, lambda: step, lambda: self._finite_stats(kernel_grads))
        # The epoch's first step index is 0 here; a non-finite one is _steps.
        self._record_nonfinite(0, self._step_index(counted=False), exact[:, NONFINITE] > 0)

        def capture():
            for var, g in zip(self._captured, kernel_grads):
                var.assign(tf.cast(g, var.dtype))
            if outputs is not None:
                self.activations.capture(outputs)
            return tf.constant(True)

        captured = tf.cond(first, capture, lambda: tf.constant(False))
        with tf.control_dependencies([captured]):
            return tf.identity(exact)

    def _update_selecting(self, kernel_grads, due, outputs=None) -> None:
        # No tf.cond around assignments: assigning a mirrored variable in a
        # replica context is a merge_call, which TF refuses inside a cond
        # branch (every replica holds the same values), and XLA runs a
        # tf.cond as a conditional that costs more per step than the sums on
        # large models. The first step's gradients are selected with tf.where
        # (XLA does it in place), steps that stats_every leaves out are
        # computed and masked.
        first = tf.logical_and(tf.equal(self._steps, 0), self._capture)
        if self.jit_compile:
            # Always the finite-only sums (see _finite_sums_xla).
            step = self._finite_stats(kernel_grads)
        else:
            step = self._fast_stats(kernel_grads)
            step = tf.cond(
                tf.reduce_all(tf.math.is_finite(step)),
                lambda: step,
                lambda: self._finite_stats(kernel_grads),
            )
        if due is not None:
            first = tf.logical_and(first, due)
            step = tf.where(due, step, tf.zeros_like(step))
        for var, g in zip(self._captured, kernel_grads):
            var.assign(tf.where(first, tf.cast(g, var.dtype), var))
        if outputs is not None:
            self.activations.capture(outputs, first)
            self.activations.update(outputs, due)
        self._record_nonfinite(0, self._step_index(counted=False), step[:, NONFINITE] > 0)
        self._peak.assign(tf.maximum(self._peak, step[:, MEAN_ABS]))
        self._sums.assign_add(step)
        if due is None:
            self._last.assign(step)
            self._steps.assign_add(1)
        else:
            self._last.assign(tf.where(due, step, self._last))
            self._steps.assign_add(tf.cast(due, tf.int64))

    def _fast_stats(self, kernel_grads) -> tf.Tensor:
        # [layers, N_STATS] in layer order, in float32, without the
        # finite-only recount (a non-finite sum calls for it). Each kernel is
        # reduced where it lies (stacking kernels copies them, which costs
        # more than the ops it saves) by three reductions, sum |g|, sum g and
        # l2_loss (sum g^2 / 2, one pass); one stack gathers the 3 x layers
        # scalars, and one product makes them means.
        sums = []
        for g in kernel_grads:
            g = tf.cast(g, tf.float32)
            sums += [tf.reduce_sum(tf.abs(g)), tf.reduce_sum(g), tf.nn.l2_loss(g)]
        means = tf.reshape(tf.stack(sums), [-1, 3]) * self._to_means
        std = tf.sqrt(tf.maximum(means[:, 2] - tf.square(means[:, 1]), 0.0))
        return tf.stack([means[:, 0], std, tf.zeros_like(std)], axis=1)

    def _step_index(self, counted: bool = True) -> tf.Tensor:
        # The index in the epoch of the step being run: counted=True once
        # its statistics are added (_steps incremented), False before.
        if self._gated:
            return self._seen.read_value() - 1
        index = self._steps.read_value() - (1 if counted else 0)
        return index * self.stats_every if self.caller_selects_steps else index

    def _record_nonfinite(self, what: int, index, bad) -> None:
        # Keeps the epoch's first non-finite gradient (what=0) or weight (1):
        # the step's index and the first layer with one (bad: per layer).
        new = tf.logical_and(tf.reduce_any(bad), self._first_bad[0] < 0)
        layer = tf.argmax(tf.cast(bad, tf.int32), output_type=tf.int64)
        value = tf.stack([tf.constant(what, tf.int64), tf.cast(index, tf.int64), layer])
        self._first_bad.assign(tf.where(new, value, self._first_bad))

    def set_seen(self, steps: int) -> None:
        """The epoch's steps so far, counted or not (eagerly, between steps;
        with ``caller_selects_steps``, whose train steps cannot count them)."""
        self._seen.assign(steps)

    def skip(self) -> None:
        """Counts a step whose gradients the optimizer did not apply (call
        inside the train step); it stays out of the averages."""
        self._skipped.assign_add(1)

    def _finite_stats(self, kernel_grads) -> tf.Tensor:
        # [layers, N_STATS] in layer order, over each kernel's finite entries,
        # in float64: exploding gradients reach 1e20 and more before they turn
        # Inf, and their squares would overflow float32 (a grad_std of
        # Inf/NaN). The arithmetic runs once on all layers' sums.
        if self.jit_compile:
            sums = self._group_finite_sums(kernel_grads)
        else:
            sums = self._flat_finite_sums(kernel_grads)
        sizes = tf.constant(self._sizes, tf.float64)
        n = sums[:, 3]
        mean_abs = tf.math.divide_no_nan(sums[:, 0], n)
        mean = tf.math.divide_no_nan(sums[:, 1], n)
        mean_sq = tf.math.divide_no_nan(sums[:, 2], n)
        std = tf.sqrt(tf.maximum(mean_sq - tf.square(mean), 0.0))
        return tf.cast(tf.stack([mean_abs, std, sizes - n], axis=1), tf.float32)

    def _group_finite_sums(self, kernel_grads) -> tf.Tensor:
        # Under XLA, every step: each group's [k, size] block gives its row
        # sums as one matrix-vector product (see _finite_sums_xla).
        parts = []
        for group in self._groups:
            # Kernels of a group share their size, not always their shape.
            grads = [tf.reshape(tf.cast(kernel_grads[i], tf.float64), [-1]) for i in group]
            # A lone kernel is reshaped, not stacked: stacking one tensor copies it.
            block = grads[0][None] if len(grads) == 1 else tf.stack(grads)
            parts.append(_finite_sums_xla(block))
        sums = parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)
        return sums if self._order is None else tf.gather(sums, self._order)

    def _flat_finite_sums(self, kernel_grads) -> tf.Tensor:
        # Without XLA this runs only in steps whose sums are not finite, so it
        # is written in the fewest ops, which is what tracing it costs every
        # fit: every kernel in one flat vector, its sums taken by segment.
        flat = [tf.reshape(g, [-1]) for g in kernel_grads]
        if len({g.dtype for g in flat}) > 1:
            flat = [tf.cast(g, tf.float64) for g in flat]
        flat = tf.cast(tf.concat(flat, axis=0), tf.float64)
        finite = tf.math.is_finite(flat)
        flat = tf.where(finite, flat, tf.zeros_like(flat))
        columns = [tf.abs(flat), flat, tf.square(flat), tf.cast(finite, tf.float64)]
        segments = tf.repeat(tf.range(len(kernel_grads)), self._sizes.astype(np.int64))
        return tf.math.segment_sum(tf.stack(columns, axis=1), segments)

    def _select(self, grads, variables):
        grads = list(grads)
        out = [None] * len(self.layers)
        for g, v in zip(grads, variables):
            i = self._index.get(id(v))
            if i is None:
                i = self._path_index.get(getattr(v, "path", None))
            if i is not None and g is not None:
                if isinstance(g, tf.IndexedSlices):
                    g = tf.convert_to_tensor(g)
                out[i] = g
        if not self.layers or any(g is None for g in out):
            # A kernel without a gradient (frozen, or not on the loss path):
            # log it as zeros rather than drop the layer from the tags.
            if not self.layers or all(g is None for g in out):
                return None
            out = [
                tf.zeros(layer.kernel.shape, layer.kernel.dtype) if g is None else g
                for g, layer in zip(out, self.layers)
            ]
        return out

    # -- between epochs (eager) -------------------------------------------

    def reset(self, capture: bool = True) -> None:
        """Starts a new epoch; ``capture`` keeps its first gradients."""
        self._sums.assign(tf.zeros_like(self._sums))
        self._steps.assign(0)
        if self.stats_every > 1:
            self._seen.assign(0)
        self._capture.assign(capture)
        self._peak.assign(tf.zeros_like(self._peak))
        self._first_bad.assign([-1, -1, -1])
        self.update_ratios.reset()
        for part in (self.activations, self.clip):
            if part is not None:
                part.reset()
        if self.count_skips:
            self._skipped.assign(0)

    def snapshot_tensors(self) -> dict:
        """The epoch's running sums and step count, every tracked kernel and
        every kept gradient, as tensors (graph or eager).

        A compiled epoch returns these with its other results, so that
        reading them costs no eager op per layer; pass the values (as numpy)
        to :meth:`epoch_stats` and :class:`tbgrad.summary.SummaryLogger`.
        """
        out = {
            "sums": self._sums.read_value(),
            "steps": self._steps.read_value(),
            "kernels": [tf.convert_to_tensor(layer.kernel) for layer in self.layers],
            "gradients": [var.read_value() for var in self._captured],
        }
        if self.count_skips:
            out["skipped"] = self._skipped.read_value()
        out["peak"] = self._peak.read_value()
        out["first_nonfinite"] = self._first_bad.read_value()
        out["seen"] = self._seen.read_value()
        out.update(self.update_ratios.snapshot_tensors())
        for part in (self.activations, self.clip):
            if part is not None:
                out.update(part.snapshot_tensors())
        return out

    def epoch_stats(self, snapshot: dict | None = None) -> dict[str, np.ndarray]:
        """The epoch's per-layer statistics as numpy arrays.

        Args:
            snapshot: Values of :meth:`snapshot_tensors` as numpy; None reads
                the variables (eager).
        """
        if snapshot is None:
            steps, sums, peak = self._steps.numpy(), self._sums.numpy(), self._peak.numpy()
        else:
            steps, sums = snapshot["steps"], snapshot["sums"]
            peak = snapshot.get("peak", sums[:, MEAN_ABS] * 0)
        n = np.float32(max(steps, 1))
        out = {
            "grad_mean_abs": sums[:, MEAN_ABS] / n,
            "grad_std": sums[:, STD] / n,
            "grad_nonfinite": sums[:, NONFINITE],
            "grad_mean_abs_max": np.asarray(peak),
            "steps": steps,
        }
        if self.count_skips:
            skipped = self._skipped.numpy() if snapshot is None else snapshot["skipped"]
            out["skipped"] = int(skipped)
        return out

    def epoch_values(
        self,
        snapshot: dict | None = None,
        histograms: bool = True,
        bucket_count: int = DEFAULT_BUCKET_COUNT,
    ) -> EpochValues:
        """Every number the epoch's summaries hold (see :class:`EpochValues`).

        Args:
            snapshot: Values of :meth:`snapshot_tensors` as numpy; None reads
                the variables (eager).
            histograms: Whether to bucket the gradients and kernels.
            bucket_count: Histogram buckets.
        """
        stats = self.epoch_stats(snapshot)
        if snapshot is not None:
            kernels, grads = snapshot["kernels"], snapshot["gradients"]
        else:
            kernels = [layer.kernel.numpy() for layer in self.layers]
            grads = [g.numpy() for g in self._captured] if histograms else None
        kernels = [np.asarray(k, dtype=np.float64) for k in kernels]
        scalars = {
            tags.GRAD_MEAN_ABS: stats["grad_mean_abs"],
            tags.GRAD_STD: stats["grad_std"],
            tags.GRAD_NONFINITE: stats["grad_nonfinite"],
            tags.GRAD_MEAN_ABS_MAX: stats["grad_mean_abs_max"],
            tags.WEIGHT_MEAN: np.array([k.mean() for k in kernels]),
            tags.WEIGHT_STD: np.array([k.std() for k in kernels]),
            tags.WEIGHT_L1: np.array([np.abs(k).sum() for k in kernels]),
        }
        buckets = {}
        if histograms:
            buckets[tags.GRADIENTS] = [histogram_buckets(g, bucket_count) for g in grads]
            buckets[tags.WEIGHTS] = [histogram_buckets(k, bucket_count) for k in kernels]
        ratio = None
        kernels_at = [i for i, layer in enumerate(self.layers) if layer.is_kernel]
        if len(kernels_at) >= 2:
            mean_abs = stats["grad_mean_abs"][[kernels_at[0], kernels_at[-1]]]
            ratio = float(mean_abs[0] / mean_abs[-1]) if mean_abs[-1] != 0 else 0.0
        if kernels_at:
            scalars[tags.GRAD_LOG10_RATIO] = log10_ratio(stats["grad_mean_abs"], kernels_at[-1])
        scalars.update(self.update_ratios.epoch_scalars(snapshot))
        named = {}
        if self.activations is not None:
            named.update(self.activations.epoch_values(snapshot, histograms))
        if self.clip is not None:
            named.update(self.clip.epoch_values(snapshot))
        first = self._first_nonfinite(snapshot, kernels)
        if int(stats["steps"]) == 0:
            # No gradient was applied (every step skipped): nothing to average
            # or to bucket, rather than zeros that read as a dead gradient.
            for family in [f for f in scalars if f.startswith("grad_")]:
                scalars.pop(family)  # every gradient family, not the weights'
            buckets.pop(tags.GRADIENTS, None)
            ratio = None
        steps = int(stats["steps"])
        if self.stats_every > 1:
            seen = int(self._seen.numpy() if snapshot is None else snapshot["seen"])
        else:
            seen = steps
        return EpochValues(scalars, buckets, ratio, steps, stats.get("skipped"), named, first, seen)

    def _first_nonfinite(self, snapshot, kernels) -> dict | None:
        # The epoch's first non-finite gradient or weight seen in a step,
        # else a non-finite kernel at the end of the epoch (step None).
        what, index, layer = (
            self._first_bad.numpy() if snapshot is None else snapshot["first_nonfinite"]
        )
        if what >= 0 and self.layers:
            kind = "gradient" if what == 0 else "weight"
            return {"what": kind, "layer": self.names[int(layer)], "step": int(index)}
        for name, kernel in zip(self.names, kernels):
            if not np.isfinite(kernel).all():
                return {"what": "weight", "layer": name, "step": None}
        return None

    @property
    def kernel_names(self) -> list[str]:
        """The names of the tracked layers' kernels, in model order."""
        return [name for name, layer in zip(self.names, self.layers) if layer.is_kernel]

    @property
    def compared_names(self) -> list[str]:
        """Every layer but the output layer (the last kernel), whose mean |g|
        the others' ``grad_log10_ratio`` is relative to."""
        kernels_at = [i for i, layer in enumerate(self.layers) if layer.is_kernel]
        output = kernels_at[-1] if kernels_at else None
        return [name for i, name in enumerate(self.names) if i != output]

    def last_step_tensors(self) -> tf.Tensor:
        """The last step's per-layer mean |g| (graph or eager)."""
        return self._last.read_value()[:, MEAN_ABS]

    def captured_gradients(self) -> list[tf.Variable]:
        """The kept first-step gradient of every layer."""
        return self._captured


def _size_groups(layers: list[KernelLayer]):
    """Groups of layer indices reduced together, and the order to undo it.

    Returns ``(groups, order)``: ``order`` gathers the concatenated group
    rows back into layer order (None when they already are).
    """
    by_size: dict[int, list[int]] = {}
    groups = []
    for i, layer in enumerate(layers):
        size = int(np.prod(layer.kernel.shape))
        if size > STACK_MAX_SIZE:
            groups.append([i])
        else:
            by_size.setdefault(size, []).append(i)
    groups += list(by_size.values())
    groups.sort(key=lambda group: group[0])
    flat = [i for group in groups for i in group]
    if flat == list(range(len(layers))):
        return groups, None
    return groups, tf.constant(np.argsort(flat), tf.int32)


def _finite_sums_xla(block: tf.Tensor) -> tf.Tensor:
    # Per row of a [k, n] block of kernels: sum |g|, sum g, sum g^2 over its
    # finite entries and how many those are, in a form that XLA's CPU
    # backend runs fast. XLA emits reductions as
    # single-threaded loops, a large share of the step on wide layers. A
    # matrix product goes to the threaded GEMM instead, so the four sums are
    # one product: the fused block [|g|; g; g*g; finite] (as [k, 4r, c])
    # times a column of ones, then a small reduction of its row sums. Under
    # XLA the train step always takes this finite-only, float64 path, as it
    # has no tf.cond to fall back to it with.
    k, size = block.shape
    c = _row_width(size)
    rows = tf.reshape(block, [k, size // c, c])
    finite = tf.math.is_finite(rows)
    rows = tf.where(finite, rows, tf.zeros_like(rows))
    stacked = tf.concat([tf.abs(rows), rows, tf.square(rows), tf.cast(finite, rows.dtype)], axis=1)
    row_sums = tf.linalg.matvec(stacked, tf.ones([c], rows.dtype))
    return tf.reduce_sum(tf.reshape(row_sums, [k, 4, -1]), axis=2)


def _row_width(size: int, widest: int = 256) -> int:
    # The largest divisor of size up to widest: the width of the [r, c] rows
    # _finite_sums_xla multiplies by a column of ones.
    return next(c for c in range(max(min(size, widest), 1), 0, -1) if size % c == 0)


def log10_ratio(mean_abs: np.ndarray, reference: int) -> np.ndarray:
    """log10 of each layer's mean |g| over layer ``reference``'s.

    A layer whose gradient is exactly 0 gets -inf (0 / 0: NaN): what it is,
    rather than a floor that would read as a measured value.
    """
    mean_abs = np.asarray(mean_abs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(mean_abs / mean_abs[reference])


def histogram_buckets(data, bucket_count: int = DEFAULT_BUCKET_COUNT) -> np.ndarray:
    """Buckets the finite entries of ``data`` as TensorBoard's histograms do.

    Returns a float64 ``[bucket_count, 3]`` array of (left edge, right edge,
    count), the format of ``tensorboard.plugins.histogram`` summaries: equal
    buckets from the minimum to the maximum, the maximum in the last bucket
    (an entry's bucket is ``floor(bucket_count * (x - lo) / (hi - lo))``,
    clipped to the last one). NaN and Inf entries are left out
    (``grad_nonfinite`` counts them). Computed in numpy on values already on
    the host: no op to trace or run per tensor.
    """
    x = np.asarray(data, dtype=np.float64).ravel()
    finite = np.isfinite(x)
    if not finite.all():
        x = x[finite]
    lo = float(x.min()) if x.size else 0.0
    hi = float(x.max()) if x.size else 0.0
    span = hi - lo if hi > lo else 1.0
    index = np.floor((x - lo) / span * bucket_count).astype(np.int64)
    counts = np.bincount(np.clip(index, 0, bucket_count - 1), minlength=bucket_count)
    edges = np.linspace(lo, hi, bucket_count + 1)
    return np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)
