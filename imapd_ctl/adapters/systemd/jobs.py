"""systemd jobs (start, stop, restart, reload) whose result we wait for, and the unit's
journal lines that explain a failure."""
from __future__ import annotations

import logging
import subprocess
import time

from imapd_ctl.adapters.systemd.state import UnitCache
from imapd_ctl.adapters.systemd.errors import JobFailed
from imapd_ctl.core.errors import Unavailable
from imapd_ctl.core.waiting import wait_until

log = logging.getLogger(__name__)

JOURNAL_LAG = 3.0            # how long journald may lag behind systemd's job result
JOURNAL_INTERVAL = 0.1


def journal_tail(name: str, lines: int = 10, since: float | None = None) -> str:
    argv = ["journalctl", "--no-pager", "-o", "cat", "-n", str(lines), "-u", name]
    if since is not None:
        argv += ["--since", f"@{since:.6f}"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(journal unavailable: {exc})"
    return out.strip()


def failure_tail(name: str, since: float) -> str:
    """The unit's journal lines since the job began. journald may lag a little behind
    systemd's job result, so wait (bounded) until systemd's own "Failed" line is in."""
    tails: list[str] = []

    def has_failed_line() -> bool:
        tails.append(journal_tail(name, since=since))
        return "Failed" in tails[-1] or "failed" in tails[-1]

    wait_until(has_failed_line, JOURNAL_LAG, JOURNAL_INTERVAL)
    return tails[-1]


START_LIMIT = "Start request repeated too quickly"     # systemd's words when the start limit stops a job


def run_job(state: UnitCache, verb: str, method: str, name: str, timeout: float, *,
            since: float | None = None) -> None:
    """Queue a job and wait for JobRemoved; raise JobFailed with systemd's result and
    the unit's last journal lines unless the result is 'done'."""
    bus = state.bus
    started = time.time()
    state.get(name)     # watched: its JobRemoved reaches us (the bus daemon filters by unit)
    job = str(bus.manager_call(f"{verb} {name}", method, "(ss)", (name, "replace"), "(o)")[0])
    result = state.wait_job(job, timeout)
    if result is None:
        if bus.closed:
            bus.drop()
            raise Unavailable(f"{verb} {name}: lost the D-Bus connection while waiting for the job")
        raise JobFailed(f"{verb} {name}: no result from systemd after {timeout:.0f} s "
                        f"(job {job} still queued or running)")
    log.info("systemd job %s %s: %s (%.2f s)", verb, name, result, time.time() - started)
    if result == "done":
        return
    tail = failure_tail(name, since or started)
    if since is None and method in ("StartUnit", "RestartUnit") and (
            state.get(name).result == "start-limit-hit" or START_LIMIT in tail):
        # systemd's crash-loop brake also stops an operator's explicit request after a few
        # quick restarts; like `systemctl reset-failed`, clear it once and try again. (A unit
        # that had already failed keeps that Result: only the log line says the limit was hit.)
        log.warning("%s hit its start limit; resetting it and retrying %s once", name, verb)
        bus.manager_call(f"reset the start limit of {name}", "ResetFailedUnit", "(s)", (name,))
        return run_job(state, verb, method, name, timeout, since=started)
    raise JobFailed(f"{verb} {name} failed: systemd job result '{result}'"
                    + (f"; last journal lines of {name}:\n{tail}" if tail else ""))
