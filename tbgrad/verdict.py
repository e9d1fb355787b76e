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

A model with repeated blocks (a transformer: ``transformer_layer_0`` ..
``transformer_layer_11`` in its matrices' names, see
:func:`block_structure`) is judged like with like instead: each block's
matrices against the same kind's in the block nearest the output (query
with query), the median over the block's kinds (:func:`block_ratios`); the
weakest and strongest ratios are over the blocks, with the thresholds
:data:`BLOCK_VANISHING_BELOW` and :data:`BLOCK_EXPLODING_ABOVE`. Attention's
query and key, embeddings and the head receive far less (or more) mean |g|
than the other matrices by nature, so against the output layer a healthy
transformer would read vanishing. The thresholds and the figures behind
them are in docs/verdict.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from tbgrad import tags
from tbgrad.blocks import EMBEDDINGS, BlockStructure, block_structure, outermost_block

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

# -- models with repeated blocks (docs/verdict.md, "Models with repeated blocks") --

# A block's mean |g| over the top block's (its family's block nearest the
# output), kind by kind, median over its kinds. Measured in a 12-block GPT-2
# (docs/verdict.md), 5 epochs: healthy runs (Adam, SGD; 12 and 24 blocks)
# never fall below 0.86 in any epoch (medians 0.94 to 1.06); runs whose
# lower blocks were made to vanish never rise above 0.083 (medians 1.4e-4
# to 0.041). 0.1 lies between, as for the output-layer rule.
BLOCK_VANISHING_BELOW = 0.1
# The mirror image. Healthy runs peak at 4.9 (medians 1.6 to 2.3: pre-LN
# gives the lower blocks somewhat more than the top); lower blocks' kernels
# x 30 give 997 (every epoch above 770) and a loss that stalls. 100, as for
# the output-layer rule, leaves room for deeper models' larger spread.
BLOCK_EXPLODING_ABOVE = 100.0
# -- the explanation's supporting signals (docs/verdict.md, "Explanations") ------

# A tanh or sigmoid layer is called saturated when over 35% of its outputs
# sit on the flat tails (median over the epochs concerned), where the local
# slope is below 0.06. Measured (docs/verdict.md): the layers of A2 that
# vanish at 0.44 to 0.80 (seeds 1, 2); the healthy B-tanh's most saturated
# layer at 0.28 to 0.29 (seeds 42 to 44), A2 seed 3 (healthy) at 0.32;
# B-sigmoid at 0 (its gradient vanishes through sigmoid's slope of at most
# 0.25, not through saturation). 0.35 lies between.
SATURATED_ABOVE = 0.35
# A relu layer with over half of its units dead (0 for every sample of the
# epoch) passes no gradient through most of its width. The studies' relu runs
# have at most 2 of 5 units dead in a layer (A3: 0.2, B-relu: 0.4); with too
# large a step (A3 at lr 3, B-relu at lr 0.3) whole layers die (1.0).
DEAD_ABOVE = 0.5
# Two decades either side of the 1e-3 rule of thumb
# (tbgrad.diagnostics.REFERENCE_UPDATE_RATIO). Every layer of the studies'
# runs has a median between 3.1e-5 (A2 seed 2's hidden_3) and 1.5e-3 (A3's
# hidden_2); A3 at lr 1e-6 has 8.5e-8 to 4.3e-7, a run whose units all died 0.
UPDATE_RATIO_BELOW = 1e-5
UPDATE_RATIO_ABOVE = 1e-1
# Readable names of the lab's initializers (tbgrad.lab.choices).
INITIALIZER_NAMES = {
    "uniform01": "RandomUniform(0, 1)",
    "normal": "RandomNormal(0, 1)",
    "standard": "U[-1/sqrt(n), 1/sqrt(n)]",
    "xavier": "glorot_uniform",
}
SATURATING = ("tanh", "sigmoid", "hard_sigmoid", "hard_tanh", "softsign")


