"""What each action does: one handler per action of the table (core.actions), bound to it by
name in HANDLERS below, and taking the action's inputs as named parameters. The transports
never call these directly but go through core.dispatch (auth, validation, audit)."""
from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

from imapd_ctl.operations import capacity
from imapd_ctl.operations.outcomes import ChangeFailed, ChangeOutcome, Recovery
from imapd_ctl.adapters.cluster import Cluster
from imapd_ctl.adapters.journal import Journal
from imapd_ctl.adapters.lock import TransactionLock
from imapd_ctl.core.actions import ACTIONS, IMAP, PERMISSION, Action, Service
from imapd_ctl.core.errors import ApiError, ChangesRefused, NodeFailed, Relayed
from imapd_ctl.core.capacity import Capacity
from imapd_ctl.core.protocols import Flavour, Listening, Systemd, Telemetry, Untold
from imapd_ctl.core.settings import Settings
from imapd_ctl.operations import transaction
from imapd_ctl.operations.control import ServiceControl

log = logging.getLogger(__name__)


class Controller(ServiceControl):
    """The handlers and what they share. Built by daemon.wiring, which passes every part and,
    for the flavour, `detect`: the flavour is found on first use, in a worker (never in
    gunicorn's master: detection needs D-Bus). Tests pass a `flavour` directly.

    `service`: the table's controller the handlers answer for (actions.IMAP, SIMAP): it picks
    the port and the units (operations.serving: `port`, `unit_ports`). The wiring builds one
    Controller per service (PerService) sharing every part, the detected flavour too.

    `unfinished_recovery`: why the recovery at serve start did not finish (it overran its
    deadline); while the journal it left is pending, changes are refused with that reason
    instead of retrying a recovery that hangs."""

    def __init__(self, settings: Settings, systemd: Systemd, flavour: Flavour | None = None, *,
                 detect: Callable[[], Flavour] | None = None, lock: TransactionLock,
                 journal: Journal, cluster: Cluster, telemetry: Telemetry = Untold(),
                 listening: Listening, unfinished_recovery: str | None = None, service: Service = IMAP):
        if flavour is None and detect is None:
            raise TypeError("Controller needs a flavour or a way to detect it")
        self.settings = settings
        self.systemd = systemd
        # Is the server serving on its port, and the wait until it does (adapters.listening).
        self.listening = listening
        self.service: Service = service
        self._flavour: list[Flavour] = [flavour] if flavour is not None else []
        self._detect = detect
        self.lock = lock
        self.journal = journal
        self.cluster = cluster
        self.unfinished_recovery = unfinished_recovery
        self.telemetry = telemetry

    @property
    def flavour(self) -> Flavour:  # overrides operations.serving.Serving's stand-in
        # Detected on first use in each worker (never in gunicorn's master: it needs D-Bus).
        if not self._flavour:
            assert self._detect is not None     # __init__ checked: one of the two is given
            self._flavour.append(self._detect())
        return self._flavour[0]

    def run(self, action: Action, values: dict[str, Any], service: Service | None = None) -> Any:
        if service is not None and service != self.service:
            raise ValueError(f"the controller for {self.service.path} was asked to run for {service.path}")
        if action.local_action:  # *OnNode: this node, or forward the plain action to that node
            node_id = values["node_id"]
            if node_id is not None and node_id != self.settings.node_id:
                status, payload = self.cluster.call(self.cluster.node(node_id), action.local_action, {},
                                                    self.service.path)
                if status:
                    raise Relayed(status, payload)
                return payload
            action = ACTIONS[action.local_action]
            values = action.validate({})
        if values.get("cascade_to_nodes") == 1 and self.cluster.nodes:
            return self._cascade(action, values)
        return self._run_here(action, values)

    def _cascade(self, action: Action, values: dict[str, Any]) -> list[dict[str, Any]]:
        """Run here and, at the same time, replay on every other node in parallel (sent with
        cascade_to_nodes=0, so it never cascades twice): a cascade takes as long as the slowest
        node, not the sum. The payload is every node's outcome, this node first; the status is
        502 if any failed."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            others = pool.submit(self.cluster.replay, action.name, values, self.service.path)
            try:
                here = {"id": self.settings.node_id, "status": 0, "payload": self._run_here(action, values)}
            except ApiError as exc:
                # The error itself: the edge (prose) turns it into the reply's words.
                here = {"id": self.settings.node_id, "status": exc.status, "payload": exc}
            outcomes = [here] + others.result()
        failed = [o["id"] for o in outcomes if o["status"]]
        if failed:
            raise NodeFailed(f"{action.name} failed on {', '.join(failed)}", payload=outcomes)
        return outcomes

    def _run_here(self, action: Action, values: dict[str, Any]) -> Any:
        handler = HANDLERS[action.name]
        if not action.mutating:
            return handler(self, **{name: values[name] for name in action.handler_inputs}) \
                if action.handler_inputs else handler(self)      # the polls take none
        inputs = {name: values[name] for name in action.handler_inputs}
        self._refuse_while_unrecovered(action)
        # Every change, service control included, holds the one lock across all workers, so
        # a restart cannot land in the middle of an update's reload-and-verify.
        with self._locked():
            # A worker killed mid-change leaves a journal; whoever takes the lock next
            # finishes or undoes it before doing anything else.
            self._count_recovery(transaction.recover(self.flavour, self.systemd, self.journal))
            return handler(self, **inputs)

    def _refuse_while_unrecovered(self, action: Action) -> None:
        entry = self.journal.pending() if self.unfinished_recovery else None
        if entry is not None:
            raise ChangesRefused(
                f"{action.name} refused: {self.unfinished_recovery} (change {entry.txn_id}, "
                f"{entry.action}, interrupted at step '{entry.step}'). Changes are refused until "
                "`imapd-ctl recover` has finished it; read-only actions still answer")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The change lock; how long it was waited for is told to telemetry (acquired, or
        given up: Busy)."""
        started, acquired = time.monotonic(), False
        try:
            with self.lock.hold(timeout=self.settings.lock_timeout):
                acquired = True
                self.telemetry.lock_wait(time.monotonic() - started, acquired=True)
                yield
        except Exception:
            if not acquired:
                self.telemetry.lock_wait(time.monotonic() - started, acquired=False)
            raise

    def _count_recovery(self, done: Recovery | None) -> Recovery | None:
        if done is not None and done.rollback is not None:
            self.telemetry.change("rolled_back")
        return done

    # -- read-only -------------------------------------------------------------------
    def is_running(self) -> bool:
        """Active AND listening. With no supported IMAP server installed this is an error
        (NoFlavour, 500), not False: False reads as "installed but stopped, press Start", which
        cannot work; listServiceInfo follows it. Only the constant list* actions answer then."""
        return self.listening.serves(next(iter(self.unit_ports())), self.port)

    def list_general_name(self) -> str:
        return self.service.general_name

    def list_port_numbers(self) -> str:
        return str(self.port)

    def list_port_numbers_array(self) -> list[int]:
        return [self.port]

    def list_required_permissions(self) -> list[str]:
        return [PERMISSION]

    def list_service_name(self) -> str:
        return self.service.service_id

    def list_service_page(self) -> str:
        return self.service.page

    def list_service_info(self) -> dict[str, Any]:
        return {"id": self.service.service_id, "name": self.service.general_name, "ports": str(self.port),
                "page": self.service.page, "ctrl": self.service.path, "is_running": int(self.is_running())}

    def query_update(self) -> dict[str, int]:
        return self.flavour.current_values()

    def query_capacity(self) -> Capacity:
        """The typed reading (prose.render makes the reply's payload of it)."""
        return capacity.read(self.flavour, self.listening)

    def query_start_on_boot(self) -> dict[str, int]:
        state = self.systemd.unit(next(iter(self.unit_ports()))).unit_file_state
        return {"mda_imap_startonboot": int(state in ("enabled", "enabled-runtime"))}

    # -- configuration ---------------------------------------------------------------
    def update(self, imap_mem_limit: int | None, imap_max_connections: int | None,
               imap_secure_mem_limit: int | None, imap_secure_max_connections: int | None,
               dry_run: int) -> ChangeOutcome | str:
        """The transaction's outcome (prose.render makes the reply's sentence of it), or for a
        dry run the unified diff."""
        requested = {"imap_mem_limit": imap_mem_limit, "imap_max_connections": imap_max_connections,
                     "imap_secure_mem_limit": imap_secure_mem_limit,
                     "imap_secure_max_connections": imap_secure_max_connections}
        try:
            outcome = transaction.change(self.flavour, requested, systemd=self.systemd, journal=self.journal,
                                         listening=self.listening, dry_run=bool(dry_run))
        except ChangeFailed as exc:
            if not exc.rollback.journal_kept:   # else the recovery that finishes it counts it
                self.telemetry.change("rolled_back")
            raise
        if outcome.changed and not dry_run:
            self.telemetry.change("applied")
        return outcome.diff if dry_run else outcome

    # -- not an action: finishing a change a crash interrupted (serve, `imapd-ctl recover`) --
    def recover(self) -> Recovery | None:
        """What recovery did (prose renders it), or None if nothing was pending."""
        with self._locked():
            return self._count_recovery(transaction.recover(self.flavour, self.systemd, self.journal))


