"""/metrics in Prometheus' text format, with prometheus-client: the only module that imports it.

Two kinds of series:
  * counts of what the daemon did (actions by name and status with their durations, changes
    applied and rolled back, change-lock waits, D-Bus reconnects): `Metrics` implements
    core.protocols.Telemetry. Under gunicorn they are counted in whichever worker did the
    work, so they live in the library's multiprocess mode: every process writes its own
    files in a private directory (`metrics_dir`, emptied by `imapd-ctl serve` before the
    workers start) and a scrape adds them up, whichever worker answers it.
  * the IMAP server's state (up per port, connections in use and the limit, restarts): gauges
    of the queryCapacity reading, which costs server commands (`doveadm`) and D-Bus calls. A
    scrape takes it from `StateCache`: read at most once per `metrics_state_interval` for every
    scraper of every worker (a file in the metrics directory) and again after any action that
    changes the server, so a scrape costs file reads, never a process, and every worker gives
    the same answer. `imapd_ctl_state_age_seconds` says how old the reading is.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from imapd_ctl.adapters.files import atomic_write
from imapd_ctl.adapters.quickcalls import pid
from imapd_ctl import __version__
from imapd_ctl.core.actions import ACTIONS
from imapd_ctl.core.capacity import Capacity

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
ENV = "PROMETHEUS_MULTIPROC_DIR"
P = "imapd_ctl_"
# Actions take from a millisecond (isRunning) to job_timeout (a slow start): up to 10 minutes.
# Few buckets: a scrape adds up every bucket of every process's files.
ACTION_BUCKETS = (0.005, 0.025, 0.1, 0.5, 2.5, 10, 30, 120, 600)
LOCK_BUCKETS = (0.001, 0.01, 0.1, 1, 5, 10, 30, 60)
_multiprocess_in: dict[int, str] = {}     # pid -> the directory its values are written to
STATE_FILE = "state.prom"    # the last reading of the server's state, as exposition text
STATE_LOCK = "state.lock"    # held by the one process reading it anew
CHANGING = frozenset(name for name, action in ACTIONS.items() if action.mutating)


def use_multiprocess(directory: str) -> None:
    """Count in `directory` from now on (in this process and the ones it forks). Metrics made
    before this call keep counting in memory; serve calls it before any is made."""
    os.environ[ENV] = directory
    if _multiprocess_in.get(os.getpid()) != directory:
        values.ValueClass = values.MultiProcessValue(process_identifier=pid)    # no getpid() per count
        _multiprocess_in[os.getpid()] = directory


def prepare_directory(directory: str) -> None:
    """Make the private directory (0700) and empty it: counts start at zero with the daemon."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    for name in os.listdir(directory):
        if name.endswith(".db") or name == STATE_FILE:
            os.unlink(os.path.join(directory, name))


