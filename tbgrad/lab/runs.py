"""Run folders: names derived from the config, never reused or overwritten.

A log folder is a local path or a URL of any TensorFlow filesystem
(``gs://``, ``s3://`` with its plugin, ``hdfs://``, ``ram://``): see
:mod:`tbgrad._paths`. Locally a run folder is claimed by ``os.mkdir``, which
is atomic. Object stores have no atomic mkdir (nor does ``ram://``), so under
a URL a run folder is claimed with a marker file instead
(:func:`_claim_url`).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from tbgrad import _paths

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
# The file by which a process claims a run folder under a URL:
# ``<run>/.tbgrad-claim-<random hex>``; the winner's stays in its run.
CLAIM_PREFIX = ".tbgrad-claim-"
MAX_SUFFIX = 100_000


def sanitize(name: str) -> str:
    """Makes ``name`` safe as one path component (no separators, no spaces)."""
    name = _UNSAFE.sub("_", name).strip("._")
    return name or "run"


def create_run_dir(logdir: str | os.PathLike, name: str) -> _paths.RunPath:
    """Creates and returns a new, empty run folder ``logdir/name[-K]``.

    If ``name`` is taken (or another process takes it first), ``name-2``,
    ``name-3``, ... are tried, so two runs never share or overwrite a folder.
    Locally ``os.mkdir`` decides, atomically, and the folder is a
    :class:`~pathlib.Path`. Under a URL (``gs://bucket/logs``) it is a string
    and a claim marker decides (:func:`_claim_url`): two runs can share a
    folder only on a filesystem whose listings miss finished writes (GCS,
    S3, HDFS and ``ram://`` list them); a folder that another program
    creates while the name is being claimed is not seen.

    Raises:
        ValueError: ``logdir`` is a file or cannot be created.
    """
    base = sanitize(name)
    if _paths.is_url(logdir):
        return _create_url_run_dir(os.fspath(logdir), base)
    root = Path(logdir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"logdir {str(root)!r} exists and is not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"logdir {str(root)!r} cannot be created: {err.strerror}") from None
    for k in range(1, MAX_SUFFIX):
        candidate = root / _suffixed(base, k)
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


def _suffixed(base: str, k: int) -> str:
    return base if k == 1 else f"{base}-{k}"


def _create_url_run_dir(logdir: str, base: str) -> str:
    gfile = _paths.gfile()
    _check_url_logdir(logdir)
    gfile.makedirs(logdir)
    # One listing, not an existence check per name: on ram:// "run" exists
    # as soon as "run-tape" does.
    taken = {name.rstrip("/") for name in gfile.listdir(logdir)}
    claim = CLAIM_PREFIX + uuid.uuid4().hex
    for k in range(1, MAX_SUFFIX):
        name = _suffixed(base, k)
        if name not in taken and _claim_url(_paths.join(logdir, name), claim):
            return _paths.join(logdir, name)
    raise ValueError(f"no free run name for {base!r} under {logdir!r}")


def _claim_url(folder: str, claim: str) -> bool:
    """Claims ``folder`` for this process: writes the marker ``folder/claim``,
    then lists the folder; it is ours if our marker is all it holds.

    Of two processes claiming one folder, the one that lists second sees the
    other's marker (written before the other listed), so at most one wins,
    provided a listing shows every finished write (GCS, S3, HDFS and ram://
    do; a store with stale listings could let both win). If both see both,
    both try the next name. A loser removes its marker; the winner's stays,
    so every later claim sees it and loses. A folder holding anything else
    was there before (a listing of its parent can miss it: on ``ram://``, a
    folder made by writing a file into it is not listed) and is left alone.
    """
    gfile = _paths.gfile()
    gfile.makedirs(folder)
    marker = _paths.join(folder, claim)
    with gfile.GFile(marker, "w") as f:
        f.write("")
    # On ram://, which lists by name prefix, "run" also lists "-tape" when
    # "run-tape" exists: the claim then loses and the next name is tried.
    if gfile.listdir(folder) == [claim]:
        return True
    gfile.remove(marker)
    return False


def check_logdir(logdir: str | os.PathLike) -> None:
    """Raises ValueError if runs cannot be written under ``logdir``.

    Checks without creating anything: the nearest existing ancestor must be a
    writable directory. A URL (``gs://bucket/logs``) is checked through
    ``tf.io.gfile``, importing TensorFlow: its scheme must be served and it
    must not be a file (whether it is writable shows at the first write). A
    local path is checked without TensorFlow, so a command's bad flags fail
    fast.
    """
    if _paths.is_url(logdir):
        _check_url_logdir(os.fspath(logdir))
        return
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


def _check_url_logdir(logdir: str) -> None:
    import tensorflow as tf

    try:
        if tf.io.gfile.exists(logdir) and not tf.io.gfile.isdir(logdir):
            raise ValueError(f"logdir {logdir!r} exists and is not a directory")
    except tf.errors.UnimplementedError:
        scheme = logdir.split("://", 1)[0]
        raise ValueError(
            f"logdir {logdir!r}: TensorFlow has no filesystem for {scheme}:// (install "
            "its plugin, e.g. tensorflow-io for s3://)"
        ) from None
    except tf.errors.OpError as err:
        raise ValueError(f"logdir {logdir!r} cannot be read: {err.message}") from None
