"""Other forms of the per-step statistics, for ``bench --train-step --forms``.

Each form is a :class:`tbgrad.stats.GradientStats` whose :meth:`update`
computes the step's statistics another way, so that the benchmark can time it
beside the library's form in the same run (the library keeps the fastest). Single
device, no XLA in the train step, the same numbers as the library's except
where a form's docstring says otherwise:

* ``before``: the earlier form: same-size kernels stacked, three row
  sums (|g|, g, g^2) per group, a ``tf.cond`` for the finite-only recount and
  another for the first step's copy;
* ``lowered-cond``: the library's form with its one cond a plain
  ``tf.cond`` (lowered to Switch/Merge ops in the step's graph);
* ``two-conds``: the library's sums, with one ``tf.cond`` per purpose instead
  of one for both;
* ``xla-sums``: the sums (finite-only, float64, as one matrix-vector product
  per group) in a ``tf.function(jit_compile=True)`` inside the step, so only
  they are compiled by XLA, with no ``tf.cond``;
* ``xla-fast``: the library's form, its float32 sums in a
  ``tf.function(jit_compile=True)`` of their own (one fused XLA cluster in
  a step that is not compiled by XLA);
* ``no-cond``: the library's sums alone, no ``tf.cond``: a floor, not a
  candidate (its non-finite steps are wrong and it keeps no histogram).
"""

from __future__ import annotations

import tensorflow as tf

from tbgrad.stats import GradientStats


def _kernel_grads(stats: GradientStats, grads, variables):
    selected = stats._select(grads, variables)
    return None if selected is None else [tf.convert_to_tensor(g) for g in selected]


def _add(stats: GradientStats, step, dependency=None) -> None:
    with tf.control_dependencies([dependency] if dependency is not None else []):
        stats._sums.assign_add(step)
        stats._last.assign(step)
        stats._steps.assign_add(1)


def _capture(stats: GradientStats, kernel_grads):
    def copy():
        for var, g in zip(stats._captured, kernel_grads):
            var.assign(tf.cast(g, var.dtype))
        return tf.constant(True)

    first = tf.logical_and(tf.equal(stats._steps, 0), stats._capture)
    return tf.cond(first, copy, lambda: tf.constant(False))


class Before(GradientStats):
    """Row sums per group of same-size kernels; a tf.cond per purpose."""

    def update(self, grads, variables) -> None:
        kernel_grads = _kernel_grads(self, grads, variables)
        if kernel_grads is None:
            return
        step = self._group_sums(kernel_grads)
        step = tf.cond(
            tf.reduce_all(tf.math.is_finite(step)),
            lambda: step,
            lambda: self._finite_stats(kernel_grads),
        )
        _add(self, step, _capture(self, kernel_grads))

    def _group_sums(self, kernel_grads) -> tf.Tensor:
        parts = []
        for group in self._groups:
            grads = [tf.reshape(tf.cast(kernel_grads[i], tf.float32), [-1]) for i in group]
            block = grads[0][None] if len(grads) == 1 else tf.stack(grads)
            parts.append(_row_sums(block))
        sums = parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)
        if self._order is not None:
            sums = tf.gather(sums, self._order)
        sizes = tf.constant(self._sizes)
        mean_abs = tf.math.divide_no_nan(sums[:, 0], sizes)
        mean = tf.math.divide_no_nan(sums[:, 1], sizes)
        mean_sq = tf.math.divide_no_nan(sums[:, 2], sizes)
        std = tf.sqrt(tf.maximum(mean_sq - tf.square(mean), 0.0))
        return tf.stack([mean_abs, std, tf.zeros_like(std)], axis=1)


class LoweredCond(GradientStats):
    """The library's form, its cond lowered to Switch/Merge."""

    def _update_step(self, kernel_grads, outputs=None) -> tf.Tensor:
        step = self._fast_stats(kernel_grads)
        finite = tf.reduce_all(tf.math.is_finite(step))
        first = tf.logical_and(tf.equal(self._steps, 0), self._capture)
        step = tf.cond(
            tf.logical_or(first, tf.logical_not(finite)),
            lambda: self._rare_step(kernel_grads, step, finite, first, None),
            lambda: step,
        )
        _add(self, step)
        return self._steps.read_value()


def _row_sums(block: tf.Tensor) -> tf.Tensor:
    # Per row of a [k, n] block: sum |g|, sum g, sum g^2.
    return tf.stack(
        [
            tf.reduce_sum(tf.abs(block), axis=1),
            tf.reduce_sum(block, axis=1),
            tf.reduce_sum(tf.square(block), axis=1),
        ],
        axis=1,
    )


class TwoConds(GradientStats):
    """The library's sums; a tf.cond for the recount, another for the copy."""

    def update(self, grads, variables) -> None:
        kernel_grads = _kernel_grads(self, grads, variables)
        if kernel_grads is None:
            return
        step = self._fast_stats(kernel_grads)
        step = tf.cond(
            tf.reduce_all(tf.math.is_finite(step)),
            lambda: step,
            lambda: self._finite_stats(kernel_grads),
        )
        _add(self, step, _capture(self, kernel_grads))


class XlaSums(GradientStats):
    """The finite-only sums compiled by XLA on their own; no tf.cond."""

    def __init__(self, layers, **kwargs):
        super().__init__(layers, **kwargs)
        # _finite_stats takes the XLA form (one GEMV per group) when set.
        self.jit_compile = True
        self._compiled = tf.function(self._finite_stats, jit_compile=True)

    def update(self, grads, variables) -> None:
        kernel_grads = _kernel_grads(self, grads, variables)
        if kernel_grads is None:
            return
        first = tf.logical_and(tf.equal(self._steps, 0), self._capture)
        for var, g in zip(self._captured, kernel_grads):
            var.assign(tf.where(first, tf.cast(g, var.dtype), var))
        _add(self, self._compiled(kernel_grads))


class XlaFast(GradientStats):
    """The library's form, its float32 sums compiled by XLA on their own."""

    def __init__(self, layers, **kwargs):
        super().__init__(layers, **kwargs)
        self._fast_stats = tf.function(self._fast_stats, jit_compile=True, autograph=False)


class NoCond(GradientStats):
    """A floor: the library's sums only (no recount, no copy)."""

    def update(self, grads, variables) -> None:
        kernel_grads = _kernel_grads(self, grads, variables)
        if kernel_grads is not None:
            _add(self, self._fast_stats(kernel_grads))


FORMS: dict[str, type[GradientStats]] = {
    "before": Before,
    "lowered-cond": LoweredCond,
    "two-conds": TwoConds,
    "xla-sums": XlaSums,
    "xla-fast": XlaFast,
    "no-cond": NoCond,
}
