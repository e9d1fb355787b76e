"""One training step as the statistics see it, and how it runs.

The statistics of :mod:`tbgrad.statistics` are written in ``keras.ops`` and
never ask how the step runs. Everything that depends on it is decided here,
once per logger (:class:`ExecutionPolicy`) and once per step
(:class:`StepContext`):

* which cadences count this step (``stats_every`` for the gradient record,
  ``diagnostics_every`` for the diagnostics, the epoch's first step for the
  histograms);
* how a step a cadence leaves out is left out: in a branch that does no work
  (one functional ``If``), or computed and masked (under TensorFlow's XLA,
  which runs a conditional at more cost than it saves, and under several
  replicas, where assigning a mirrored variable inside a branch is refused);
  on JAX and PyTorch one conditional per cadence picks the states' new
  values, assigned after it (a JAX branch may not assign);
* the gradients as the optimizer applies them: under several replicas the
  optimizer sums the replicas' gradients after the point where tbgrad sees
  them, so the step sums its copy the same way once, for every statistic;
* the activations the training forward pass produced.

This module and :mod:`tbgrad._compat` are the only backend-specific parts
the statistics run through.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import keras
import tensorflow as tf

from tbgrad import _compat

# Keras's backend: on TensorFlow a step left out can skip its work in a
# branch and an embedding's gradient is sparse; on JAX (a jitted, stateless
# step) and PyTorch (eager) every step is computed and masked.
ON_TENSORFLOW = keras.backend.backend() == "tensorflow"
ON_JAX = keras.backend.backend() == "jax"
ON_TORCH = keras.backend.backend() == "torch"


def _jax_x64() -> bool:
    import jax

    return bool(jax.config.jax_enable_x64)


# The widest integer and float the statistics keep counts and sums in: JAX
# has 64-bit types only with jax_enable_x64 (else it truncates them, with a
# warning per array).
WIDE_INT, WIDE_FLOAT = ("int64", "float64") if not ON_JAX or _jax_x64() else ("int32", "float32")

# The cadences a statistic can run on (Statistic.cadence).
EVERY = "every"  # the steps stats_every counts: the record
DIAGNOSTICS = "diagnostics"  # the epoch's first step and every diagnostics_every-th
HISTOGRAM = "histogram"  # the epoch's first step, in an epoch that writes histograms
EPOCH = "epoch"  # no per-step work: the statistic is computed at the epoch's end
CADENCES = (EVERY, DIAGNOSTICS, HISTOGRAM, EPOCH)

# The default of diagnostics_every (docs/benchmarks.md has the measurements).
DEFAULT_DIAGNOSTICS_EVERY = 16

# Execution forms of ExecutionPolicy.
BRANCH = "branch"
MASK = "mask"


@dataclass(frozen=True)
class ExecutionPolicy:
    """How the train step runs, decided once from the logger's mode.

    Args:
        form: :data:`BRANCH` (a step left out runs no statistic's work) or
            :data:`MASK` (every step computes, the steps left out are
            masked).
        replicas: Replicas in sync; above 1 the gradients and the counts a
            statistic sums over replicas are all-reduced.
        xla: Whether the step is compiled with XLA.
    """

    form: str = BRANCH
    replicas: int = 1
    xla: bool = False

    @classmethod
    def for_mode(cls, jit_compile: bool = False, replicas: int = 1) -> ExecutionPolicy:
        """The policy of a train step compiled with XLA or not, on ``replicas``."""
        masked = bool(jit_compile) or replicas > 1 or not ON_TENSORFLOW
        return cls(MASK if masked else BRANCH, int(replicas), bool(jit_compile))

    def cond(self, pred, true_fn, false_fn):
        """``true_fn()`` where ``pred`` holds, else ``false_fn()``: a functional
        ``If`` when branching, ``tf.cond`` (no assignment inside) otherwise."""
        if not ON_TENSORFLOW:
            return keras.ops.cond(pred, true_fn, false_fn)
        if self.form == BRANCH:
            return _compat.functional_cond(pred, true_fn, false_fn)
        return tf.cond(pred, true_fn, false_fn)

    def when(self, pred, fn) -> None:
        """Runs ``fn`` (which assigns state) only where ``pred`` holds: one
        functional ``If`` (used when branching; a masked step combines its
        states with ``where`` instead)."""

        def run():
            fn()
            return tf.constant(True)

        _compat.functional_cond(pred, run, lambda: tf.constant(False))

    def sums_of_squares(self, xs):
        """``[len(xs)]``: the sum of each tensor's squared entries, in float32
        (it may overflow, or lose entries whose squares flush to zero:
        callers guard).

        TensorFlow's ``L2Loss`` op (half the sum) takes it in one pass
        without making ``x * x``, which costs a pass and a buffer per
        tensor; XLA fuses the square into the sum itself, and other backends
        have no such op.
        """
        if ON_TENSORFLOW and not self.xla:
            return 2.0 * tf.stack([tf.nn.l2_loss(x) for x in xs])
        return keras.ops.stack([keras.ops.sum(keras.ops.square(x)) for x in xs])

    @property
    def has_bucket_counts(self) -> bool:
        """Whether :meth:`bucket_counts` has an op: TensorFlow's
        ``HistogramFixedWidth``, which XLA does not compile."""
        return ON_TENSORFLOW and not self.xla

    def bucket_counts(self, x, lo, hi, bucket_count: int):
        """The counts of ``x``'s entries in ``bucket_count`` equal buckets
        from ``lo`` to ``hi``, the last closed, in one op (where
        :attr:`has_bucket_counts`). Every entry finite and ``lo < hi``: the
        op has no bucket for a NaN."""
        counts = tf.histogram_fixed_width(x, tf.stack([lo, hi]), nbins=bucket_count)
        return tf.cast(counts, x.dtype)

    def applied(self, gradients) -> tuple[list, list]:
        """The gradients as the statistics take them, and for each the number
        of zero entries of its variable it leaves out.

        An embedding's gradient arrives as ``tf.IndexedSlices``: one row per
        token of the batch, a token id repeated as often as it occurs. It is
        taken as its rows summed by id (what the optimizer adds to each row)
        without densifying it: the vocabulary's other rows are zeros, counted
        but never made. Under several replicas (the rows differ by replica)
        and under XLA (no unique ids) it is densified.
        """
        if not ON_TENSORFLOW:
            return [keras.ops.convert_to_tensor(g) for g in gradients], [0] * len(gradients)
        out, absent = [], []
        for g in gradients:
            if isinstance(g, tf.IndexedSlices) and self.replicas <= 1 and not self.xla:
                ids, position = tf.unique(g.indices)
                rows = tf.math.unsorted_segment_sum(g.values, position, tf.shape(ids)[0])
                whole = tf.cast(tf.reduce_prod(g.dense_shape), tf.int64)
                out.append(rows)
                absent.append(whole - tf.size(rows, out_type=tf.int64))
            else:
                out.append(tf.convert_to_tensor(g))
                absent.append(0)
        return self.replica_sum(out), absent

    def replica_sum(self, values):
        """``values`` (a tensor or a list) summed over the replicas."""
        if not ON_TENSORFLOW:
            return values
        context = tf.distribute.get_replica_context()
        if self.replicas <= 1 or context is None or context.num_replicas_in_sync <= 1:
            return values
        return context.all_reduce(tf.distribute.ReduceOp.SUM, values)


def new_state(name: str, shape, dtype="float32", value=0) -> keras.Variable:
    """A statistic's state variable: not trainable, updated inside the train
    step by the first replica only (the statistics sum over replicas
    themselves where a value covers every replica)."""
    return keras.Variable(
        keras.ops.full(shape, value, dtype=dtype),
        dtype=dtype,
        trainable=False,
        autocast=False,
        aggregation="only_first_replica",
        synchronization="on_write",
        name=name,
    )


def read(variable):
    """The variable's value now, as a tensor: a Keras variable's ``value``
    (and ``keras.ops.convert_to_tensor`` of it) is the TensorFlow variable
    itself, read only where it is used, which may be after a later update
    (on PyTorch the tensor the update writes into)."""
    if ON_TENSORFLOW:
        return tf.identity(variable.value)
    return keras.ops.copy(variable.value)


def snapshot(values):
    """``values`` (a structure of tensors or variables) with every variable
    read now; tensors are values already (copied on PyTorch)."""
    # PyTorch updates a variable's tensor in place, and a tensor read from
    # it (a cast to its own dtype is the tensor itself) with it.
    kept = keras.ops.copy if ON_TORCH else (lambda v: v)
    return keras.tree.map_structure(
        lambda v: read(v) if isinstance(v, keras.Variable) else kept(v), values
    )


class StepContext:
    """What one train step gives the statistics (built by the collector).

    Attributes:
        policy: The :class:`ExecutionPolicy`.
        index: The step's index in the epoch (an int64 tensor).
        due: ``{cadence: boolean tensor, or None for "every step"}``.
        kernels: The tracked variables, in layer order.
        gradients: The gradients applied to them (summed over replicas), or
            None before the update step. An embedding's sparse gradient is
            its rows the batch touched (see :meth:`ExecutionPolicy.applied`).
        absent: For each gradient, the zero entries of its variable it
            leaves out (0 for a dense one; an int64 tensor for rows).
        unclipped: Every gradient before clipping (summed over replicas), or
            None when the optimizer does not clip.
        activations: The watched layers' outputs of this step's training
            forward pass, or None.
    """

    def __init__(self, policy, index, due, kernels, activations=None):
        self.policy = policy
        self.index = index
        self.due = due
        self.kernels = kernels
        self.activations = activations
        self.gradients = None
        self.absent = None
        self.unclipped = None
        # What a statistic read before the weights moved, by statistic.
        self.carry: dict[int, object] = {}
        self._memo: dict[tuple, object] = {}
        # The graph the step is traced in (a trace that raised mid-step
        # leaves its step behind: ThreadSteps drops it).
        self.graph = current_graph()

    def replica_sum(self, values):
        """``values`` summed over the replicas (identity on one device)."""
        return self.policy.replica_sum(values)

    def cond(self, pred, true_fn, false_fn):
        """A per-step choice between two computations (no assignment inside)."""
        return self.policy.cond(pred, true_fn, false_fn)

    def shared(self, key: str, compute):
        """``compute()``, computed once per step (and graph) for every
        statistic that asks for ``key``: per-step work statistics share."""
        graph_key = (key, current_graph())
        if graph_key not in self._memo:
            self._memo[graph_key] = compute()
        return self._memo[graph_key]


def current_graph():
    """The TensorFlow graph being traced (None on other backends)."""
    return tf.compat.v1.get_default_graph() if ON_TENSORFLOW else None


class ThreadSteps:
    """The step being traced in each thread: a MirroredStrategy traces each
    replica's step in a thread of its own, at the same time."""

    def __init__(self):
        self._steps: dict[int, StepContext] = {}

    def current(self) -> StepContext | None:
        step = self._steps.get(threading.get_ident())
        if step is not None and step.graph is not current_graph():
            self.end()  # left by a trace that raised, or by an eager step
            return None
        return step

    def start(self, step: StepContext) -> StepContext:
        self._steps[threading.get_ident()] = step
        return step

    def end(self) -> StepContext | None:
        return self._steps.pop(threading.get_ident(), None)

    def clear(self) -> None:
        self._steps.clear()
