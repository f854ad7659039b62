"""What each action does. One method per `Action.handler` in the action table; the API layers
never call these directly but go through `dispatch` (auth, validation, audit)."""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from imapd_ctl.adapters import audit
from imapd_ctl.adapters import ports
from imapd_ctl.operations import transaction
from imapd_ctl.operations.outcomes import ChangeOutcome, Recovery
from imapd_ctl.core.waiting import wait_until
from imapd_ctl.core.actions import ACTIONS, CONTROLLER, PERMISSION, UPDATE_FIELDS, Action, lookup
from imapd_ctl.adapters.configfile import Journal, TransactionLock
from imapd_ctl.adapters.cluster import Cluster
from imapd_ctl.core.errors import ActionFailed, ApiError, BadInput, MethodNotAllowed, NodeFailed, Relayed
from imapd_ctl.adapters.flavours import detect

log = logging.getLogger(__name__)

SERVICE_ID = "imap4"
GENERAL_NAME = "##LG_IMAP##"
SERVICE_PAGE = "/nodeworx/mail/mda"
LISTEN_INTERVAL = 0.05


class Controller:
    def __init__(self, settings, systemd=None, flavour=None):
        self.settings = settings
        if systemd is None:
            from imapd_ctl.adapters.systemd import Systemd
            systemd = Systemd(job_timeout=settings.job_timeout)
        self.systemd = systemd
        self._flavour = flavour
        self.lock = TransactionLock(settings.lock_path)
        self.journal = Journal(settings.state_dir)
        self.cluster = Cluster(settings.node_id, settings.nodes, settings.node_timeout)

    @property
    def flavour(self):
        # Detected on first use in each worker (never in gunicorn's master: it needs D-Bus).
        if self._flavour is None:
            self._flavour = detect(self.settings, self.systemd)
        return self._flavour

    def run(self, action: Action, values: dict[str, Any]) -> Any:
        if action.local_action:  # *OnNode: this node, or forward the plain action to that node
            node_id = values["node_id"]
            if node_id is not None and node_id != self.settings.node_id:
                status, payload = self.cluster.call(self.cluster.node(node_id), action.local_action, {})
                if status:
                    raise Relayed(status, payload)
                return payload
            action = ACTIONS[action.local_action]
            values = action.validate({})
        if values.get("cascade_to_nodes") == 1 and self.cluster.nodes:
            return self._cascade(action, values)
        return self._run_here(action, values)

    def _cascade(self, action: Action, values: dict[str, Any]) -> list[dict]:
        """Run here and, at the same time, replay on every other node in parallel (sent with
        cascade_to_nodes=0, so it never cascades twice): a cascade takes as long as the slowest
        node, not the sum. The payload is every node's outcome, this node first; the status is
        502 if any failed."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            others = pool.submit(self.cluster.replay, action.name, values)
            try:
                here = {"id": self.settings.node_id, "status": 0, "payload": self._run_here(action, values)}
            except ApiError as exc:
                here = {"id": self.settings.node_id, "status": exc.status,
                        "payload": exc.payload if exc.payload is not None else exc.message}
            outcomes = [here] + others.result()
        failed = [o["id"] for o in outcomes if o["status"]]
        if failed:
            raise NodeFailed(f"{action.name} failed on {', '.join(failed)}", payload=outcomes)
        return outcomes

    def _run_here(self, action: Action, values: dict[str, Any]) -> Any:
        handler = getattr(self, action.handler)
        if not action.mutating:
            return handler(values)
        # Every change, service control included, holds the one lock across all workers, so
        # a restart cannot land in the middle of an update's reload-and-verify.
        with self.lock.hold(timeout=self.settings.lock_timeout):
            # A worker killed mid-change leaves a journal; whoever takes the lock next
            # finishes or undoes it before doing anything else.
            transaction.recover(self.flavour, self.systemd, self.journal)
            return handler(values)

    # -- read-only -------------------------------------------------------------------
    def is_running(self, _values=None) -> bool:
        """Active AND listening. With no supported IMAP server installed this is an error
        (NoFlavour, 500), not False: False reads as "installed but stopped, press Start", which
        cannot work; listServiceInfo follows it. Only the constant list* actions answer then."""
        unit = self.flavour.primary_unit
        if self.systemd.active_state(unit) != "active":
            return False
        return ports.unit_listens(self.systemd.main_pid(unit), self.settings.port)

    def list_general_name(self, _values) -> str:
        return GENERAL_NAME

    def list_port_numbers(self, _values) -> str:
        return str(self.settings.port)

    def list_port_numbers_array(self, _values) -> list[int]:
        return [self.settings.port]

    def list_required_permissions(self, _values) -> list[str]:
        return [PERMISSION]

    def list_service_name(self, _values) -> str:
        return SERVICE_ID

    def list_service_page(self, _values) -> str:
        return SERVICE_PAGE

    def list_service_info(self, _values) -> dict:
        return {"id": SERVICE_ID, "name": GENERAL_NAME, "ports": str(self.settings.port),
                "page": SERVICE_PAGE, "ctrl": CONTROLLER, "is_running": int(self.is_running())}

    def query_update(self, _values) -> dict[str, int]:
        return self.flavour.current_values()

    def query_start_on_boot(self, _values) -> dict[str, int]:
        state = self.systemd.unit(self.flavour.primary_unit).unit_file_state
        return {"mda_imap_startonboot": int(state in ("enabled", "enabled-runtime"))}

    # -- service control -------------------------------------------------------------
    def _wait_listening(self, verb: str) -> None:
        """Bounded wait until every unit listens on its port (Courier: 143 and 993)."""
        deadline = time.monotonic() + self.settings.listen_timeout
        for unit, port in self.flavour.unit_ports().items():
            if not wait_until(lambda: ports.unit_listens(self.systemd.main_pid(unit), port),
                              deadline - time.monotonic(), LISTEN_INTERVAL):
                raise ActionFailed(
                    f"{verb} {unit}: the unit is {self.systemd.active_state(unit)} but nothing of it "
                    f"listens on port {port} after {self.settings.listen_timeout:.0f} s; "
                    f"last journal lines:\n{self.systemd.journal_tail(unit)}")

    def start(self, _values) -> str:
        for unit in self.flavour.units:
            self.systemd.start(unit)
        self._wait_listening("start")
        return f"started {', '.join(self.flavour.units)}"

    def stop(self, _values) -> str:
        for unit in reversed(self.flavour.units):
            self.systemd.stop(unit)
        return f"stopped {', '.join(self.flavour.units)}"

    def restart(self, _values) -> str:
        for unit in self.flavour.units:
            self.systemd.restart(unit)
        self._wait_listening("restart")
        return f"restarted {', '.join(self.flavour.units)}"

    def start_on_boot(self, values) -> str:
        enable = values["mda_imap_startonboot"] == 1
        for unit in self.flavour.units:
            (self.systemd.enable if enable else self.systemd.disable)(unit)
        return f"{'enabled' if enable else 'disabled'} {', '.join(self.flavour.units)} at boot"

    # -- configuration ---------------------------------------------------------------
    def update(self, values) -> ChangeOutcome | str:
        """The transaction's outcome (prose.render makes the reply's sentence of it), or for a
        dry run the unified diff."""
        requested = {k: values[k] for k in UPDATE_FIELDS}
        outcome = transaction.change(
            self.flavour, requested, systemd=self.systemd, journal=self.journal,
            dry_run=bool(values["dry_run"]))
        if values["dry_run"]:
            return outcome.diff
        return outcome

    def recover(self) -> Recovery | None:
        """What recovery did (str() of it is the sentence), or None if nothing was pending."""
        with self.lock.hold(timeout=self.settings.lock_timeout):
            return transaction.recover(self.flavour, self.systemd, self.journal)



def dispatch(controller: Controller, keys, apikey: Any, action_name: Any, raw: Any, *,
             transport: str, peer: str, method: str | None = None) -> tuple[int, Any]:
    """Authenticate, authorize, find the action, validate, run, audit -- in that order, so a
    caller without a valid key learns nothing about actions or inputs. `raw` may be an
    ApiError from parsing the request, reported after authentication. Returns
    (status, payload); never raises."""
    who = "-"
    action = None
    values: dict = {}
    try:
        who = keys.authenticate(apikey, PERMISSION).name
        action = lookup(action_name)
        if method is not None and method not in action.methods:
            raise MethodNotAllowed(f"{action.name} changes the server: use {' or '.join(action.methods)}")
        if isinstance(raw, ApiError):
            raise raw
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise BadInput(f"input: must be a struct/object of named inputs, got {type(raw).__name__}")
        values = action.validate(raw)
        status, payload = 0, controller.run(action, values)
    except ApiError as exc:
        status, payload = exc.status, exc.payload if exc.payload is not None else exc.message
    except Exception as exc:  # a bug: say so, keep the worker alive, log the traceback
        log.exception("action %s failed unexpectedly", action_name)
        status, payload = 500, f"internal error in imapd-ctl: {type(exc).__name__}: {exc}"
    from imapd_ctl.transports import prose   # the edge: outcomes become sentences here (wt-c)
    payload = prose.render(payload)
    if action is not None and action.mutating:
        audit.record(who=who, peer=peer, transport=transport, action=action.name,
                     inputs=values, status=status, payload=payload)
    return status, payload

