"""Bounded request bodies, for every transport at once: a WSGI middleware in front of the app.

Werkzeug 3.1 (Debian 13, the venv) refuses a body over MAX_CONTENT_LENGTH before reading it,
but Werkzeug 2.2 (Debian 12) checks that limit only when it parses a form: `get_data()`
reads a body of any size into memory, and a chunked body (no Content-Length) is read to its
end on every version. So the limit is kept here, below Flask, whatever Werkzeug does:

- a Content-Length over the limit is answered 413 without reading a byte of the body;
- any other body is read here, never more than the limit plus one byte: one byte more is 413
  (chunked), and a body that ends before its Content-Length is 400;
- the app then gets the body as an in-memory stream with its true Content-Length.

gunicorn's sync worker closes every connection after its reply, so the unread rest of a body
is never taken for a next request. Replies are the InterWorx envelope, like every other reply.
"""
from __future__ import annotations

import io
import json
from typing import Any, Callable, Iterable

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_REASONS = {400: "Bad Request", 413: "Request Entity Too Large", 431: "Request Header Fields Too Large"}

# What the daemon's own server (imapd_ctl.server) puts in the environ of a request it framed:
# the body, whole and within the limit (the one copy every transport reads), and, for a body
# it refused unread, (HTTP status, why): worded here like every other refusal.
BODY_KEY = "imapd_ctl.body"
REFUSED_KEY = "imapd_ctl.refused"
GATE_KEY = "imapd_ctl.gate"         # what the server's gate (transports.http.key_gate) said of the key
PEER_KEY = "imapd_ctl.peer"         # a unix-socket client's (uid, gid), from the kernel (SO_PEERCRED)
READ_SIZE = 16 * 1024


Refusal = Callable[[Environ, int, str], tuple[bytes, str]]
"""(environ, HTTP status, text) -> (reply body, Content-Type) of a refused body."""


def envelope_refusal(environ: Environ, status: int, text: str) -> tuple[bytes, str]:
    """The InterWorx envelope (every path but SOAP's, whose clients read a Fault)."""
    return (json.dumps({"status": status, "payload": text}) + "\n").encode(), "application/json"


def _read_at_most(stream: Any, limit: int) -> bytes:
    """Up to `limit` bytes of the body (fewer if it ends first), in bounded reads."""
    parts, got = [], 0
    while got < limit:
        part = stream.read(min(READ_SIZE, limit - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def bounded(app: WSGIApp, limit: int, refusal: Refusal = envelope_refusal) -> WSGIApp:
    """`app` behind a body limit of `limit` bytes; `refusal` words the 400/413 replies."""
    too_large = f"the request body is over the limit of {limit} bytes"

    def _answer(environ: Environ, start_response: StartResponse, status: int, message: str) -> list[bytes]:
        body, ctype = refusal(environ, status, f"{_REASONS[status]}: {message}")
        start_response(f"{status} {_REASONS[status]}", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [body]

    def middleware(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if BODY_KEY in environ:      # framed and bounded by the server already
            refused = environ.get(REFUSED_KEY)
            if refused is not None:
                return _answer(environ, start_response, refused[0], refused[1])
            return app(environ, start_response)
        raw_length = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        length: int | None = None
        if raw_length and not chunked:
            if not (raw_length.isascii() and raw_length.isdigit()):
                return _answer(environ, start_response, 400, f"Content-Length {raw_length[:20]!r} is not a number")
            length = int(raw_length)
            if length > limit:
                return _answer(environ, start_response, 413, too_large)
        try:
            data = _read_at_most(environ["wsgi.input"], limit + 1 if length is None else length)
        except Exception as exc:   # broken chunked framing: gunicorn's reader raises
            return _answer(environ, start_response, 400, f"the request body could not be read ({type(exc).__name__})")
        if len(data) > limit:
            return _answer(environ, start_response, 413, too_large)
        if length is not None and len(data) < length:
            return _answer(environ, start_response, 400, f"the body ended after {len(data)} of its {length} bytes")
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["wsgi.input_terminated"] = False
        return app(environ, start_response)

    return middleware
