"""Configuration changes as transactions (certbot's reverter, cut to our needs):

lock -> read current -> render -> validate the candidate -> check systemd is reachable (and
note which units serve) -> journal (backup) -> atomic replace -> apply (reload/restart) ->
verify (flavour's check, and every unit that served before still serves) -> on any failure
restore the backup, apply again and start what the change stopped.

The journal makes a crash at any step recoverable: `recover()` runs before the daemon serves
and before every mutating action; it undoes an interrupted change (or just clears one that had
been verified) and logs "recovery: ..." with what it did.

Crash points (for fault tests): when the environment variable IMAPD_CTL_CRASH_AT names one of
Journal.STEPS ("begun", "written", "applied", "verified"), `change()` SIGKILLs its own process
right after the journal records that step, exactly as if the worker died there. The variable
is read at every step, never cached; unset (as in production) it costs one dict lookup.
"""
from __future__ import annotations

import difflib
import logging
import os
import signal
import uuid
from dataclasses import replace
from typing import Callable, Sequence

from imapd_ctl.adapters.files import atomic_remove, atomic_write, read_bytes_or_none, remove_stale_temps
from imapd_ctl.adapters.journal import Journal, JournalEntry, JournalError, JournalForeign
from imapd_ctl.core.errors import ActionFailed, ApiError, ConfigWriteError, Unavailable
from imapd_ctl.core.protocols import Files, Flavour, Listening, Systemd
from imapd_ctl.core.waiting import wait_until
from imapd_ctl.operations import prose
from imapd_ctl.operations.outcomes import (
    ChangeFailed, ChangeOutcome, ChangeRefused, FallBack, Recovery, RecoveryFailed, Rollback, StartFailed)

log = logging.getLogger(__name__)

CRASH_ENV = "IMAPD_CTL_CRASH_AT"
SETTLE_SECONDS = 5.0   # how long a unit that served before may take to be "active" again
SETTLE_INTERVAL = 0.05


def _crash_point(step: str) -> None:
    """The test hook described in the module docstring."""
    if os.environ.get(CRASH_ENV) == step:
        log.warning("%s=%s: killing this process (pid %d) with SIGKILL", CRASH_ENV, step, os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)


def _diff(old: Files, new: Files) -> str:
    out: list[str] = []
    for path, data in new.items():
        before = (old[path] or b"").decode(errors="replace").splitlines(keepends=True)
        after = (data or b"").decode(errors="replace").splitlines(keepends=True)
        out += difflib.unified_diff(before, after, fromfile=f"a{path}" if old[path] is not None else "/dev/null",
                                    tofile=f"b{path}" if data is not None else "/dev/null")
    return "".join(out)


def _write(files: Files) -> None:
    for path, data in files.items():
        if data is None:
            atomic_remove(path)
        else:
            atomic_write(path, data)


def _serving(flavour: Flavour, systemd: Systemd) -> list[str]:
    """The flavour's units that are active now. Raises Unavailable (503) when systemd cannot be
    reached, which is why change() asks before anything reaches the live path."""
    return [unit for unit in flavour.units if systemd.active_state(unit) == "active"]


def _still_serving(systemd: Systemd, units: Sequence[str]) -> None:
    """Every unit that served before the change must serve after it (whatever the flavour's
    own verify checked): a reload that kills the server is a failed change."""
    pending = list(units)
    seen: dict[str, str] = {}

    def stopped(unit: str) -> ActionFailed:
        return ActionFailed(f"{unit} was running before the change and is {seen[unit]} after applying it")

    def all_active() -> bool:
        while pending:
            unit = pending[0]
            state = seen[unit] = systemd.active_state(unit)
            if state in ("inactive", "failed"):
                raise stopped(unit)
            if state != "active":
                return False
            pending.pop(0)
        return True

    if not wait_until(all_active, SETTLE_SECONDS, SETTLE_INTERVAL):
        raise stopped(pending[0])