@dataclass(frozen=True)
class Explanation:
    """Why a run got its verdict: the rule, where, the supporting signals, a fix.

    Attributes:
        rule: The rule that fired, e.g. ``"median weakest/output < 0.1"``.
        layers: The layers concerned, in model order (none for a healthy run).
        epochs: The first and last epoch concerned, or None.
        signals: Named figures: the rule's median, and when logged the
            saturated, zero and dead shares, the update ratio, the largest
            per-step mean |g| over the epoch mean (``grad_spike``), the share
            of clipped steps.
        notes: The supporting signals past their thresholds, as sentences.
        suggestion: What to try, or "" when nothing needs fixing.

    Example:
        >>> print(tbgrad.verdict_of("logs/A2-tanh-uniform01-d5-w5-sgd-s1").explanation)
        why: weakest/output < 0.1 (median 0.0288) in hidden_4, hidden_5, epochs 0-499
        try: hidden_4, hidden_5 saturated (56%) with tanh and RandomUniform(0, 1) weights: try
        glorot_uniform, or relu with he_uniform
    """

    rule: str
    layers: tuple[str, ...] = ()
    epochs: tuple[int, int] | None = None
    signals: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    suggestion: str = ""

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "layers": list(self.layers),
            "epochs": list(self.epochs) if self.epochs else None,
            "signals": {k: _finite(v) for k, v in self.signals.items()},
            "notes": list(self.notes),
            "suggestion": self.suggestion,
            "text": str(self),
        }

    def __str__(self) -> str:
        where = [layer_span(self.layers)] if self.layers else []
        if self.epochs:
            where.append(f"epochs {self.epochs[0]}-{self.epochs[1]}")
        found = self.rule + (f" in {', '.join(where)}" if where else "")
        # A note the suggestion starts from is said once, there.
        why = "; ".join([found, *(n for n in self.notes if n not in self.suggestion)])
        return f"why: {why}" + (f"\ntry: {self.suggestion}" if self.suggestion else "")


