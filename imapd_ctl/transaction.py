"""Configuration changes as transactions (certbot's reverter, cut to our needs):

lock -> read current -> render -> validate the candidate -> journal (backup) -> atomic replace
-> apply (reload/restart) -> verify -> on any failure restore the backup and apply again.

The journal makes a crash at any step recoverable: `recover()` runs before the daemon serves
and undoes an interrupted change (or just clears one that had been verified).
"""
from __future__ import annotations

import difflib
import logging
import uuid
from dataclasses import dataclass, field

from .configfile import Journal, atomic_remove, atomic_write, read_bytes_or_none
from .errors import ActionFailed, ApiError

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    changed: bool
    values: dict[str, int]
    diff: str = ""
    applied: str = ""
    files: list[str] = field(default_factory=list)


def _diff(old: dict[str, bytes | None], new: dict[str, bytes | None]) -> str:
    out = []
    for path, data in new.items():
        before = (old[path] or b"").decode(errors="replace").splitlines(keepends=True)
        after = (data or b"").decode(errors="replace").splitlines(keepends=True)
        out += difflib.unified_diff(before, after, fromfile=f"a{path}" if old[path] is not None else "/dev/null",
                                    tofile=f"b{path}" if data is not None else "/dev/null")
    return "".join(out)


def _write(files: dict[str, bytes | None]) -> None:
    for path, data in files.items():
        if data is None:
            atomic_remove(path)
        else:
            atomic_write(path, data)


def change(flavour, requested: dict[str, int | None], *, systemd, journal: Journal,
           dry_run: bool = False) -> Outcome:
    """Set the update values; inputs given as None keep their current value.
    The caller holds the TransactionLock (Controller.run takes it for every mutating action)."""
    current = flavour.current_values()
    values = {k: current[k] if v is None else v for k, v in requested.items()}
    new = flavour.plan(values)
    old = {path: read_bytes_or_none(path) for path in new}
    changed = {path: data for path, data in new.items() if old[path] != data}
    outcome = Outcome(changed=bool(changed), values=values, diff=_diff(old, changed),
                      files=sorted(changed))
    if dry_run or not changed:
        return outcome
    flavour.validate(new)           # before anything reaches the live path
    txn = uuid.uuid4().hex[:12]
    journal.begin(txn, "update", old={p: old[p] for p in changed}, new=changed,
                  meta={"flavour": flavour.name, "values": values})
    try:
        _write(changed)
        journal.mark("written")
        outcome.applied = flavour.apply(systemd, sorted(changed))
        journal.mark("applied")
        flavour.verify(systemd, values)
        journal.mark("verified")
    except Exception as exc:
        reason = exc.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
        log.error("update %s failed (%s); restoring the previous configuration", txn, reason)
        undo = _undo(flavour, systemd, journal)
        if isinstance(exc, ApiError) and exc.status == 503:
            exc.message = f"{reason}; {undo}"
            raise
        raise ActionFailed(f"{reason}; {undo}") from None
    journal.clear()
    log.info("update %s: %s -> %s (%s)", txn, current, values, outcome.applied)
    return outcome


def _undo(flavour, systemd, journal: Journal) -> str:
    """Restore the journaled files and make the server take them up again."""
    entry = journal.pending()
    restored = journal.restore(entry)
    try:
        flavour.apply(systemd, restored)
    except ApiError as exc:
        journal.clear()
        return (f"the previous configuration was restored ({', '.join(restored)}) but applying it "
                f"failed too: {exc.message}")
    journal.clear()
    return f"the previous configuration was restored ({', '.join(restored)})"


def recover(flavour, systemd, journal: Journal) -> str | None:
    """Finish or undo a change that a crash interrupted (the caller holds the lock).
    Returns what was done, or None when nothing was pending."""
    entry = journal.pending()
    if entry is None:
        return None
    if entry.step == "verified":
        journal.clear()
        what = f"change {entry.txn_id} ({entry.action}) had been verified before the crash; completed it"
    else:
        what = (f"change {entry.txn_id} ({entry.action}) was interrupted at step '{entry.step}'; "
                + _undo(flavour, systemd, journal))
    log.warning("recovery: %s", what)
    return what
