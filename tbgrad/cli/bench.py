"""``tbgrad bench``: what logging gradients costs, side by side (see
:mod:`tbgrad.lab.bench`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict

from tbgrad._validate import TENSORFLOW, check_configured_keras_backend
from tbgrad.cli import common as cli
from tbgrad.lab.bench import (
    AA,
    FLOOR,
    STEP_FLOORS,
    STEP_VARIANTS,
    VARIANTS,
    WORKLOADS,
    XLA_STEP_FLOORS,
    Row,
    bench_train_step,
    bench_workload,
    environment,
    format_step_table,
    format_table,
    jit_summary,
    load_average,
)
from tbgrad.lab.memory import bench_memory, format_memory_table

PROG = "bench.py"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog=prog,
        description="Time model.fit with and without gradient logging, tbgrad's tape "
        "loop and an eager tape loop, side by side; print medians and ratios to "
        "plain model.fit.",
    )
    p.add_argument(
        "--workloads",
        nargs="+",
        choices=tuple(WORKLOADS),
        default=list(WORKLOADS),
        metavar="W",
        help=f"workloads to run (default all): {', '.join(WORKLOADS)}",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        metavar="V",
        help=f"variants to run (default all; {FLOOR} and {AA} always): {', '.join(VARIANTS)}",
    )
    p.add_argument("--repeats", type=cli.positive_int, default=3, help="timed repeats (default 3)")
    p.add_argument(
        "--epochs",
        type=_at_least_two,
        help="epochs of each run, >= 2 (default per workload: "
        + ", ".join(f"{w.name} {w.epochs}" for w in WORKLOADS.values())
        + ")",
    )
    p.add_argument(
        "--samples",
        type=cli.positive_int,
        help="training samples of every workload (default per workload)",
    )
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up round")
    p.add_argument(
        "--train-step",
        action="store_true",
        help="time the bare compiled train step without and with a tbgrad.GradientLogger "
        "(--step-variants); --repeats rounds of --steps steps",
    )
    p.add_argument(
        "--step-variants",
        nargs="+",
        choices=STEP_VARIANTS,
        default=list(STEP_VARIANTS),
        metavar="S",
        help=f"--train-step variants (default all; {' and '.join(STEP_FLOORS)} always, "
        f"{' and '.join(XLA_STEP_FLOORS)} with any XLA variant): " + ", ".join(STEP_VARIANTS),
    )
    p.add_argument(
        "--steps",
        type=cli.positive_int,
        default=100,
        help="steps per round of --train-step (default 100)",
    )
    p.add_argument(
        "--memory",
        action="store_true",
        help="measure memory instead of time: tbgrad's persistent state and the peak RSS of "
        "fit on a 21.5M-parameter MLP, each variant in a fresh process, --repeats times",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return p


# The variants that train with TensorFlow's own loops (a GradientTape).
TENSORFLOW_VARIANTS = ("tape", "tape+xla", "eager_ref")


def _backend_variants(backend: str, args, argv) -> list[str]:
    # On JAX and PyTorch: fit's variants; the tape loops and the bare
    # compiled step are TensorFlow's.
    asked = [v for v in args.variants if v in TENSORFLOW_VARIANTS]
    if args.train_step or (asked and "--variants" in argv):
        what = "--train-step" if args.train_step else f"--variants {' '.join(asked)}"
        raise ValueError(
            f"{what} needs Keras's TensorFlow backend; on {backend} bench times fit. "
            f"Received: backend={backend!r}"
        )
    return [v for v in args.variants if v not in TENSORFLOW_VARIANTS]


def _at_least_two(text: str) -> int:
    value = cli.positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 2")
    return value


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    args.load_start = load_average()
    try:
        backend = check_configured_keras_backend(prog)
        if backend != TENSORFLOW:
            given = list(sys.argv[1:] if argv is None else argv)
            args.variants = _backend_variants(backend, args, given)
    except ValueError as err:
        return cli.fail(prog, str(err))
    cli.import_tensorflow_quietly()
    variants = [v for v in VARIANTS if v in {FLOOR, AA, *args.variants}]

    def progress(message):
        print(message, file=sys.stderr, flush=True)

    if args.memory:
        rows = bench_memory(args.repeats, progress)
        floor = "plain model.fit (fit); each variant's rise of RSS in fit over fit's"
        _print_report(args, rows, floor, format_memory_table)
        return 0

    if args.train_step:
        step_rows = []
        for name in dict.fromkeys(args.workloads):
            step_rows += bench_train_step(
                WORKLOADS[name],
                args.repeats,
                args.steps,
                progress,
                variants=args.step_variants,
            )
        floor = f"the same step without tbgrad ({STEP_FLOORS[0]}, {XLA_STEP_FLOORS[0]} under XLA)"
        _print_report(args, step_rows, floor, format_step_table)
        return 0

    rows: list[Row] = []
    for name in dict.fromkeys(args.workloads):
        rows += bench_workload(
            WORKLOADS[name],
            variants,
            args.repeats,
            epochs=args.epochs,
            samples=args.samples,
            warmup=not args.no_warmup,
            progress=progress,
        )
    _print_report(args, rows, f"plain model.fit ({FLOOR})", format_table)
    return 0


def _print_report(args, rows, floor: str, table: Callable) -> None:
    env = environment()
    if args.json:
        payload = {
            "environment": {**env, "load_average_start": args.load_start},
            "repeats": args.repeats,
            "workloads": {n: WORKLOADS[n].description for n in dict.fromkeys(args.workloads)},
            "rows": [r if isinstance(r, dict) else asdict(r) for r in rows],
        }
        print(json.dumps(payload, indent=2))
    else:
        load = env.pop("load_average")
        print(", ".join(f"{k} {v}" for k, v in env.items() if v))
        print(f"load average (1, 5, 15 min) at start {args.load_start}, at end {load}")
        if not args.memory:
            print(jit_summary(rows))
        print(f"medians of {args.repeats} repeats; ratios to {floor}")
        print(table(rows))
