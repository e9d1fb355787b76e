"""Shared command-line plumbing: one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import math
import sys


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage block), exit 2."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (need >= 1)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer (>= 1)")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (need >= 0)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (need > 0)") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive finite number")
    return value


def unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (need 0 <= m < 1)") from None
    if not math.isfinite(value) or not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1)")
    return value


def update_freq(text: str):
    if text == "epoch":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not 'epoch' or a positive number of steps"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 'epoch' or a positive number of steps")
    return value


def fail(prog: str, message: str) -> int:
    """Prints ``prog: error: message`` to stderr and returns exit code 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow without its C++ start-up chatter on stderr.

    On a machine without a GPU, TensorFlow's native libraries print "Could not
    find cuda drivers" and absl notices to file descriptor 2 while loading,
    before any Python logging setting applies; a command whose only output on
    bad input is one error line must not show them. Python exceptions raised
    by the import are not affected: stderr is restored before they propagate.
    """
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras  # noqa: F401
            import tensorflow as tf

            tf.config.list_logical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
