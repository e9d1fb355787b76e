"""The tag contract: every TensorBoard tag tbgrad writes, in one place.

Both training paths (the ``model.fit`` callback and the GradientTape loop)
write through :mod:`tbgrad.summary`, which takes its names from here, so a
run logged either way shows the same tags in the same folders.

Layout of a run folder::

    <run>/             HParams, and the verdict/* scalars at the end of training
    <run>/train/       epoch_* scalars, gradient and weight tags
    <run>/validation/  epoch_* scalars of the validation data

Per-layer tags use the layer's name (``hidden_1``, ..., ``output`` for
models built by :func:`tbgrad.lab.build_mlp`).
"""

from __future__ import annotations

TRAIN_DIR = "train"
VALIDATION_DIR = "validation"

# Per-layer tag families. The key is the family, the value what it holds.
GRADIENTS = "gradients"
GRAD_MEAN_ABS = "grad_mean_abs"
GRAD_STD = "grad_std"
GRAD_NONFINITE = "grad_nonfinite"
WEIGHTS = "weights"
WEIGHT_MEAN = "weight_mean"
WEIGHT_STD = "weight_std"
WEIGHT_L1 = "weight_l1"
# ||w_after - w_before|| / ||w_before|| of the kernel over one optimizer step
# (weight decay and clipping included), averaged over the epoch's steps;
# about 1e-3 is the usual rule of thumb (tbgrad.diagnostics).
UPDATE_RATIO = "update_ratio"
# The epoch's largest per-step mean |g| of the kernel gradient: a one-step
# spike the epoch average hides.
GRAD_MEAN_ABS_MAX = "grad_mean_abs_max"
# The L2 norm of the layer's gradient per step (finite entries), the epoch's
# mean and largest; the norm of every tracked gradient together (run-level).
GRAD_NORM = "grad_norm"
GRAD_NORM_MAX = "grad_norm_max"
GRAD_GLOBAL_NORM = "grad_global_norm"
GRAD_GLOBAL_NORM_MAX = "grad_global_norm_max"
# Activation health, from the outputs of the training forward pass
# (tbgrad.diagnostics.ActivationHealth): for tanh and sigmoid layers the
# share of saturated outputs, for relu layers the share of zero outputs and
# of dead units (zero for every sample of the epoch); an output histogram.
ACTIVATION_SATURATED = "activation_saturated"
ACTIVATION_ZERO = "activation_zero"
ACTIVATION_DEAD = "activation_dead"
ACTIVATIONS = "activations"
# With a clipping optimizer: the share of the epoch's steps in which
# clipping changed the gradients, and their global norm before clipping
# (the epoch's mean and largest).
CLIP_SHARE = "clip/share"
CLIP_NORM_BEFORE = "clip/norm_before"
CLIP_NORM_BEFORE_MAX = "clip/norm_before_max"
# Written once, as text, at the epoch where a gradient or weight first turned
# NaN or Inf: which step, which layer.
FIRST_NONFINITE = "first_nonfinite"
# log10 of the layer's grad_mean_abs divided by the output layer's (the last
# kernel's): 0 as strong as the output layer, -1 ten times weaker, -inf when
# the layer's gradient is exactly 0. One Custom Scalars chart per layer.
GRAD_LOG10_RATIO = "grad_log10_ratio"

# Run-level gradient-flow scalar: mean |g| of the first kernel layer divided
# by that of the last (the output layer). Far below 1: vanishing gradients.
GRAD_RATIO = "grad_ratio"

# Run-level count of the epoch's steps whose gradients a LossScaleOptimizer
# did not apply (non-finite after loss scaling); the gradient tags average
# over the applied steps only.
GRAD_SKIPPED_STEPS = "grad_skipped_steps"

# Per-step (update_freq=N) variant of the gradient magnitude, at the global
# step, like Keras's ``batch_loss`` next to ``epoch_loss``.
BATCH_GRAD_MEAN_ABS = "batch_grad_mean_abs"

# Run-level, written once when a lab run ends, into the run folder itself
# (next to its HParams, which show them as metrics): the verdict as a number
# (tbgrad.verdict.CODES) and the two medians it rests on.
VERDICT = "verdict/code"
VERDICT_WEAKEST_RATIO = "verdict/weakest_ratio"
VERDICT_STRONGEST_RATIO = "verdict/strongest_ratio"

EPOCH_PREFIX = "epoch_"
BATCH_PREFIX = "batch_"