def change(flavour: Flavour, requested: dict[str, int | None], *, systemd: Systemd, journal: Journal,
           listening: Listening, dry_run: bool = False) -> ChangeOutcome:
    """Set the update values; inputs given as None keep their current value.
    The caller holds the TransactionLock (Controller.run takes it for every mutating action).
    Raises ChangeRefused (journal not writable), ChangeFailed (rolled back; .rollback says how),
    or what validation / the systemd pre-check raised (nothing touched)."""
    current = flavour.current_values()
    values = {k: current[k] if v is None else v for k, v in requested.items()}
    new = flavour.plan(values)
    old = {path: read_bytes_or_none(path) for path in new}
    changed = {path: data for path, data in new.items() if old[path] != data}
    outcome = ChangeOutcome(changed=bool(changed), values=values, diff=_diff(old, changed),
                            files=tuple(sorted(changed)), flavour=flavour.name)
    if dry_run or not changed:
        return outcome
    flavour.validate(new)           # before anything reaches the live path
    # Nothing is written unless systemd answers: a change that could be neither applied nor
    # cleanly undone must not start (Unavailable -> 503, files untouched).
    serving = _serving(flavour, systemd)
    txn = uuid.uuid4().hex[:12]
    try:
        journal.begin(txn, "update", old={p: old[p] for p in changed}, new=changed,
                      meta={"flavour": flavour.name, "values": values, "serving": serving})
    except ConfigWriteError as exc:
        raise ChangeRefused(exc) from None
    _crash_point("begun")
    try:
        _write(changed)
        journal.mark("written")
        _crash_point("written")
        applied = flavour.apply(systemd, sorted(changed), serving)
        journal.mark("applied")
        _crash_point("applied")
        flavour.verify(listening, values, applied)
        _still_serving(systemd, serving)
        journal.mark("verified")
        _crash_point("verified")
    except Exception as exc:
        log.error("update %s failed (%s); restoring the previous configuration", txn, prose.reason(exc))
        raise ChangeFailed.of(exc, _undo(flavour, systemd, journal)) from None
    journal.retire()
    log.info("update %s: %s -> %s (%s)", txn, current, values, prose.applied(applied))
    return ChangeOutcome(changed=True, values=values, diff=outcome.diff, files=outcome.files,
                         applied=applied, flavour=flavour.name)


def _undo(flavour: Flavour, systemd: Systemd, journal: Journal) -> Rollback:
    """Restore the journaled files, make the server take them up again and start the units that
    served before the change but no longer do. Returns what was done.

    The journal is cleared when that is done (or failed for a reason a retry will not fix, e.g. a
    failing ExecReload). It stays (Rollback.journal_kept) when the files cannot be restored, or
    systemd cannot be reached to re-apply them: otherwise a server still running the new
    configuration would be left with the old files and nothing to remind anyone. The next
    mutating call (or start) then retries."""
    entry = journal.pending()
    assert entry is not None, "_undo without a journaled change"
    paths = sorted(entry.old)
    touched = tuple(p for p in paths if read_bytes_or_none(p) != entry.old[p])
    files = tuple(paths)
    try:
        journal.restore(entry)
    except ApiError as exc:
        return Rollback(files=files, restore_error=exc, flavour=flavour.name)
    if not touched and entry.step == "begun":
        # Killed or failed before anything reached the live files: nothing to re-apply.
        journal.clear()
        return Rollback(files=files, modified=False, flavour=flavour.name)
    done = Rollback(files=files, restored=touched, already_held=tuple(p for p in paths if p not in touched),
                    flavour=flavour.name)
    done = _reapply(flavour, systemd, entry, paths, done)
    if not done.journal_kept:
        journal.clear()
    return done


def _reapply(flavour: Flavour, systemd: Systemd, entry: JournalEntry, paths: list[str],
             done: Rollback) -> Rollback:
    """Apply the restored files and start what served before; systemd unreachable keeps the journal."""
    serving: list[str] = list(entry.meta.get("serving", []))
    try:
        try:
            done = replace(done, reapplied=flavour.apply(systemd, paths, serving))
        except ApiError as exc:
            if isinstance(exc, Unavailable):
                raise
            done = replace(done, reapply_error=exc)
        stopped = tuple(u for u in serving if systemd.active_state(u) != "active")
        try:
            for unit in stopped:
                systemd.start(unit)
        except ApiError as exc:
            if isinstance(exc, Unavailable):
                raise
            return replace(done, start_failed=stopped, start_error=exc)
        return replace(done, started=stopped)
    except Unavailable as exc:   # systemd unreachable
        return replace(done, unreachable=exc)


def _foreign(entry: JournalEntry, flavour: Flavour) -> list[str]:
    """The files a journal record names that the flavour does not have imapd-ctl write."""
    return sorted((set(entry.old) | set(entry.new)) - set(flavour.owned))