@dataclass(frozen=True)
class Verdict:
    """The verdict of one run and the figures it rests on.

    ``explanation`` is filled by :func:`run_verdict` (which reads the whole
    run); :func:`judge` alone, from the gradient magnitudes, leaves it None.
    """

    label: str
    weakest_ratio: float | None
    strongest_ratio: float | None
    reason: str
    explanation: Explanation | None = None

    def to_dict(self) -> dict:
        out = {f: getattr(self, f) for f in ("label", "weakest_ratio", "strongest_ratio", "reason")}
        out["explanation"] = self.explanation.to_dict() if self.explanation else None
        return out

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
            output layer (the reference) last. When the names show repeated
            blocks (:func:`block_structure`), the blocks are compared with
            the top block and ``weakest_ratio``, ``strongest_ratio`` are the
            blocks' (:func:`block_ratios`).
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
    structure = block_structure(list(grad_mean_abs)[:-1])
    if structure is not None:
        _, ratios = block_ratios(grad_mean_abs, structure)
        weakest = float(np.median(ratios.min(axis=1)))
        strongest = float(np.median(ratios.max(axis=1)))
        return _labelled(
            weakest, strongest, " block/top block", BLOCK_VANISHING_BELOW, BLOCK_EXPLODING_ABOVE
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        quotients = g[:, :-1] / g[:, -1:]
    # 0/0 (no gradient anywhere, e.g. every relu dead) counts as vanished.
    quotients = np.nan_to_num(quotients, nan=0.0)
    weakest = float(np.median(quotients.min(axis=1)))
    strongest = float(np.median(quotients.max(axis=1)))
    return _labelled(weakest, strongest, "/output", VANISHING_BELOW, EXPLODING_ABOVE)


def _labelled(weakest: float, strongest: float, what: str, below: float, above: float) -> Verdict:
    """The verdict of a run's two medians: vanishing below ``below``, else
    exploding above ``above``, else healthy; ``what`` names the quotient."""
    figures = f"median weakest{what} {weakest:.3g}, strongest{what} {strongest:.3g}"
    if weakest < below:
        label = VANISHING
        figures += f"; {weakest:.3g} < {below:g}"
    elif strongest > above:
        label = EXPLODING
        figures += f"; {strongest:.3g} > {above:g}"
    else:
        label = HEALTHY
    return Verdict(label, weakest, strongest, figures)


def run_verdict(run) -> Verdict:
    """The verdict of a run read back with :func:`tbgrad.eventlog.load_run`,
    with its :class:`Explanation`."""
    train, val = run.train, run.validation
    prefix = tags.GRAD_MEAN_ABS + "/"
    layers = {t[len(prefix) :]: train.scalar(t) for t in train.scalars if t.startswith(prefix)}
    if train.kernels is not None:
        # With variables="all", biases and other weights are logged too; the
        # verdict compares the weight matrices only, in the summary's order
        # (model order, the reference last), which the tags' order is not
        # when the reference comes first in the model (a tied embedding).
        layers = {name: layers[name] for name in train.kernels if name in layers}
    nonfinite = sum(
        float(np.nansum(train.scalar(t)))
        for t in train.scalars
        if t.startswith(tags.GRAD_NONFINITE + "/")
    )
    loss = tags.epoch_tag("loss")
    losses = np.concatenate([train.scalar(loss), val.scalar(loss)])
    found = judge(layers, losses, nonfinite)
    epochs = train.steps(prefix + next(iter(layers))) if layers else []
    scalars = {tag: dict(series) for tag, series in train.scalars.items()}
    config = run.hparams
    why = explain_figures(found, layers, epochs, scalars, config, train.first_nonfinite)
    return replace(found, explanation=why)


def explain_figures(
    found: Verdict,
    grad_mean_abs: Mapping[str, Sequence[float]],
    epochs: Sequence[int],
    scalars: Mapping[str, Mapping[int, float]],
    config: Mapping[str, object] | None = None,
    first_nonfinite: tuple[int, str] | None = None,
) -> Explanation:
    """The :class:`Explanation` of ``found``, the verdict of these figures.

    Args:
        found: ``judge(grad_mean_abs, ...)``.
        grad_mean_abs: ``{kernel: mean |g| per epoch}`` in model order,
            output layer last, as given to :func:`judge`.
        epochs: The epoch (step) of each value of ``grad_mean_abs``.
        scalars: ``{tag: {epoch: value}}`` of the run's train folder: the
            ``activation_*``, ``update_ratio``, ``grad_mean_abs_max``,
            ``grad_nonfinite`` and ``clip/*`` tags that were logged.
        config: The run's HParams (``act``, ``init``, ...), when known; the
            suggestion names them.
        first_nonfinite: ``(epoch, where)`` of the run's first NaN or Inf
            (:attr:`tbgrad.eventlog.SplitData.first_nonfinite`), a note of a
            non-finite verdict.
    """
    names = list(grad_mean_abs)
    epochs = [int(e) for e in epochs]
    if found.label == UNKNOWN or len(names) < 2 or not epochs:
        return Explanation(found.reason, suggestion=_UNKNOWN_SUGGESTION)
    # A non-finite run is explained by where the NaN or Inf is, blocks or not.
    structure = block_structure(names[:-1]) if found.label != NON_FINITE else None
    if structure is None:
        rule, layers, window = _concerned(found, grad_mean_abs, epochs, scalars)
        where = ""
    else:
        rule, layers, window, where = _concerned_blocks(found, grad_mean_abs, epochs, structure)
    hidden = names[:-1]
    signals, flags = _signals(hidden, list(layers) or hidden, window or epochs, scalars)
    signals.update(
        {
            "weakest_ratio": found.weakest_ratio,
            "strongest_ratio": found.strongest_ratio,
            "epochs_concerned": float(len(window)),
            "epochs": float(len(epochs)),
        }
    )
    notes = tuple(note for _, note in flags.values())
    if found.label == NON_FINITE and first_nonfinite is not None:
        notes = (f"first NaN or Inf in epoch {first_nonfinite[0]}: {first_nonfinite[1]}", *notes)
    if structure is None:
        suggestion = _suggest(found.label, layers, flags, dict(config or {}))
    else:
        signals.update(_block_signals(grad_mean_abs, structure))
        notes = (where, *notes) if where else notes
        suggestion = _block_suggestion(found.label, where, flags, dict(config or {}))
    span = (window[0], window[-1]) if window else None
    return Explanation(rule, tuple(layers), span, signals, notes, suggestion)


def _concerned(found: Verdict, grad_mean_abs, epochs: list[int], scalars):
    """``(rule, layers, epochs)``: the rule that fired, the layers it concerns
    and the epochs where they break it."""
    g = np.stack([np.asarray(v, np.float64) for v in grad_mean_abs.values()], axis=1)
    hidden = list(grad_mean_abs)[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.nan_to_num(g[:, :-1] / g[:, -1:], nan=0.0)  # epochs x hidden layers
    if found.label == VANISHING:
        rule = f"weakest/output < {VANISHING_BELOW:g} (median {found.weakest_ratio:.3g})"
        return (rule,) + _past(q < VANISHING_BELOW, hidden, epochs, np.median(q, axis=0))
    if found.label == EXPLODING:
        rule = f"strongest/output > {EXPLODING_ABOVE:g} (median {found.strongest_ratio:.3g})"
        return (rule,) + _past(q > EXPLODING_ABOVE, hidden, epochs, -np.median(q, axis=0))
    if found.label == NON_FINITE:
        return (found.reason,) + _nonfinite(list(grad_mean_abs), epochs, scalars)
    rule = (
        f"weakest/output >= {VANISHING_BELOW:g} and strongest/output <= {EXPLODING_ABOVE:g} "
        f"(medians {found.weakest_ratio:.3g}, {found.strongest_ratio:.3g})"
    )
    return rule, (), []


def _past(beyond: np.ndarray, hidden: list[str], epochs: list[int], order: np.ndarray):
    """``(layers, epochs)``: the epochs where some hidden layer is ``beyond``
    the threshold, and the layers beyond it in at least half of those (else
    the one with the most extreme median, ``order``'s smallest)."""
    rows = np.flatnonzero(beyond.any(axis=1))
    if not rows.size:
        return (hidden[int(np.argmin(order))],), []
    share = beyond[rows].mean(axis=0)
    layers = [name for name, s in zip(hidden, share) if s >= 0.5]
    layers = layers or [hidden[int(np.argmax(share))]]
    return tuple(layers), [epochs[i] for i in rows]


def _nonfinite(names: list[str], epochs: list[int], scalars):
    """``(layers, epochs)`` with NaN or Inf gradient entries (or loss)."""
    layers, bad = [], set()
    for name in names:
        counts = scalars.get(tags.layer_tag(tags.GRAD_NONFINITE, name), {})
        hit = {e for e, c in counts.items() if not (c == 0)}
        if hit:
            layers.append(name)
            bad |= hit
    loss = scalars.get(tags.epoch_tag("loss"), {})
    bad |= {e for e, v in loss.items() if not math.isfinite(v)}
    return tuple(layers), sorted(bad)


# -- models with repeated blocks -------------------------------------------------


def kind_ratios(
    grad_mean_abs: Mapping[str, Sequence[float]], structure: BlockStructure
) -> dict[tuple[str, str], dict[int, np.ndarray]]:
    """``{(family, kind): {index: mean |g| per epoch over the top block's}}``:
    each matrix against the same kind's in its family's block nearest the
    output (query with query), the top one left out."""
    out: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    for family, kinds in structure.families.items():
        for kind, by_index in kinds.items():
            top = max(by_index)
            over = np.asarray(grad_mean_abs[by_index[top]], np.float64)
            for index, name in by_index.items():
                if index == top:
                    continue
                with np.errstate(divide="ignore", invalid="ignore"):
                    q = np.asarray(grad_mean_abs[name], np.float64) / over
                # 0/0 (no gradient in either) counts as vanished, as in judge.
                out.setdefault((family, kind), {})[index] = np.nan_to_num(q, nan=0.0)
    return out


def block_ratios(
    grad_mean_abs: Mapping[str, Sequence[float]], structure: BlockStructure
) -> tuple[list[tuple[str, int]], np.ndarray]:
    """``(blocks, ratios)``: ``ratios[epoch, j]`` is the median over block
    ``blocks[j]``'s kinds of :func:`kind_ratios`: how much gradient the
    block receives against the top block, whatever each kind's own level.

    The top blocks themselves (1 by definition) are left out.
    """
    columns: dict[tuple[str, int], list[np.ndarray]] = {}
    for (family, _), by_index in kind_ratios(grad_mean_abs, structure).items():
        for index, q in by_index.items():
            columns.setdefault((family, index), []).append(q)
    blocks = [block for block in structure.blocks if block in columns]
    ratios = [np.median(np.stack(columns[block]), axis=0) for block in blocks]
    return blocks, np.stack(ratios, axis=1)


def _weak_kinds(grad_mean_abs, structure: BlockStructure) -> str:
    """A sentence on the kinds whose lower blocks get under
    :data:`BLOCK_VANISHING_BELOW` of the top block's while the blocks as a
    whole do not (attention's query and key when only they are stuck), or ""."""
    weak: dict[str, list[str]] = {}
    shares, blocks = [], []
    for (family, kind), by_index in kind_ratios(grad_mean_abs, structure).items():
        medians = {i: float(np.median(q)) for i, q in by_index.items()}
        low = [i for i, m in medians.items() if m < BLOCK_VANISHING_BELOW]
        if low:
            weak.setdefault(family, []).append(kind)
            shares += [medians[i] for i in low]
            blocks += [(family, i) for i in low]
    if not weak:
        return ""
    kinds = " and ".join(kind for family_kinds in weak.values() for kind in family_kinds)
    where = describe_blocks(sorted(set(blocks)), structure)
    return (
        f"{kinds} of {where} receive {float(np.median(shares)):.2g} times the top block's "
        "mean |g|; the blocks' other matrices do not"
    )


def describe_blocks(blocks: Sequence[tuple[str, int]], structure: BlockStructure) -> str:
    """``blocks 0-3, 7 (transformer_layer_0 .. transformer_layer_7)``, a
    family at a time."""
    out = []
    for family in dict.fromkeys(f for f, _ in blocks):
        indices = sorted(i for f, i in blocks if f == family)
        first, last = (structure.labels[(family, i)] for i in (indices[0], indices[-1]))
        if len(indices) == 1:
            out.append(f"block {indices[0]} ({first})")
        else:
            out.append(f"blocks {_ranges(indices)} ({first} .. {last})")
    return "; ".join(out)


def _ranges(indices: Sequence[int]) -> str:
    """``0-3, 7`` for ``[0, 1, 2, 3, 7]``."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)


def _concerned_blocks(found: Verdict, grad_mean_abs, epochs: list[int], structure):
    """``(rule, layers, epochs, where)`` of a block model: the rule, the
    matrices of the blocks beyond the threshold, the epochs where some block
    is, and a sentence naming the blocks and their share (of a healthy run:
    the kinds that get too little in some blocks, or "")."""
    blocks, ratios = block_ratios(grad_mean_abs, structure)
    below, above = BLOCK_VANISHING_BELOW, BLOCK_EXPLODING_ABOVE
    quotient = "block/top block"
    if found.label == VANISHING:
        rule = f"weakest {quotient} < {below:g} (median {found.weakest_ratio:.3g})"
        order = np.median(ratios, axis=0)
        concerned, window = _past(ratios < below, blocks, epochs, order)
    elif found.label == EXPLODING:
        rule = f"strongest {quotient} > {above:g} (median {found.strongest_ratio:.3g})"
        order = -np.median(ratios, axis=0)
        concerned, window = _past(ratios > above, blocks, epochs, order)
    else:
        rule = (
            f"weakest {quotient} >= {below:g} and strongest {quotient} <= {above:g} "
            f"(medians {found.weakest_ratio:.3g}, {found.strongest_ratio:.3g})"
        )
        return rule, (), [], _weak_kinds(grad_mean_abs, structure)
    rows = [epochs.index(e) for e in window] or list(range(len(epochs)))
    share = float(np.median(ratios[np.ix_(rows, [blocks.index(b) for b in concerned])]))
    members = structure.members
    layers = tuple(name for name in grad_mean_abs if members.get(name) in concerned)
    top = structure.top(concerned[0][0])
    where = (
        f"{describe_blocks(concerned, structure)} receive {share:.2g} times the mean |g| "
        f"of the top block ({top}), kind by kind"
    )
    return rule, layers, window, where


def _block_signals(grad_mean_abs, structure: BlockStructure) -> dict[str, float]:
    """The number of blocks, and each embedding's median mean |g| over the
    reference's (a figure to read, not judged)."""
    names = list(grad_mean_abs)
    out = {"blocks": float(len(structure.labels))}
    reference = np.asarray(grad_mean_abs[names[-1]], np.float64)
    for name in names[:-1]:
        if name.endswith(EMBEDDINGS):
            with np.errstate(divide="ignore", invalid="ignore"):
                q = np.asarray(grad_mean_abs[name], np.float64) / reference
            out[f"embedding_ratio/{name}"] = float(np.median(q))
    return out


_BLOCK_VANISHING_FIX = (
    "check the blocks' initialisation scale (normal with std 0.02, the residual "
    "output projections scaled down by 1/sqrt(2 x blocks)), normalise before each "
    "sublayer (pre-LN), and warm the learning rate up"
)
_BLOCK_EXPLODING_FIX = (
    "lower the learning rate and warm it up, clip the gradients (clipnorm=1.0), "
    "normalise before each sublayer (pre-LN), and check the blocks' initialisation scale"
)


def _block_suggestion(label: str, where: str, flags: dict, config: dict) -> str:
    """What to try in a block model: transformer advice for the blocks
    concerned, else what the flags say."""
    if label == VANISHING:
        return f"{where}: {_BLOCK_VANISHING_FIX}"
    if label == EXPLODING:
        return f"{where}: {_BLOCK_EXPLODING_FIX}"
    return _suggest(label, (), flags, config)


def verdict_of(run_dir: str | os.PathLike) -> Verdict:
    """Reads the run folder ``run_dir`` and returns its verdict."""
    from tbgrad.eventlog import load_run

    return run_verdict(load_run(run_dir))


def explain(run) -> Explanation:
    """Why the run got its verdict, and what to try.

    Args:
        run: A run folder (path or URL), or a run read back with
            :func:`tbgrad.eventlog.load_run`.

    Example:
        >>> print(tbgrad.explain("logs/A2-tanh-uniform01-d5-w5-sgd-s1"))
    """
    if isinstance(run, (str, os.PathLike)):
        return verdict_of(run).explanation
    return run_verdict(run).explanation


# -- the explanation's signals and suggestion ---------------------------------------

_UNKNOWN_SUGGESTION = "log at least two kernel layers for one finished epoch"
_GLOROT = ("glorot_uniform", "glorot_normal", "xavier")
_HE = ("he_uniform", "he_normal")


def layer_span(layers: Sequence[str]) -> str:
    """``hidden_3..hidden_5`` for three or more layers, else the names joined
    by commas; the matrices of numbered blocks by their first and last block.

    Example:
        >>> layer_span([f"transformer_layer_{i}/{k}" for i in range(6) for k in "qkv"])
        'transformer_layer_0..transformer_layer_5 (18 matrices)'
    """
    layers = list(layers)
    if len(layers) < 3:
        return ", ".join(layers)
    places = [outermost_block(name) for name in layers]
    indices: dict[str, set[int]] = {}
    for place in places:
        if place is not None:
            indices.setdefault(place[0], set()).add(place[1])
    blocks = [family for family, at in indices.items() if len(at) >= 2]
    if not blocks:
        return f"{layers[0]}..{layers[-1]}"
    pieces = [_block_span([p[1:] for p in places if p and p[0] == f]) for f in blocks]
    rest = [name for name, p in zip(layers, places) if p is None or p[0] not in blocks]
    return ", ".join(pieces + ([layer_span(rest)] if rest else []))


def _block_span(members: list[tuple[int, str, str]]) -> str:
    """``transformer_layer_0..transformer_layer_5 (36 matrices)`` from
    ``(index, kind, block name)`` of each matrix."""
    indices = sorted({index for index, _, _ in members})
    label = {index: name for index, _, name in members}
    kinds = list(dict.fromkeys(kind for _, kind, _ in members))
    what = " and ".join(kinds) if len(kinds) <= 2 else f"{len(members)} matrices"
    if indices != list(range(indices[0], indices[-1] + 1)):
        what = f"blocks {_ranges(indices)}; {what}"
    return f"{label[indices[0]]}..{label[indices[-1]]} ({what})"


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _medians(family: str, layers: Sequence[str], window: Sequence[int], scalars) -> dict:
    """``{layer: median of family over the epochs of window}`` of the layers that log it."""
    out = {}
    for layer in layers:
        series = scalars.get(tags.layer_tag(family, layer)) or {}
        values = [series[e] for e in window if e in series and math.isfinite(series[e])]
        if values:
            out[layer] = float(np.median(values))
    return out


def _focused(medians: dict, focus: Sequence[str]) -> list[float]:
    """The medians of the focus layers, or of every layer when none of them has one."""
    return [medians[n] for n in focus if n in medians] or list(medians.values())


def _signals(hidden: list[str], focus: list[str], window: list[int], scalars):
    """``(signals, flags)``: the supporting figures over ``window``, and
    ``{name: (layers, note)}`` of those past their thresholds."""
    signals: dict[str, float] = {}
    flags: dict[str, tuple[list[str], str]] = {}
    saturated = _medians(tags.ACTIVATION_SATURATED, hidden, window, scalars)
    if saturated:
        signals["saturated"] = float(np.mean(_focused(saturated, focus)))
        over = [n for n, v in saturated.items() if v > SATURATED_ABOVE]
        if over:
            share = np.mean([saturated[n] for n in over])
            flags["saturated"] = (over, f"{layer_span(over)} saturated ({share:.0%})")
    zero = _medians(tags.ACTIVATION_ZERO, hidden, window, scalars)
    if zero:
        signals["zero"] = float(np.mean(_focused(zero, focus)))
    dead = _medians(tags.ACTIVATION_DEAD, hidden, window, scalars)
    if dead:
        signals["dead"] = max(dead.values())
        over = [n for n, v in dead.items() if v > DEAD_ABOVE]
        if over:
            share = max(dead[n] for n in over)
            flags["dead"] = (over, f"{layer_span(over)}: up to {share:.0%} of units dead")
    _update_signals(_medians(tags.UPDATE_RATIO, hidden, window, scalars), focus, signals, flags)
    _spike_and_clip(focus, window, scalars, signals)
    return signals, flags


def _update_signals(ratios: dict, focus: list[str], signals: dict, flags: dict) -> None:
    """The update ratio (median of the focus layers') and its flags."""
    if not ratios:
        return
    signals["update_ratio"] = float(np.median(_focused(ratios, focus)))
    low = [n for n, v in ratios.items() if v < UPDATE_RATIO_BELOW]
    high = [n for n, v in ratios.items() if v > UPDATE_RATIO_ABOVE]
    if low:
        worst = min(ratios[n] for n in low)
        flags["update_low"] = (
            low,
            f"{layer_span(low)} update ratio down to {worst:.1e} (~1e-3 usual)",
        )
    if high:
        worst = max(ratios[n] for n in high)
        flags["update_high"] = (
            high,
            f"{layer_span(high)} update ratio up to {worst:.1e} (~1e-3 usual)",
        )


def _spike_and_clip(layers: list[str], window: list[int], scalars, signals: dict) -> None:
    """The largest per-step mean |g| over its epoch mean, and the clipped share."""
    spikes = []
    for layer in layers:
        top = scalars.get(tags.layer_tag(tags.GRAD_MEAN_ABS_MAX, layer)) or {}
        mean = scalars.get(tags.layer_tag(tags.GRAD_MEAN_ABS, layer)) or {}
        spikes += [top[e] / mean[e] for e in window if e in top and mean.get(e, 0) > 0]
    if spikes:
        signals["grad_spike"] = float(np.nanmax(spikes))
    share = scalars.get(tags.CLIP_SHARE) or {}
    clipped = [share[e] for e in window if e in share]
    if clipped:
        signals["clipped"] = float(np.mean(clipped))
    norms = scalars.get(tags.CLIP_NORM_BEFORE_MAX) or {}
    if any(e in norms for e in window):
        signals["clip_norm_before_max"] = float(max(norms[e] for e in window if e in norms))


def _init_name(init: str) -> str:
    return INITIALIZER_NAMES.get(init, init)


def _suggest(label: str, layers, flags: dict, config: dict) -> str:
    """What to try, from the flags and, when known, the activation and initializer."""
    act, init = str(config.get("act") or ""), str(config.get("init") or "")
    if label == NON_FINITE:
        return (
            "lower the learning rate or clip the gradients (clipnorm=1.0), and check "
            "the inputs and the loss for NaN or Inf"
        )
    if label == EXPLODING:
        fix = "lower the learning rate or clip the gradients (clipnorm=1.0)"
        if init and init not in _GLOROT + _HE:
            fix += f"; {_init_name(init)} weights: try glorot_uniform, or he_uniform with relu"
        return fix
    if label == VANISHING and "saturated" in flags:
        return _saturation_fix(flags["saturated"][1], act, init)
    if "dead" in flags:
        fix = "try a lower learning rate or leaky_relu"
        if init not in _HE:
            fix = "try he_uniform, a lower learning rate, or leaky_relu"
        return f"{flags['dead'][1]}: {fix}"
    if "update_low" in flags:
        return f"{flags['update_low'][1]}: raise the learning rate"
    if "update_high" in flags:
        return f"{flags['update_high'][1]}: lower the learning rate"
    if label == VANISHING:
        return _vanishing_fix(layers, act, init)
    return ""


def _vanishing_fix(layers, act: str, init: str) -> str:
    """What to try when the gradient vanishes without a supporting signal."""
    verb = "gets" if len(layers) == 1 else "get"
    weak = f"{layer_span(layers)} {verb} too little gradient"
    if act == "sigmoid":
        # sigmoid'(z) <= 0.25: every sigmoid layer divides the gradient by
        # four or more, saturated or not (study B's sigmoid model).
        return (
            f"{weak}: sigmoid's slope is at most 0.25, a factor paid at every layer: "
            "try relu with he_uniform, or tanh with glorot_uniform"
        )
    if act and init:
        better = "he_uniform" if act == "relu" else "glorot_uniform"
        if init not in (_HE if act == "relu" else _GLOROT):
            return f"{weak} with {act} and {_init_name(init)} weights: try {better}"
        return f"{weak} with {act} and {init}: try fewer layers, or batch normalization"
    return (
        f"{weak}: try glorot_uniform (tanh, sigmoid) or he_uniform (relu), fewer "
        "layers, or batch normalization"
    )


def _saturation_fix(note: str, act: str, init: str) -> str:
    """``hidden_3..hidden_5 saturated (97%) with tanh and RandomUniform(0, 1) weights: try ...``."""
    if not act:
        return f"saturating activations ({note}): try glorot_uniform or he init, or relu"
    with_what = f" with {act}" + (f" and {_init_name(init)} weights" if init else "")
    if init in _GLOROT:
        return f"{note}{with_what}: try relu with he_uniform, or fewer layers"
    return f"{note}{with_what}: try glorot_uniform, or relu with he_uniform"
