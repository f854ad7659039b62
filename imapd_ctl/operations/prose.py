"""The sentences clients and the log read, made from the operations' structured outcomes
(operations.outcomes). Nothing else formats them: the operations return and raise data.

The edge calls, once per reply (where the envelope {"status", "payload"} is built):
    payload = prose.render(payload)        # a handler's return value
    payload = prose.payload_of(exc)        # an ApiError
render() leaves plain JSON values as they are and turns outcome objects (also inside lists and
dicts, e.g. a cascade's per-node outcomes) into their text.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from imapd_ctl.core import capacity as cap
from imapd_ctl.core.capacity import Capacity, PortLoad, Signal
from imapd_ctl.core.errors import ApiError
from imapd_ctl.core.protocols import Applied
from imapd_ctl.operations.outcomes import (
    ChangeFailed, ChangeOutcome, ChangeRefused, Recovery, RecoveryFailed, Rollback, StartFailed)

LATER = ("it stays journaled and is finished by the next change or service action, or when "
         "imapd-ctl starts")


def _units(units: tuple[str, ...]) -> str:
    return ", ".join(units)


def reason(exc: BaseException) -> str:
    """An exception as a clause: an ApiError's message, else its type and text."""
    return message(exc) if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"


def applied(done: Applied, flavour: str = "") -> str:
    """'reloaded dovecot.service', 'restarted a, b; c is not running; the new limits apply when
    it starts'."""
    parts = []
    if done.reloaded:
        parts.append(f"reloaded {_units(done.reloaded)}")
    if done.restarted:
        parts.append(f"restarted {_units(done.restarted)}")
    if done.idle:
        one = len(done.idle) == 1
        parts.append(f"{_units(done.idle)} {'is' if one else 'are'} not running; the new limits apply when "
                     f"{'it starts' if one else 'they start'}")
    return "; ".join(parts) or f"no {flavour.title() or 'IMAP'} unit reads the changed files"


def rollback(done: Rollback) -> str:
    if done.restore_error is not None:
        return f"the change could NOT be rolled back yet: {reason(done.restore_error)}; {LATER}"
    if not done.modified:
        return "the change was rolled back: the live configuration had not been modified"
    what = (f"the previous configuration was restored ({_units(done.restored)})" if done.restored
            else f"the live configuration already held the previous contents ({_units(done.already_held)})")
    if done.unreachable is not None:
        return (f"the change was rolled back: {what} but could not be re-applied yet: "
                f"{reason(done.unreachable)}; {LATER}")
    if done.reapply_error is not None:
        text = f"the change was rolled back: {what} but applying it failed too: {reason(done.reapply_error)}"
    else:
        assert done.reapplied is not None
        text = f"the change was rolled back: {what} and re-applied ({applied(done.reapplied, done.flavour)})"
    if done.start_error is not None:
        text += f"; starting {_units(done.start_failed)} again failed: {reason(done.start_error)}"
    elif done.started:
        text += (f"; {_units(done.started)} had stopped and "
                 f"{'was' if len(done.started) == 1 else 'were'} started again")
    return text


def recovery(done: Recovery) -> str:
    if done.rollback is None:
        return (f"change {done.txn_id} ({done.action}) had been verified before the crash; "
                f"completed it (the new configuration stays)")
    return f"change {done.txn_id} ({done.action}) was interrupted at step '{done.step}'; {rollback(done.rollback)}"


def outcome(done: ChangeOutcome) -> str:
    """The reply to an update that was not a dry run."""
    if not done.changed:
        return "IMAP4 server settings unchanged; nothing was reloaded"
    assert done.applied is not None
    return f"IMAP4 server settings updated ({', '.join(done.files)}); {applied(done.applied, done.flavour)}"


# -- queryCapacity: the typed reading (core.capacity) as JSON values, a summary and each signal

_SIGNALS = {
    cap.FULL: "{subject} runs at its process limit ({value} processes)",
    cap.DROPPED: "{subject} dropped connections recently (its last warning at unix time {value})",
    cap.FAILING: "{subject} has failing processes ({value} in the last second) or is throttled",
    cap.PENDING: "{subject} has connections waiting with no process to accept them",
    cap.QUEUED: "port {subject} has {value} connections waiting to be accepted",
    cap.RESTARTED: "{subject} was restarted automatically {value} times since its last manual start",
    cap.FAILED: "{subject} did not end its last run in success",
    cap.DOWN: "port {subject} is not served",
}


def capacity_signal(found: Signal) -> str:
    return _SIGNALS[found.code].format(subject=found.subject, value=found.value)


