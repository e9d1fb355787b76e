"""Run folder paths, local or on any TensorFlow filesystem.

A log folder can be a local path or a URL that ``tf.io.gfile`` serves
(``gs://bucket/logs``, ``s3://...`` with its plugin, ``hdfs://...``,
``ram://...``). A local path stays a :class:`pathlib.Path`; a URL stays a
string, since ``Path("ram://logs")`` collapses the ``//`` into ``ram:/logs``,
a local folder named ``ram:``. Files are read, written and listed through
``tf.io.gfile``, which serves both kinds; TensorFlow is imported on first
use, so code that only looks at a local path stays free of it.

Example:
    >>> run = join("gs://bucket/logs", "run-1", "train")  # 'gs://bucket/logs/run-1/train'
    >>> local = join("logs", "run-1")  # PosixPath('logs/run-1')
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

RunPath = Path | str


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a filesystem by its scheme (``gs://...``)."""
    return bool(_SCHEME.match(os.fspath(path)))


def as_path(path: str | os.PathLike) -> RunPath:
    """``path`` as a :class:`~pathlib.Path`, or as a string if it is a URL."""
    path = os.fspath(path)
    return path if is_url(path) else Path(path)


def join(base: str | os.PathLike, *parts: str) -> RunPath:
    """``base/part/...``, of the same kind as :func:`as_path` gives."""
    base = as_path(base)
    if isinstance(base, Path):
        return base.joinpath(*parts)
    return "/".join([base.rstrip("/"), *parts]) if parts else base


def name(path: str | os.PathLike) -> str:
    """The last component of ``path`` (``run-1`` of ``gs://b/logs/run-1/``)."""
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def parent(path: str | os.PathLike) -> RunPath:
    """The folder holding ``path``, of the same kind as :func:`as_path` gives."""
    path = as_path(path)
    return path.parent if isinstance(path, Path) else path.rstrip("/").rsplit("/", 1)[0]


def parts(path: str | os.PathLike) -> list[str]:
    """The components of ``path``, to sort paths as :class:`~pathlib.Path` does
    (component by component: ``run`` before ``run-2``)."""
    return [p for p in os.fspath(path).split("/") if p]


def relative(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` relative to its ancestor ``root``, ``/``-separated."""
    if not is_url(root):
        return Path(path).relative_to(Path(root)).as_posix()
    inner, outer = parts(path), parts(root)
    if inner[: len(outer)] != outer:
        raise ValueError(f"{os.fspath(path)!r} is not under {os.fspath(root)!r}")
    return "/".join(inner[len(outer) :])


def gfile():
    """``tf.io.gfile``, importing TensorFlow on first use."""
    import tensorflow as tf

    return tf.io.gfile


def read_text(path: str | os.PathLike) -> str:
    """The text of the file ``path``.

    Raises:
        OSError: It cannot be read (FileNotFoundError if it is absent), as
            :meth:`pathlib.Path.read_text` raises, not TensorFlow's errors.
    """
    with _os_errors():
        with gfile().GFile(os.fspath(path), "r") as f:
            return f.read()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` whole or not at all: into a temporary file
    beside it, then renamed over it (atomic on a local disk; on object stores
    the upload itself is all-or-nothing).

    Raises:
        OSError: It cannot be written.
    """
    path = os.fspath(path)
    tmp = path + ".tmp"
    with _os_errors():
        with gfile().GFile(tmp, "w") as f:
            f.write(text)
        gfile().rename(tmp, path, overwrite=True)


def make_writable(path: str | os.PathLike, who: str) -> None:
    """Creates the folder ``path`` (with its parents) where ``who`` writes.

    Raises:
        OSError: One line naming the folder and why it cannot be written.
    """
    path = os.fspath(path)
    try:
        with _os_errors():
            gfile().makedirs(path)
        if not is_url(path) and not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError("permission denied")
    except OSError as err:
        raise OSError(f"{who} cannot write its log folder {path!r}: {err}") from None


@contextlib.contextmanager
def _os_errors():
    # tf.io.gfile raises tf.errors.OpError; callers expect what open() raises.
    import tensorflow as tf

    try:
        yield
    except tf.errors.NotFoundError as err:
        raise FileNotFoundError(err.message) from None
    except tf.errors.OpError as err:
        raise OSError(err.message) from None
