"""The gunicorn worker: one event loop owns every socket and every byte; a pool of threads runs
whole requests and hands their replies back.

Why (docs/design.md, "Serving model"): panels poll isRunning all day while a restart may wait minutes
for systemd, and clients may be hostile. So
- the loop accepts, does the TLS handshake, reads and frames each request (server.channel),
  and writes each reply as its client reads it: no client can hold a thread;
- a thread gets a request only when it is whole, runs the app (server.task) and returns the
  reply's bytes; requests wait for a free thread in the loop's own queues (server.lanes: scrapes
  of /metrics apart, after the others), where they are counted like everything else;
- one budget per process bounds the connections (gunicorn's `worker_connections`) and the
  bytes held for them (buffers, queued request bodies, unsent replies); past it, the
  connections that have not shown a valid key go first, oldest first, then the others,
  oldest first; a connection whose request is running in a thread is never cut;
- every phase has a deadline (the whole request, the whole reply, the idle time between
  requests), so a stalled client is closed when it passes;
- the loop tells the arbiter it is alive whatever the threads do, so gunicorn's `timeout`
  never kills a long action; a graceful stop lets accepted requests finish.
TLS is used on TCP listeners only: the unix socket (authorised by its file mode) stays plain.
"""
from __future__ import annotations

import ctypes
import functools
import os
import resource
import selectors
import socket
import ssl
import time
from typing import Any, Callable

from gunicorn.workers.base import Worker as BaseWorker

from imapd_ctl.core.settings import Settings
from imapd_ctl.server import boot, task, tls
from imapd_ctl.server.channel import Channel, Phase, Rules
from imapd_ctl.server.framing import Limits, error_reply
from imapd_ctl.server.lanes import Lanes
from imapd_ctl.server.listeners import peer_cred
from imapd_ctl.server.pool import Pool
from imapd_ctl.transports.http import MAX_BODY

TICK = 1.0             # the loop wakes at least this often (heartbeat, deadlines)
REPLY_TIMEOUT = 30.0   # a client has this long to read a whole reply
THREADS = 32           # requests running at once per worker process (reads take microseconds)
CONNECTIONS = 4096     # open connections per worker process
BUDGET_BYTES = 16 << 20   # bytes held for connections per worker process (see above)
TRIM_AFTER = 4 << 20      # once this much was held, freed memory goes back to the system
CLIENT_TIMEOUT = 10    # seconds a client has to send a whole request (TLS handshake included)
HEARTBEAT = 30         # seconds gunicorn waits for a worker's loop before killing it (never an action)
KEYLESS_BODY = 8 * 1024   # the most a body may be without a valid key in its header
BODY_KEYED = frozenset({"/xmlrpc", "/soap", "/nodeworx/soap"})   # their key travels in the body
SCRAPES = frozenset({"/metrics"})    # served in a lane of their own (server.lanes)


def options(s: Settings) -> dict[str, Any]:
    """gunicorn's settings for this worker. A stop or reload lets running actions finish: the
    longest is a change that waited for the lock, then a job (and the undo's) with the port."""
    longest = s.lock_timeout + 2 * (s.job_timeout + s.listen_timeout)
    return {"worker_class": "imapd_ctl.server.worker.Worker", "threads": THREADS,
            "worker_connections": CONNECTIONS, "keepalive": CLIENT_TIMEOUT,
            "timeout": HEARTBEAT, "graceful_timeout": int(longest) + 10,
            "pre_fork": boot.worker_about_to_fork}


try:
    _malloc_trim: Any = ctypes.CDLL(None).malloc_trim     # glibc
except (OSError, AttributeError):
    _malloc_trim = None


