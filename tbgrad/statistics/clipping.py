"""How often gradient clipping changed the gradients, and their norm before it."""

from __future__ import annotations

import keras

from tbgrad import step as _step
from tbgrad import tags
from tbgrad.statistics.base import MAX, Family, Statistic

CLIP_OPTIONS = ("clipnorm", "clipvalue", "global_clipnorm")


def clip_limits(optimizer) -> dict | None:
    """``{option: limit}`` of a clipping optimizer (any of
    :data:`CLIP_OPTIONS` set), else None."""
    limits = {option: getattr(optimizer, option, None) for option in CLIP_OPTIONS}
    return limits if any(v is not None for v in limits.values()) else None


class ClipStats(Statistic):
    """Per measured step, from every gradient the optimizer receives before
    clipping (not only the tracked ones): whether a gradient exceeds a limit
    (a variable's norm above ``clipnorm``, an entry above ``clipvalue`` in
    size, the global norm above ``global_clipnorm``), and the global norm.
    Keras rescales also gradients within the limit, by 1 up to rounding, so
    a comparison of the values before and after would count every step.

    Under several replicas these are of the gradients summed over the
    replicas, what one device would clip; Keras itself clips each replica's
    part before the sum.
    """

    families = (
        Family(
            tags.CLIP_SHARE,
            "share of steps where clipping changed the gradients; their global norm before "
            "clipping (mean, max)",
            per_layer=False,
            when="with clipping",
            explains=True,
            row=f"`{tags.TRAIN_DIR}/{tags.CLIP_SHARE}`, "
            f"`{tags.TRAIN_DIR}/{tags.CLIP_NORM_BEFORE}`, "
            f"`{tags.TRAIN_DIR}/{tags.CLIP_NORM_BEFORE_MAX}`",
            condition="clipping",
        ),
        Family(tags.CLIP_NORM_BEFORE, "", per_layer=False, row="", condition="clipping"),
        Family(
            tags.CLIP_NORM_BEFORE_MAX,
            "",
            per_layer=False,
            explains=True,
            row="",
            condition="clipping",
        ),
    )
    cadence = _step.DIAGNOSTICS
    diagnostic = True
    reads_unclipped = True

    @classmethod
    def wanted(cls, setup):
        return setup.diagnostics and setup.clip_limits is not None

    def __init__(self, setup):
        super().__init__(setup)
        self.limits = dict(setup.clip_limits)
        # [steps clipped, sum of norms, steps], and the largest norm.
        self.add_state("sums", [3])
        self.add_state("max", [], combine=MAX)

    def update(self, step, carry=None):
        grads = [keras.ops.cast(g, "float32") for g in step.unclipped or () if g is not None]
        if not grads:
            return {}
        norms = keras.ops.sqrt(keras.ops.stack([keras.ops.sum(g * g) for g in grads]))
        norm = keras.ops.sqrt(keras.ops.sum(norms * norms))
        exceeded = []
        if self.limits["clipnorm"] is not None:
            exceeded.append(keras.ops.any(norms > self.limits["clipnorm"]))
        if self.limits["global_clipnorm"] is not None:
            exceeded.append(norm > self.limits["global_clipnorm"])
        if self.limits["clipvalue"] is not None:
            largest = keras.ops.max(
                keras.ops.stack([keras.ops.max(keras.ops.abs(g)) for g in grads])
            )
            exceeded.append(largest > self.limits["clipvalue"])
        changed = keras.ops.cast(keras.ops.any(keras.ops.stack(exceeded)), "float32")
        return {"sums": keras.ops.stack([changed, norm, 1.0]), "max": norm}

    def result(self, values, epoch):
        changed, norms, steps = (float(v) for v in values["sums"])
        if steps == 0:
            return {}
        return {
            tags.CLIP_SHARE: changed / steps,
            tags.CLIP_NORM_BEFORE: norms / steps,
            tags.CLIP_NORM_BEFORE_MAX: float(values["max"]),
        }
