"""The ``tbgrad`` command: ``tbgrad train|sweep|report|reproduce|bench``.

Each subcommand is a module of this package with ``main(argv, prog)``; only
the chosen one is imported, and none imports TensorFlow before its flags are
checked, so ``--help`` and a mistyped flag answer at once.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from tbgrad.cli.common import ArgumentParser

PROG = "tbgrad"
# name: (module, one line for the command list)
COMMANDS = {
    "train": ("tbgrad.cli.train", "train one configuration into a new run folder"),
    "sweep": ("tbgrad.cli.sweep", "train a grid of configurations, in parallel and resumable"),
    "report": ("tbgrad.cli.report", "summarize runs: a table, the verdicts, figures"),
    "reproduce": ("tbgrad.cli.reproduce", "reproduce the two reference studies into docs/"),
    "bench": ("tbgrad.cli.bench", "time gradient logging against plain training"),
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Per-layer gradients of Keras models in TensorBoard. "
        f"Run '{PROG} COMMAND --help' for a command's flags.",
    )
    from tbgrad import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, summary) in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``tbgrad COMMAND ...``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        # Prints the help, the version or a one-line error naming the choices.
        build_parser().parse_args(argv[:1])
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog=f"{PROG} {name}")
