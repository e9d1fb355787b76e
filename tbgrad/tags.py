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
        "training loss and accuracy (Keras's epoch averages) and the learning rate",
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
        "histogram of the kernel gradient the optimizer applied in the first training "
        "step of the epoch (finite entries only)",
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
        "mean \\|g\\| of the kernel gradient, averaged over every training step of the "
        "epoch: the layer's gradient magnitude",
    ),
    (
        f"`{TRAIN_DIR}/{GRAD_STD}/<layer>`",
        "Scalars, Gradient flow",
        "every epoch",
        "standard deviation of the kernel gradient, averaged over every training step of the epoch",
    ),
    (
        f"`{TRAIN_DIR}/{GRAD_LOG10_RATIO}/<layer>`",
        "Custom Scalars, Scalars, Gradient flow",
        "every epoch",
        f"log10 of the layer's `{GRAD_MEAN_ABS}` over the output layer's: 0 as strong, -1 ten "
        "times weaker",
    ),
    (
        f"`{TRAIN_DIR}/{GRAD_NONFINITE}/<layer>`",
        "Scalars",
        "every epoch",
        "number of NaN or Inf kernel-gradient entries in the epoch (0 in a healthy run)",
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
        "L1 norm (sum of \\|w\\|) of the kernel: how much the layer has grown or changed",
    ),
    (
        f"`{TRAIN_DIR}/{UPDATE_RATIO}/<layer>`",
        "Scalars, Gradient flow",
        "every epoch",
        "\\|\\|Δw\\|\\| / \\|\\|w\\|\\| per step, epoch mean (near 1e-3 is usual)",
    ),
    (
        f"`{TRAIN_DIR}/{GRAD_RATIO}`",
        "Scalars",
        "every epoch",
        f"`{GRAD_MEAN_ABS}` of the first kernel layer divided by that of the last (output) "
        "layer; far below 1 means the gradient vanishes on its way to the input",
    ),
    (
        f"`{TRAIN_DIR}/{GRAD_SKIPPED_STEPS}`",
        "Scalars",
        "every epoch, with a `LossScaleOptimizer`",
        "steps of the epoch whose gradients the optimizer skipped (non-finite after loss "
        "scaling); the gradient tags above average over the other steps, the histogram is "
        "the first applied step's, and an epoch with no applied step has no gradient tags",
    ),
    (
        f"`{TRAIN_DIR}/batch_loss`, `{TRAIN_DIR}/batch_accuracy`",
        "Scalars",
        "every N steps",
        "running epoch average at the global step (only with `update_freq=N`)",
    ),
    (
        f"`{TRAIN_DIR}/{BATCH_GRAD_MEAN_ABS}/<layer>`",
        "Scalars",
        "every N steps",
        "mean \\|g\\| of that one step's kernel gradient, at the global step (only with "
        "`update_freq=N`)",
    ),
    (
        f"`{VERDICT}`, `{VERDICT_WEAKEST_RATIO}`, `{VERDICT_STRONGEST_RATIO}`",
        "HParams, Scalars",
        "when a `tbgrad train` run ends",
        "in the run folder itself: the verdict as a number (-1 vanishing, 0 healthy, 1 "
        "exploding, 2 non-finite) and the two medians it compares with 0.1 and 100",
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


def layer_tags(layers: list[str], histograms: bool = True) -> dict[str, str]:
    """Returns {tag: plugin} of the per-epoch layer tags for ``layers``.

    ``plugin`` is ``"histograms"`` or ``"scalars"``, the TensorBoard plugin
    that shows the tag.
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
    return tags
