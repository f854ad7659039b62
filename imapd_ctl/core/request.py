"""One API call as the core sees it, whatever carried it (HTTP JSON, XML-RPC, SOAP).

A transport turns its bytes into a `Request` and a `Result` back into bytes; everything in
between (authentication, lookup, validation, running, audit) is `core.dispatch`, once for all
transports. The key and the inputs are read lazily: a transport may not be able to read them
(a body that is not JSON, a repeated member, a login form we do not support), and that must be
reported only to a caller who has shown a valid key, so the error waits inside the callable
until dispatch asks for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from imapd_ctl.core.actions import CONTROLLER
from imapd_ctl.core.protocols import Principal


def _no_inputs() -> Any:
    return None


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, and a
# Request is built for every poll. Nothing assigns to one once built.
@dataclass(slots=True)
class Request:
    transport: str                  # "http" | "xmlrpc" | "soap": for the audit trail
    peer: str                       # the client's address, or "unix-socket"
    action: Any                     # the action's name as sent (XML-RPC may send any value)
    read_key: Callable[[], str | None]
    """The API key as sent, None if none; may raise Unauthorized (an auth form we refuse)."""
    read_inputs: Callable[[], Any] = field(default=_no_inputs)
    """The raw inputs (a dict, None for none, anything else is refused); may raise BadInput."""
    controller: Any = CONTROLLER
    """The controller's path as sent (actions.CONTROLLERS: /nodeworx/mail/imap, /nodeworx/mail/simap):
    XML-RPC and SOAP name it in every call (ctrl_name), HTTP by the URL it routes; dispatch
    looks it up after authentication (an unknown one is a 404)."""
    method: str | None = None       # the HTTP method, checked against the action's; None: no check
    booleans: bool = False
    """A typed boolean (XML-RPC, SOAP) is 1/0 for a 0/1 input; JSON and forms: refused."""
    strict: bool = False
    """An unknown input name is refused (the native HTTP API); XML-RPC and SOAP ignore it, as
    InterWorx does (panels send extra keys such as `perms`)."""
    peer_cred: tuple[int, int] | None = None
    """(uid, gid) of a caller on the unix socket, as the kernel says: root and the operator group
    need no key there (dispatch asks Context.operators). None over TCP: only keys count."""
    caller: Principal | None = None
    """Who calls, when the key was already checked for this request with the permission
    actions need (the server's gate, transports.http.key_gate): dispatch does not ask the key
    store twice in a few microseconds."""


@dataclass(frozen=True)
class Result:
    """The InterWorx envelope's two fields: status 0 and the payload, or an error status and
    a message (or a structured payload, such as a cascade's per-node outcomes)."""
    status: int
    payload: Any
