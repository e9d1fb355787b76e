"""A verdict per run: vanishing, healthy, exploding or non-finite gradients.

The verdict reads the run's own logs: every layer's ``grad_mean_abs``, the
``grad_nonfinite`` counts and the ``epoch_loss`` scalars. It compares each
hidden layer's mean |g| with the output layer's, epoch by epoch:

- the **weakest ratio** of an epoch is min over hidden layers of
  ``grad_mean_abs[layer] / grad_mean_abs[output]``;
- the **strongest ratio** is the max of the same quotients.

A run's figure is the median of these over every epoch (robust to the first
epochs' transient and to single noisy epochs). Rules, first match wins:

1. ``non-finite``: any ``grad_nonfinite`` count above 0, or any train or
   validation ``epoch_loss`` that is NaN or Inf.
2. ``vanishing``: median weakest ratio below :data:`VANISHING_BELOW`.
3. ``exploding``: median strongest ratio above :data:`EXPLODING_ABOVE`.
4. ``healthy`` otherwise.
5. ``unknown``: fewer than two kernel layers or no finished epoch, and
   nothing non-finite.

Why not ``grad_ratio`` (first layer / output layer) alone: in the reference
run A2 (5 x tanh, RandomUniform(0, 1)) the gradient dies in the *middle and
last* hidden layers while the first layer's mean |g| stays close to the
output layer's (measured median ``grad_ratio`` 1.14 for A2, 3.37 for A3), so
the first/output quotient does not tell them apart; the weakest layer does.
The thresholds and the figures behind them are in docs/verdict.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from tbgrad import tags

VANISHING = "vanishing"
HEALTHY = "healthy"
EXPLODING = "exploding"
NON_FINITE = "non-finite"
UNKNOWN = "unknown"
VERDICTS = (VANISHING, HEALTHY, EXPLODING, NON_FINITE, UNKNOWN)
# The verdict as a number, for TensorBoard's HParams (whose metrics are
# numbers): the sign says which way the gradient fails. ``unknown`` has none.
CODES = {VANISHING: -1, HEALTHY: 0, EXPLODING: 1, NON_FINITE: 2}

# Measured at 500 epochs, seed 1 (docs/verdict.md): A2's weakest
# ratio never rises above 0.070 in any epoch (median 0.029); A3's never
# falls below 0.165 (median 0.39). 0.1 lies between, close to their
# geometric midpoint.
VANISHING_BELOW = 0.1
# The mirror image: some hidden layer receives over 100 times the output
# layer's mean |g|. Runs that learn well reach far above 1: A3's strongest
# ratio peaks at 5.2 (median 3.4), B-tanh's at 50 (median 13.4), so 10
# would call B-tanh exploding; 100 is twice the largest value measured.
EXPLODING_ABOVE = 100.0


@dataclass(frozen=True)
class Verdict:
    """The verdict of one run and the figures it rests on."""

    label: str
    weakest_ratio: float | None
    strongest_ratio: float | None
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.label} ({self.reason})"


def judge(
    grad_mean_abs: Mapping[str, Sequence[float]],
    losses: Iterable[float] = (),
    nonfinite: float = 0,
) -> Verdict:
    """Returns the verdict of a run from its per-epoch figures.

    Args:
        grad_mean_abs: ``{layer: mean |g| per epoch}`` in model order, the
            output layer last.
        losses: Every logged loss value (train and validation, any epoch).
        nonfinite: The total of the ``grad_nonfinite`` counts.

    Example:
        >>> judge({"hidden_1": [0.02], "hidden_2": [0.001], "output": [0.05]}).label
        'vanishing'
    """
    if not math.isfinite(float(nonfinite)) or nonfinite < 0:
        raise ValueError(f"nonfinite must be a count >= 0. Received: nonfinite={nonfinite!r}")
    series = [np.asarray(v, dtype=np.float64).ravel() for v in grad_mean_abs.values()]
    lengths = {len(s) for s in series}
    if len(lengths) > 1:
        raise ValueError(
            "every layer needs one value per epoch. Received lengths "
            f"{dict(zip(grad_mean_abs, map(len, series)))}"
        )
    losses = np.asarray(list(losses), dtype=np.float64).ravel()
    if nonfinite > 0:
        return Verdict(NON_FINITE, None, None, f"{int(nonfinite)} non-finite gradient entries")
    if not np.all(np.isfinite(losses)):
        return Verdict(NON_FINITE, None, None, "the loss is NaN or Inf")
    if len(series) < 2 or not series[0].size:
        return Verdict(UNKNOWN, None, None, "fewer than two kernel layers or no epoch logged")
    g = np.stack(series, axis=1)  # epochs x layers
    if not np.all(np.isfinite(g)):
        return Verdict(NON_FINITE, None, None, "grad_mean_abs is NaN or Inf")
    with np.errstate(divide="ignore", invalid="ignore"):
        quotients = g[:, :-1] / g[:, -1:]
    # 0/0 (no gradient anywhere, e.g. every relu dead) counts as vanished.
    quotients = np.nan_to_num(quotients, nan=0.0)
    weakest = float(np.median(quotients.min(axis=1)))
    strongest = float(np.median(quotients.max(axis=1)))
    figures = f"median weakest/output {weakest:.3g}, strongest/output {strongest:.3g}"
    if weakest < VANISHING_BELOW:
        label = VANISHING
        figures += f"; {weakest:.3g} < {VANISHING_BELOW:g}"
    elif strongest > EXPLODING_ABOVE:
        label = EXPLODING
        figures += f"; {strongest:.3g} > {EXPLODING_ABOVE:g}"
    else:
        label = HEALTHY
    return Verdict(label, weakest, strongest, figures)


def run_verdict(run) -> Verdict:
    """The verdict of a run read back with :func:`tbgrad.eventlog.load_run`."""
    train, val = run.train, run.validation
    prefix = tags.GRAD_MEAN_ABS + "/"
    layers = {t[len(prefix) :]: train.scalar(t) for t in train.scalars if t.startswith(prefix)}
    if train.kernels is not None:
        # With variables="all", biases and other weights are logged too; the
        # verdict compares the layers' kernels only.
        layers = {name: series for name, series in layers.items() if name in train.kernels}
    nonfinite = sum(
        float(np.nansum(train.scalar(t)))
        for t in train.scalars
        if t.startswith(tags.GRAD_NONFINITE + "/")
    )
    loss = tags.epoch_tag("loss")
    losses = np.concatenate([train.scalar(loss), val.scalar(loss)])
    return judge(layers, losses, nonfinite)


def verdict_of(run_dir: str | os.PathLike) -> Verdict:
    """Reads the run folder ``run_dir`` and returns its verdict."""
    from tbgrad.eventlog import load_run

    return run_verdict(load_run(run_dir))
