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

HISTOGRAM_FAMILIES = (GRADIENTS, WEIGHTS)
EPOCH_SCALAR_FAMILIES = (
    GRAD_MEAN_ABS,
    GRAD_STD,
    GRAD_NONFINITE,
    GRAD_MEAN_ABS_MAX,
    WEIGHT_MEAN,
    WEIGHT_STD,
    WEIGHT_L1,
    UPDATE_RATIO,
    GRAD_LOG10_RATIO,
)

# The README's tag table: (tag, dashboard, when, what it means), in order.
# tests/library/test_tags.py checks that the README shows exactly this.
TABLE = (
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
        f"`{TRAIN_DIR}/{GRADIENTS}/<layer>`",
        "Histograms, Distributions",
        "every `histogram_freq` epochs",
        "the kernel gradient the optimizer applied in the epoch's first step (finite entries)",
    ),
    (
        f"`{TRAIN_DIR}/{WEIGHTS}/<layer>`",
        "Histograms, Distributions",
        "every `histogram_freq` epochs",
        "histogram of the kernel at the end of the epoch",
    ),
    (
        f"`{TRAIN_DIR}/{GRAD_MEAN_ABS}/<layer>`",
        "Scalars, Gradient flow",
        "every epoch",
        "mean \\|g\\| of the kernel gradient, averaged over every step of the epoch",
    ),
    (
        f"`{TRAIN_DIR}/{GRAD_STD}/<layer>`",
        "Scalars, Gradient flow",
        "every epoch",
        "standard deviation of the kernel gradient, averaged over the epoch's steps",
    ),
    (
        f"`{TRAIN_DIR}/{GRAD_LOG10_RATIO}/<layer>`",
        "Custom Scalars, Scalars, Gradient flow",
        "every epoch",
        f"log10 of the layer's `{GRAD_MEAN_ABS}` over the output layer's: 0 as strong, -1 ten "
        "times weaker",
    ),
    (
        f"`{TRAIN_DIR}/{GRAD_MEAN_ABS_MAX}/<layer>`",
        "Scalars, Gradient flow",
        "every epoch",
        "the epoch's largest per-step mean \\|g\\|: spikes the epoch mean hides",
    ),
    (
        f"`{TRAIN_DIR}/{GRAD_NONFINITE}/<layer>`",
        "Scalars",
        "every epoch",
        "NaN or Inf kernel-gradient entries in the epoch",
    ),
    (
        f"`{TRAIN_DIR}/{WEIGHT_MEAN}/<layer>`",
        "Scalars",
        "every epoch",
        "mean of the kernel at the end of the epoch",
    ),
    (
        f"`{TRAIN_DIR}/{WEIGHT_STD}/<layer>`",
        "Scalars, Gradient flow",
        "every epoch",
        "standard deviation of the kernel at the end of the epoch",
    ),
    (
        f"`{TRAIN_DIR}/{WEIGHT_L1}/<layer>`",
        "Scalars",
        "every epoch",
        "sum of \\|w\\| of the kernel",
    ),
    (
        f"`{TRAIN_DIR}/{UPDATE_RATIO}/<layer>`",
        "Scalars, Gradient flow",
        "every epoch (diagnostics)",
        "\\|\\|Δw\\|\\| / \\|\\|w\\|\\| per step, epoch mean (near 1e-3 is usual)",
    ),
    (
        f"`{TRAIN_DIR}/{ACTIVATION_SATURATED}/<layer>`",
        "Scalars, Gradient flow",
        "every epoch (diagnostics), tanh and sigmoid layers",
        "share of outputs saturated in training steps (tanh \\|a\\| > 0.97; sigmoid "
        "a < 0.03 or a > 0.97), epoch mean",
    ),
    (
        f"`{TRAIN_DIR}/{ACTIVATION_ZERO}/<layer>`, `{TRAIN_DIR}/{ACTIVATION_DEAD}/<layer>`",
        "Scalars, Gradient flow",
        "every epoch (diagnostics), relu layers",
        "share of outputs that are 0, epoch mean; share of units 0 for every sample of the "
        "epoch (dead)",
    ),
    (
        f"`{TRAIN_DIR}/{ACTIVATIONS}/<layer>`",
        "Histograms",
        "every `histogram_freq` epochs (diagnostics)",
        "the layer's outputs in the epoch's first training step",
    ),
    (
        f"`{TRAIN_DIR}/{CLIP_SHARE}`, `{TRAIN_DIR}/{CLIP_NORM_BEFORE}`, "
        f"`{TRAIN_DIR}/{CLIP_NORM_BEFORE_MAX}`",
        "Scalars",
        "every epoch (diagnostics), with clipping",
        "share of steps where clipping changed the gradients; their global norm before "
        "clipping (mean, max)",
    ),
    (
        f"`{TRAIN_DIR}/{FIRST_NONFINITE}`",
        "Text",
        "once",
        "the first step and layer whose gradient or weights turned NaN or Inf",
    ),
    (
        f"`{TRAIN_DIR}/{GRAD_RATIO}`",
        "Scalars",
        "every epoch",
        f"`{GRAD_MEAN_ABS}` of the first kernel layer over the output layer's",
    ),
    (
        f"`{TRAIN_DIR}/{GRAD_SKIPPED_STEPS}`",
        "Scalars",
        "every epoch, with a `LossScaleOptimizer`",
        "steps the optimizer skipped (non-finite after loss scaling); the gradient tags "
        "cover the applied steps only",
    ),
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
        "mean \\|g\\| of that step's kernel gradient",
    ),
    (
        f"`{VERDICT}`, `{VERDICT_WEAKEST_RATIO}`, `{VERDICT_STRONGEST_RATIO}`",
        "HParams, Scalars",
        "when a `tbgrad train` run ends",
        "in the run folder: the verdict (-1 vanishing, 0 healthy, 1 exploding, 2 "
        "non-finite) and the medians it compares with 0.1 and 100",
    ),
)


def markdown_table() -> str:
    """The tag table of the README, rendered from :data:`TABLE`."""
    lines = ["| tag | dashboard | when | what it means |", "|---|---|---|---|"]
    lines += [f"| {tag} | {board} | {when} | {meaning} |" for tag, board, when, meaning in TABLE]
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


def layer_tags(
    layers: list[str], histograms: bool = True, activations: dict[str, str] | None = None
) -> dict[str, str]:
    """Returns {tag: plugin} of the per-epoch layer tags for ``layers``.

    ``plugin`` is ``"histograms"`` or ``"scalars"``, the TensorBoard plugin
    that shows the tag. ``activations`` maps layers to their activation
    (``"tanh"``, ``"sigmoid"``, ``"relu"``) for the activation-health tags.
    """
    tags: dict[str, str] = {}
    if len(layers) >= 2:
        tags[GRAD_RATIO] = "scalars"
    for layer in layers:
        if histograms:
            for family in HISTOGRAM_FAMILIES:
                tags[layer_tag(family, layer)] = "histograms"
        for family in EPOCH_SCALAR_FAMILIES:
            tags[layer_tag(family, layer)] = "scalars"
    for layer, kind in (activations or {}).items():
        for family in ACTIVATION_FAMILIES[kind]:
            tags[layer_tag(family, layer)] = "scalars"
        if histograms:
            tags[layer_tag(ACTIVATIONS, layer)] = "histograms"
    return tags
