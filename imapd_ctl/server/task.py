"""One request in a thread: a whole request (server.channel.Framed) becomes a WSGI environ, the
app runs, and its reply becomes the bytes the loop will write. No socket is touched here, so a
thread is never held by a client, only by the action it runs.

gunicorn's worker hooks are honoured as its own workers do: `pre_request(worker, req)` before
the app, `post_request(worker, req, environ, resp)` after, the access log through its logger.
"""
from __future__ import annotations

import io
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import formatdate
from typing import Any, Callable
from urllib.parse import unquote_to_bytes, urlsplit

from imapd_ctl.server.framing import Framed, PeerCred
from imapd_ctl.transports.body import BODY_KEY, GATE_KEY, PEER_KEY, REFUSED_KEY

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Any]


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection"}
_NO_BODY = {204, 304}


@dataclass
class Reply:
    """What the loop writes back, and what the hooks and the access log see (gunicorn's
    `resp`: status, headers, sent)."""
    status: str = "500 Internal Server Error"
    headers: list[tuple[str, str]] = field(default_factory=list)
    data: bytes = b""          # the head and the body, ready for the wire
    sent: int = 0              # the body's length
    keep: bool = False

    @property
    def status_code(self) -> int:
        return int(self.status.split(None, 1)[0])


def environ_of(req: Framed, server_software: str = "imapd-ctl") -> dict[str, Any]:
    head = req.head
    target = head.target
    if target.startswith(("http://", "https://")):     # absolute form: the path and query are ours
        parts = urlsplit(target)
        path, query = parts.path or "/", parts.query
    else:
        path, _, query = target.partition("?")
    env: dict[str, Any] = {
        "REQUEST_METHOD": head.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),   # PEP 3333: bytes as latin-1
        "QUERY_STRING": query,
        "RAW_URI": target,
        "REQUEST_URI": target,
        "SERVER_PROTOCOL": f"HTTP/{head.version[0]}.{head.version[1]}",
        "SERVER_SOFTWARE": server_software,
        "CONTENT_LENGTH": str(len(req.body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https" if req.tls else "http",
        "wsgi.input": io.BytesIO(req.body),    # shares the bytes: a whole read copies nothing
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        BODY_KEY: req.body,
    }
    if req.refused is not None:
        env[REFUSED_KEY] = req.refused
    if req.key is not None:
        env[GATE_KEY] = req.key
    for name, value in head.headers:
        if name == "CONTENT-TYPE":
            env["CONTENT_TYPE"] = value
            continue
        if name in ("CONTENT-LENGTH", "TRANSFER-ENCODING"):
            continue       # framed here: the environ carries the body's true length
        key = "HTTP_" + name.replace("-", "_")
        env[key] = f"{env[key]},{value}" if key in env else value
    if isinstance(req.client, PeerCred):   # the unix socket (the app says "unix-socket")
        env["REMOTE_ADDR"], env[PEER_KEY] = "", (req.client.uid, req.client.gid)
    elif isinstance(req.client, tuple):
        env["REMOTE_ADDR"], env["REMOTE_PORT"] = str(req.client[0]), str(req.client[1])
    else:
        env["REMOTE_ADDR"] = ""
    if isinstance(req.server, tuple):
        env["SERVER_NAME"], env["SERVER_PORT"] = str(req.server[0]), str(req.server[1])
    else:
        env["SERVER_NAME"], env["SERVER_PORT"] = "localhost", "80"
    return env


def run(app: WSGIApp, req: Framed, keep: bool, hooks: Any, log: Any, worker: Any) -> Reply:
    """The app's reply to `req` as bytes (`keep`: may the connection stay open after it).
    `hooks`: gunicorn's config (pre_request, post_request); `log`: gunicorn's logger."""
    started = time.monotonic()
    env = environ_of(req)
    reply = Reply(keep=keep)
    hooks.pre_request(worker, req.head)
    try:
        reply = _call(app, env, req, keep)
    finally:
        try:
            hooks.post_request(worker, req.head, env, reply)
        except Exception:   # noqa: BLE001 - a hook's bug must not lose the reply
            log.exception("post_request hook failed")
        log.access(reply, req.head, env, timedelta(seconds=time.monotonic() - started))
    return reply


def _call(app: WSGIApp, env: dict[str, Any], req: Framed, keep: bool) -> Reply:
    reply = Reply(keep=keep)

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        reply.status, reply.headers = status, list(headers)
        return _no_write

    body = app(env, start_response)
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    code = reply.status_code
    if req.head.method == "HEAD" or code in _NO_BODY or code < 200:
        data = b""
    reply.sent = len(data)
    lines = [f"HTTP/1.1 {reply.status}", f"Date: {formatdate(usegmt=True)}"]
    length_given = False
    for name, value in reply.headers:
        low = name.lower()
        if low in _HOP_BY_HOP:
            continue
        if low == "content-length":
            if req.head.method != "HEAD":
                value = str(len(data))     # what goes out, whatever the app said
            length_given = True
        lines.append(f"{name}: {value}")
    if not length_given and code not in _NO_BODY:
        lines.append(f"Content-Length: {len(data)}")
    if not keep:
        lines.append("Connection: close")
    elif req.head.version < (1, 1):
        lines.append("Connection: keep-alive")
    reply.data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data
    return reply


def _no_write(data: bytes) -> None:
    raise RuntimeError("the WSGI write() callable is not supported: return the body")
