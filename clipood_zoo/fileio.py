"""Atomic file writes: a reader or a crash never sees half a file.

Weights, checkpoints, shards and ``_info.json`` are all written through :func:`atomic_write`:
the bytes go to a temporary file in the same folder, are fsynced, and replace the target with
``os.replace`` (atomic on POSIX), so the previous version stays intact until the new one is whole.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", commit: bool = True) -> Iterator[IO]:
    """A file under a temporary name beside ``path`` (``f.name``), flushed and fsynced on a clean exit.

    With ``commit`` it then replaces ``path``; without, the caller renames it later (a split's shards
    wait until all of them are whole). On an error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a dataset or weights file is meant to be shared
    try:
        with open(tmp, mode) as f:  # reopened by name so that f.name is the temporary path
            yield f
            f.flush()
            os.fsync(f.fileno())
        if commit:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: PathLike) -> None:
    """Make renames in ``path`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)
