"""File-level primitives for configuration transactions.

A configuration change is: take the TransactionLock, record old and new file
contents in the Journal, write the files with atomic_write, apply and verify,
then clear the Journal. If the daemon dies at any point, the next start finds
the journal and can restore the old files (checkpoint -> apply -> roll back).

Everything here is stdlib only and Linux-oriented (flock, fsync on directories).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import secrets
import stat
import time
from typing import Iterator

from imapd_ctl.core.errors import Busy, ConfigWriteError

_TEMP_TAG = ".imapd-ctl."


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _fsync_dir(dirname: str) -> None:
    # A rename (or unlink) is only durable once the directory entry itself is on
    # disk; without this a power cut can bring back the old file, or no file.
    fd = os.open(dirname, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # filesystem cannot fsync directories
            raise
    finally:
        os.close(fd)


def _create_temp(dirname: str, basename: str) -> tuple[int, str]:
    # Same directory as the target: os.replace is only atomic within one
    # filesystem, and a file created there gets that directory's defaults (e.g.
    # its SELinux label). The leading dot and the random suffix (not ".conf")
    # keep it out of Dovecot's "!include conf.d/*.conf" while it exists.
    # Created 0600 so nobody can read it before its final mode is set.
    for _ in range(100):
        tmp = os.path.join(dirname, f".{basename}{_TEMP_TAG}{secrets.token_hex(6)}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "cannot create a unique temporary file", dirname)


def atomic_write(path: str | os.PathLike, data: bytes, *, default_mode: int = 0o644) -> None:
    """Replace the contents of ``path`` with ``data``, all or nothing.

    Readers see either the old file or the new one, never a torn file, also
    after a crash or power cut. An existing file keeps its mode, uid and gid
    (if they cannot be kept, e.g. a non-root caller and a file owned by someone
    else, the write fails rather than silently changing the owner). A new file
    gets ``default_mode`` and, when running as root, the uid/gid of the
    directory it is created in (root:root in /etc/dovecot, the daemon's user in
    its own state directory); a non-root caller keeps its own uid/gid. If
    ``path`` is a symlink its target is replaced and the link is kept.
    Raises ConfigWriteError naming the path and the OS reason.
    """
    view = memoryview(data)  # TypeError for str etc., before touching the disk
    shown = os.fspath(path)
    # realpath: write through the admin's symlink instead of replacing it.
    target = os.path.realpath(path)
    if target != os.path.abspath(shown):
        shown = f"{shown} (-> {target})"
    dirname, basename = os.path.split(target)
    tmp = None
    try:
        try:
            st = os.stat(target)
            mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        except FileNotFoundError:
            dst = os.stat(dirname)
            mode, uid, gid = default_mode, dst.st_uid, dst.st_gid
            if os.geteuid() != 0:  # only root can give a file away: keep ours
                uid = gid = -1
        fd, tmp = _create_temp(dirname, basename)
        try:
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view):]
            tst = os.fstat(fd)
            if uid != -1 and (tst.st_uid, tst.st_gid) != (uid, gid):
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)  # after fchown, which clears setuid/setgid bits
            # Data on disk before the rename, else a crash can leave an empty
            # file under the new name.
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        tmp = None
        _fsync_dir(dirname)
    except OSError as exc:
        raise ConfigWriteError(f"cannot write {shown}: {_reason(exc)}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_remove(path: str | os.PathLike) -> None:
    """Remove ``path`` if present and make the removal durable.

    Mirrors atomic_write: for a symlink the target is removed and the link
    kept, so that undoing a write through a symlink restores the old state.
    """
    target = os.path.realpath(path)
    try:
        try:
            os.unlink(target)
        except FileNotFoundError:
            return
        _fsync_dir(os.path.dirname(target))
    except OSError as exc:
        raise ConfigWriteError(f"cannot remove {os.fspath(path)}: {_reason(exc)}") from exc


def remove_stale_temps(path: str | os.PathLike) -> list[str]:
    """Remove temporary files that atomic_write left next to ``path`` when the process died
    between creating and renaming them (only ours: ``.<basename>.imapd-ctl.<hex>``).
    The caller must hold whatever lock serializes writers of ``path``. Returns what went."""
    dirname, basename = os.path.split(os.path.realpath(path))
    prefix = f".{basename}{_TEMP_TAG}"
    removed = []
    try:
        names = os.listdir(dirname)
    except OSError:
        return removed
    for name in names:
        if name.startswith(prefix) and len(name) == len(prefix) + 12:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(dirname, name))
                removed.append(os.path.join(dirname, name))
    return removed


def read_bytes_or_none(path: str | os.PathLike) -> bytes | None:
    """The file's contents, or None if it does not exist (a dangling symlink counts as absent)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


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
            raise ConfigWriteError(f"cannot open lock file {self.path}: {_reason(exc)}") from exc
        deadline = time.monotonic() + max(timeout, 0.0)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except BlockingIOError:
                    pass
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Busy("another configuration change is in progress; try again")
                time.sleep(min(self.POLL_INTERVAL, remaining))
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


