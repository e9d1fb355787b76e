"""The command line of ``scripts/reproduce.py``."""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

from tbgrad.cli import common as cli
from tbgrad.lab import sweep_worker
from tbgrad.lab.runs import check_logdir

PROG = "reproduce.py"


def build_parser(prog: str = PROG):
    p = cli.ArgumentParser(
        prog=prog,
        description="Train every configuration of the reference studies and their "
        "extensions over several seeds (in parallel, resumable), run the Glorot & Bengio "
        "check, and write docs/results.md with the reported figures next to ours.",
    )
    p.add_argument(
        "--out",
        default=None,
        help="folder of the runs (default logs/reproduce, logs/reproduce-quick with --quick)",
    )
    p.add_argument(
        "--results",
        default=None,
        help="the Markdown file to write (default docs/results.md; with --quick, OUT/results.md)",
    )
    p.add_argument(
        "--figures",
        default=None,
        help="folder of the PNG figures (default docs/figures, with --quick OUT/figures)",
    )
    p.add_argument(
        "--seeds",
        type=cli.positive_int,
        default=None,
        help="seeds per configuration (default 5; 1 with --quick)",
    )
    p.add_argument(
        "--epochs",
        type=cli.positive_int,
        default=None,
        help="override every configuration's epochs (default: the studies' own; 30 with --quick)",
    )
    p.add_argument(
        "--workers",
        type=cli.positive_int,
        default=None,
        help="parallel worker processes (default: the number of cores)",
    )
    p.add_argument(
        "--loop",
        choices=("fit", "tape"),
        default="tape",
        help="loop of study A's runs and the extensions (default tape; study B runs both)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="only A2, A3 and the Glorot check, 1 seed, 30 epochs; exits 1 if a "
        "qualitative finding is not reproduced",
    )
    return p


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    out, results, figures = _paths(args)
    try:
        _check_paths(out, results, figures)
    except ValueError as err:
        return cli.fail(prog, str(err))

    cli.import_tensorflow_quietly()
    from tbgrad.lab import reproduce
    from tbgrad.lab.sweep import FAILED

    seeds_n = args.seeds or (1 if args.quick else len(reproduce.SEEDS))
    seeds = list(range(1, seeds_n + 1))
    b_seeds = list(range(42, 42 + seeds_n))
    epochs = args.epochs or (reproduce.QUICK_EPOCHS if args.quick else None)
    groups = reproduce.plan(seeds, b_seeds, epochs=epochs, quick=args.quick, study_a_loop=args.loop)
    configs = reproduce.unique_configs(groups)
    print(f"{len(configs)} runs into {out / 'runs'}", flush=True)
    start = time.perf_counter()
    outcomes = reproduce.run_all(groups, out, workers=args.workers)
    failed = [o for o in outcomes if o.status == FAILED]
    for o in failed:
        print(f"failed: {o.run_dir.name}: {o.error}", file=sys.stderr)
    groups, gb = _collect_with_glorot_bengio(groups, out, seeds, args.quick)
    checks = reproduce.qualitative_checks(groups, gb)
    figures_written = reproduce.write_figures(groups, gb, figures)
    minutes = (time.perf_counter() - start) / 60
    meta = {
        **_meta(argv, args, seeds, b_seeds, epochs),
        "runs": len(configs),
        "minutes": f"{minutes:.1f}",
        "run_minutes": f"{sum(r['seconds'] for g in groups for r in g.runs) / 60:.1f}",
        "checks": checks,
    }
    text = reproduce.results_markdown(groups, gb, figures_written, meta, results.parent)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(text)
    for name, passed, figures_text in checks:
        print(f"{'reproduced' if passed else 'NOT reproduced'}: {name} ({figures_text})")
    print(f"wrote {results} and {len(figures_written)} figures in {minutes:.1f} min")
    if failed:
        return 1
    if args.quick and not all(passed for _, passed, _ in checks):
        return 1
    return 0


def _paths(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """The runs' folder, the Markdown file and the figures' folder."""
    out = Path(args.out or ("logs/reproduce-quick" if args.quick else "logs/reproduce"))
    results = Path(args.results or (out / "results.md" if args.quick else "docs/results.md"))
    figures = Path(args.figures or (out / "figures" if args.quick else "docs/figures"))
    return out, results, figures


def _check_paths(out: Path, results: Path, figures: Path) -> None:
    """Raises ValueError, naming the flag, if an output path cannot be used."""
    for label, path in (("--out", out), ("--figures", figures), ("--results", results.parent)):
        try:
            check_logdir(path)
        except ValueError as err:
            raise ValueError(f"{label}: {err}") from None
    if results.exists() and results.is_dir():
        raise ValueError(f"--results {str(results)!r} is a folder")


def _collect_with_glorot_bengio(groups: list, out: Path, seeds: list[int], quick: bool):
    """Reads the runs back into ``groups`` while the Glorot & Bengio check
    trains; returns (groups, the check's profiles)."""
    from tbgrad.lab import reproduce

    print("Glorot & Bengio check, reading the runs back ...", flush=True)
    # The check trains in a worker process (one core) while this one reads
    # the runs' event files (the other core).
    with concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=sweep_worker.init_worker
    ) as pool:
        gb_future = pool.submit(
            reproduce.glorot_bengio, out, seeds=seeds, epochs=5 if not quick else 3
        )
        groups = reproduce.collect(groups, out)
        return groups, gb_future.result()


def _meta(
    argv: list[str] | None,
    args: argparse.Namespace,
    seeds: list[int],
    b_seeds: list[int],
    epochs: int | None,
) -> dict:
    """What docs/results.md says about the invocation, the machine and the versions."""
    import keras
    import tensorflow as tf

    return {
        "command": " ".join(
            ["scripts/reproduce.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, no GPU",
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "seeds": ", ".join(map(str, seeds)),
        "b_seeds": ", ".join(map(str, b_seeds)),
        # Without an override, the page says the studies' own epochs.
        **({"epochs": epochs} if epochs else {}),
        "workers": args.workers or os.cpu_count(),
        "study_a_loop": args.loop,
    }


if __name__ == "__main__":
    sys.exit(main())
