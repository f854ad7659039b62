"""The journal of the one configuration change in flight (what makes a crash recoverable).

A configuration change is: take the TransactionLock, record old and new file contents in the
Journal, write the files with atomic_write, apply and verify, then clear the Journal. If the
daemon dies at any point, the next start finds the journal and can restore the old files.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime
import json
import os
import stat
from typing import Any

from imapd_ctl.adapters.files import atomic_remove, atomic_write, read_bytes_or_none, remove_stale_temps, reason
from imapd_ctl.core.errors import ActionFailed, ConfigWriteError


class JournalError(ActionFailed):
    """The journal cannot be used as asked (500)."""


class JournalCorrupt(JournalError):
    """journal.json exists but cannot be read back: nothing can be recovered from it."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"journal {path} is unreadable ({problem}): an interrupted change cannot be "
                         f"recovered from it; check the files it names by hand, then remove it")
        self.path = path
        self.problem = problem


class JournalPending(JournalError):
    """begin() while another change is journaled (callers must recover it first)."""

    def __init__(self, path: str):
        super().__init__(f"a configuration change is already journaled in {path}; it must be "
                         f"finished or undone first (`imapd-ctl recover`)")
        self.path = path


class JournalForeign(JournalError):
    """The journal names files the flavour does not write, or is a file imapd-ctl did not make
    (another owner, a link, open to others): it is not trusted, nothing is restored from it."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"journal {path} is not trusted: {problem}; nothing was restored. imapd-ctl "
                         f"never writes such a journal: find out who wrote it, then remove it")
        self.path = path
        self.problem = problem


class NoJournal(JournalError):
    """mark() with no change journaled."""

    def __init__(self, path: str):
        super().__init__(f"no configuration change is journaled in {path}")
        self.path = path


@dataclasses.dataclass
class JournalEntry:
    txn_id: str
    action: str
    old: dict[str, bytes | None]
    new: dict[str, bytes | None]
    meta: dict[str, Any]
    step: str
    started: str  # ISO 8601, UTC


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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
    # The last change that went through, kept after it: what a start that fails can go back to.
    PREVIOUS = "previous.json"

    def __init__(self, state_dir: str | os.PathLike):
        self.state_dir = os.fspath(state_dir)
        self.path = os.path.join(self.state_dir, self.FILENAME)
        self.previous_path = os.path.join(self.state_dir, self.PREVIOUS)

    def _save(self, entry: JournalEntry, path: str | None = None) -> None:
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
        atomic_write(path or self.path, data, default_mode=0o600)

    def begin(self, txn_id: str, action: str, old: dict[str, bytes | None],
              new: dict[str, bytes | None], meta: dict[str, Any]) -> None:
        if read_bytes_or_none(self.path) is not None:
            raise JournalPending(self.path)
        old = {os.fspath(p): b for p, b in old.items()}
        new = {os.fspath(p): b for p, b in new.items()}
        missing = sorted(set(new) - set(old))
        if missing:
            # Without the old state of every touched file, restore would be incomplete.
            raise ValueError(f"no old contents given for {', '.join(missing)}")
        started = _now()
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigWriteError(f"cannot create {self.state_dir}: {reason(exc)}") from exc
        self._save(JournalEntry(txn_id, action, old, new, dict(meta), "begun", started))

    def mark(self, step: str) -> None:
        if step not in self.STEPS:
            raise ValueError(f"unknown journal step {step!r}")
        entry = self.pending()
        if entry is None:
            raise NoJournal(self.path)
        entry.step = step
        self._save(entry)

    def pending(self) -> JournalEntry | None:
        return self._load(self.path)

    def retire(self) -> None:
        """The change went through: keep its record as the previous change (replacing the one
        before) and end the journal. Best effort: a record that cannot be kept only means a
        failed start has nothing to go back to."""
        entry = self.pending()
        if entry is None:
            raise NoJournal(self.path)
        entry.meta = {**entry.meta, "finished": _now()}
        try:
            self._save(entry, self.previous_path)
        except ConfigWriteError:
            # An older record left behind is never used: its files no longer match the live ones.
            with contextlib.suppress(ConfigWriteError):
                atomic_remove(self.previous_path)
        self.clear()

    def previous(self) -> JournalEntry | None:
        """The last change that went through (retire), if its record is kept."""
        return self._load(self.previous_path)

    def forget_previous(self) -> None:
        atomic_remove(self.previous_path)

    def _load(self, path: str) -> JournalEntry | None:
        raw = read_bytes_or_none(path)
        if raw is None:
            return None
        self._check_made_by_us(path)
        try:
            rec = json.loads(raw)
            return JournalEntry(
                txn_id=rec["txn_id"], action=rec["action"],
                old=_decode_files(rec["old"]), new=_decode_files(rec["new"]),
                meta=rec["meta"], step=rec["step"], started=rec["started"],
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise JournalCorrupt(path, f"{type(exc).__name__}: {exc}") from exc

    def _check_made_by_us(self, path: str) -> None:
        """The journal as this class writes it: a regular file, 0600, owned by the state
        directory's owner (the daemon's user) or root. Root's `imapd-ctl recover` writes what
        a journal says; the flavour's check of the paths (transaction.recover) is the other half."""
        try:
            st, top = os.lstat(path), os.stat(self.state_dir)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode):
            raise JournalForeign(path, "it is not a regular file (a link?)")
        if st.st_mode & 0o077:
            raise JournalForeign(path, f"its mode is {stat.S_IMODE(st.st_mode):04o}, not 0600")
        if st.st_uid not in (0, top.st_uid, os.geteuid()):
            raise JournalForeign(path, f"it belongs to uid {st.st_uid}, neither root nor the owner of "
                                       f"{self.state_dir} (uid {top.st_uid})")

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
