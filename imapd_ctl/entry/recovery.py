"""Finishing or undoing a change a crash interrupted: `imapd-ctl recover`, and every
`imapd-ctl serve` before gunicorn starts.

At serve start it runs in a short-lived forked child: recovery needs D-Bus, and gunicorn's
master must never hold a D-Bus connection (the workers forked from it would hang on it). The
child calls the same function as the CLI and hands its RecoveryReport back through a pipe; the
parent only reads that.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from imapd_ctl.core.errors import ApiError
from imapd_ctl.core.settings import Settings
from imapd_ctl.transports import prose

FAILED = ("could not finish or undo an interrupted change (it is kept and retried by the "
          "next change): ")


@dataclass(frozen=True)
class RecoveryReport:
    ok: bool
    message: str      # what was done ("no interrupted change"), or why it failed


def recover(settings: Settings) -> RecoveryReport:
    """Recover in this process (it opens D-Bus)."""
    from imapd_ctl.entry import wiring
    try:
        what = wiring.build(settings).controller.recover()
    except ApiError as exc:
        return RecoveryReport(False, FAILED + exc.message)
    return RecoveryReport(True, prose.text(what) if what is not None else "no interrupted change")


def recover_in_child(settings: Settings) -> RecoveryReport:
    """recover() in a forked child; this process never touches D-Bus. An unexpected error or
    death of the child is a failed RecoveryReport, never an exception here."""
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
    with os.fdopen(read_fd) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    try:
        return RecoveryReport(**json.loads(data))
    except (ValueError, TypeError):
        return RecoveryReport(False, f"{FAILED}the recovery process ended without a result "
                               f"(wait status {status})")