def capacity_port(load: PortLoad) -> str:
    if not load.up:
        return f"{load.port}: not served"
    limit = "no limit" if load.limit is None else f"limit {load.limit}"
    shared = f", shared with {', '.join(map(str, load.shared_with))}" if load.shared_with else ""
    free = "" if load.headroom is None else f", {load.headroom} free"
    return f"{load.port}: {load.in_use} in use ({limit}{shared}{free})"


def capacity(done: Capacity) -> str:
    text = "; ".join(capacity_port(p) for p in done.ports)
    if done.signals:
        text += "; saturation: " + "; ".join(capacity_signal(s) for s in done.signals)
    return text


def capacity_payload(done: Capacity) -> dict[str, Any]:
    """Plain JSON values (XML-RPC carries them too: every figure fits in an i4; an unlimited
    limit is null)."""
    return {
        "flavour": done.flavour,
        "ports": [{**dataclasses.asdict(p), "shared_with": list(p.shared_with), "headroom": p.headroom}
                  for p in done.ports],
        "pools": [{**dataclasses.asdict(p), "ports": list(p.ports), "capacity": p.capacity}
                  for p in done.pools],
        "units": [dataclasses.asdict(u) for u in done.units],
        "saturated": done.saturated,
        "signals": [{**dataclasses.asdict(s), "text": capacity_signal(s)} for s in done.signals],
        "summary": capacity(done),
        "checked_at": done.checked_at,
    }


def start_failed(exc: StartFailed) -> str:
    back = exc.fallback
    if back is None:
        why = exc.why_not if isinstance(exc.why_not, str) else reason(exc.why_not)
        return reason(exc.cause) + (f"; the configuration before the last update was not put back: {why}"
                                    if why else "")
    units, one = _units(exc.units), len(exc.units) == 1
    files, hold = _units(back.files), "holds" if len(back.files) == 1 else "hold"
    if back.error is not None:
        return (f"{reason(exc.cause)}; going back to the configuration before the last update ({back.txn_id}, "
                f"{back.finished}) did not help: {reason(back.error)}; {files} {hold} the update's "
                f"values again and {units} {'is' if one else 'are'} not running")
    assert back.values is not None
    values = ", ".join(f"{k}={v}" for k, v in back.values.items())
    return (f"{exc.verb} failed; the last update ({back.txn_id}, {back.finished}) was undone to get mail served "
            f"again: {files} {hold} the configuration from before it and {units} "
            f"{'serves' if one else 'serve'} with it ({values}). Find out why the IMAP server did not start "
            f"with the update's values, then apply them again. What failed: {reason(exc.cause)}")


def message(exc: BaseException) -> str:
    """An error's text (the payload of its reply unless it carries a structured one)."""
    if isinstance(exc, StartFailed):
        return start_failed(exc)
    if isinstance(exc, ChangeFailed):
        return f"{reason(exc.cause)}; {rollback(exc.rollback)}"
    if isinstance(exc, ChangeRefused):
        return (f"{reason(exc.cause)}; the change was refused before touching the live configuration "
                f"(the journal that makes it undoable could not be written)")
    if isinstance(exc, RecoveryFailed):
        return f"recovery: {recovery(exc.recovery)}"
    if isinstance(exc, ApiError):
        return exc.message
    return str(exc)


def text(obj: object) -> str:
    """The words for any outcome, Applied, or error."""
    if isinstance(obj, ChangeOutcome):
        return outcome(obj)
    if isinstance(obj, Rollback):
        return rollback(obj)
    if isinstance(obj, Recovery):
        return recovery(obj)
    if isinstance(obj, Applied):
        return applied(obj)
    if isinstance(obj, BaseException):
        return reason(obj)
    if isinstance(obj, Capacity):
        return capacity(obj)
    return str(obj)


_PLAIN = frozenset({bool, int, str, type(None)})


def render(payload: Any) -> Any:
    """A reply payload with every outcome object (and error, e.g. in a cascade's per-node
    outcomes) turned into its text; plain JSON values (str, int, bool, None, lists and dicts of
    them) come back unchanged."""
    if payload.__class__ in _PLAIN:     # most replies (a poll's true or false): nothing to turn
        return payload
    if isinstance(payload, (ChangeOutcome, Rollback, Recovery, Applied)):
        return text(payload)
    if isinstance(payload, ApiError):
        return payload_of(payload)
    if isinstance(payload, Capacity):
        return capacity_payload(payload)
    if isinstance(payload, list):
        return [render(item) for item in payload]
    if isinstance(payload, dict):
        return {key: render(value) for key, value in payload.items()}
    return payload


def payload_of(result: Any) -> Any:
    """The reply payload for a handler's result or an ApiError it raised."""
    if isinstance(result, ApiError):
        return render(result.payload) if result.payload is not None else message(result)
    return render(result)