def recover(flavour: Flavour, systemd: Systemd, journal: Journal) -> Recovery | None:
    """Finish or undo a change that a crash interrupted (the caller holds the lock).
    Returns what was done, or None when nothing was pending. If the change cannot be undone yet
    (files not restorable, or systemd unreachable to re-apply them) the journal stays and this
    raises RecoveryFailed: 503 (RecoveryUnreachable) for systemd, 500 otherwise."""
    entry = journal.pending()
    if entry is None:
        return None
    foreign = _foreign(entry, flavour)
    if foreign:
        raise JournalForeign(journal.path, f"it names {', '.join(foreign)}, which {flavour.name} does "
                                           f"not have imapd-ctl write (only {', '.join(flavour.owned)})")
    if entry.step == "verified":
        for path in entry.new:
            remove_stale_temps(path)
        if entry.action == "update":
            journal.retire()
        else:
            journal.clear()
        done = Recovery(entry.txn_id, entry.action, entry.step, rollback=None)
    else:
        done = Recovery(entry.txn_id, entry.action, entry.step, rollback=_undo(flavour, systemd, journal))
    log.warning("recovery: %s", prose.recovery(done))
    if done.rollback is not None and done.rollback.journal_kept:
        # Nothing may change the configuration on top of a change that is not undone yet.
        raise RecoveryFailed.of(done)
    return done


# -- a start that fails with the last change: going back to the configuration before it ----------

def failed_start(flavour: Flavour, journal: Journal, verb: str, units: tuple[str, ...], cause: ApiError, *,
                 restart: Callable[[], None]) -> StartFailed:
    """A start or restart failed (`cause`): if the live files are still those of the last
    update, go back to the configuration before it and restart with that, so a setting the
    validator could not judge does not leave mail down. The caller holds the lock."""
    entry, why_not = previous_change(flavour, journal)
    if entry is None:
        return StartFailed(verb, units, cause, None, why_not)
    try:
        return StartFailed(verb, units, cause, go_back(flavour, journal, entry, restart))
    except ApiError as exc:       # its journal could not be begun: nothing was touched
        return StartFailed(verb, units, cause, None, exc)


def previous_change(flavour: Flavour, journal: Journal) -> tuple[JournalEntry | None, str | ApiError]:
    """The last update that went through, if the live files still hold what it wrote (nothing
    changed them since); else None and why not ("" when no update is on record)."""
    try:
        entry = journal.previous()
    except JournalError as exc:
        return None, exc
    if entry is None:
        return None, ""
    if _foreign(entry, flavour):
        return None, f"its record ({journal.previous_path}) names files {flavour.name} does not have imapd-ctl write"
    if any(read_bytes_or_none(path) != data for path, data in entry.new.items()):
        return None, f"the files were changed since that update ({entry.txn_id})"
    return entry, ""


def go_back(flavour: Flavour, journal: Journal, entry: JournalEntry, start: Callable[[], None]) -> FallBack:
    """Put back the files as they were before `entry` (the last update) and start the server
    with them (`start` restarts its units and waits until they serve). Journaled like a change,
    so a crash half-way is undone by recovery. If the server does not start with those either,
    the update's files are put back: the host is left as it was found. The caller holds the
    lock; journal.begin may raise (nothing was touched then)."""
    files = tuple(sorted(entry.old))
    undo = uuid.uuid4().hex[:12]
    journal.begin(undo, "fallback", old=dict(entry.new), new=dict(entry.old),
                  meta={"flavour": flavour.name, "serving": [], "undoes": entry.txn_id})
    finished = str(entry.meta.get("finished", entry.started))
    try:
        _write(entry.old)
        journal.mark("written")
        start()
        journal.mark("verified")     # from here, recovery keeps what was put back
    except Exception as exc:
        log.error("going back before update %s did not help (%s); putting its files back", entry.txn_id,
                  prose.reason(exc))
        try:
            undoing = journal.pending()      # its old files are the update's
            if undoing is not None:
                journal.restore(undoing)
            journal.clear()
        except ApiError as again:     # the journal stays: the next recovery puts them back
            log.error("putting back the files of update %s failed (%s)", entry.txn_id, prose.reason(again))
        return FallBack(entry.txn_id, finished, files, error=exc)
    journal.clear()
    journal.forget_previous()
    log.warning("went back before update %s (%s): the server serves with the previous configuration",
                entry.txn_id, finished)
    return FallBack(entry.txn_id, finished, files, values=flavour.current_values())
