"""The command line of ``scripts/report.py``: a table of runs, PNG figures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tbgrad import _paths
from tbgrad.cli import common as cli

PROG = "report.py"


def build_parser(prog: str = PROG):
    p = cli.ArgumentParser(
        prog=prog,
        description="Read the runs under LOGDIR with TensorBoard's reader and print, per "
        "run, its config, final train and validation accuracy, final mean |g| per "
        "layer, the gradient ratio and the verdict.",
    )
    p.add_argument(
        "logdir",
        metavar="LOGDIR",
        help="a folder of runs (or one run folder), local or a URL (gs://bucket/logs)",
    )
    p.add_argument(
        "--png",
        metavar="DIR",
        help="also write figures into DIR: per run the gradient/weight/loss panels, and "
        "for runs of several depths sweep.png (accuracy and grad ratio vs depth)",
    )
    return p


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Runs ``report.py``; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    # Local paths are checked before TensorFlow loads (bad input fails fast);
    # reading runs, and any URL, goes through tf.io.gfile.
    if not _paths.is_url(args.logdir) and not Path(args.logdir).is_dir():
        return cli.fail(prog, f"LOGDIR {args.logdir!r} is not a folder")
    png = args.png
    if png is not None and not _paths.is_url(png) and Path(png).exists() and not Path(png).is_dir():
        return cli.fail(prog, f"--png {png!r} exists and is not a folder")
    cli.import_tensorflow_quietly()
    logdir = _paths.as_path(args.logdir)
    if not _is_folder(logdir):
        return cli.fail(prog, f"LOGDIR {args.logdir!r} is not a folder")

    from tbgrad.eventlog import find_runs

    if not find_runs(logdir):
        return cli.fail(
            prog,
            f"no TensorBoard runs under {args.logdir!r} (a run is a folder with a train/ "
            "folder of event files)",
        )
    from tbgrad.lab import report
    from tbgrad.lab.sweep import INCOMPLETE

    summaries = report.summarize(logdir)
    if not summaries:
        return cli.fail(prog, f"only unfinished ({INCOMPLETE}N) runs under {args.logdir!r}")
    print(report.format_table(summaries))
    print()
    print(report.format_explanations(summaries))
    if args.png is not None:
        written = [
            report.write_run_figure(s, _paths.join(png, report.figure_name(s))) for s in summaries
        ]
        sweep = report.write_sweep_figure(summaries, _paths.join(png, "sweep.png"))
        if sweep is not None:
            written.append(sweep)
        shown = png if _paths.is_url(png) else os.path.normpath(png)
        print(f"wrote {len(written)} figures to {shown}")
    return 0


def _is_folder(path) -> bool:
    import tensorflow as tf

    try:
        return tf.io.gfile.isdir(str(path))
    except tf.errors.OpError:  # e.g. no filesystem for the URL's scheme
        return False


if __name__ == "__main__":
    sys.exit(main())
