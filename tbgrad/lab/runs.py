"""Run folders: names derived from the config, never reused or overwritten."""

from __future__ import annotations

import os
import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def sanitize(name: str) -> str:
    """Makes ``name`` safe as one path component (no separators, no spaces)."""
    name = _UNSAFE.sub("_", name).strip("._")
    return name or "run"


def create_run_dir(logdir: str | os.PathLike, name: str) -> Path:
    """Creates and returns a new, empty run folder ``logdir/name[-K]``.

    ``os.mkdir`` is atomic: if ``name`` exists (or another process creates
    it first), ``name-2``, ``name-3``, ... are tried, so two runs never share
    or overwrite a folder.

    Raises:
        ValueError: ``logdir`` is a file or cannot be created.
    """
    root = Path(logdir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"logdir {str(root)!r} exists and is not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"logdir {str(root)!r} cannot be created: {err.strerror}") from None
    base = sanitize(name)
    for k in range(1, 100_000):
        candidate = root / (base if k == 1 else f"{base}-{k}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as err:
            raise ValueError(
                f"run folder {str(candidate)!r} cannot be created: {err.strerror}"
            ) from None
        return candidate
    raise ValueError(f"no free run name for {base!r} under {str(root)!r}")


def check_logdir(logdir: str | os.PathLike) -> None:
    """Raises ValueError if runs cannot be written under ``logdir``.

    Checks without creating anything: the nearest existing ancestor must be a
    writable directory.
    """
    path = Path(logdir).absolute()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"logdir {str(logdir)!r} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"logdir {str(logdir)!r} is not writable")
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(
            f"logdir {str(logdir)!r} cannot be created: {str(parent)!r} is not a directory"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"logdir {str(logdir)!r} cannot be created: {str(parent)!r} is not writable"
        )
