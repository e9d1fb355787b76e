"""Reproduces the reference studies and Glorot & Bengio's finding.

:func:`plan` lists every configuration of ``shared/experiments.md`` (study A's
A1-A5, study B's warm-up models and its sigmoid/tanh/relu model through both
the fit path and the tape path) and the studies' suggested extensions (tanh
depth 1-10 at width 5 and 25, Xavier init and Adam for the deep tanh model),
over several seeds. :func:`run_all` trains them in parallel through
:func:`tbgrad.lab.sweep.run_sweep`, logging every run with tbgrad;
:func:`collect` reads the runs back and :func:`results_markdown` writes the
text of ``docs/results.md``, the reported figures (:mod:`tbgrad.lab.reported`)
next to ours.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tbgrad import tags
from tbgrad.lab import reported
from tbgrad.lab.averages import geomean
from tbgrad.lab.config import RunConfig, make_config
from tbgrad.lab.experiment import RESULT_FILE
from tbgrad.lab.glorot_check import flatness
from tbgrad.lab.reported import MARGIN, NOTES, REPORTED, REPORTED_NUMBERS
from tbgrad.verdict import (
    DEAD_ABOVE,
    SATURATED_ABOVE,
    VANISHING,
    layer_span,
)

SEEDS = (1, 2, 3, 4, 5)
B_SEEDS = (42, 43, 44, 45, 46)
QUICK_EPOCHS = 30
# The extensions' grid of the deep tanh model.
GRID_DEPTHS = range(1, 11)
GRID_WIDTHS = (5, 25)

STUDY_A_TITLES = {
    "A1": "A1: 1 x tanh, uniform01, SGD",
    "A2": "A2: 5 x tanh, uniform01, SGD",
    "A3": "A3: 5 x relu, He uniform, SGD",
    "A4": "A4: 15 x relu, He uniform, SGD",
    "A5": "A5: 20 x relu, He uniform, SGD",
}
# Study B's warm-up models: key -> (title, activation, depth).
B_WARMUPS = {
    "B-warmup-relu": ("B warm-up: Dense(5, relu) + output, Adam", "relu", 1),
    "B-warmup-sigmoid": ("B warm-up: Dense(5, sigmoid) + output, Adam", "sigmoid", 1),
    "B-warmup-sigmoid3": ("B warm-up: 3 x Dense(5, sigmoid) + output, Adam", "sigmoid", 3),
}
B_WARMUP_FIELDS = dict(optimizer="adam", epochs=100, dataset="circles-b", init="glorot_uniform")


@dataclass
class Group:
    """One row of the results: a configuration over several seeds."""

    key: str
    title: str
    configs: list[RunConfig]
    reported: str = ""
    runs: list[dict] = field(default_factory=list)
    summaries: list = field(default_factory=list)


@dataclass(frozen=True)
class _Planner:
    """Builds the groups of :func:`plan`, each configuration over its seeds."""

    seeds: list[int]
    b_seeds: list[int]
    epochs: int | None
    study_a_loop: str

    def over(self, base: RunConfig, seeds: list[int]) -> list[RunConfig]:
        out = []
        for seed in seeds:
            config = replace(base, seed=seed)
            if self.epochs is not None:
                config = replace(config, epochs=self.epochs)
            out.append(config.validate())
        return out

    def study_a(self, key: str, title: str, preset: str, **overrides) -> Group:
        # Built without the preset's name so that A1/A2 and the identical
        # points of the depth grid share their runs.
        base = replace(make_config(preset, loop=self.study_a_loop, **overrides), preset=None)
        return Group(key, title, self.over(base, self.seeds))

    def study_a_groups(self, keys: Iterable[str]) -> list[Group]:
        return [self.study_a(key, STUDY_A_TITLES[key], key) for key in keys]

    def study_b_groups(self) -> list[Group]:
        groups = []
        for key, (title, act, depth) in B_WARMUPS.items():
            base = make_config(act=act, depth=depth, **B_WARMUP_FIELDS)
            groups.append(Group(key, title, self.over(base, self.b_seeds)))
        for act in ("sigmoid", "tanh", "relu"):
            for loop in ("fit", "tape"):
                title = f"B: 4 x {act}, RandomNormal(0, 1), RMSprop ({loop})"
                configs = self.over(make_config(f"B-{act}", loop=loop), self.b_seeds)
                groups.append(Group(f"B-{act}-{loop}", title, configs))
        return groups

    def extension_groups(self) -> list[Group]:
        groups = [
            self.study_a(
                f"tanh-d{depth}-w{width}",
                f"tanh, uniform01, depth {depth}, width {width}",
                "A2",
                depth=depth,
                width=width,
            )
            for width in GRID_WIDTHS
            for depth in GRID_DEPTHS
        ]
        return groups + [
            self.study_a(
                "A2-xavier", "A2 with Xavier (Glorot uniform) init", "A2", init="glorot_uniform"
            ),
            self.study_a(
                "A2-adam", "A2 with Adam (lr 0.001)", "A2", optimizer="adam", lr=0.001, momentum=0.0
            ),
        ]


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
            loops log the same gradients (tests/library/test_training_paths.py);
            the compiled tape loop is the faster one.
    """
    planner = _Planner(list(seeds), list(b_seeds), epochs, study_a_loop)
    if quick:
        groups = planner.study_a_groups(("A2", "A3"))
    else:
        groups = [
            *planner.study_a_groups(STUDY_A_TITLES),
            *planner.study_b_groups(),
            *planner.extension_groups(),
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


# -- running ---------------------------------------------------------------------


def run_all(groups: list[Group], out_dir: Path, workers: int | None = None, progress: bool = True):
    """Trains every configuration of ``groups`` into ``out_dir/runs`` (resumable)."""
    from tbgrad.lab.sweep import run_sweep

    return run_sweep(
        unique_configs(groups), Path(out_dir) / "runs", workers=workers, progress=progress
    )


def initial_accuracy(config: RunConfig) -> float:
    """Training-data accuracy of ``config``'s model before training.

    :func:`tbgrad.lab.experiment.build` seeds and builds exactly the model the
    run started from, so this is the "before" of study B's tape loop.
    """
    from tbgrad.lab import experiment

    data, model, _ = experiment.build(config)
    return experiment.evaluate(model, data.x_train, data.y_train)[1]


def collect(groups: list[Group], out_dir: Path) -> list[Group]:
    """Reads every run back (TensorBoard's reader) into ``group.runs``."""
    from tbgrad.lab.report import summarize

    by_name = {s.path.name: s for s in summarize(Path(out_dir) / "runs")}
    for group in groups:
        group.runs, group.summaries = [], []
        for config in group.configs:
            summary = by_name.get(config.run_name())
            if summary is None:
                continue
            group.summaries.append(summary)
            row = _run_row(config, summary)
            if group.key.endswith("-tape") and group.key.startswith("B-"):
                row["initial_accuracy"] = initial_accuracy(config)
            group.runs.append(row)
    return groups


def _run_row(config: RunConfig, summary) -> dict:
    """One run's figures: its stored result and its report summary."""
    result = load_json(summary.path / RESULT_FILE)
    why = summary.verdict.explanation
    return {
        "name": summary.name,
        "seed": config.seed,
        "train_accuracy": result["train_accuracy"],
        "test_accuracy": result["test_accuracy"],
        "train_loss": result["train_loss"],
        "seconds": result["seconds"],
        "verdict": summary.verdict.label,
        "weakest_ratio": summary.verdict.weakest_ratio,
        "grad_ratio": summary.grad_ratio,
        "grad_mean_abs": summary.grad_mean_abs,
        "explanation": why.to_dict() if why else None,
        "deep": deep_layer_signals(summary.data),
    }


def deep_layer_signals(run) -> dict:
    """The activation signals of the deeper half of a run's hidden layers
    (``hidden_3``..``hidden_5`` of five, ``hidden_3``, ``hidden_4`` of four):
    ``{"layers", "saturated", "dead", "update_ratio"}``, each layer's median
    over the epochs, then the mean over the layers (None where not logged:
    saturation for tanh and sigmoid layers, dead units for relu layers)."""
    hidden = (run.train.kernels or [])[:-1]
    deep = hidden[len(hidden) // 2 :]
    out: dict = {"layers": deep}
    for key, family in (
        ("saturated", tags.ACTIVATION_SATURATED),
        ("dead", tags.ACTIVATION_DEAD),
        ("update_ratio", tags.UPDATE_RATIO),
    ):
        medians = [
            float(np.median(values))
            for values in (run.train.scalar(f"{family}/{layer}") for layer in deep)
            if len(values)
        ]
        out[key] = float(np.mean(medians)) if medians else None
    return out


# -- Glorot & Bengio -------------------------------------------------------------


def glorot_bengio(
    out_dir: Path, seeds: Iterable[int] = SEEDS, epochs: int = 5
) -> dict[str, dict[str, np.ndarray]]:
    """Per-layer gradient profiles of a deep tanh MLP, standard vs Glorot init.

    For each init and seed: :func:`~tbgrad.lab.glorot_check.backprop_stds` on the
    training data at initialization, then ``epochs`` epochs of SGD with
    :func:`tbgrad.train_with_tape` (logged under ``out_dir/glorot``), then the
    profile again. Returns ``{init: {"layers", "at_init", "after",
    "kernel_at_init", "kernel_after"}}``, each an array seeds x layers.
    """
    import keras

    from tbgrad.lab.data import load_dataset
    from tbgrad.lab.glorot_check import CHECK_DEPTH, CHECK_WIDTH, INITS, backprop_stds
    from tbgrad.lab.models import build_mlp, make_optimizer
    from tbgrad.lab.runs import create_run_dir
    from tbgrad.tape import train_with_tape

    data = load_dataset("circles-a")
    out: dict[str, dict] = {}
    for init in INITS:
        rows = {"at_init": [], "after": [], "kernel_at_init": [], "kernel_after": []}
        for seed in seeds:
            keras.utils.set_random_seed(seed)
            model = build_mlp(
                depth=CHECK_DEPTH, width=CHECK_WIDTH, activation="tanh", init=init, output_init=init
            )
            before = backprop_stds(model, data.x_train, data.y_train)
            run_dir = create_run_dir(
                Path(out_dir) / "glorot", f"tanh-{init}-d{CHECK_DEPTH}-w{CHECK_WIDTH}-s{seed}"
            )
            train_with_tape(
                model,
                data.x_train,
                data.y_train,
                epochs=epochs,
                batch_size=32,
                optimizer=make_optimizer("sgd", 0.01, 0.9),
                validation_data=(data.x_test, data.y_test),
                log_dir=run_dir,
                seed=seed,
                verbose=0,
            )
            after = backprop_stds(model, data.x_train, data.y_train)
            rows["at_init"].append(before["activation_grad_std"][:-1])
            rows["after"].append(after["activation_grad_std"][:-1])
            rows["kernel_at_init"].append(before["kernel_grad_std"])
            rows["kernel_after"].append(after["kernel_grad_std"])
        out[init] = {key: np.array(value) for key, value in rows.items()}
        out[init]["layers"] = before["layers"]
    return out


# -- checks ------------------------------------------------------------------------


def qualitative_checks(groups: list[Group], gb: dict) -> list[tuple[str, bool, str]]:
    """The findings the reproduction must show: (name, passed, figures)."""
    by_key = {g.key: g for g in groups}
    checks = []
    a2, a3 = by_key.get("A2"), by_key.get("A3")
    if a2 and a3 and a2.runs and a3.runs:
        r2 = geomean([r["weakest_ratio"] for r in a2.runs])
        r3 = geomean([r["weakest_ratio"] for r in a3.runs])
        checks.append(
            (
                "deep tanh + uniform01 gradient ratio far below relu + He",
                r2 * 10 < r3,
                f"median weakest-layer/output ratio (geometric mean over seeds): "
                f"A2 {r2:.3g}, A3 {r3:.3g}",
            )
        )
    checks += explanation_checks(by_key)
    if gb:
        flat_std = float(np.mean([flatness(p) for p in gb["standard"]["at_init"]]))
        flat_glorot = float(np.mean([flatness(p) for p in gb["glorot_uniform"]["at_init"]]))
        checks.append(
            (
                "Glorot init's per-layer gradient variance flatter than standard init",
                flat_glorot < flat_std,
                f"max/min of the per-layer std of dL/dh at init (mean over seeds): "
                f"standard {flat_std:.3g}, Glorot {flat_glorot:.3g}",
            )
        )
    return checks


def _alarms(run: dict, kind: str) -> bool:
    """Whether the run's explanation raises ``kind`` ("saturated", "dead")."""
    why = run.get("explanation") or {}
    flag = "saturated" if kind == "saturated" else "of units dead"
    return any(flag in note for note in why.get("notes", []))


def _share(values) -> str:
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.0%}" if values else "not logged"


def explanation_checks(by_key: dict[str, Group]) -> list[tuple[str, bool, str]]:
    """The story the explanations should tell, as the diagnostics were
    specified: A2's deep layers saturated where its gradient vanishes, A3's
    not; B-sigmoid's deep layers saturated; relu with He init (A3) and
    B-relu without dead-unit alarms. A check that fails says what we
    measured instead."""
    checks = []
    a2, a3 = by_key.get("A2"), by_key.get("A3")
    if a2 and a3 and a2.runs and a3.runs:
        vanishing = [r for r in a2.runs if r["verdict"] == VANISHING]
        flagged = [r for r in vanishing if _alarms(r, "saturated")]
        calm = [r for r in a3.runs if not _alarms(r, "saturated")]
        checks.append(
            (
                "A2's deep layers saturated where its gradient vanishes; A3's not",
                bool(vanishing) and len(flagged) == len(vanishing) and len(calm) == len(a3.runs),
                f"saturation named in {len(flagged)} of A2's {len(vanishing)} vanishing runs "
                f"(deep layers {_share(r['deep']['saturated'] for r in a2.runs)} saturated); "
                f"A3: {len(calm)} of {len(a3.runs)} runs without a saturation alarm",
            )
        )
    sigmoid = by_key.get("B-sigmoid-fit")
    if sigmoid and sigmoid.runs:
        shares = [r["deep"]["saturated"] for r in sigmoid.runs]
        checks.append(
            (
                "B-sigmoid's deep layers saturated",
                all(s is not None and s > SATURATED_ABOVE for s in shares),
                f"{sum(r['verdict'] == VANISHING for r in sigmoid.runs)} of {len(sigmoid.runs)} "
                f"runs vanishing, deep layers {_share(shares)} saturated (alarm above "
                f"{SATURATED_ABOVE:.0%}): its outputs stay within (0.03, 0.97); its gradient "
                "shrinks through sigmoid's slope, at most 0.25 a layer",
            )
        )
    for key, name in (("A3", "relu with He init (A3)"), ("B-relu-fit", "B-relu")):
        group = by_key.get(key)
        if group and group.runs:
            flagged = [r for r in group.runs if _alarms(r, "dead")]
            dead = [r["deep"]["dead"] for r in group.runs]
            checks.append(
                (
                    f"{name} without dead-unit alarms",
                    not flagged,
                    f"{len(flagged)} of {len(group.runs)} runs with a layer over "
                    f"{DEAD_ABOVE:.0%} dead; deep layers' dead units {_share(dead)}",
                )
            )
    return checks


# -- figures -----------------------------------------------------------------------

# The configurations whose first seed gets its own panels.
RUN_FIGURES = ("A2", "A3", "B-sigmoid-fit", "B-tanh-fit", "B-relu-fit", "B-sigmoid-tape")


def write_figures(groups: list[Group], gb: dict, figures_dir: Path) -> dict[str, Path]:
    """Writes the figures of docs/results.md; returns {name: path}."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    by_key = {g.key: g for g in groups}
    out = _run_figures(by_key, figures_dir)
    depth_sweep = _depth_sweep_figure(groups, by_key, figures_dir)
    if depth_sweep is not None:
        out["depth_sweep"] = depth_sweep
    pair = [by_key[k] for k in ("A2", "A3") if k in by_key and by_key[k].summaries]
    if pair:
        out["weight_l1"] = _weight_l1_figure(pair, figures_dir / "weight_l1.png")
    if gb:
        out["glorot"] = _glorot_figure(gb, figures_dir / "glorot_bengio.png")
    return out


def _run_figures(by_key: dict[str, Group], figures_dir: Path) -> dict[str, Path]:
    """Per-run panels of the first seed of the headline configurations."""
    from tbgrad.lab.report import figure_name, write_run_figure

    out = {}
    for key in RUN_FIGURES:
        group = by_key.get(key)
        if group and group.summaries:
            summary = group.summaries[0]
            out[key] = write_run_figure(summary, figures_dir / f"{key}__{figure_name(summary)}")
    return out


def _depth_sweep_figure(
    groups: list[Group], by_key: dict[str, Group], figures_dir: Path
) -> Path | None:
    """Accuracy and gradient ratio against depth, width 5 and 25, with relu + He."""
    from tbgrad.lab.report import write_sweep_figure

    grid = [s for g in groups if g.key.startswith("tanh-d") for s in g.summaries]
    relu = [s for key in ("A3", "A4", "A5") if key in by_key for s in by_key[key].summaries]
    if not grid:
        return None
    return write_sweep_figure(grid + relu, figures_dir / "depth_sweep.png")


def _weight_l1_figure(pair: list[Group], path: Path) -> Path:
    """Weight L1 norm per layer over epochs (the study's "how much each layer changes")."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(pair), squeeze=False)[0]
    for ax, group in zip(axes, pair):
        train = group.summaries[0].data.train
        for tag in [t for t in train.scalars if t.startswith("weight_l1/")]:
            ax.plot(train.steps(tag), train.scalar(tag), label=tag.split("/", 1)[1])
        ax.set_title(f"{group.title}: weight L1 norm per layer")
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def _glorot_figure(gb: dict, path: Path) -> Path:
    """The per-layer std of dL/dh, standard vs Glorot init, before and after training."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, title in (
        (axes[0], "at_init", "at initialization"),
        (axes[1], "after", "after training"),
    ):
        for init, label in (
            ("standard", "standard U[-1/√n, 1/√n]"),
            ("glorot_uniform", "Glorot (normalized)"),
        ):
            values = gb[init][key]
            layers = np.arange(1, values.shape[1] + 1)
            ax.errorbar(
                layers,
                values.mean(axis=0),
                yerr=values.std(axis=0),
                marker="o",
                label=label,
                capsize=3,
            )
        ax.set_yscale("log")
        ax.set_xlabel("hidden layer (1 = next to the input)")
        ax.set_ylabel("std of dL/dh")
        ax.set_title(f"back-propagated gradient, deep tanh MLP, {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# -- comparison with the reported figures --------------------------------------------


def _compared(group: Group) -> tuple[str, ...]:
    """The run fields that :data:`REPORTED_NUMBERS` gives for ``group``."""
    if group.key.startswith("A"):
        return ("train_accuracy", "test_accuracy")
    if group.key.endswith("-tape"):
        return ("initial_accuracy", "train_accuracy")
    return ("train_accuracy",)


def _ours(group: Group) -> tuple[float, ...]:
    return tuple(mean_std([r[k] for r in group.runs])[0] for k in _compared(group))


def differences(groups: list[Group]) -> list[str]:
    """One plain sentence per row whose figures differ from the reported ones."""
    out = []
    for group in groups:
        reported_numbers = REPORTED_NUMBERS.get(group.key)
        if not reported_numbers or not group.runs:
            continue
        stds = [mean_std([r[k] for r in group.runs])[1] for k in _compared(group)]
        off = [
            f"{want:.3f} reported vs {got:.3f} ± {std:.3f} here"
            for want, got, std in zip(reported_numbers, _ours(group), stds)
            if abs(want - got) > max(2 * std, MARGIN)
        ]
        note = NOTES.get(group.key, "")
        if off:
            out.append(f"- **{group.title}**: {'; '.join(off)}." + (f" {note}" if note else ""))
        elif note:
            out.append(f"- **{group.title}**: within the spread across seeds. {note}")
    return out


# -- docs/results.md -----------------------------------------------------------------


def results_markdown(
    groups: list[Group], gb: dict, figures: dict[str, Path], meta: dict, doc_dir: Path
) -> str:
    """The text of docs/results.md."""
    by_key = {g.key: g for g in groups}
    images = _Images(figures, Path(doc_dir))
    lines = [
        *_intro(meta),
        *_study_a(by_key, images),
        *_study_b_warmup(by_key),
        *_study_b(by_key, images),
        *_explained(by_key),
        *_depth_grid(by_key, images),
        *_deep_tanh_variants(by_key),
        *_weight_l1(images),
        *_glorot(gb, images),
        *_checks(meta.get("checks", [])),
        *_paragraphs(reported.DIFFERENCES),
        *(differences(groups) or [reported.NO_DIFFERENCES]),
        "",
    ]
    for key, text in NOTES.items():
        if key.startswith("_"):
            lines += [text, ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class _Images:
    """The figures a page links to, relative to the page's folder."""

    figures: dict[str, Path]
    doc_dir: Path

    def __contains__(self, key: str) -> bool:
        return key in self.figures

    def lines(self, figures: Iterable[tuple[str, str]]) -> list[str]:
        """An image line and an empty line per written figure of ``(key, caption)``."""
        out = []
        for key, caption in figures:
            if key in self.figures:
                path = Path(self.figures[key]).resolve().relative_to(self.doc_dir.resolve())
                out += [f"![{caption}]({path.as_posix()})", ""]
        return out


def _intro(meta: dict) -> list[str]:
    values = {**reported.INTRO_DEFAULTS, **meta}
    return [reported.TITLE, "", *(line.format_map(values) for line in reported.INTRO)]


def _paragraphs(section: reported.Section, **fields) -> list[str]:
    """The section's paragraphs, each followed by an empty line, then its table header."""
    lines = []
    for text in section.paragraphs:
        lines += [text.format(**fields) if fields else text, ""]
    if section.columns:
        lines.append(_header(*section.columns))
    return lines


def _with_runs(by_key: dict[str, Group], keys: Iterable[str]) -> list[Group]:
    return [by_key[k] for k in keys if k in by_key and by_key[k].runs]


def _study_a(by_key: dict[str, Group], images: _Images) -> list[str]:
    section = reported.STUDY_A
    lines = _paragraphs(section)
    for g in _with_runs(by_key, section.rows):
        cells = [
            fmt([r["train_accuracy"] for r in g.runs]),
            fmt([r["test_accuracy"] for r in g.runs]),
            _verdicts(g.runs),
            f"{geomean([r['weakest_ratio'] for r in g.runs]):.3g}",
        ]
        lines.append(_row(g, cells))
    return [*lines, "", *images.lines(section.figures)]


def _study_b_warmup(by_key: dict[str, Group]) -> list[str]:
    section = reported.STUDY_B_WARMUP
    rows = _with_runs(by_key, section.rows)
    if not rows:
        return []
    lines = _paragraphs(section)
    for g in rows:
        cells = [
            fmt([r["train_accuracy"] for r in g.runs]),
            fmt([r["train_loss"] for r in g.runs], 4),
            _verdicts(g.runs),
        ]
        lines.append(_row(g, cells))
    return [*lines, ""]


def _study_b(by_key: dict[str, Group], images: _Images) -> list[str]:
    section = reported.STUDY_B
    rows = _with_runs(by_key, section.rows)
    if not rows:
        return []
    lines = _paragraphs(section)
    for g in rows:
        before = (
            fmt([r["initial_accuracy"] for r in g.runs]) if "initial_accuracy" in g.runs[0] else "-"
        )
        cells = [
            before,
            fmt([r["train_accuracy"] for r in g.runs]),
            fmt([r["train_loss"] for r in g.runs], 4),
            _verdicts(g.runs),
        ]
        lines.append(_row(g, cells))
    return [*lines, "", *images.lines(section.figures)]


def _explained(by_key: dict[str, Group]) -> list[str]:
    """A row per run of A2, A3, B-sigmoid and B-relu: its verdict explained."""
    section = reported.EXPLAINED
    rows = _with_runs(by_key, section.rows)
    if not rows:
        return []
    lines = _paragraphs(section)
    for g in rows:
        for r in g.runs:
            why, figures = r["explanation"] or {}, r["deep"]
            cells = [
                f"{g.key} seed {r['seed']}",
                r["verdict"],
                why.get("rule", "-"),
                layer_span(why.get("layers", [])) or "-",
                _percent(figures["saturated"]),
                _percent(figures["dead"]),
                "-" if figures["update_ratio"] is None else f"{figures['update_ratio']:.1e}",
                why.get("suggestion") or "-",
            ]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return [*lines, ""]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _depth_grid(by_key: dict[str, Group], images: _Images) -> list[str]:
    keys = [f"tanh-d{depth}-w{width}" for width in GRID_WIDTHS for depth in GRID_DEPTHS]
    if not _with_runs(by_key, keys):
        return []
    section = reported.DEPTH_GRID
    lines = _paragraphs(section)
    for depth in GRID_DEPTHS:
        cells = []
        for g in (by_key.get(f"tanh-d{depth}-w{width}") for width in GRID_WIDTHS):
            has_runs = g and g.runs
            test_accuracy = fmt([r["test_accuracy"] for r in g.runs]) if has_runs else "-"
            cells += [test_accuracy, _verdicts(g.runs) if has_runs else "-"]
        lines.append(f"| {depth} | " + " | ".join(cells) + " |")
    return [*lines, "", *images.lines(section.figures)]


def _deep_tanh_variants(by_key: dict[str, Group]) -> list[str]:
    section = reported.DEEP_TANH_VARIANTS
    rows = _with_runs(by_key, section.rows)
    if len(rows) < 2:
        return []
    lines = _paragraphs(section)
    for g in rows:
        lines.append(
            f"| {g.title} | {fmt([r['train_accuracy'] for r in g.runs])} | "
            f"{fmt([r['test_accuracy'] for r in g.runs])} | {_verdicts(g.runs)} | "
            f"{geomean([r['weakest_ratio'] for r in g.runs]):.3g} |"
        )
    return [*lines, ""]


def _weight_l1(images: _Images) -> list[str]:
    section = reported.WEIGHT_L1
    if "weight_l1" not in images:
        return []
    return [*_paragraphs(section), *images.lines(section.figures)]


def _glorot(gb: dict, images: _Images) -> list[str]:
    if not gb:
        return []
    section = reported.GLOROT
    layers = len(gb["standard"]["at_init"][0])
    lines = _paragraphs(section, layers=layers)
    inits = ("standard", "glorot_uniform")
    for i in range(layers):
        cells = [
            f"{gb[init][key][:, i].mean():.3g}" for key in ("at_init", "after") for init in inits
        ]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    flat = {
        (init, key): np.mean([flatness(p) for p in gb[init][key]])
        for init in inits
        for key in ("at_init", "after")
    }
    lines += [
        f"| max / min | {flat['standard', 'at_init']:.3g} | "
        f"{flat['glorot_uniform', 'at_init']:.3g} | "
        f"{flat['standard', 'after']:.3g} | {flat['glorot_uniform', 'after']:.3g} |",
        "",
    ]
    return lines + images.lines(section.figures)


def _checks(checks: list[tuple[str, bool, str]]) -> list[str]:
    if not checks:
        return []
    lines = _paragraphs(reported.CHECKS)
    for name, passed, figures_text in checks:
        lines.append(f"- {'reproduced' if passed else 'NOT reproduced'}: {name} ({figures_text}).")
    return [*lines, ""]


def _verdicts(runs: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    return ", ".join(f"{n} {label}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _header(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |\n|" + "---|" * len(cells)


def _row(group: Group, cells: list[str]) -> str:
    return "| " + " | ".join([group.title, group.reported or "-", *cells]) + " |"
