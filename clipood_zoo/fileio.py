"""Atomic file writes: a reader or a crash never sees half a file.

Weights, checkpoints, shards and ``_info.json`` are all written through :func:`atomic_write`:
the bytes go to a temporary file in the same folder, are fsynced, and replace the target with
``os.replace`` (atomic on POSIX), so the previous version stays intact until the new one is whole.
``os.replace`` replaces a symlink at the target instead of writing through it, so a link planted in
a run folder cannot redirect a write elsewhere. Also here: the checks a CLI makes on its output
paths before any heavy work, and the lock that keeps two runs out of one folder.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import IO, Iterator, Optional, Union

from .errors import ConfigError, LockedError

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


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask. Linux shows it in /proc; elsewhere the only way to read it is to set it and set it
    back, which two threads doing at once (runs recorded side by side) can leave at 0 for good, so that is
    done under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
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


def link_or_copy(src: PathLike, dst: PathLike) -> None:
    """``dst`` becomes a hard link to ``src`` (no bytes copied; a later atomic replace of ``src`` leaves it
    alone), or an atomic copy where the file system has no hard links; a symlink at ``dst`` is replaced."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        with open(src, "rb") as f, atomic_write(dst) as out:
            shutil.copyfileobj(f, out)
        return
    os.replace(tmp, dst)


def check_writable_dir(path: PathLike, flag: str) -> Path:
    """Create ``path`` if needed and prove a file can be written in it; else a ConfigError naming ``flag``.

    Called before any model or data is loaded, so a read-only, full or non-directory ``--output``
    costs seconds, not a whole run. The probe writes a real file: permission bits alone do not say
    whether a read-only mount or a root-owned folder accepts it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is not a folder; pass a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".write-probe."):
            pass
    except OSError as e:
        raise ConfigError(f"{flag} {path} cannot be written to ({e.strerror or e}); pass a writable folder") from e
    return path


def check_writable_file(path: PathLike, flag: str) -> Path:
    """The file ``path`` can be (re)written atomically: its folder is writable and it is not a folder itself."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; pass a file name")
    check_writable_dir(path.parent, f"the folder of {flag}")
    return path


def inside(path: PathLike, root: PathLike) -> bool:
    """Whether ``path`` (symlinks resolved) lies in ``root``: a file written there cannot land elsewhere."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


class FolderLock:
    """An exclusive lock on a folder, held by one process; a second one is refused naming the holder's PID.

    ``fcntl.flock`` on ``<folder>/.lock`` (opened without following a symlink): the kernel releases it
    when the holder exits, however it dies, so a stale lock file left by a dead process is taken over
    without a race; the file holds the holder's PID only to name it in the refusal.
    """

    NAME = ".lock"

    def __init__(self, folder: PathLike):
        self.path = Path(folder) / self.NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "FolderLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(f"{self.path.parent} is in use by another process (PID {holder}); wait for it to "
                              "end, or write this run elsewhere") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Unlock; the file stays (removing it would let a third process lock a file no one else sees)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