# The README's tag table rows that no statistic writes: (tag, dashboard,
# when, what it means). The statistics' rows come from their descriptions
# (tbgrad.statistics.REGISTRY); tests/library/test_tags.py checks that the
# README shows exactly markdown_table().
KERAS_ROWS = (
    (
        f"`{TRAIN_DIR}/epoch_loss`, `{TRAIN_DIR}/epoch_accuracy`, "
        f"`{TRAIN_DIR}/epoch_learning_rate`",
        "Scalars",
        "every epoch",
        "Keras's epoch averages and the learning rate",
    ),
    (
        f"`{VALIDATION_DIR}/epoch_loss`, `{VALIDATION_DIR}/epoch_accuracy`",
        "Scalars",
        "every epoch",
        "loss and accuracy on the validation data",
    ),
    (
        f"`{TRAIN_DIR}/<weight path>/histogram`",
        "Histograms",
        "every `histogram_freq` epochs",
        "Keras's (the callback only): every weight of every layer",
    ),
)
STEP_ROWS = (
    (
        f"`{TRAIN_DIR}/batch_loss`, `{TRAIN_DIR}/batch_accuracy`",
        "Scalars",
        "every N steps (`update_freq=N`)",
        "running epoch average at the global step",
    ),
    (
        f"`{TRAIN_DIR}/{BATCH_GRAD_MEAN_ABS}/<layer>`",
        "Scalars",
        "every N steps (`update_freq=N`)",
        "mean \\|g\\| of that step's gradient",
    ),
    (
        f"`{VERDICT}`, `{VERDICT_WEAKEST_RATIO}`, `{VERDICT_STRONGEST_RATIO}`",
        "HParams, Scalars",
        "when a `tbgrad train` run ends",
        "in the run folder: the verdict (-1 vanishing, 0 healthy, 1 exploding, 2 "
        "non-finite) and the medians it compares with 0.1 and 100",
    ),
)

# When a statistic's tags are written, by its cadence (tbgrad.step).
CADENCE_WHEN = {
    "every": "every epoch",
    "epoch": "every epoch",
    "histogram": "every `histogram_freq` epochs",
    "diagnostics": "every epoch (diagnostics, sampled)",
}


def table() -> list[tuple[str, str, str, str]]:
    """The README's tag table: (tag, dashboard, when, what it means), in order."""
    from tbgrad.statistics import REGISTRY

    rows = list(KERAS_ROWS)
    for statistic in REGISTRY:
        for family in statistic.families:
            if family.row == "":
                continue  # shown in the row before it
            when = CADENCE_WHEN[statistic.cadence]
            if family.when and (family.when.startswith("every") or family.when == "once"):
                when = family.when
            elif family.when:
                when = f"{when}, {family.when}"
            rows.append((family.tag_text, family.boards, when, family.meaning))
    return rows + list(STEP_ROWS)


def markdown_table() -> str:
    """The tag table of the README, rendered from :func:`table`."""
    lines = ["| tag | dashboard | when | what it means |", "|---|---|---|---|"]
    lines += [f"| {tag} | {board} | {when} | {meaning} |" for tag, board, when, meaning in table()]
    return "\n".join(lines)


def layer_tag(family: str, layer: str) -> str:
    """Returns the tag of ``family`` for ``layer``, e.g. ``gradients/hidden_1``."""
    return f"{family}/{layer}"


def epoch_tag(metric: str) -> str:
    """Returns the per-epoch tag of a Keras metric, e.g. ``epoch_loss``."""
    return f"{EPOCH_PREFIX}{metric}"


def batch_tag(metric: str) -> str:
    """Returns the per-step tag of a Keras metric, e.g. ``batch_loss``."""
    return f"{BATCH_PREFIX}{metric}"


# The activation-health families of a layer, by its activation.
ACTIVATION_FAMILIES = {
    "tanh": (ACTIVATION_SATURATED,),
    "sigmoid": (ACTIVATION_SATURATED,),
    "relu": (ACTIVATION_ZERO, ACTIVATION_DEAD),
}


def families(kind: str | None = None, per_layer: bool | None = None) -> list[str]:
    """The tag families the statistics always write (no ``condition``), of a
    ``kind`` (``"scalar"``, ``"histogram"``) and scope if given."""
    from tbgrad.statistics import families as all_families

    return [
        f.name
        for f in all_families()
        if f.condition is None
        and (kind is None or f.kind == kind)
        and (per_layer is None or f.per_layer == per_layer)
    ]


def layer_tags(
    layers: list[str],
    histograms: bool = True,
    activations: dict[str, str] | None = None,
    diagnostics: bool = True,
) -> dict[str, str]:
    """Returns {tag: plugin} of the per-epoch gradient and weight tags of a
    run that tracks ``layers`` (with the run-level gradient tags).

    ``plugin`` is ``"histograms"`` or ``"scalars"``, the TensorBoard plugin
    that shows the tag. ``activations`` maps layers to their activation
    (``"tanh"``, ``"sigmoid"``, ``"relu"``) for the activation-health tags.
    """
    from tbgrad.statistics import REGISTRY

    tags: dict[str, str] = {}
    if len(layers) >= 2:
        tags[GRAD_RATIO] = "scalars"
    for statistic in REGISTRY:
        if statistic.diagnostic and not diagnostics:
            continue
        for family in statistic.families:
            if family.condition is not None or (family.kind == "histogram" and not histograms):
                continue
            plugin = "histograms" if family.kind == "histogram" else "scalars"
            names = [layer_tag(family.name, layer) for layer in layers]
            for tag in names if family.per_layer else [family.name]:
                tags[tag] = plugin
    for layer, kind in (activations or {}).items() if diagnostics else ():
        for family in ACTIVATION_FAMILIES[kind]:
            tags[layer_tag(family, layer)] = "scalars"
        if histograms:
            tags[layer_tag(ACTIVATIONS, layer)] = "histograms"
    return tags
