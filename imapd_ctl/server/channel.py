"""One client connection, driven by the event loop (server.worker) and never blocking: the TLS
handshake, the request head and body (framed by server.framing, chunked bodies decoded,
`Expect: 100-continue` answered), then, once a thread has made the reply, the reply written
as fast as the client reads it, then the next request of a kept-alive connection.

A thread only sees a whole request (server.task) and hands back the reply's bytes. Each phase
has a deadline (the whole request, the whole reply, the idle time between requests) that the
loop enforces: a client that stalls anywhere costs a socket and its buffers, never a thread.
"""
from __future__ import annotations

import enum
import selectors
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Callable

from imapd_ctl.server.framing import (Chunked, Framed, Head, Limits, Refused, error_reply, head_end, parse_head,
                                      too_large)

RECV_CHUNK = 65536
LINGER_SECONDS = 2.0       # at most this long discarding what a client still sends after a refusal
LINGER_BYTES = 8 << 20     # and at most this much (read in chunks, never kept)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Phase(enum.Enum):
    HANDSHAKE = "handshake"     # TLS
    READING = "reading"         # a request's head and body (or waiting for the next one)
    READY = "ready"             # a whole request, waiting for a thread
    RUNNING = "running"         # a thread is making the reply
    WRITING = "writing"         # the reply is going out
    LINGER = "linger"           # after a refusal: FIN sent, what the client still sends discarded
    CLOSED = "closed"


@dataclass(frozen=True)
class Rules:
    """What every connection of a worker is held to."""
    limits: Limits
    max_body: int                   # the most any body may be
    keyless_body: int               # the most a body may be without a valid key in its header
    body_keyed: frozenset[str]      # paths whose key travels in the body (SOAP, XML-RPC)
    gate: Callable[[str | None], Any]    # the Authorization header -> truthy: a valid key
    request_timeout: float          # for a whole request, from its first byte (or the handshake)
    reply_timeout: float            # for a whole reply to be read by the client
    idle_timeout: float             # between requests of a kept-alive connection (0: close)


