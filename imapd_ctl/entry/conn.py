"""One client connection as the serving loop sees it, before a thread is spent on it.

The loop (entry.worker) reads each request here without blocking: the TLS handshake, the
head, and a body of announced length, all within one deadline. Only a request that has fully
arrived is handed to a thread, so a client that sends nothing, or sends its headers a byte at
a time, or stalls its TLS handshake, costs a socket and a few bytes of buffer, never a thread,
and is closed when its deadline passes.
"""
from __future__ import annotations

import socket
import ssl
import time
from typing import Any

from imapd_ctl.transports.http import MAX_BODY

# What one unfinished connection may buffer in the loop: a head up to HEAD_MAX (beyond it,
# gunicorn's parser says what is wrong) and a body up to the app's own limit (a larger one is
# handed over at once and refused 413 unread).
HEAD_MAX = 16 * 1024
BODY_PREREAD_MAX = MAX_BODY
RECV_CHUNK = 65536

# What a connection needs next from the loop.
WANT_READ, WANT_WRITE, READY, CLOSE = "read", "write", "ready", "close"


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.strip()
    return None


def request_length(buf: bytes) -> int | None:
    """How many bytes of `buf` make up its first request, once they are all there; None while
    more must arrive. Anything the loop cannot size (chunked, Expect, a malformed or large
    Content-Length, an oversized head) is handed over as it is: the parser in the thread reads
    the rest under a timeout, or answers 4xx."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return len(buf) if len(buf) > HEAD_MAX else None
    head = buf[:end]
    body_at = end + 4
    if _header(head, b"transfer-encoding") is not None or _header(head, b"expect") is not None:
        return len(buf)
    length = _header(head, b"content-length")
    if length is None:
        return body_at
    if not length.isdigit() or int(length) > BODY_PREREAD_MAX:
        return len(buf)
    need = body_at + int(length)
    return need if len(buf) >= need else None


def whole_request(data: bytes) -> bool:
    """Is `data` exactly one request, head and body (sized by Content-Length)?"""
    end = data.find(b"\r\n\r\n")
    if end < 0 or request_length(data) != len(data) or len(data) > HEAD_MAX + BODY_PREREAD_MAX:
        return False
    head = data[:end]
    if _header(head, b"transfer-encoding") is not None or _header(head, b"expect") is not None:
        return False
    length = _header(head, b"content-length")
    return length is None or (length.isdigit() and end + 4 + int(length) == len(data))


class Conn:
    """A connection: its socket (TLS-wrapped for TCP when configured), what has arrived and
    by when the whole request must be there."""

    def __init__(self, sock: socket.socket, client: Any, server: Any, listener_family: int,
                 tls: ssl.SSLContext | None, timeout: float):
        sock.setblocking(False)
        self.client = client
        self.server = server
        self.unix = listener_family == socket.AF_UNIX
        self.handshaking = tls is not None
        self.sock: socket.socket = sock
        if tls is not None:
            self.sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.buf = b""
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.served = 0          # requests answered on this connection

    def fileno(self) -> int:
        return self.sock.fileno()

    def rearm(self, leftover: bytes) -> None:
        """After a kept-alive response: wait for the next request under a fresh deadline."""
        self.buf = leftover
        self.served += 1
        self.deadline = time.monotonic() + self.timeout
        self.sock.setblocking(False)

    def on_event(self) -> str:
        """Make progress without blocking; say what is needed next."""
        try:
            if self.handshaking:
                self.sock.do_handshake()            # type: ignore[attr-defined]
                self.handshaking = False
            while len(self.buf) <= HEAD_MAX + BODY_PREREAD_MAX:   # until recv would block
                data = self.sock.recv(RECV_CHUNK)
                if not data:    # the client is done sending (or gone): answer what came, if any
                    return READY if self.buf and not self.handshaking else CLOSE
                self.buf += data
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLWantWriteError:
            return WANT_WRITE
        except (BlockingIOError, InterruptedError):
            pass
        except (OSError, ValueError):
            return CLOSE                             # reset, TLS failure, closed socket
        if self.handshaking:
            return WANT_READ
        return READY if self.buf and request_length(self.buf) is not None else WANT_READ

    def take_request(self) -> tuple[bytes, bytes, bool]:
        """(the first request's bytes, what follows them, whether those bytes are the whole
        request: only then may the connection be kept alive after it)."""
        n = request_length(self.buf) or len(self.buf)
        return self.buf[:n], self.buf[n:], whole_request(self.buf[:n])

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Prebuffered:
    """The socket as gunicorn's parser reads it: the bytes the loop already has, then (for a
    body the loop could not size) the socket itself, each recv bounded by the socket's
    timeout and all of them by `deadline`. Writes go straight to the socket."""

    def __init__(self, sock: socket.socket, data: bytes, deadline: float):
        self._sock = sock
        self._data = memoryview(data)
        self._deadline = deadline

    def recv(self, size: int) -> bytes:
        if self._data:
            chunk, self._data = bytes(self._data[:size]), self._data[size:]
            return chunk
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("the request body did not arrive in time")
        self._sock.settimeout(min(left, self._sock.gettimeout() or left))
        return self._sock.recv(size)

    @property
    def exhausted(self) -> bool:
        return not self._data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Gathered:
    """The socket as a response writes it: what gunicorn sends (the head, then each piece of
    the body) is gathered and sent with one sendall when the response is done, or once
    GATHER_BYTES are waiting. A reply then costs one send and wakes the client once. Anything
    else (sendfile, fileno, shutdown) sends what is gathered first."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._out: list[bytes] = []
        self._size = 0

    def sendall(self, data: Any) -> None:
        self._out.append(bytes(data))
        self._size += len(self._out[-1])
        if self._size >= GATHER_BYTES:
            self.flush()

    def send(self, data: Any) -> int:
        self.sendall(data)
        return len(data)

    def flush(self) -> None:
        if self._out:
            data, self._out, self._size = b"".join(self._out), [], 0
            self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        self.flush()
        return getattr(self._sock, name)


GATHER_BYTES = 64 * 1024
LINGER_SECONDS = 2.0       # at most this long discarding what a client still sends
LINGER_BYTES = 8 << 20     # and at most this much (read in chunks, never kept)


def linger(sock: socket.socket) -> None:
    """After a reply to a request whose body was not read (refused 413 unread): FIN first, then
    discard what the client still sends until it closes or a bound is hit. Closing with unread
    data sends RST, and the client's kernel then drops the reply it had not read yet. Runs in
    the request's thread; the loop closes the socket afterwards."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline, drained = time.monotonic() + LINGER_SECONDS, 0
        while drained < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = sock.recv(RECV_CHUNK)
            if not chunk:
                break
            drained += len(chunk)
    except (OSError, ValueError):
        pass
