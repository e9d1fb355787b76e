"""The command line of ``scripts/sweep.py``: grids over train.py's flags.

Every configuration flag of ``scripts/train.py`` (taken from its parser, so
the two never drift apart) accepts one or more values here, and integer
flags also accept ranges: ``--act tanh relu --depth 1-10 --seed 1 2 3`` is
2 x 10 x 3 = 60 runs. One value fixes a flag for every run (``--epochs 100``).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import sys

from tbgrad.cli import common as cli
from tbgrad.cli import train as train_cli
from tbgrad.lab.config import RunConfig, make_config
from tbgrad.lab.runs import check_logdir

PROG = "sweep.py"

# train.py flags that are not configuration fields (a sweep's runs are each
# on one machine: no --strategy; they run on the sweep's KERAS_BACKEND).
_NOT_GRID = {"help", "logdir", "run_name", "quiet", "strategy", "backend"}
BACKENDS = ("pool", "ray")  # tbgrad.lab.sweep.BACKENDS, without importing it
_INT_TYPES = (cli.positive_int, cli.non_negative_int)
# Fields the run name (RunConfig.run_name) leaves out: when a sweep varies
# one, its folder names get this prefix and the value, e.g. "-bs64".
_NAME_SUFFIX = {
    "output_init": "out",
    "momentum": "m",
    "epochs": "e",
    "batch_size": "bs",
    "dataset": "",
    "histogram_freq": "hf",
    "update_freq": "uf",
}


def _int_or_range(base):
    def parse(text: str) -> list[int]:
        first, dash, last = text.partition("-")
        if not dash or not first:
            return [base(text)]
        lo, hi = base(first), base(last)
        if hi < lo:
            raise argparse.ArgumentTypeError(f"{text!r} is an empty range (need A-B with A <= B)")
        return list(range(lo, hi + 1))

    return parse


def grid_flags() -> list[argparse.Action]:
    """train.py's configuration flags, the ones a sweep can vary."""
    return [a for a in train_cli.build_parser()._actions if a.dest not in _NOT_GRID]


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog=prog,
        description="Train every combination of the given train.py flag values, each run "
        "in its own folder under one sweep folder, in parallel worker processes. "
        "Resumable: finished runs are skipped on a rerun.",
    )
    for action in grid_flags():
        kind = _int_or_range(action.type) if action.type in _INT_TYPES else action.type
        extra = " (values or ranges A-B)" if action.type in _INT_TYPES else " (one or more)"
        p.add_argument(
            *action.option_strings,
            dest=action.dest,
            nargs="+",
            type=kind,
            choices=action.choices,
            help=(action.help or "") + extra,
        )
    p.add_argument(
        "--sweep-dir",
        help="the sweep folder (default logs/sweep-<the varied flags>, e.g. logs/sweep-act-depth)",
    )
    p.add_argument(
        "--workers",
        type=cli.positive_int,
        help=f"parallel worker processes (default: the number of cores, {os.cpu_count()})",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="pool",
        help="pool: worker processes on this machine; ray: each run a Ray task, on a "
        'local Ray instance or the cluster of --ray-address (pip install ".[ray]") '
        "(default pool)",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="with --backend ray: the cluster to run on (auto, ray://HOST:10001); the "
        "sweep folder must be one every node sees (default: a local Ray instance with "
        "--workers CPUs)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def grid(args: argparse.Namespace) -> dict[str, list]:
    """{field: values} of the flags given, ranges expanded, duplicates kept."""
    out = {}
    for action in grid_flags():
        values = getattr(args, action.dest)
        if values is None:
            continue
        flat = []
        for value in values:
            flat.extend(value if isinstance(value, list) else [value])
        out[action.dest] = flat
    return out


def configs_from_grid(values: dict[str, list]) -> tuple[list[RunConfig], list[str]]:
    """Every combination as a validated config, and its run folder name."""
    names = list(values)
    varied = [n for n in names if len(set(values[n])) > 1]
    configs, run_names = [], []
    for combo in itertools.product(*(values[n] for n in names)):
        fields = dict(zip(names, combo))
        config = make_config(fields.pop("preset", None), **fields)
        name = config.run_name()
        for field in varied:
            if field in _NAME_SUFFIX:
                name += f"-{_NAME_SUFFIX[field]}{getattr(config, field)}"
        configs.append(config)
        run_names.append(name)
    return configs, run_names


def default_sweep_dir(values: dict[str, list]) -> str:
    varied = [n.replace("_", "-") for n in values if len(set(values[n])) > 1]
    return os.path.join("logs", "-".join(["sweep", *varied]))


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Runs ``sweep.py``; returns 0 if every run finished, 1 if one failed."""
    args = build_parser(prog).parse_args(argv)
    values = grid(args)
    sweep_dir = args.sweep_dir or default_sweep_dir(values)
    try:
        configs, names = configs_from_grid(values)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"the grid repeats a run: {duplicates[0]!r}; give each value once")
        check_logdir(sweep_dir)
        _check_backend(args)
    except (ValueError, TypeError) as err:
        return cli.fail(prog, str(err))

    cli.import_tensorflow_quietly()
    from tbgrad.lab.sweep import FAILED, run_sweep

    print(f"sweep folder: {sweep_dir} ({len(configs)} runs)", flush=True)
    outcomes = run_sweep(
        configs,
        sweep_dir,
        workers=args.workers,
        progress=not args.quiet,
        run_names=names,
        backend=args.backend,
        ray_address=args.ray_address,
    )
    failed = [o for o in outcomes if o.status == FAILED]
    for outcome in outcomes:
        if outcome.moved_aside is not None:
            print(f"moved an unfinished run aside: {outcome.moved_aside}")
    for outcome in failed:
        print(f"failed: {outcome.run_dir.name}: {outcome.error}")
    print(f"report: python scripts/report.py {os.path.normpath(sweep_dir)}")
    print(f"view: tensorboard --logdir {os.path.normpath(sweep_dir)}")
    return 1 if failed else 0


def _check_backend(args: argparse.Namespace) -> None:
    if args.ray_address is not None and args.backend != "ray":
        raise ValueError(
            f"--ray-address needs --backend ray. Received: --backend {args.backend}, "
            f"--ray-address {args.ray_address}"
        )
    if args.backend == "ray" and importlib.util.find_spec("ray") is None:
        raise ValueError(
            '--backend ray needs Ray: pip install "tbgrad[ray]" (or ".[ray]" in the '
            "repository). Received: --backend ray"
        )


if __name__ == "__main__":
    sys.exit(main())
