"""The object graph, built in one place for the app (each gunicorn worker), the CLI and the
recovery at serve start.

Building it opens nothing: the systemd adapter connects to D-Bus on its first call and the
flavour is detected on first use. That matters because gunicorn's master must never hold a
D-Bus connection (workers forked from it would hang on it).
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from imapd_ctl.adapters import peers
from imapd_ctl.adapters.audit import AuditLog
from imapd_ctl.adapters.cluster import Cluster
from imapd_ctl.adapters.registry import Registry
from imapd_ctl.adapters.journal import Journal, JournalError
from imapd_ctl.adapters.lock import TransactionLock
from imapd_ctl.adapters.flavours import detect
from imapd_ctl.adapters.keys import KeyStore
from imapd_ctl.adapters.listening import UnitListening
from imapd_ctl.adapters.metrics import CONTENT_TYPE, ENV, Metrics, Reading
from imapd_ctl.adapters.systemd import Systemd as DBusSystemd
from imapd_ctl.core.actions import CONTROLLERS, IMAP, Action, Service
from imapd_ctl.core.dispatch import Context, Runner
from imapd_ctl.core.errors import ApiError, Busy
from imapd_ctl.core.protocols import Audit, Flavour, Systemd
from imapd_ctl.core.settings import Settings
from imapd_ctl.operations.controller import Controller, PerService
from imapd_ctl.operations import prose


CHANGES_AT_ONCE = 8   # actions that change the server, running at once in one process


class Admission:
    """Actions that change the server may wait minutes (the change lock, a systemd job);
    at most `limit` of them hold a request thread at once, so reads always find one free.
    One more is told 409 at once, as if it had lost the race for the change lock."""

    def __init__(self, runner: Runner, limit: int = CHANGES_AT_ONCE):
        self.runner = runner
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def run(self, action: Action, values: dict[str, Any], service: Service = IMAP) -> Any:
        if not action.mutating:
            return self.runner.run(action, values, service)
        if not self._slots.acquire(blocking=False):
            raise Busy(f"{self.limit} changes are already in progress or waiting; try again")
        try:
            return self.runner.run(action, values, service)
        finally:
            self._slots.release()


@dataclass(frozen=True)
class Services:
    settings: Settings
    systemd: Systemd
    lock: TransactionLock
    journal: Journal
    cluster: Cluster
    keys: KeyStore
    audit: Audit
    controllers: dict[Service, Controller]     # one per controller of the table
    metrics: Metrics

    @property
    def controller(self) -> Controller:
        """The imap controller's (143): what the CLI, recovery and /metrics use."""
        return self.controllers[IMAP]

    @property
    def flavour(self) -> Flavour:
        """The IMAP server's flavour, detected on first use (this needs D-Bus)."""
        return self.controller.flavour

    def context(self) -> Context:
        """What core.dispatch needs for every request; the audit trail's file is checked here
        (a change is refused while it cannot be written), not when the graph is built."""
        if isinstance(self.audit, AuditLog):
            self.audit.open()
        return Context(keys=self.keys, audit=self.audit, runner=Admission(PerService(self.controllers)),
                       render=prose.render, describe=prose.payload_of, telemetry=self.metrics,
                       operators=peers.operators(self.settings.operator_group))

    def warm(self) -> None:
        """In a worker, at start: connect to the bus and detect the flavour now, not in the
        first request (any worker may take any request, so each must know its flavour before
        the bus may go away). Missing bus or server: the first use says why."""
        try:
            logging.getLogger(__name__).info("worker ready: %s", self.controller.flavour.name)
        except ApiError as exc:
            logging.getLogger(__name__).warning("at worker start: %s", prose.message(exc))

    def scrape(self) -> tuple[bytes, str]:
        """The text of /metrics: the counts of every process and the server's state."""
        return self.metrics.exposition(self.reading), CONTENT_TYPE

    def reading(self) -> Reading:
        capacity = self.controller.query_capacity()
        try:
            pending = self.journal.pending() is not None
        except JournalError:       # unreadable or not trusted: it needs a look all the same
            pending = True
        return Reading(capacity, self.controller.flavour.server_version(), pending)


def build(settings: Settings, *, systemd: Systemd | None = None, flavour: Flavour | None = None,
          keys: KeyStore | None = None, audit: Audit | None = None,
          unfinished_recovery: str | None = None) -> Services:
    """The graph for `settings`; tests pass fakes for the parts that reach the host.
    `unfinished_recovery`: why serve's recovery at start did not finish (changes are refused
    while its journal is pending)."""
    # Counted in the multiprocess directory when `serve` set one up (metrics.use_multiprocess).
    metrics = Metrics(os.environ.get(ENV) or None, settings.metrics_state_interval)
    bus: Systemd
    if systemd is None:
        bus = real = DBusSystemd(job_timeout=settings.job_timeout, on_reconnect=metrics.bus_reconnect)
        real.bus.on_drop.append(metrics.state.drop)      # the bus went away: /metrics says so at once
    else:
        bus = systemd
    lock = TransactionLock(settings.lock_path)
    journal = Journal(settings.state_dir)
    cluster = Cluster(settings.node_id, Registry(settings.nodes, settings.nodes_dir).nodes, settings.node_timeout,
                      settings.cascade_parallel)

    detected: list[Flavour] = []

    def detect_flavour() -> Flavour:     # once per process, whichever controller asks first
        if not detected:
            detected.append(detect(settings, bus))
        return detected[0]

    listening = UnitListening(bus)
    controllers = {service: Controller(settings, bus, flavour, detect=detect_flavour, lock=lock, journal=journal,
                                       cluster=cluster, telemetry=metrics, unfinished_recovery=unfinished_recovery,
                                       service=service, listening=listening)
                   for service in CONTROLLERS.values()}
    return Services(settings=settings, systemd=bus, lock=lock, journal=journal, cluster=cluster,
                    keys=keys if keys is not None else KeyStore(settings.keys_path),
                    audit=audit if audit is not None else AuditLog(settings.audit_log),
                    controllers=controllers, metrics=metrics)
