"""The HTTP JSON transport: a request to CONTROLLER/<action> (each controller of the table:
/nodeworx/mail/imap, /nodeworx/mail/simap) becomes a core Request,
and a Result the InterWorx envelope {"status": N, "payload": ...} (a non-zero status is also
the HTTP status). Mounted by transports.app."""
from __future__ import annotations

import io
import json
from typing import Any, Callable

from flask import Response, request
from werkzeug.wrappers import Request as WerkzeugRequest

from imapd_ctl.core.actions import PERMISSION, brief
from imapd_ctl.core.errors import BadInput, Forbidden, Unauthorized
from imapd_ctl.core.protocols import KeyStore, Principal
from imapd_ctl.core.request import Request, Result
from imapd_ctl.transports.body import BODY_KEY, GATE_KEY, PEER_KEY

MAX_BODY = 64 * 1024
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class Incoming(WerkzeugRequest):
    """A request as this transport reads it outside Flask's request context (app._direct),
    with the app's body limit, as Flask's own request has."""
    max_content_length = MAX_BODY


def envelope(status: int, payload: Any) -> Response:
    # json.dumps' default separators give the InterWorx look: {"status": 0, "payload": true}
    body = json.dumps({"status": status, "payload": payload}) + "\n"
    return Response(body, status=status or 200, mimetype="application/json")


# The WSGI environ is read directly where it holds the answer: each attribute of Flask's
# `request` goes through a context-local proxy, and a panel's poll is mostly this layer.

def peer_of(environ: dict[str, Any]) -> str:
    """The caller for the audit trail: its address, or the unix socket and the caller's uid."""
    cred = environ.get(PEER_KEY)
    return environ.get("REMOTE_ADDR") or (f"unix-socket (uid {cred[0]})" if cred else "unix-socket")


def peer() -> str:
    return peer_of(request.environ)


def bearer_of(authorization: str) -> str | None:
    """The key of an `Authorization: Bearer KEY` header value."""
    scheme, _, key = authorization.partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def _bearer_in(environ: dict[str, Any]) -> str | None:
    """The key of the request's Authorization header; None without one; Unauthorized for a
    header of another form (said to the caller, who may have left out `Bearer`)."""
    authorization = environ.get("HTTP_AUTHORIZATION", "").strip()
    key = bearer_of(authorization)
    if key is None and authorization:
        scheme, _, rest = authorization.partition(" ")
        how = ("has no key after 'Bearer'" if scheme.lower() == "bearer" else
               f"uses the scheme {brief(scheme, 20)}" if rest.strip() else "has no scheme: put 'Bearer ' before the key")
        raise Unauthorized(f"the Authorization header must be 'Bearer KEY' (this one {how}); nothing was run")
    return key


KNOWN = "a key of this daemon"    # the gate's answer for a key without the actions' permission


def key_gate(keys: KeyStore) -> Callable[[str | None], Principal | str | None]:
    """Does an Authorization header value carry a key of this daemon (whatever its
    permissions)? The server asks before it reads a body over its keyless limit, and hands
    the answer on with the request (body.GATE_KEY): the caller, if the key may call actions
    (dispatch then does not look the key up again), KNOWN if it may not (the action answers
    403 itself), None for no key of ours."""
    def gate(authorization: str | None) -> Principal | str | None:
        key = bearer_of(authorization or "")
        if key is None:
            return None
        try:
            return keys.authenticate(key, PERMISSION)
        except Forbidden:
            return KNOWN
        except Exception:     # noqa: BLE001 - unknown key, or an unreadable key file: the server's
            return None       # loop asks this and must never fail; the app answers the request
    return gate


def body_of(environ: dict[str, Any], incoming: WerkzeugRequest) -> bytes:
    """The request body: the server's one copy when it framed the request (transports.body)."""
    body = environ.get(BODY_KEY)
    return body if isinstance(body, bytes) else incoming.get_data(cache=True)


def bearer() -> str | None:
    return _bearer_in(request.environ)


def _inputs(environ: dict[str, Any], incoming: WerkzeugRequest | None) -> dict[str, Any]:
    """Inputs from the query string and a form or JSON-object body; each name at most once."""
    if not environ.get("QUERY_STRING") and environ.get("CONTENT_LENGTH", "0") in ("", "0"):
        return {}   # the panels' polls (isRunning): nothing to parse (the body layer set the true length)
    if incoming is None:
        incoming = Incoming(environ)
    found: dict[str, Any] = {}

    def put(name: str, values: list[Any]) -> None:
        if name in found or len(values) != 1:
            raise BadInput(f"{name}: given more than once")
        found[name] = values[0]

    try:
        args = incoming.args
    except UnicodeDecodeError:   # Werkzeug 3 (Debian 13) decodes strictly; 2.2 replaced bytes
        raise BadInput("query string: not valid UTF-8") from None
    for name in args:
        put(name, args.getlist(name))
    if incoming.mimetype == "application/json":
        raw = body_of(environ, incoming)
        try:
            body = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates) if raw.strip() else {}
        except UnicodeDecodeError:
            raise BadInput("body: not valid UTF-8") from None
        except ValueError as exc:
            raise BadInput(f"body: not valid JSON ({exc})") from None
        except RecursionError:
            raise BadInput("body: not valid JSON (nested too deeply)") from None
        if not isinstance(body, dict):
            raise BadInput(f"body: must be a JSON object of named inputs, got {type(body).__name__}")
        for name, value in body.items():
            put(name, [value])
    elif incoming.mimetype in FORM_TYPES:
        # request.form would turn a body Werkzeug cannot parse (invalid UTF-8, a broken
        # multipart) into an empty form, and the action would run without its inputs.
        parser = incoming.make_form_data_parser()
        parser.silent = False
        data = body_of(environ, incoming)
        try:
            _, form, files = parser.parse(io.BytesIO(data), incoming.mimetype, len(data), incoming.mimetype_params)
        except ValueError as exc:
            raise BadInput(f"body: not a valid {incoming.mimetype} body ({exc})") from None
        for name in form:
            put(name, form.getlist(name))
        for name in files:   # an uploaded file is not a value: the input refuses it
            put(name, files.getlist(name))
    elif body_of(environ, incoming).strip():
        raise BadInput(f"body: send application/json or a form, not {incoming.mimetype or 'an untyped body'}")
    return found


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads keeps the last of repeated keys; a repeated input is an error instead."""
    found: dict[str, Any] = {}
    for name, value in pairs:
        if name in found:
            raise BadInput(f"{name}: given more than once")
        found[name] = value
    return found


def handle(controller: str, action: str, dispatch: Callable[[Request], Result], environ: dict[str, Any],
           incoming: WerkzeugRequest | None = None) -> Response:
    """The request in `environ` (to `action` of `controller`; `incoming`: Flask's request for it,
    if there is one) -> Request -> dispatch -> the envelope. The inputs are read when dispatch
    asks, after authentication: bad encoding is reported only to a caller with a valid key,
    like any input error."""
    method = environ["REQUEST_METHOD"]
    caller = environ.get(GATE_KEY)
    req = Request(transport="http", peer=peer_of(environ), action=action, peer_cred=environ.get(PEER_KEY),
                  controller=controller, read_key=lambda: _bearer_in(environ),
                  read_inputs=lambda: _inputs(environ, incoming), method="GET" if method == "HEAD" else method,
                  strict=True, caller=caller if isinstance(caller, Principal) else None)
    result = dispatch(req)
    return envelope(result.status, result.payload)
