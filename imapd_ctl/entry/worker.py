"""The gunicorn worker: one event loop that reads requests, a pool of threads that runs them.

Why this model (README "Serving model"): panels poll isRunning all day while an operator's
restart may wait minutes for systemd. gunicorn's sync worker gives a whole process to one
connection, so two idle clients stop the API and a long action is killed by the worker
timeout. Here
- the main thread accepts and reads every request without blocking (entry.conn): TLS
  handshake, head, body, within `client_timeout` seconds, or the connection is closed. Idle
  and slow clients never hold a thread; at `worker_connections` the oldest unfinished
  connection is dropped to make room, so they cannot lock real clients out either;
- only a fully arrived request goes to a thread, which runs the app (reads answer from
  memory in microseconds; long actions wait on systemd or the change lock in their thread);
- the main thread tells the arbiter it is alive whatever the threads do, so gunicorn's
  `timeout` never kills a long action; a graceful stop waits for running requests.
TLS is used on TCP listeners only: the unix socket (authorised by its file mode) stays plain
HTTP. Requests gunicorn itself rejects get the JSON envelope instead of its HTML page.
"""
from __future__ import annotations

import json
import os
import queue
import resource
import selectors
import socket
import ssl
import time
from concurrent import futures
from datetime import datetime
from typing import Any

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.base import Worker as BaseWorker

from imapd_ctl.core.settings import Settings
from imapd_ctl.entry.conn import CLOSE, READY, WANT_WRITE, Conn, Gathered, Prebuffered, linger

TICK = 1.0            # the loop wakes at least this often (heartbeat, deadlines)
SEND_TIMEOUT = 30.0   # a client that does not read its reply is dropped after this
THREADS = 32          # requests running at once per worker process (reads take microseconds)
CONNECTIONS = 4096    # open connections per worker process (unfinished ones cut after CLIENT_TIMEOUT)
CLIENT_TIMEOUT = 10   # seconds a client has to send a whole request (TLS handshake included)
HEARTBEAT = 30        # seconds gunicorn waits for a worker's loop before killing it (never an action)


def options(s: Settings) -> dict[str, Any]:
    """gunicorn's settings for this worker. A stop or reload lets running actions finish: the
    longest is a change that waited for the lock, then a job (and the undo's) with the port."""
    longest = s.lock_timeout + 2 * (s.job_timeout + s.listen_timeout)
    return {"worker_class": "imapd_ctl.entry.worker.Worker", "threads": THREADS,
            "worker_connections": CONNECTIONS, "keepalive": CLIENT_TIMEOUT,
            "timeout": HEARTBEAT, "graceful_timeout": int(longest) + 10}


def _write_envelope(sock: Any, status_int: int | str, reason: str, mesg: str) -> None:
    body = (json.dumps({"status": int(status_int), "payload": f"{reason}: {mesg}".rstrip(": ")}) + "\n").encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode("latin-1")
    sock.sendall(head + body)


