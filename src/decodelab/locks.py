"""Exclusive locks on output folders, so two runs never write into one folder at once.

Used by the sampler (``decodelab sample`` / evaluation runs) and the training loop: the second run
into a folder stops with "<folder> is in use by pid N" instead of interleaving files or logs.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["HOST", "LOCK", "FolderInUseError", "FolderLock", "pid_alive"]

HOST = socket.gethostname()
LOCK = ".lock"


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)  # PermissionError: it exists, owned by another user
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class FolderInUseError(ValueError):
    """Another live run holds the output folder's lock."""


def _try_flock(fd: int) -> bool | None:
    """``True``: locked; ``False``: held by another open file; ``None``: no ``flock`` here."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None  # e.g. a file system without locks
    return True


class FolderLock:
    """Exclusive lock on an output folder: ``<folder>/.lock``, held by one run at a time.

    The lock is an ``flock`` on the file (released by the system when its process dies, so the lock
    file of a dead run is taken over); the file records the holder's pid and host for the message.
    Where ``flock`` is unavailable, a lock file whose pid is alive on this host counts as held.

    Args:
        folder: the output folder (created when missing).
        name: the lock file's name inside it.
    """

    def __init__(self, folder: str | os.PathLike[str], name: str = LOCK) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self._fd: int | None = None

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _busy(self, holder: dict[str, Any]) -> FolderInUseError:
        who = f"pid {holder['pid']}" if "pid" in holder else "another process"
        if holder.get("host") not in (None, HOST):
            who += f" on {holder['host']}"
        return FolderInUseError(
            f"{self.folder} is in use by {who}; wait for that run to finish or write to another folder "
            f"(if no run is using it, delete {self.path})"
        )

    def acquire(self) -> FolderLock:
        """Take the lock or raise :class:`FolderInUseError` naming the holder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            got = _try_flock(fd)
            if got is False:
                os.close(fd)
                raise self._busy(self._holder())
            if got is None:
                holder = self._holder()
                pid = holder.get("pid")
                if isinstance(pid, int) and pid != os.getpid() and holder.get("host") == HOST and pid_alive(pid):
                    os.close(fd)
                    raise self._busy(holder)
                break
            try:  # the previous holder may have removed the file between our open and flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": HOST, "since": time.time()}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op when not held)."""
        if self._fd is None:
            return
        try:
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
