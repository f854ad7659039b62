"""/metrics in Prometheus' text format, with prometheus-client: the only module that imports it.

Two kinds of series:
  * counts of what the daemon did (actions by name and status with their durations, changes
    applied and rolled back, change-lock waits, D-Bus reconnects): `Metrics` implements
    core.protocols.Telemetry. Under gunicorn they are counted in whichever worker did the
    work, so they live in the library's multiprocess mode: every process writes its own
    files in a private directory (`metrics_dir`, emptied by `imapd-ctl serve` before the
    workers start) and a scrape adds them up, whichever worker answers it.
  * the IMAP server's state (up per port, connections in use and the limit, restarts):
    gauges read fresh from the host on every scrape (`state`, the queryCapacity reading),
    never remembered by a worker, so every worker gives the same answer.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from imapd_ctl.adapters.quickcalls import pid
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
        if name.endswith(".db"):
            os.unlink(os.path.join(directory, name))


class _State(Collector):
    """A collector of the IMAP server's state, read by `read` at each scrape."""

    def __init__(self, read: Callable[[], Capacity]):
        self.read = read

    def collect(self) -> Iterable[Metric]:
        readable = GaugeMetricFamily(P + "state_readable", "1 if the IMAP server's state could be read "
                                     "for this scrape (systemd reachable, a supported server found)")
        try:
            state = self.read()
        except Exception as exc:  # noqa: BLE001 - a scrape says so, it does not fail
            log.warning("metrics: cannot read the IMAP server's state: %s", exc)
            readable.add_metric([], 0)
            return [readable]
        readable.add_metric([], 1)
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
        return [readable, up, used, queued, limit, procs, plimit, drop, failing, restarts, failed]


class Metrics:
    """The daemon's counters (core.protocols.Telemetry) and the exposition of /metrics."""

    def __init__(self, directory: str | None = None):
        """`directory`: the multiprocess directory (use_multiprocess was called for it);
        None counts in this process's memory (the CLI, tests)."""
        self.directory = directory
        self.registry = CollectorRegistry(auto_describe=True)
        reg = None if directory else self.registry
        self.actions = Histogram(P + "action_duration_seconds", "Actions run, by action and reply status "
                                 "(_count is the number of calls), and how long they took",
                                 ["action", "status"], buckets=ACTION_BUCKETS, registry=reg)
        self.changes = Counter(P + "changes", "Configuration changes applied, and rolled back (a failed "
                               "change, or one a crash interrupted)", ["outcome"], registry=reg)
        self.lock_waits = Histogram(P + "lock_wait_seconds", "Waits for the change lock, by outcome "
                                    "(acquired, or busy: gave up after lock_timeout)", ["outcome"],
                                    buckets=LOCK_BUCKETS, registry=reg)
        self._action_series: dict[tuple[str, int], Histogram] = {}
        self.reconnects = Counter(P + "bus_reconnects", "Connections to the system bus made again after "
                                  "one was lost", registry=reg)

    # -- Telemetry ---------------------------------------------------------------------
    def action(self, name: str, status: int, seconds: float) -> None:
        child = self._action_series.get((name, status))
        if child is None:     # labels() takes a lock and builds the key each time: once per series
            child = self._action_series[(name, status)] = self.actions.labels(name, str(status))
        child.observe(seconds)

    def change(self, outcome: str) -> None:
        self.changes.labels(outcome).inc()

    def lock_wait(self, seconds: float, acquired: bool) -> None:
        self.lock_waits.labels("acquired" if acquired else "busy").observe(seconds)

    def bus_reconnect(self) -> None:
        self.reconnects.inc()

    # -- exposition ----------------------------------------------------------------------
    def exposition(self, state: Callable[[], Capacity]) -> bytes:
        """The text of one scrape: the counts of every process, then the state read now."""
        if self.directory:
            registry = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(registry, path=self.directory)
        else:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Counts(self.registry))
        registry.register(_State(state))
        return generate_latest(registry)


class _Counts(Collector):
    """This process's own counters, for a scrape's registry (single-process mode)."""

    def __init__(self, source: CollectorRegistry):
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()
