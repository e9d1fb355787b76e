"""The command line of ``scripts/train.py``: flags -> RunConfig -> a run."""

from __future__ import annotations

import argparse
import os
import sys

from tbgrad._paths import is_url
from tbgrad._validate import BACKENDS, TENSORFLOW, check_configured_keras_backend
from tbgrad.cli import common as cli
from tbgrad.lab.choices import (
    DATASETS,
    LOOPS,
    MULTI_WORKER,
    NAMED_ACTIVATIONS,
    NAMED_INITIALIZERS,
    OPTIMIZERS,
    STRATEGIES,
)
from tbgrad.lab.config import make_config
from tbgrad.lab.presets import PRESET_DESCRIPTIONS, PRESETS
from tbgrad.lab.runs import check_logdir

PROG = "train.py"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    presets = "; ".join(f"{k}: {v}" for k, v in PRESET_DESCRIPTIONS.items())
    p = cli.ArgumentParser(
        prog=prog,
        description="Train an MLP on the two-circles data and log per-layer "
        "gradients to TensorBoard. Unset flags take the preset's value, else "
        "study A's defaults.",
    )
    p.add_argument(
        "--preset", choices=tuple(PRESETS), help=f"a reference configuration ({presets})"
    )
    _add_model_flags(p)
    _add_training_flags(p)
    _add_run_flags(p)
    return p


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    """The model: activation, initializers, depth and width."""
    p.add_argument(
        "--act",
        help=f"hidden activation: {', '.join(NAMED_ACTIVATIONS)} or any Keras "
        "activation (default relu)",
    )
    p.add_argument(
        "--init",
        help=f"hidden kernel initializer: {', '.join(NAMED_INITIALIZERS)} or any "
        "Keras initializer (default he_uniform)",
    )
    p.add_argument(
        "--output-init",
        help="output kernel initializer (default: --init, but glorot_uniform after he_*)",
    )
    p.add_argument("--depth", type=cli.positive_int, help="hidden layers (default 5)")
    p.add_argument("--width", type=cli.positive_int, help="units per hidden layer (default 5)")


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    """How it trains: optimizer, epochs, batches, data and loop."""
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer (default sgd)")
    p.add_argument(
        "--lr",
        type=cli.positive_float,
        help="learning rate (default 0.01 for sgd, 0.001 otherwise)",
    )
    p.add_argument(
        "--momentum",
        type=cli.unit_float,
        help="momentum of sgd/rmsprop (default 0.9 for sgd, 0 for rmsprop)",
    )
    p.add_argument("--epochs", type=cli.positive_int, help="epochs (default 500)")
    p.add_argument("--batch-size", type=cli.positive_int, help="batch size (default 32)")
    p.add_argument("--dataset", choices=DATASETS, help="data set (default circles-a)")
    p.add_argument(
        "--loop",
        choices=LOOPS,
        help="fit: model.fit + tbgrad.TensorBoard; tape: train_with_tape (default fit)",
    )


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """The run: its folder, seed, what it logs, devices and output."""
    p.add_argument(
        "--logdir",
        default="logs",
        help="folder of runs, local or a URL (gs://bucket/logs, any tf.io.gfile "
        "filesystem) (default logs)",
    )
    p.add_argument(
        "--run-name", help="run folder name (default derived from the config; never reused)"
    )
    p.add_argument(
        "--seed", type=cli.non_negative_int, help="seed of initialization and shuffling (default 1)"
    )
    p.add_argument(
        "--histogram-freq",
        type=cli.non_negative_int,
        help="histograms every N epochs, 0 for none (default 1)",
    )
    p.add_argument(
        "--update-freq",
        type=cli.update_freq,
        help="'epoch', or N: batch_* scalars every N steps (default epoch)",
    )
    p.add_argument(
        "--diagnostics-every",
        type=cli.positive_int,
        help="measure the diagnostics (update ratio, activation health, clipping) on "
        "the epoch's first step and every N-th after it (default 1: every step)",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic TensorFlow ops: the same config logs identical values",
    )
    p.add_argument(
        "--replicas",
        type=cli.positive_int,
        help="train on N devices with MirroredStrategy (N GPUs, else N logical "
        "CPUs; --batch-size is the global batch) (default 1)",
    )
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="local",
        help="multi-worker: MultiWorkerMirroredStrategy over the workers TF_CONFIG names, "
        "with the tape loop; run the same command on every worker, only the chief "
        "writes the run (default local)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Keras's backend (default: KERAS_BACKEND, else Keras's configured one, "
        "else tensorflow); jax and torch train with fit on one device",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace):
    return make_config(
        args.preset,
        act=args.act,
        init=args.init,
        output_init=args.output_init,
        depth=args.depth,
        width=args.width,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        epochs=args.epochs,
        batch_size=args.batch_size,
        dataset=args.dataset,
        # Keras 3's fit does not run on several workers: the tape loop does.
        loop=args.loop or ("tape" if args.strategy == MULTI_WORKER else None),
        seed=args.seed,
        histogram_freq=args.histogram_freq,
        update_freq=args.update_freq,
        diagnostics_every=args.diagnostics_every,
        deterministic=args.deterministic or None,
        replicas=args.replicas,
    )


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Runs ``train.py``; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    try:
        # Before anything is created or Keras is imported (Keras fails on
        # import when the backend it names is not installed).
        if args.backend:
            os.environ["KERAS_BACKEND"] = args.backend
        backend = check_configured_keras_backend(prog)
        config = config_from_args(args)
        if backend != TENSORFLOW:
            _check_backend(backend, args, config)
        if is_url(args.logdir):
            # Checking a URL (gs://...) needs TensorFlow's filesystems.
            cli.import_tensorflow_quietly(initialize_devices=False)
        check_logdir(args.logdir)
        if args.run_name is not None and not args.run_name.strip():
            raise ValueError("run name must not be empty. Received: --run-name ''")
        _check_strategy(args.strategy, config)
        _start_devices(args.strategy, config)
    except (ValueError, TypeError) as err:
        return cli.fail(prog, str(err))

    from tbgrad.lab import experiment

    run_dirs = []

    def started(run_dir):
        run_dirs.append(run_dir)
        print(f"run folder: {run_dir}", flush=True)

    try:
        with cli.stop_on_signals():
            result = experiment.run(
                config,
                logdir=args.logdir,
                run_name=args.run_name,
                verbose=0 if args.quiet else 1,
                on_start=started,
                multi_worker=args.strategy == MULTI_WORKER,
            )
            experiment.write_result(result)
    except ValueError as err:
        return cli.fail(prog, str(err))
    except KeyboardInterrupt as err:
        # experiment.run has closed the event files on the way out.
        if not run_dirs:
            return cli.interrupted(prog, err, "stopped before the run folder was created")
        return cli.interrupted(
            prog,
            err,
            f"every finished epoch is in {run_dirs[0]}; "
            f"view: tensorboard --logdir {_shown(args.logdir)}",
        )
    print(
        f"final accuracy: train {result.train_accuracy:.3f}, test {result.test_accuracy:.3f} "
        f"(loss {result.train_loss:.4f} / {result.test_loss:.4f}, {result.seconds:.1f}s)"
    )
    if not result.writes:
        print("this worker is not the chief: the chief writes the run")
        return 0
    found = result.extra["verdict"]
    print(f"verdict: {found['label']} ({found['reason']})")
    if found.get("explanation"):
        # "why: ..." and, when there is something to try, "try: ...".
        for line in found["explanation"]["text"].splitlines():
            print(f"  {line}")
    first = result.extra.get("first_nonfinite")
    if first is not None:
        print(f"first NaN or Inf: {first['where']}")
    print(f"view: tensorboard --logdir {_shown(args.logdir)}")
    return 0


