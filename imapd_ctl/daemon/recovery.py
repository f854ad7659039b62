"""Finishing or undoing a change a crash interrupted: `imapd-ctl recover`, and every
`imapd-ctl serve` before gunicorn starts.

At serve start it runs in a short-lived forked child: recovery needs D-Bus, and gunicorn's
master must never hold a D-Bus connection (the workers forked from it would hang on it). The
child calls the same function as the CLI and hands its RecoveryReport back through a pipe; the
parent only reads that, for at most `recovery_timeout` seconds: a recovery that hangs (a unit
whose reload never ends) is killed there, and the daemon serves with changes refused until
the interrupted change is finished (`imapd-ctl recover`), instead of ending in the unit's
start timeout and a restart loop.
"""
from __future__ import annotations

import json
import os
import select
import signal
import time
from dataclasses import asdict, dataclass

from imapd_ctl.core.errors import ApiError
from imapd_ctl.core.settings import Settings
from imapd_ctl.operations import prose

FAILED = ("could not finish or undo an interrupted change (it is kept and retried by the "
          "next change): ")


UNFINISHED = "an interrupted change could not be finished or undone at start:"


@dataclass(frozen=True)
class RecoveryReport:
    ok: bool
    message: str      # what was done ("no interrupted change"), or why it failed
    finished: bool = True   # False: it did not end within the deadline and was stopped


def recover(settings: Settings) -> RecoveryReport:
    """Recover in this process (it opens D-Bus)."""
    from imapd_ctl.daemon import wiring
    try:
        what = wiring.build(settings).controller.recover()
    except ApiError as exc:
        return RecoveryReport(False, FAILED + prose.message(exc))
    return RecoveryReport(True, prose.text(what) if what is not None else "no interrupted change")


def _read_until(fd: int, deadline: float) -> bytes | None:
    """All the child writes to `fd` until it closes it, or None at the deadline."""
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        part = os.read(fd, 65536)
        if not part:
            return data
        data += part


def recover_in_child(settings: Settings) -> RecoveryReport:
    """recover() in a forked child, for at most settings.recovery_timeout seconds; this
    process never touches D-Bus. An unexpected error, death or overrun of the child is a
    failed RecoveryReport, never an exception here."""
    deadline = time.monotonic() + settings.recovery_timeout
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: report, then leave without running the parent's cleanups
        code = 1
        try:
            os.close(read_fd)
            try:
                outcome = recover(settings)
            except Exception as exc:
                outcome = RecoveryReport(False, f"{FAILED}internal error: {type(exc).__name__}: {exc}")
            with os.fdopen(write_fd, "w") as out:
                json.dump(asdict(outcome), out)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        data = _read_until(read_fd, deadline)
    finally:
        os.close(read_fd)
    if data is None:
        os.kill(pid, signal.SIGKILL)    # our own child, stuck (the journal keeps the change)
        os.waitpid(pid, 0)
        return RecoveryReport(False, f"{UNFINISHED} it did not finish within recovery_timeout = "
                                     f"{settings.recovery_timeout:g} s and was stopped", finished=False)
    _, status = os.waitpid(pid, 0)
    try:
        return RecoveryReport(**json.loads(data))
    except (ValueError, TypeError):
        return RecoveryReport(False, f"{FAILED}the recovery process ended without a result "
                               f"(wait status {status})")
