"""gunicorn's sync worker, with TLS only where it belongs and envelopes for its own errors.

gunicorn wraps every accepted connection in TLS once a certificate is configured, the unix
socket's too. Local operators on the unix socket (already authorised by its file mode) should
not need a certificate to talk to their own daemon, so connections from a unix listener are
handled as plain HTTP and only TCP ones get TLS.

Requests gunicorn itself rejects before the app sees them (a broken request line, bad headers,
bad framing) get its HTML error page; clients of this API expect the JSON envelope everywhere,
so those replies carry {"status": N, "payload": "..."} instead, with gunicorn's status.

A reply sent before the whole request body was read (413 for a body over the limit) must not be
lost: closing a TCP socket with unread data in its buffer sends RST, and the client's kernel then
drops the reply it had not read yet. gunicorn 27 closes gracefully; 20.1 (Debian 12) and 23
(Debian 13) do not, so the connection is closed here the same way on every version: FIN first,
then the rest of the body read and discarded (bounded in bytes and time), then close.
"""
from __future__ import annotations

import json
import socket
import time
from typing import Any

from gunicorn import util
from gunicorn.workers.sync import SyncWorker


def _write_envelope(sock: socket.socket, status_int: int | str, reason: str, mesg: str) -> None:
    body = (json.dumps({"status": int(status_int), "payload": f"{reason}: {mesg}".rstrip(": ")}) + "\n").encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode("latin-1")
    util.write_nonblock(sock, head + body)


LINGER_SECONDS = 2.0       # at most this long reading what the client still sends
LINGER_BYTES = 8 << 20     # and at most this much of it


def close_lingering(sock: socket.socket) -> None:
    """Half-close (the client sees the end of the reply), discard what it still sends until it
    closes or a bound is hit, then close."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline, drained = time.monotonic() + LINGER_SECONDS, 0
        while drained < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass


class _PlainConfig:
    """The worker's config as seen for one unix-socket connection: no TLS."""
    is_ssl = False

    def __init__(self, cfg: Any):
        self._cfg = cfg

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cfg, name)


class Worker(SyncWorker):
    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        # gunicorn picks the status and logs; only the page it writes is swapped, for this
        # call (the sync worker handles one request at a time).
        original, util.write_error = util.write_error, _write_envelope
        try:
            return super().handle_error(req, client, addr, exc)
        finally:
            util.write_error = original

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        # The sync worker closes the client with util.close at the end of handle(); swapped for
        # this call (one connection at a time) like the error page above.
        original, util.close = util.close, close_lingering
        try:
            self._handle(listener, client, addr)
        finally:
            util.close = original

    def _handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        if listener.family != socket.AF_UNIX or not self.cfg.is_ssl:
            return super().handle(listener, client, addr)
        cfg, self.cfg = self.cfg, _PlainConfig(self.cfg)  # type: ignore[assignment]  # a stand-in
        try:
            return super().handle(listener, client, addr)
        finally:
            self.cfg = cfg