def _check_strategy(strategy: str, config) -> None:
    if strategy != MULTI_WORKER:
        return
    if config.loop == "fit":
        raise ValueError(
            "--strategy multi-worker trains with the tape loop: Keras 3's fit does not run "
            "under MultiWorkerMirroredStrategy (https://github.com/keras-team/keras/issues/"
            "20585). Received: --loop fit"
        )
    if config.replicas != 1:
        raise ValueError(
            "--strategy multi-worker trains on every device of each worker; --replicas "
            f"splits one machine. Received: --replicas {config.replicas}"
        )


def _check_backend(backend: str, args, config) -> None:
    # What only TensorFlow runs: the tape loop (a GradientTape), several
    # devices (tf.distribute) and TensorFlow's op determinism.
    for flag, value, used in (
        ("--loop", "tape", config.loop == "tape"),
        ("--replicas", config.replicas, config.replicas != 1),
        ("--strategy", args.strategy, args.strategy == MULTI_WORKER),
        ("--deterministic", "", bool(config.deterministic)),
    ):
        if used:
            raise ValueError(
                f"{flag} {value} needs --backend tensorflow; on {backend} tbgrad trains "
                f"with fit on one device. Received: --backend {backend} {flag} {value}".rstrip()
            )


def _start_devices(strategy: str, config) -> None:
    # TensorFlow's devices are initialized once the flags are known: logical
    # CPU devices (--replicas) and MultiWorkerMirroredStrategy's collective
    # ops can only be configured before that.
    cli.import_tensorflow_quietly(initialize_devices=False)
    if strategy == MULTI_WORKER:
        from tbgrad.lab.distribute import start_multi_worker

        start_multi_worker()
    else:
        cli.initialize_devices_quietly(config.replicas)


def _shown(logdir: str) -> str:
    # normpath would turn gs://bucket into gs:/bucket.
    return logdir if is_url(logdir) else os.path.normpath(logdir)


if __name__ == "__main__":
    sys.exit(main())
