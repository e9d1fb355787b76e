"""Shared command-line plumbing: one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import threading

# Exit codes of a run stopped by a signal: 128 + the signal number, as a shell
# reports a process killed by it.
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage block), exit 2."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(
    name: str,
    kind: type,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    need: str,
    must: str,
):
    """An argparse ``type`` named ``name``: parses ``kind`` (int or float) and
    accepts a finite value from ``low`` to ``high``, each end included unless
    open.

    Errors: "'x' is not an integer (need <need>)" (or "not a number") for a
    text that does not parse, "'x' must be <must>" for a value out of range.
    """
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun} (need {need})") from None
        finite = kind is int or math.isfinite(value)
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (finite and above and below):
            raise argparse.ArgumentTypeError(f"{text!r} must be {must}")
        return value

    parse.__name__ = parse.__qualname__ = name
    return parse


positive_int = _number("positive_int", int, 1, need=">= 1", must="a positive integer (>= 1)")
non_negative_int = _number("non_negative_int", int, 0, need=">= 0", must=">= 0")
positive_float = _number(
    "positive_float", float, 0, low_open=True, need="> 0", must="a positive finite number"
)
unit_float = _number("unit_float", float, 0, 1, high_open=True, need="0 <= m < 1", must="in [0, 1)")


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


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM inside :func:`stop_on_signals`.

    A KeyboardInterrupt, so that everything that cleans up after Ctrl-C
    (``finally`` blocks closing the event files) does so after SIGTERM too.
    """


@contextlib.contextmanager
def stop_on_signals():
    """Stops the ``with`` block on SIGINT (KeyboardInterrupt) or SIGTERM
    (:class:`Terminated`).

    A repeated signal is ignored while the stop it repeats is being handled
    (``finally`` blocks and ``except`` clauses closing the event files), and
    stops again if that stop was swallowed on the way: Keras converts batch
    logs to floats under a bare ``except:``, so a Ctrl-C that lands there
    never leaves ``model.fit``. Once the block is left after a stop, further
    signals are ignored (the caller is expected to exit). A SIGINT that the
    process inherited as ignored (a background job of a script) stays
    ignored. Outside the main thread, where Python cannot install handlers,
    this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[KeyboardInterrupt] = []

    def stop(signum, frame):
        if _in_finalizer(frame):
            # An exception raised in a __del__ or weakref callback is printed
            # and swallowed: deliver the signal again a moment later.
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        if raised and _being_handled(raised[-1]):
            return
        raised.append(Terminated() if signum == signal.SIGTERM else KeyboardInterrupt())
        raise raised[-1]

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # After a stop the process is on its way out: ignore further
            # signals. A Python handler would print a traceback during
            # interpreter shutdown, and the shutdown resets Python handlers
            # (not SIG_IGN) to the default action, which kills the process.
            signal.signal(signum, signal.SIG_IGN if raised else handler)


def _being_handled(err: BaseException) -> bool:
    # Whether ``err`` is the exception a finally block or except clause on the
    # stack is handling, or the context of one raised while handling it. After
    # a bare ``except: pass`` has swallowed it, it is neither.
    current = sys.exc_info()[1]
    while current is not None:
        if current is err:
            return True
        current = current.__context__
    return False


def _in_finalizer(frame) -> bool:
    # Whether Python is running a finalizer (a __del__, a weakref callback)
    # that the garbage collector started inside the interrupted code.
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or code.co_filename.endswith("weakref.py"):
            return True
        frame = frame.f_back
    return False


def interrupted(prog: str, err: KeyboardInterrupt, where: str) -> int:
    """Prints one line saying what stopped the run and ``where`` the logs are;
    returns 143 after SIGTERM, else 130."""
    if isinstance(err, Terminated):
        name, code = "SIGTERM", EXIT_SIGTERM
    else:
        name, code = "SIGINT", EXIT_SIGINT
    print(f"\n{prog}: interrupted by {name}; {where}", file=sys.stderr, flush=True)
    return code


@contextlib.contextmanager
def _native_stderr_muted():
    # TensorFlow's native libraries write to file descriptor 2 directly, past
    # sys.stderr: point it at /dev/null for the block.
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow_quietly(initialize_devices: bool = True) -> None:
    """Imports TensorFlow without its C++ start-up chatter on stderr.

    On a machine without a GPU, TensorFlow's native libraries print "Could not
    find cuda drivers" and absl notices to file descriptor 2 while loading,
    before any Python logging setting applies; a command whose only output on
    bad input is one error line must not show them. Python exceptions raised
    by the import are not affected: stderr is restored before they propagate.

    Args:
        initialize_devices: Also initialize TensorFlow's devices (which prints
            more). Pass False to configure logical devices first, then call
            :func:`initialize_devices_quietly`.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    with _native_stderr_muted():
        import keras  # noqa: F401
        import tensorflow as tf

        if initialize_devices:
            tf.config.list_logical_devices()


def initialize_devices_quietly(replicas: int = 1) -> None:
    """Initializes TensorFlow's devices, with the CPU split into ``replicas``
    logical devices on a machine without GPUs, without the native chatter.

    Raises:
        ValueError: ``replicas`` is invalid, or the devices were initialized
            before with fewer logical CPUs.
    """
    with _native_stderr_muted():
        import tensorflow as tf

        from tbgrad.lab.distribute import configure_cpu_replicas

        configure_cpu_replicas(replicas)
        tf.config.list_logical_devices()
