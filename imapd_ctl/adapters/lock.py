"""The one configuration lock (flock) shared by all workers, threads and the CLI."""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator

from imapd_ctl.adapters.files import reason
from imapd_ctl.core.errors import Busy, ConfigWriteError
from imapd_ctl.core.waiting import wait_until

class TransactionLock:
    """One exclusive configuration lock shared by all processes and threads.

    Uses flock(2) on ``path``. The kernel drops the lock when the holder's file
    descriptor is closed, including when the process dies (even by SIGKILL), so
    a crashed worker never leaves a stale lock behind. Every acquisition opens
    its own descriptor, and flock locks on separate open files exclude each
    other even within one process, so threads are serialized too. The lock is
    not re-entrant. The lock file must be on a local filesystem and is never
    deleted (deleting it would let two processes lock different inodes).
    """

    POLL_INTERVAL = 0.05

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fd: int | None = None

    def _lock(self, timeout: float) -> int:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o700, exist_ok=True)
            # O_CLOEXEC: helper programs we run (doveconf, systemctl) must not inherit the lock.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigWriteError(f"cannot open lock file {self.path}: {reason(exc)}") from exc
        def locked() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        try:
            if not wait_until(locked, timeout, self.POLL_INTERVAL):
                raise Busy("another configuration change is in progress; try again")
            return fd
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _unlock(fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def acquire(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the lock, then raise Busy."""
        fd = self._lock(timeout)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            raise RuntimeError("TransactionLock.release() without acquire()")
        self._unlock(fd)

    @contextlib.contextmanager
    def hold(self, timeout: float) -> Iterator["TransactionLock"]:
        """``with lock.hold(timeout=5):`` -- holds the lock for the block."""
        fd = self._lock(timeout)
        try:
            yield self
        finally:
            self._unlock(fd)