@dataclasses.dataclass
class JournalEntry:
    txn_id: str
    action: str
    old: dict[str, bytes | None]
    new: dict[str, bytes | None]
    meta: dict
    step: str
    started: str  # ISO 8601, UTC


def _encode_files(files: dict[str, bytes | None]) -> dict[str, str | None]:
    return {os.fspath(p): None if b is None else base64.b64encode(b).decode("ascii")
            for p, b in files.items()}


def _decode_files(files: dict[str, str | None]) -> dict[str, bytes | None]:
    return {p: None if s is None else base64.b64decode(s, validate=True) for p, s in files.items()}


class Journal:
    """Crash-safe record of the one configuration change in flight.

    ``state_dir/journal.json`` holds the old and new contents of every file the
    change touches (base64 in JSON, None = file absent) and how far it got.
    It exists only while a change runs, so finding it at start-up means the
    previous daemon died mid-change; ``restore`` then puts the old files back.
    Callers must hold the TransactionLock around begin ... clear.
    """

    STEPS = ("begun", "written", "applied", "verified")
    FILENAME = "journal.json"

    def __init__(self, state_dir: str | os.PathLike):
        self.state_dir = os.fspath(state_dir)
        self.path = os.path.join(self.state_dir, self.FILENAME)

    def _save(self, entry: JournalEntry) -> None:
        record = {
            "version": 1,
            "txn_id": entry.txn_id,
            "action": entry.action,
            "step": entry.step,
            "started": entry.started,
            "meta": entry.meta,
            "old": _encode_files(entry.old),
            "new": _encode_files(entry.new),
        }
        data = json.dumps(record, indent=1, sort_keys=True).encode("utf-8")
        # 0600: the journal copies configuration files, which may hold secrets.
        atomic_write(self.path, data, default_mode=0o600)

    def begin(self, txn_id: str, action: str, old: dict[str, bytes | None],
              new: dict[str, bytes | None], meta: dict) -> None:
        if read_bytes_or_none(self.path) is not None:
            raise RuntimeError(f"a configuration change is already journaled in {self.path}")
        old = {os.fspath(p): b for p, b in old.items()}
        new = {os.fspath(p): b for p, b in new.items()}
        missing = sorted(set(new) - set(old))
        if missing:
            # Without the old state of every touched file, restore would be incomplete.
            raise ValueError(f"no old contents given for {', '.join(missing)}")
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigWriteError(f"cannot create {self.state_dir}: {_reason(exc)}") from exc
        self._save(JournalEntry(txn_id, action, old, new, dict(meta), "begun", started))

    def mark(self, step: str) -> None:
        if step not in self.STEPS:
            raise ValueError(f"unknown journal step {step!r}")
        entry = self.pending()
        if entry is None:
            raise RuntimeError("no configuration change is journaled")
        entry.step = step
        self._save(entry)

    def pending(self) -> JournalEntry | None:
        raw = read_bytes_or_none(self.path)
        if raw is None:
            return None
        try:
            rec = json.loads(raw)
            return JournalEntry(
                txn_id=rec["txn_id"], action=rec["action"],
                old=_decode_files(rec["old"]), new=_decode_files(rec["new"]),
                meta=rec["meta"], step=rec["step"], started=rec["started"],
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise RuntimeError(f"journal {self.path} is unreadable: {exc}") from exc

    def restore(self, entry: JournalEntry) -> list[str]:
        """Put every file back as it was before the change; safe to repeat.

        A file restored after having been removed gets default mode 0644: the
        journal keeps contents, not ownership or mode.
        """
        restored = []
        for path, content in entry.old.items():
            remove_stale_temps(path)
            if content is None:
                atomic_remove(path)
            elif read_bytes_or_none(path) != content:
                # A file that still holds its old bytes is left alone: nothing to undo, and
                # no write that could fail (e.g. on the full disk that stopped the change).
                atomic_write(path, content)
            restored.append(path)
        return restored

    def clear(self) -> None:
        atomic_remove(self.path)
