"""Reproduces the reference studies and Glorot & Bengio's finding.

:func:`plan` lists every configuration of ``shared/experiments.md`` (study A's
A1-A5, study B's warm-up models and its sigmoid/tanh/relu model through both
the fit path and the tape path) and the studies' suggested extensions (tanh
depth 1-10 at width 5 and 25, Xavier init and Adam for the deep tanh model),
over several seeds. :func:`run_all` trains them in parallel through
:func:`tbgrad.sweep.run_sweep`, logging every run with tbgrad;
:func:`summarize` reads the runs back and :func:`write_results` writes
``docs/results.md`` with the reported figures next to ours.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tbgrad.config import RunConfig, make_config

SEEDS = (1, 2, 3, 4, 5)
B_SEEDS = (42, 43, 44, 45, 46)
QUICK_EPOCHS = 30

# Figures as reported by the reference studies (shared/experiments.md).
REPORTED = {
    "A1": "train 0.816 / test 0.816",
    "A2": "train 0.530 / test 0.468 (fails to learn)",
    "A3": "train 0.836 / test 0.840",
    "A4": "still learns",
    "A5": "no longer learns",
    "B-warmup-relu": "accuracy 0.973",
    "B-warmup-sigmoid": "accuracy 0.654",
    "B-warmup-sigmoid3": "accuracy 0.533",
    "B-sigmoid-fit": "loss 0.665, accuracy 0.588",
    "B-tanh-fit": "loss 0.0129, accuracy 0.993",
    "B-relu-fit": "loss 0.0169, accuracy 0.994",
    "B-sigmoid-tape": "accuracy 0.500 -> 0.652",
    "B-tanh-tape": "accuracy 0.502 -> 0.994",
    "B-relu-tape": "accuracy 0.503 -> 0.995",
    "A2-xavier": "proposed, no figure",
    "A2-adam": "proposed, no figure",
}


@dataclass
class Group:
    """One row of the results: a configuration over several seeds."""

    key: str
    title: str
    configs: list[RunConfig]
    reported: str = ""
    runs: list[dict] = field(default_factory=list)


def plan(
    seeds: Iterable[int] = SEEDS,
    b_seeds: Iterable[int] = B_SEEDS,
    epochs: int | None = None,
    quick: bool = False,
    study_a_loop: str = "tape",
) -> list[Group]:
    """Every configuration of the reproduction, grouped by table row.

    Args:
        seeds: Seeds of study A's configurations and the extensions.
        b_seeds: Seeds of study B's configurations (the study used 42).
        epochs: Overrides every configuration's epoch count (``--quick``).
        quick: Only the configurations the qualitative checks need.
        study_a_loop: The loop of study A's runs and the extensions. Both
            loops log the same gradients (tests/test_training_paths.py); the
            compiled tape loop is the faster one.
    """
    seeds, b_seeds = list(seeds), list(b_seeds)

    def over(base: RunConfig, seed_list) -> list[RunConfig]:
        out = []
        for seed in seed_list:
            config = replace(base, seed=seed)
            if epochs is not None:
                config = replace(config, epochs=epochs)
            out.append(config.validate())
        return out

    def study_a(preset: str, **overrides) -> RunConfig:
        # Built without the preset's name so that A1/A2 and the identical
        # points of the depth grid share their runs.
        base = make_config(preset, loop=study_a_loop, **overrides)
        return replace(base, preset=None)

    groups = [
        Group("A2", "A2: 5 x tanh, uniform01, SGD", over(study_a("A2"), seeds)),
        Group("A3", "A3: 5 x relu, He uniform, SGD", over(study_a("A3"), seeds)),
    ]
    if quick:
        for group in groups:
            group.reported = REPORTED.get(group.key, "")
        return groups
    groups = [
        Group("A1", "A1: 1 x tanh, uniform01, SGD", over(study_a("A1"), seeds)),
        *groups,
        Group("A4", "A4: 15 x relu, He uniform, SGD", over(study_a("A4"), seeds)),
        Group("A5", "A5: 20 x relu, He uniform, SGD", over(study_a("A5"), seeds)),
    ]
    warm = dict(optimizer="adam", epochs=100, dataset="circles-b", init="glorot_uniform")
    groups += [
        Group(
            "B-warmup-relu",
            "B warm-up: Dense(5, relu) + output, Adam",
            over(make_config(act="relu", depth=1, **warm), b_seeds),
        ),
        Group(
            "B-warmup-sigmoid",
            "B warm-up: Dense(5, sigmoid) + output, Adam",
            over(make_config(act="sigmoid", depth=1, **warm), b_seeds),
        ),
        Group(
            "B-warmup-sigmoid3",
            "B warm-up: 3 x Dense(5, sigmoid) + output, Adam",
            over(make_config(act="sigmoid", depth=3, **warm), b_seeds),
        ),
    ]
    for act in ("sigmoid", "tanh", "relu"):
        for loop in ("fit", "tape"):
            groups.append(
                Group(
                    f"B-{act}-{loop}",
                    f"B: 4 x {act}, RandomNormal(0, 1), RMSprop ({loop})",
                    over(make_config(f"B-{act}", loop=loop), b_seeds),
                )
            )
    for width in (5, 25):
        for depth in range(1, 11):
            groups.append(
                Group(
                    f"tanh-d{depth}-w{width}",
                    f"tanh, uniform01, depth {depth}, width {width}",
                    over(study_a("A2", depth=depth, width=width), seeds),
                )
            )
    groups += [
        Group(
            "A2-xavier",
            "A2 with Xavier (Glorot uniform) init",
            over(study_a("A2", init="glorot_uniform"), seeds),
        ),
        Group("A2-adam", "A2 with Adam (lr 0.001)", over(study_a("A2", optimizer="adam", lr=0.001, momentum=0.0), seeds)),
    ]
    for group in groups:
        group.reported = REPORTED.get(group.key, "")
    return groups


def unique_configs(groups: list[Group]) -> list[RunConfig]:
    """The configurations to train, each once (groups may share runs)."""
    seen: dict[str, RunConfig] = {}
    for group in groups:
        for config in group.configs:
            seen.setdefault(config.run_name(), config)
    return list(seen.values())


def mean_std(values) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values))


def fmt(values, digits: int = 3) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