class StateCache:
    """The server's state as exposition text, shared by every scraper: read anew when the kept
    reading is older than `interval` seconds (0: at every scrape) or was dropped by a change.
    With a directory (the multiprocess one) the reading is a file all workers share, and one
    process reads at a time (the others wait, then take its reading); without, it is kept in
    memory."""

    def __init__(self, directory: str | None, interval: float, clock: Callable[[], float] = time.time):
        self.directory, self.interval, self.clock = directory, interval, clock
        self.path = os.path.join(directory, STATE_FILE) if directory else ""
        self._lock = threading.Lock()
        self._kept: tuple[float, bytes] | None = None

    def text(self, read: Callable[[], Reading]) -> tuple[bytes, float]:
        """(the state's text, its age in seconds)."""
        if self.interval <= 0:
            return _state_text(read), 0.0
        kept = self._fresh()
        if kept is None:
            with self._lock, self._reading():
                kept = self._fresh()
                if kept is None:
                    kept = (self.clock(), _state_text(read))
                    self._keep(kept)
        return kept[1], max(0.0, self.clock() - kept[0])

    def drop(self) -> None:
        """The server was changed: the next scrape reads it anew."""
        self._kept = None
        if self.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _fresh(self) -> tuple[float, bytes] | None:
        kept = self._kept
        if self.path:
            try:
                with open(self.path, "rb") as fh:
                    kept = (os.fstat(fh.fileno()).st_mtime, fh.read())
            except FileNotFoundError:
                return None
        return kept if kept is not None and self.clock() - kept[0] < self.interval else None

    def _keep(self, kept: tuple[float, bytes]) -> None:
        if not self.path:
            self._kept = kept
            return
        atomic_write(self.path, kept[1], default_mode=0o600)
        os.utime(self.path, (kept[0], kept[0]))       # its mtime is the reading's time

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        if not self.directory:
            yield
            return
        fd = os.open(os.path.join(self.directory, STATE_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _state_text(read: Callable[[], Reading]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_State(read))
    return generate_latest(registry)


@dataclass(frozen=True)
class Reading:
    """What /metrics reports of the host: the queryCapacity reading, the server's version, and
    whether a change waits in its journal to be finished or undone."""
    capacity: Capacity
    server_version: str = ""
    journal_pending: bool = False


class _State(Collector):
    """A collector of the IMAP server's state, read by `read` when StateCache asks."""

    def __init__(self, read: Callable[[], Reading]):
        self.read = read

    def collect(self) -> Iterable[Metric]:
        readable = GaugeMetricFamily(P + "state_readable", "1 if the IMAP server's state could be read "
                                     "(systemd reachable, a supported server found)")
        build = GaugeMetricFamily(P + "build_info", "Always 1: imapd-ctl's version, the IMAP server it "
                                  "controls and that server's version (empty while unreadable)",
                                  labels=["version", "flavour", "server_version"])
        try:
            reading = self.read()
        except Exception as exc:  # noqa: BLE001 - a scrape says so, it does not fail
            log.warning("metrics: cannot read the IMAP server's state: %s", exc)
            readable.add_metric([], 0)
            build.add_metric([__version__, "", ""], 1)
            return [readable, build]
        state = reading.capacity
        readable.add_metric([], 1)
        build.add_metric([__version__, state.flavour, reading.server_version], 1)
        pending = GaugeMetricFamily(P + "journal_pending", "1 while a configuration change waits in its "
                                    "journal to be finished or undone (`imapd-ctl recover`)")
        pending.add_metric([], int(reading.journal_pending))
        active = GaugeMetricFamily(P + "unit_active", "1 if systemd has the unit active", labels=["unit"])
        for unit in state.units:
            active.add_metric([unit.unit], int(unit.active_state == "active"))
        up = GaugeMetricFamily(P + "imap_up", "1 if the unit is active and one of its processes listens "
                               "on the port", labels=["port", "unit"])
        used = GaugeMetricFamily(P + "imap_connections", "Connections the server holds on the port",
                                 labels=["port"])
        queued = GaugeMetricFamily(P + "imap_connections_queued", "Connections waiting in the port's "
                                   "listen queue, not accepted", labels=["port"])
        limit = GaugeMetricFamily(P + "imap_connection_limit", "The connection limit in force for the "
                                  "port (+Inf: unlimited; shared between ports on Dovecot)", labels=["port"])
        for p in state.ports:
            up.add_metric([str(p.port), p.unit], int(p.up))
            used.add_metric([str(p.port)], p.in_use)
            queued.add_metric([str(p.port)], p.queued)
            limit.add_metric([str(p.port)], math.inf if p.limit is None else p.limit)
        procs = GaugeMetricFamily(P + "pool_processes", "Processes of the server's pool (Dovecot "
                                  "service, Courier couriertcpd children)", labels=["pool"])
        plimit = GaugeMetricFamily(P + "pool_process_limit", "The pool's process limit (+Inf: unlimited)",
                                   labels=["pool"])
        drop = GaugeMetricFamily(P + "pool_last_drop_warning_timestamp_seconds", "When the server last "
                                 "warned the pool dropped connections (0: never)", labels=["pool"])
        failing = GaugeMetricFamily(P + "pool_exit_failures", "The pool's processes that failed in the "
                                    "last second (Dovecot)", labels=["pool"])
        for pool in state.pools:
            procs.add_metric([pool.name], pool.processes)
            plimit.add_metric([pool.name], math.inf if pool.process_limit is None else pool.process_limit)
            drop.add_metric([pool.name], pool.last_drop_warning)
            failing.add_metric([pool.name], pool.exit_failures_in_sec)
        restarts = GaugeMetricFamily(P + "unit_restarts", "systemd's NRestarts: automatic restarts since "
                                     "the unit's last manual start", labels=["unit"])
        failed = GaugeMetricFamily(P + "unit_failed", "1 if the unit's last run did not end in success "
                                   "(systemd's Result)", labels=["unit", "result"])
        for unit in state.units:
            restarts.add_metric([unit.unit], unit.restarts)
            failed.add_metric([unit.unit, unit.result], int(unit.result not in ("success", "")))
        return [readable, build, pending, active, up, used, queued, limit, procs, plimit, drop, failing, restarts,
                failed]


class Metrics:
    """The daemon's counters (core.protocols.Telemetry) and the exposition of /metrics."""

    def __init__(self, directory: str | None = None, state_interval: float = 0.0):
        """`directory`: the multiprocess directory (use_multiprocess was called for it);
        None counts in this process's memory (the CLI, tests). `state_interval`: how old the
        server's state in a scrape may be (StateCache)."""
        self.directory = directory
        self.state = StateCache(directory, state_interval)
        self.registry = CollectorRegistry(auto_describe=True)
        reg = None if directory else self.registry
        self.actions = Histogram(P + "action_duration_seconds", "Actions run, by controller (imap, simap), "
                                 "action and reply status (_count is the number of calls), and how long "
                                 "they took", ["controller", "action", "status"], buckets=ACTION_BUCKETS,
                                 registry=reg)
        self.changes = Counter(P + "changes", "Configuration changes applied, and rolled back (a failed "
                               "change, or one a crash interrupted)", ["outcome"], registry=reg)
        self.lock_waits = Histogram(P + "lock_wait_seconds", "Waits for the change lock, by outcome "
                                    "(acquired, or busy: gave up after lock_timeout)", ["outcome"],
                                    buckets=LOCK_BUCKETS, registry=reg)
        self._action_series: dict[tuple[str, str, int], Histogram] = {}
        self.reconnects = Counter(P + "bus_reconnects", "Connections to the system bus made again after "
                                  "one was lost", registry=reg)

    # -- Telemetry ---------------------------------------------------------------------
    def action(self, name: str, status: int, seconds: float, controller: str = "imap") -> None:
        child = self._action_series.get((controller, name, status))
        if child is None:     # labels() takes a lock and builds the key each time: once per series
            child = self._action_series[(controller, name, status)] = self.actions.labels(controller, name,
                                                                                            str(status))
        child.observe(seconds)
        if name in CHANGING:
            self.state.drop()

    def change(self, outcome: str) -> None:
        self.changes.labels(outcome).inc()

    def lock_wait(self, seconds: float, acquired: bool) -> None:
        self.lock_waits.labels("acquired" if acquired else "busy").observe(seconds)

    def bus_reconnect(self) -> None:
        self.reconnects.inc()
        self.state.drop()        # the bus is back: the next scrape reads the state anew

    # -- exposition ----------------------------------------------------------------------
    def exposition(self, state: Callable[[], Reading]) -> bytes:
        """The text of one scrape: the counts of every process, then the server's state (read
        by `state` when the kept reading is too old) and its age."""
        registry = CollectorRegistry(auto_describe=False)
        if self.directory:
            MultiProcessCollector(registry, path=self.directory)
        else:
            registry.register(_Counts(self.registry))
        text, age = self.state.text(state)
        return (generate_latest(registry) + text
                + (f"# HELP {P}state_age_seconds How long ago the IMAP server's state in this scrape was read\n"
                   f"# TYPE {P}state_age_seconds gauge\n{P}state_age_seconds {age:.3f}\n").encode())


class _Counts(Collector):
    """This process's own counters, for a scrape's registry (single-process mode)."""

    def __init__(self, source: CollectorRegistry):
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()