class _PlainConfig:
    """The worker's config as seen for one unix-socket connection: no TLS."""
    is_ssl = False

    def __init__(self, cfg: Any):
        self._cfg = cfg

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cfg, name)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Worker(BaseWorker):
    client_timeout = float(CLIENT_TIMEOUT)

    def init_process(self) -> None:
        self.prepare()
        super().init_process()

    def prepare(self) -> None:
        """What the loop needs (in the worker process, after fork)."""
        # This process is ours alone: gunicorn's error page becomes the envelope for good
        # (threads make a per-call swap unsafe).
        util.write_error = _write_envelope
        raise_fd_limit()
        self.pool = futures.ThreadPoolExecutor(max_workers=self.cfg.threads,
                                               thread_name_prefix="request")
        self.done: queue.SimpleQueue[tuple[Conn, bool, bytes]] = queue.SimpleQueue()
        self.waker_r, self.waker_w = os.pipe()
        os.set_blocking(self.waker_r, False)
        os.set_blocking(self.waker_w, False)
        self.sel = selectors.DefaultSelector()
        self.waiting: dict[Conn, None] = {}    # connections still reading, oldest first
        self.busy = 0
        self.tls: ssl.SSLContext | None = None
        if self.cfg.is_ssl:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(self.cfg.certfile, self.cfg.keyfile)

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        for listener in self.sockets:
            listener.setblocking(False)
            self.sel.register(listener, selectors.EVENT_READ, ("accept", listener))
        self.sel.register(self.waker_r, selectors.EVENT_READ, ("wake", None))
        while self.alive:
            self.notify()
            for key, _ in self.sel.select(self._next_timeout()):
                kind, obj = key.data
                if kind == "accept":
                    self._accept(obj)
                elif kind == "wake":
                    self._finished()
                else:
                    self._progress(obj)
            self._expire()
            if not self.is_parent_alive():
                break
        self._drain()

    def _next_timeout(self) -> float:
        if not self.waiting:
            return TICK
        first = next(iter(self.waiting))
        return max(0.0, min(TICK, first.deadline - time.monotonic()))

    def is_parent_alive(self) -> bool:
        if self.ppid != os.getppid():
            self.log.info("Parent changed, shutting down: %s", self)
            return False
        return True

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):     # a burst, then the other events get their turn
            try:
                sock, client = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                self.log.warning("accept failed: %s", exc)
                return
            if len(self.waiting) + self.busy >= self.cfg.worker_connections and self.waiting:
                self._close(next(iter(self.waiting)))   # the oldest unfinished one makes room
            tls = self.tls if listener.family != socket.AF_UNIX else None
            try:
                conn = Conn(sock, client, listener.getsockname(), listener.family, tls,
                            self.client_timeout)
            except (OSError, ssl.SSLError):
                sock.close()
                continue
            self.waiting[conn] = None
            self.sel.register(conn.sock, selectors.EVENT_READ, ("conn", conn))

    def _progress(self, conn: Conn) -> None:
        state = conn.on_event()
        if state == CLOSE:
            self._close(conn)
        elif state == WANT_WRITE:
            self.sel.modify(conn.sock, selectors.EVENT_WRITE, ("conn", conn))
        elif state == READY:
            self.sel.unregister(conn.sock)
            del self.waiting[conn]
            self._submit(conn)
        else:
            self.sel.modify(conn.sock, selectors.EVENT_READ, ("conn", conn))

    def _submit(self, conn: Conn) -> None:
        self.busy += 1
        data, rest, whole = conn.take_request()
        self.pool.submit(self._serve, conn, data, rest if whole else None)

    def _expire(self) -> None:
        now = time.monotonic()
        while self.waiting:
            conn = next(iter(self.waiting))
            if conn.deadline > now:
                break
            self._close(conn)

    def _close(self, conn: Conn) -> None:
        self.waiting.pop(conn, None)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.close()

    def _finished(self) -> None:
        try:
            os.read(self.waker_r, 4096)
        except BlockingIOError:
            pass
        while True:
            try:
                conn, keep, rest = self.done.get_nowait()
            except queue.Empty:
                return
            self.busy -= 1
            if not keep or not self.alive:
                conn.close()
                continue
            conn.rearm(rest)
            if rest and conn.on_event() == READY:    # a pipelined request is already here
                self._submit(conn)
                continue
            self.waiting[conn] = None
            self.sel.register(conn.sock, selectors.EVENT_READ, ("conn", conn))

    def _drain(self) -> None:
        """Stopping: no new connections; those accepted are still served (a client that
        connected just before the stop gets its answer), idle kept-alive ones are closed, and
        running requests finish (gunicorn's graceful_timeout, derived from the action
        timeouts, bounds this)."""
        for listener in self.sockets:
            self.sel.unregister(listener)
        for conn in list(self.waiting):
            if conn.served and not conn.buf:
                self._close(conn)
        while self.busy > 0 or self.waiting:
            self.notify()     # still alive: a long action is finishing
            for key, _ in self.sel.select(self._next_timeout()):
                kind, obj = key.data
                if kind == "wake":
                    self._finished()
                elif kind == "conn":
                    self._progress(obj)
            self._expire()
        self.pool.shutdown(wait=True)

    # ------------------------------------------------------------------ one request (a thread)
    def _serve(self, conn: Conn, data: bytes, rest: bytes | None) -> None:
        """`rest`: the bytes after this request, or None if it did not all arrive in the loop
        (chunked, refused unread for its size...): then the connection is not kept."""
        keep = False
        try:
            keep = self._handle(conn, data, rest is not None)
        except Exception:   # noqa: BLE001 - never lose the completion
            self.log.exception("unexpected error serving a connection")
        finally:
            if rest is None:
                linger(conn.sock)
            self.done.put((conn, keep, rest or b""))
            try:
                os.write(self.waker_w, b"\0")
            except BlockingIOError:
                pass   # the pipe is full: the loop is being woken anyway

    def _handle(self, conn: Conn, data: bytes, whole: bool) -> bool:
        cfg: Any = _PlainConfig(self.cfg) if conn.unix and self.cfg.is_ssl else self.cfg
        conn.sock.setblocking(True)
        conn.sock.settimeout(SEND_TIMEOUT)
        source = Prebuffered(conn.sock, data, time.monotonic() + self.client_timeout)
        req = None
        try:
            parser = http.RequestParser(cfg, source, conn.client)
            req = next(parser)
            return self._respond(req, conn, cfg, whole) and source.exhausted
        except (StopIteration, NoMoreData):
            return False
        except (OSError, ssl.SSLError) as exc:
            self.log.debug("connection error: %s", exc)
            return False
        except Exception as exc:   # noqa: BLE001 - gunicorn's own rejections and app errors
            self.handle_error(req, conn.sock, conn.client, exc)
            return False

    def _respond(self, req: Any, conn: Conn, cfg: Any, whole: bool) -> bool:
        started = datetime.now()
        out: Any = Gathered(conn.sock)     # head and body in one send
        resp, environ = wsgi.create(req, out, conn.client, conn.server, cfg)
        environ["wsgi.multithread"] = True
        if not whole or not self.alive or not self.cfg.keepalive:
            resp.force_close()     # never drain a body the loop did not read whole
        app: Any = self.wsgi
        body = app(environ, resp.start_response)
        try:
            for item in body:
                resp.write(item)
            resp.close()
            out.flush()
        finally:
            self.log.access(resp, req, environ, datetime.now() - started)
            if hasattr(body, "close"):
                body.close()
        if resp.should_close():
            return False
        req.body.read()    # what the app left unread: in the prebuffer (whole requests only)
        return True