class Worker(BaseWorker):
    client_timeout = float(CLIENT_TIMEOUT)
    reply_timeout = REPLY_TIMEOUT
    budget_bytes = BUDGET_BYTES

    def init_process(self) -> None:
        self.prepare()
        boot.keep_identity(self.cfg)
        super().init_process()

    def init_signals(self) -> None:
        super().init_signals()
        boot.handlers_installed()

    def prepare(self) -> None:
        """What the loop needs (in the worker process, after fork)."""
        # gunicorn 20.1/23 say True/False; later releases "off" or a protocol version.
        if getattr(self.cfg, "proxy_protocol", False) not in (False, "off", None):
            raise SystemExit("imapd-ctl: gunicorn's proxy_protocol is not supported by this worker")
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]      # connections are file descriptors
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.sel = selectors.DefaultSelector()
        self.channels: dict[Channel, None] = {}      # every open connection, oldest first
        self.ready: Lanes[Channel] = Lanes()       # whole requests, waiting for a thread
        # Connections by the timeout they were armed with, each group in arming order, hence in
        # deadline order: expiry looks at the front of a few groups, nothing piles up.
        self.timers: dict[float, dict[Channel, None]] = {}
        self.held = 0            # bytes held for all connections
        self.pool: Pool[Channel, task.Reply] = Pool(self.cfg.threads, self._serve)
        self.tls: ssl.SSLContext | None = None
        if self.cfg.is_ssl:
            self.tls = tls.context(self.cfg.certfile, self.cfg.keyfile, self.cfg.ciphers)
        self.rules = self._rules(lambda authorization: False)   # until the app gives its gate
        self.last_notify = 0.0
        self.peaked = False

    def _rules(self, gate: Callable[[str | None], bool]) -> Rules:
        # gunicorn's 0 ("unlimited") for a request limit is held to a bound here all the same.
        cfg = self.cfg
        return Rules(limits=Limits(line=cfg.limit_request_line or 8190, fields=cfg.limit_request_fields or 32768,
                                   field_size=cfg.limit_request_field_size or 8190),
                     max_body=MAX_BODY, keyless_body=KEYLESS_BODY, body_keyed=BODY_KEYED, gate=gate,
                     request_timeout=self.client_timeout, reply_timeout=self.reply_timeout,
                     idle_timeout=float(cfg.keepalive))

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        gate = getattr(self.app, "gate", None)
        if callable(gate):
            self.rules = self._rules(gate)
        for listener in self.sockets:
            listener.setblocking(False)
            self.sel.register(listener, selectors.EVENT_READ, listener)
        self.sel.register(self.pool.waker, selectors.EVENT_READ, None)
        while self.alive:
            self._beat()
            self._turn()
            if not self.is_parent_alive():
                break
        self._drain()

    def _turn(self) -> None:
        for key, _ in self.sel.select(self._next_timeout()):
            obj = key.data
            if obj is None:
                self._finished()
            elif isinstance(obj, Channel):
                self._step(obj, obj.on_event)
            else:
                self._accept(obj)
        self._shed()
        self._schedule()
        self._expire()
        self._trim()

    def _beat(self) -> None:
        now = time.monotonic()
        if now - self.last_notify >= 0.5:
            self.notify()
            self.last_notify = now

    def _next_timeout(self) -> float:
        now = time.monotonic()
        first = min((next(iter(group)).deadline - now for group in self.timers.values() if group), default=TICK)
        scrape = self.ready.wait(now)
        return max(0.0, min(TICK, first, TICK if scrape is None else scrape))

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
            unix = listener.family == socket.AF_UNIX
            if unix:             # who connected: the app trusts root here without a key
                client = peer_cred(sock)
            try:
                ch = Channel(sock, client, listener.getsockname(), None if unix else self.tls, self.rules,
                             time.monotonic())
            except (OSError, ssl.SSLError):
                sock.close()
                continue
            self.channels[ch] = None
            self._step(ch, ch.on_event, new=True)
            self._shed()

    # ------------------------------------------------------------------ one connection's progress
    def _step(self, ch: Channel, action: Callable[[float], None], new: bool = False) -> None:
        """Run `action` on `ch`, then bring the loop's view of it up to date."""
        before, old_phase, old_deadline = ch.held_bytes, ch.phase, ch.deadline
        try:
            action(time.monotonic())
        except Exception:   # noqa: BLE001 - a bug must cost one connection, not the worker's loop
            self.log.exception("unexpected error on a connection; closing it")
            ch.close()
        self.held += ch.held_bytes - before
        events = 0 if ch.phase is Phase.CLOSED else ch.events
        if events != ch.registered:
            if ch.registered and events:
                self.sel.modify(ch.sock, events, ch)
            elif events:
                self.sel.register(ch.sock, events, ch)
            else:
                self.sel.unregister(ch.sock)
            ch.registered = events
        if new or ch.deadline != old_deadline or old_phase is not ch.phase:
            if ch.timed is not None:
                del self.timers[ch.timed][ch]
                ch.timed = None
            if ch.phase not in (Phase.READY, Phase.RUNNING, Phase.CLOSED):
                self.timers.setdefault(ch.timeout, {})[ch] = None
                ch.timed = ch.timeout
        if ch.phase is Phase.CLOSED:
            self.channels.pop(ch, None)
        elif ch.phase is Phase.READY and old_phase is not Phase.READY:
            assert ch.request is not None
            self.ready.add(ch, ch.request.refused is None and ch.request.head.path in SCRAPES)

    def _cut(self, ch: Channel) -> None:     # a deadline passed, or the budget needs its room
        self._step(ch, lambda now: ch.close())
    def _expire(self) -> None:
        now = time.monotonic()
        for group in list(self.timers.values()):
            while group and (ch := next(iter(group))).deadline <= now:
                self._cut(ch)

    def _shed(self) -> None:
        """Keep within the budget: cut connections that showed no valid key first, oldest
        first, then the others; never one whose request is running."""
        limit = self.cfg.worker_connections
        while len(self.channels) > limit or self.held > self.budget_bytes:
            victim = self._victim()
            if victim is None:
                return
            self._cut(victim)

    def _trim(self) -> None:
        """After a burst (many buffers freed at once, as an attack ends), hand the free heap back
        to the system: glibc keeps it otherwise, and the worker would stay at its peak."""
        if self.held > TRIM_AFTER:
            self.peaked = True
        elif self.peaked and self.held < TRIM_AFTER // 4:
            self.peaked = False
            if _malloc_trim is not None:
                _malloc_trim(0)

    def _victim(self) -> Channel | None:
        fallback = None     # the oldest keyed one, if no keyless one can go
        for ch in self.channels:
            if ch.phase is Phase.RUNNING:
                continue
            if not ch.authenticated:
                return ch
            if fallback is None:
                fallback = ch
        return fallback

    # ------------------------------------------------------------------ threads
    def _schedule(self) -> None:
        while self.pool.free and (ch := self.ready.take(time.monotonic())) is not None:
            if ch.phase is Phase.READY:
                ch.running()
                self.pool.submit(ch)
            else:                          # cut while it waited
                self.ready.taken_back(ch)

    def _serve(self, ch: Channel) -> task.Reply:
        """In a thread: the reply to `ch`'s whole request."""
        assert ch.request is not None
        try:
            return task.run(self.wsgi, ch.request, self.alive and ch.keeps, self.cfg, self.log, self)
        except Exception:   # noqa: BLE001 - never lose the completion
            self.log.exception("unexpected error serving a request")
            return task.Reply(data=error_reply(500, "internal error in imapd-ctl"), keep=False)

    def _finished(self) -> None:
        for ch, reply in self.pool.finished():
            self.nr += 1
            if self.nr >= self.max_requests and self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            self.ready.done(ch, time.monotonic())
            self._step(ch, functools.partial(ch.reply, reply.data, reply.keep and self.alive))

    def _drain(self) -> None:
        """Stopping: no new connections; those accepted are still served (a client that
        connected just before the stop gets its answer), idle kept-alive ones are closed, and
        running requests finish (gunicorn's graceful_timeout, derived from the action
        timeouts, bounds this)."""
        for listener in self.sockets:
            self.sel.unregister(listener)
        for ch in list(self.channels):
            if ch.idle and ch.served:
                self._cut(ch)
        while self.channels:
            self._beat()
            self._turn()
        self.pool.stop()
