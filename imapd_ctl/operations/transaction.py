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
import time
import uuid
from dataclasses import dataclass, field

from imapd_ctl.adapters.configfile import Journal, atomic_remove, atomic_write, read_bytes_or_none, remove_stale_temps
from imapd_ctl.core.errors import ActionFailed, ApiError, ConfigWriteError

log = logging.getLogger(__name__)

CRASH_ENV = "IMAPD_CTL_CRASH_AT"
SETTLE_SECONDS = 5.0   # how long a unit that served before may take to be "active" again


def _crash_point(step: str) -> None:
    """The test hook described in the module docstring."""
    if os.environ.get(CRASH_ENV) == step:
        log.warning("%s=%s: killing this process (pid %d) with SIGKILL", CRASH_ENV, step, os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)


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


def _serving(flavour, systemd) -> list[str]:
    """The flavour's units that are active now. Raises Unavailable (503) when systemd cannot be
    reached, which is why change() asks before anything reaches the live path."""
    return [unit for unit in flavour.units if systemd.active_state(unit) == "active"]


def _still_serving(systemd, units: list[str]) -> None:
    """Every unit that served before the change must serve after it (whatever the flavour's
    own verify checked): a reload that kills the server is a failed change."""
    deadline = time.monotonic() + SETTLE_SECONDS
    for unit in units:
        while True:
            state = systemd.active_state(unit)
            if state == "active":
                break
            if state in ("inactive", "failed") or time.monotonic() > deadline:
                raise ActionFailed(f"{unit} was running before the change and is {state} after applying it")
            time.sleep(0.05)


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
    # Nothing is written unless systemd answers: a change that could be neither applied nor
    # cleanly undone must not start (Unavailable -> 503, files untouched).
    serving = _serving(flavour, systemd)
    txn = uuid.uuid4().hex[:12]
    try:
        journal.begin(txn, "update", old={p: old[p] for p in changed}, new=changed,
                      meta={"flavour": flavour.name, "values": values, "serving": serving})
    except ConfigWriteError as exc:
        exc.message = (f"{exc.message}; the change was refused before touching the live configuration "
                       f"(the journal that makes it undoable could not be written)")
        raise
    _crash_point("begun")
    try:
        _write(changed)
        journal.mark("written")
        _crash_point("written")
        outcome.applied = flavour.apply(systemd, sorted(changed))
        journal.mark("applied")
        _crash_point("applied")
        flavour.verify(systemd, values)
        _still_serving(systemd, serving)
        journal.mark("verified")
        _crash_point("verified")
    except Exception as exc:
        reason = exc.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
        log.error("update %s failed (%s); restoring the previous configuration", txn, reason)
        undo, _ = _undo(flavour, systemd, journal)
        if isinstance(exc, ApiError) and exc.status == 503:
            exc.message = f"{reason}; {undo}"
            raise
        raise ActionFailed(f"{reason}; {undo}") from None
    journal.clear()
    log.info("update %s: %s -> %s (%s)", txn, current, values, outcome.applied)
    return outcome


_LATER = ("it stays journaled and is finished by the next change or service action, or when "
          "imapd-ctl starts")


def _undo(flavour, systemd, journal: Journal) -> tuple[str, type[ApiError] | None]:
    """Restore the journaled files, make the server take them up again and start the units that
    served before the change but no longer do. Returns what was done (for the reply and the log)
    and, if the journal had to stay, the error class that says why (Unavailable: 503).

    The journal is cleared when that is done (or failed for a reason a retry will not fix, e.g. a
    failing ExecReload). It stays when the files cannot be restored, or systemd cannot be reached
    to re-apply them: otherwise a server still running the new configuration would be left with
    the old files and nothing to remind anyone. The next mutating call (or start) then retries."""
    entry = journal.pending()
    paths = sorted(entry.old)
    touched = [p for p in paths if read_bytes_or_none(p) != entry.old[p]]
    try:
        journal.restore(entry)
    except ApiError as exc:
        return f"the change could NOT be rolled back yet: {exc.message}; {_LATER}", type(exc)
    if not touched and entry.step == "begun":
        # Killed or failed before anything reached the live files: nothing to re-apply.
        journal.clear()
        return "the change was rolled back: the live configuration had not been modified", None
    what = (f"the previous configuration was restored ({', '.join(touched)})" if touched
            else f"the live configuration already held the previous contents ({', '.join(paths)})")
    try:
        try:
            done = f"the change was rolled back: {what} and re-applied ({flavour.apply(systemd, paths)})"
        except ApiError as exc:
            if exc.status == 503:
                raise
            done = f"the change was rolled back: {what} but applying it failed too: {exc.message}"
        stopped = [u for u in entry.meta.get("serving", []) if systemd.active_state(u) != "active"]
        try:
            for unit in stopped:
                systemd.start(unit)
        except ApiError as exc:
            if exc.status == 503:
                raise
            done += f"; starting {', '.join(stopped)} again failed: {exc.message}"
        else:
            if stopped:
                done += (f"; {', '.join(stopped)} had stopped and "
                         f"{'was' if len(stopped) == 1 else 'were'} started again")
    except ApiError as exc:   # 503: systemd unreachable
        return (f"the change was rolled back: {what} but could not be re-applied yet: {exc.message}; {_LATER}",
                type(exc))
    journal.clear()
    return done, None


def recover(flavour, systemd, journal: Journal) -> str | None:
    """Finish or undo a change that a crash interrupted (the caller holds the lock).
    Returns what was done, or None when nothing was pending. If the change cannot be undone yet
    (files not restorable, or systemd unreachable to re-apply them) the journal stays and this
    raises: Unavailable (503) for systemd, ActionFailed otherwise."""
    entry = journal.pending()
    if entry is None:
        return None
    if entry.step == "verified":
        for path in entry.new:
            remove_stale_temps(path)
        journal.clear()
        what = (f"change {entry.txn_id} ({entry.action}) had been verified before the crash; "
                f"completed it (the new configuration stays)")
        error = None
    else:
        undo, error = _undo(flavour, systemd, journal)
        what = f"change {entry.txn_id} ({entry.action}) was interrupted at step '{entry.step}'; {undo}"
    log.warning("recovery: %s", what)
    if error is not None:
        # Nothing may change the configuration on top of a change that is not undone yet.
        raise (error if error.status == 503 else ActionFailed)(f"recovery: {what}")
    return what
