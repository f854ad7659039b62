"""What a configuration change, its rollback and a crash recovery did, as data.

The operations return and raise these; they never format sentences. The words a client or a log
reads are made from them at the edge, by imapd_ctl.operations.prose:
  * prose.render(payload) turns a handler's return value (a ChangeOutcome, a Recovery, or plain
    JSON values holding them) into the reply's payload (core.dispatch calls it through its
    Context, which the wiring builds);
  * prose.message(exc) / prose.payload_of(exc) give an error's text.
Whatever prints them (a reply, the CLI, a log line) asks operations.prose explicitly; nothing
here knows words, so a structured error's `.message` is only its type's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imapd_ctl.core.errors import ActionFailed, ApiError, ConfigWriteError, Unavailable
from imapd_ctl.core.protocols import Applied, Values


@dataclass(frozen=True)
class ChangeOutcome:
    """A change that went through (or a dry run, or nothing to do)."""
    changed: bool                    # did any file's bytes differ from the plan
    values: Values                   # the four values now requested
    diff: str = ""                   # unified diff of the changed files
    files: tuple[str, ...] = ()      # the changed files, sorted
    applied: Applied | None = None   # what the flavour's apply did (None: not applied)
    flavour: str = ""


@dataclass(frozen=True)
class Rollback:
    """What undoing a change did: restore the journaled files, re-apply them, start the units
    that served before and no longer do; the journal is cleared unless journal_kept."""
    files: tuple[str, ...] = ()          # every file the change touched (journaled)
    modified: bool = True                # False: nothing had reached the live files (begun)
    restored: tuple[str, ...] = ()       # files put back (they held the change's bytes)
    already_held: tuple[str, ...] = ()   # files that still held their previous bytes
    restore_error: BaseException | None = None   # the files could not be restored (journal kept)
    reapplied: Applied | None = None     # what re-applying the restored files did
    reapply_error: ApiError | None = None          # re-applying failed (not for lack of systemd)
    started: tuple[str, ...] = ()        # served before, had stopped, were started again
    start_failed: tuple[str, ...] = ()   # ... or could not be started again
    start_error: ApiError | None = None
    unreachable: ApiError | None = None  # systemd could not be reached to re-apply (journal kept)
    flavour: str = ""

    @property
    def journal_kept(self) -> bool:
        """The journal stays (and the next change, service action or start finishes the undo)."""
        return self.restore_error is not None or self.unreachable is not None

    @property
    def kept_by(self) -> BaseException | None:
        return self.restore_error if self.restore_error is not None else self.unreachable


@dataclass(frozen=True)
class Recovery:
    """What recovery did with a change a crash interrupted."""
    txn_id: str
    action: str
    step: str                        # the journal's last step
    rollback: Rollback | None        # None: it had been verified; only the journal was cleared

    @property
    def completed(self) -> bool:
        return self.rollback is None


@dataclass(frozen=True)
class FallBack:
    """What going back to the configuration before the last change did, after the IMAP server
    failed to start with it."""
    txn_id: str                      # the change that was undone
    finished: str                    # when that change went through (ISO 8601, UTC)
    files: tuple[str, ...]           # the files put back
    values: Values | None = None     # the values in force again (None when it did not help)
    error: BaseException | None = None   # the server did not start with those either: the
    #                                      change's files were put back again


class _Structured(ApiError):
    """An ApiError that carries data; its words are operations.prose.message(exc)."""

    def __init__(self) -> None:
        Exception.__init__(self, type(self).__name__)
        self.payload: Any = None
        self.message = type(self).__name__


class ChangeFailed(_Structured, ActionFailed):
    """A change failed after it was journaled; it was rolled back (or the rollback is pending,
    rollback.journal_kept). `cause`: what made it fail. Status 500, or 503 (ChangeUnreachable)
    when the cause is systemd being unreachable."""

    def __init__(self, cause: BaseException, rollback: Rollback):
        super().__init__()
        self.cause = cause
        self.rollback = rollback

    @staticmethod
    def of(cause: BaseException, rollback: Rollback) -> ChangeFailed:
        unreachable = isinstance(cause, Unavailable)
        return (ChangeUnreachable if unreachable else ChangeFailed)(cause, rollback)


class ChangeUnreachable(ChangeFailed, Unavailable):
    status = 503


class ChangeRefused(_Structured, ConfigWriteError):
    """The journal could not be written: the change was refused before touching anything."""

    def __init__(self, cause: ApiError):
        super().__init__()
        self.cause = cause


class RecoveryFailed(_Structured, ActionFailed):
    """An interrupted change could not be undone yet; its journal stays (recovery.rollback).
    Status 500, or 503 (RecoveryUnreachable) when systemd could not be reached."""

    def __init__(self, recovery: Recovery):
        super().__init__()
        self.recovery = recovery

    @staticmethod
    def of(recovery: Recovery) -> RecoveryFailed:
        kept_by = recovery.rollback.kept_by if recovery.rollback is not None else None
        unreachable = isinstance(kept_by, Unavailable)
        return (RecoveryUnreachable if unreachable else RecoveryFailed)(recovery)


class RecoveryUnreachable(RecoveryFailed, Unavailable):
    status = 503


class StartFailed(_Structured, ActionFailed):
    """start or restart failed (`cause`). `fallback`: what going back to the configuration
    before the last change did; None when there was nothing to go back to (`why_not` says why,
    or is empty when no change was ever recorded)."""

    def __init__(self, verb: str, units: tuple[str, ...], cause: ApiError, fallback: FallBack | None,
                 why_not: str | ApiError = ""):
        super().__init__()
        self.verb, self.units, self.cause = verb, units, cause
        self.fallback, self.why_not = fallback, why_not
