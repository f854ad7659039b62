"""The request pipeline, the same for every transport: authenticate, find the action,
check the method, read and validate the inputs, audit the change about to run (refused if that
cannot be written), run, audit the result -- in that order, so a caller
without a valid key learns nothing about controllers, actions or inputs."""
from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from imapd_ctl.core.actions import IMAP, METRICS_PERMISSION, PERMISSION, Action, Service, controller, lookup
from imapd_ctl.core.errors import ApiError, BadInput, Forbidden, MethodNotAllowed, NotFound
from imapd_ctl.core.protocols import Audit, KeyStore, Principal, Telemetry, Untold
from imapd_ctl.core.request import Request, Result

log = logging.getLogger(__name__)


class Runner(Protocol):
    """Runs a validated action of one of the table's controllers (operations.controller.Controller)."""

    def run(self, action: Action, values: dict[str, Any], service: Service = IMAP) -> Any: ...


def _as_is(payload: Any) -> Any:
    return payload


def _no_operators(uid: int, gid: int) -> Principal | None:
    return None


def _message(exc: ApiError) -> Any:
    return exc.payload if exc.payload is not None else exc.message


@dataclass(frozen=True)
class Context:
    """What dispatch needs, built once by the wiring (daemon.wiring). `render` and `describe`
    are the edge's words (operations.prose): a handler's structured result and an error become
    the reply's payload there, before the audit line records it."""
    keys: KeyStore
    audit: Audit
    runner: Runner
    render: Callable[[Any], Any] = _as_is
    describe: Callable[[ApiError], Any] = _message
    telemetry: Telemetry = Untold()    # counts each known action by status, with its duration
    # (uid, gid) on the unix socket -> the operator it is without a key (adapters.peers), or None
    operators: Callable[[int, int], Principal | None] = _no_operators


def dispatch(request: Request, ctx: Context) -> Result:
    """The Result of one request; never raises (an unexpected error is a 500 and a traceback
    in the log, and the worker lives on)."""
    started = time.monotonic()
    who = "-"
    action: Action | None = None
    service = IMAP
    values: dict[str, Any] = {}
    try:
        who = (request.caller or _caller(request, ctx)).name
        service = controller(request.controller)
        action = lookup(request.action, service)
        if request.method is not None and request.method not in action.methods:
            raise MethodNotAllowed(f"{action.name} changes the server: use {' or '.join(action.methods)}")
        raw = request.read_inputs()
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise BadInput(f"input: must be a struct/object of named inputs, got {type(raw).__name__}")
        values = action.validate(raw, strict=request.strict, booleans=request.booleans)
        if action.mutating:    # no audit line, no change (raises ChangesRefused)
            ctx.audit.begin(who=who, peer=request.peer, transport=request.transport,
                            controller=service.path, action=action.name, inputs=values)
        result = Result(0, ctx.render(ctx.runner.run(action, values, service)))
    except ApiError as exc:
        result = Result(exc.status, ctx.describe(exc))
    except Exception as exc:  # a bug: say so, keep the worker alive, log the traceback
        log.exception("action %s failed unexpectedly", request.action)
        result = Result(500, f"internal error in imapd-ctl: {type(exc).__name__}: {exc}")
    if action is not None and action.mutating:
        ctx.audit.record(who=who, peer=request.peer, transport=request.transport,
                         controller=service.path, action=action.name,
                         inputs=values, status=result.status, payload=result.payload)
    if action is not None:
        ctx.telemetry.action(action.name, result.status, time.monotonic() - started, service.label)
    return result


def _caller(request: Request, ctx: Context) -> Principal:
    """Who calls: the key's holder, or with no key an operator on the unix socket (root, the
    operator group: Context.operators); a key sent is that key, root's too."""
    key = request.read_key()
    if key is None and request.peer_cred is not None:
        operator = ctx.operators(*request.peer_cred)
        if operator is not None:
            return operator
    return ctx.keys.authenticate(key, PERMISSION)


def _is_local(peer: str) -> bool:
    if peer.startswith("unix-socket"):
        return True
    try:
        return ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return False


def check_metrics_reader(ctx: Context, access: str, read_key: Callable[[], str | None], peer: str) -> None:
    """Raise unless this caller may read /metrics (settings.metrics_access): "local" = the unix
    socket or a loopback peer, "key" = a key with the METRICS permission, "off" = nobody."""
    if access == "off":
        raise NotFound('/metrics is off on this daemon (metrics_access = "off")')
    if access == "key":
        ctx.keys.authenticate(read_key(), METRICS_PERMISSION)
    elif not _is_local(peer):
        raise Forbidden(f'/metrics is readable from this host only (metrics_access = "local"); '
                        f"{peer} is not a loopback address")