class PerService:
    """The runner dispatch calls: each action goes to the Controller of its service."""

    def __init__(self, controllers: dict[Service, Controller]):
        self.controllers = controllers

    def run(self, action: Action, values: dict[str, Any], service: Service = IMAP) -> Any:
        return self.controllers[service].run(action, values)




# Each action of the table (but the *OnNode ones, which run their local_action) and the code
# that runs it. Its parameters are the action's handler_inputs (tests/unit/test_actions.py).
HANDLERS: dict[str, Callable[..., Any]] = {
    "isRunning": Controller.is_running,
    "listGeneralName": Controller.list_general_name,
    "listPortNumbers": Controller.list_port_numbers,
    "listPortNumbersArray": Controller.list_port_numbers_array,
    "listRequiredPermissions": Controller.list_required_permissions,
    "listServiceInfo": Controller.list_service_info,
    "listServiceName": Controller.list_service_name,
    "listServicePage": Controller.list_service_page,
    "restart": Controller.restart,
    "start": Controller.start,
    "startOnBoot": Controller.start_on_boot,
    "stop": Controller.stop,
    "update": Controller.update,
    "queryUpdate": Controller.query_update,
    "queryStartOnBoot": Controller.query_start_on_boot,
    "queryCapacity": Controller.query_capacity,
}