class Channel:
    def __init__(self, sock: socket.socket, client: Any, server: Any,
                 tls: ssl.SSLContext | None, rules: Rules, now: float):
        sock.setblocking(False)
        self.client, self.server, self.rules = client, server, rules
        self.sock: socket.socket = sock
        self.tls = tls is not None
        if tls is not None:
            self.sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.phase = Phase.HANDSHAKE if tls is not None else Phase.READING
        self.deadline, self.timeout = now + rules.request_timeout, rules.request_timeout
        self.authenticated = False   # a request on it carried a valid key in its header
        self.served = 0
        self.buf = bytearray()       # what arrived and is not yet framed
        self.out: memoryview | None = None    # what is still to be written
        self.request: Framed | None = None
        self._head: Head | None = None
        self._chunked: Chunked | None = None
        self._key: Any = None          # the gate's answer for the request being read
        self._limit = 0
        self._keep = self._eof = self._tls_wants_write = self._linger_after = False
        self._lingered = 0
        self.registered = 0          # the events the loop's selector has for it (the loop's to keep)
        self.timed: float | None = None   # the timer group the loop has it in (the loop's to keep)

    def _arm(self, timeout: float, now: float) -> None:
        self.deadline, self.timeout = now + timeout, timeout

    # ------------------------------------------------------------------ what the loop asks
    @property
    def held_bytes(self) -> int:
        """What this connection holds in memory (the budget's measure)."""
        return (len(self.buf) + (len(self.out) if self.out is not None else 0)
                + (len(self._chunked.body) if self._chunked is not None else 0)
                + (len(self.request.body) if self.request is not None else 0))

    @property
    def idle(self) -> bool:
        """Between requests with nothing buffered: a stop may close it."""
        return self.phase is Phase.READING and not self.buf and self._head is None and self.out is None

    @property
    def keeps(self) -> bool:
        """Will the connection stay open after the reply to its request (as framed)?"""
        return self._keep

    # ------------------------------------------------------------------ events
    @property
    def events(self) -> int:
        """The selector events this connection waits for (0: none, a thread has it)."""
        if self.phase in (Phase.READY, Phase.RUNNING, Phase.CLOSED):
            return 0
        if self._tls_wants_write or (self.out is not None and self.phase is not Phase.LINGER):
            return selectors.EVENT_WRITE
        return selectors.EVENT_READ

    def on_event(self, now: float) -> None:
        """The socket is ready (or a phase just began): make all the progress possible."""
        try:
            while True:
                phase = self.phase
                if phase is Phase.HANDSHAKE:
                    self._handshake(now)
                elif phase is Phase.READING:
                    self._read(now)
                elif phase is Phase.WRITING:
                    self._write(now)
                elif phase is Phase.LINGER:
                    self._linger(now)
                if self.phase is phase:
                    return
        except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            self._tls_wants_write = False
        except ssl.SSLWantWriteError:
            self._tls_wants_write = True
        except (OSError, ValueError):     # reset, TLS failure, a closed socket
            self.close()

    def _handshake(self, now: float) -> None:
        self.sock.do_handshake()          # type: ignore[attr-defined]
        self._tls_wants_write = False
        self.phase = Phase.READING

    def _read(self, now: float) -> None:
        while self.phase is Phase.READING:
            if self.out is not None:       # 100 Continue
                self._write(now)
                continue
            if self._frame(now):
                continue
            if self._eof:
                return
            data = self.sock.recv(RECV_CHUNK)
            self._tls_wants_write = False
            if not data:
                self._eof = True
                self._at_eof(now)
                continue
            if not self.buf and self._head is None and self.served:
                self._arm(self.rules.request_timeout, now)   # the next request begins
            self.buf += data

    def _frame(self, now: float) -> bool:
        """Frame what is buffered; True if that changed the phase or queued output (the loop
        then stops reading), False if more bytes are needed."""
        try:
            if self._head is None:
                while self.buf[:2] == b"\r\n":      # RFC 9112 2.2: empty lines before a request
                    del self.buf[:2]
                if not self.buf:
                    return False
                end = head_end(self.buf, self.rules.limits)
                if end is None:
                    return False
                head = parse_head(bytes(self.buf[:end]), self.rules.limits)
                del self.buf[:end]
                return self._begin_body(head)
            return self._more_body()
        except Refused as exc:
            if self._head is None:       # no request to hand over: answered here
                self._refuse_unframed(exc, now)
            else:
                self._ready(exc)
            return True

    def _begin_body(self, head: Head) -> bool:
        self._head = head
        self._key = self.rules.gate(head.get("AUTHORIZATION")) if head.get("AUTHORIZATION") else None
        self.authenticated = self.authenticated or bool(self._key)
        self._limit = self.rules.max_body if self._key or head.path in self.rules.body_keyed \
            else self.rules.keyless_body
        if head.length is not None and head.length > self._limit:
            raise Refused(413, too_large(self._limit, self.rules.max_body))
        if head.chunked:
            self._chunked = Chunked(self._limit, self.rules.limits)
        if self._more_body():
            return True
        if head.expect_continue:
            self.out = memoryview(CONTINUE)    # the body has not come yet: ask for it
            return True
        return False

    def _more_body(self) -> bool:
        head = self._head
        assert head is not None
        if self._chunked is not None:
            try:
                used = self._chunked.feed(self.buf)
            except Refused as exc:
                if exc.status == 413:
                    raise Refused(413, too_large(self._limit, self.rules.max_body)) from None
                raise Refused(400, f"the request body could not be read ({exc.message})") from None
            del self.buf[:used]
            if not self._chunked.done:
                return False
            body = bytes(self._chunked.body)
            self._chunked = None
        else:
            need = head.length or 0
            if len(self.buf) < need:
                return False
            with memoryview(self.buf) as view:
                body = bytes(view[:need])       # the one copy the app reads
            del self.buf[:need]
        self._ready(None, body)
        return True

    def _at_eof(self, now: float) -> None:
        """The client is done sending: a request cut short is refused; nothing else to read."""
        if self._head is not None and self._chunked is not None:
            self._ready(Refused(400, "the request body could not be read (the chunked body ended "
                                     "before its last chunk)"))
        elif self._head is not None:
            self._ready(Refused(400, f"the body ended after {len(self.buf)} of its {self._head.length} bytes"))
        elif self.buf:
            self._refuse_unframed(Refused(400, "the request head ended before its blank line"), now)
        else:
            self.close()

    def _ready(self, refused: Refused | None, body: bytes = b"") -> None:
        head = self._head
        assert head is not None
        self._keep = refused is None and head.keep_alive and not self._eof and self.rules.idle_timeout > 0
        self.request = Framed(head, body, (refused.status, refused.message) if refused else None,
                              self.client, self.server, self.tls, self._key)
        self._head, self._chunked, self._key = None, None, None
        self.phase = Phase.READY

    def _refuse_unframed(self, exc: Refused, now: float) -> None:
        """A head that cannot be read: the envelope, then the connection ends."""
        self.reply(error_reply(exc.status, exc.message), keep=False, now=now, linger=True)

    # ------------------------------------------------------------------ the reply
    def running(self) -> None:
        self.phase = Phase.RUNNING

    def reply(self, data: bytes, keep: bool, now: float, linger: bool | None = None) -> None:
        """The thread's reply (head and body): written from the loop from now on."""
        self._keep = self._keep and keep
        self._linger_after = (self.request is not None and self.request.refused is not None) \
            if linger is None else linger
        self.request = None
        self.out = memoryview(data)
        self.phase = Phase.WRITING
        self._arm(self.rules.reply_timeout, now)
        self.on_event(now)

    def _write(self, now: float) -> None:
        out = self.out
        assert out is not None
        while out:
            sent = self.sock.send(out[:RECV_CHUNK * 4])
            self._tls_wants_write = False
            self.out = out = out[sent:]
        self.out = None
        if self.phase is Phase.WRITING:
            self._replied(now)

    def _replied(self, now: float) -> None:
        self.served += 1
        if self._keep:
            self.phase = Phase.READING
            self._arm(self.rules.request_timeout if self.buf else self.rules.idle_timeout, now)
        elif self._linger_after and not self._eof:
            self.phase = Phase.LINGER
            self._arm(LINGER_SECONDS, now)
            self.buf = bytearray()
            self.sock.shutdown(socket.SHUT_WR)
        else:
            self.close()

    def _linger(self, now: float) -> None:
        """FIN sent: discard what still comes so that closing does not reset the connection
        (a reset makes the client's kernel drop a reply it has not read yet)."""
        while self._lingered < LINGER_BYTES:
            data = self.sock.recv(RECV_CHUNK)
            if not data:
                break
            self._lingered += len(data)
        self.close()

    def close(self) -> None:
        self.phase = Phase.CLOSED
        self.buf, self.out, self.request, self._chunked = bytearray(), None, None, None
        try:
            self.sock.close()
        except OSError:
            pass
