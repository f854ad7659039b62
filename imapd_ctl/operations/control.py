"""start, stop, restart and startOnBoot: what Controller (operations.controller) does with the
IMAP units. A start or restart is refused when the server's configuration would not load
(preflight), and one that fails anyway goes back to the configuration before the last update
when the live files are still that update's (transaction.failed_start)."""
from __future__ import annotations

from typing import Callable

from imapd_ctl.adapters.journal import Journal
from imapd_ctl.core.errors import ActionFailed, ConfigInvalid, Unavailable
from imapd_ctl.core.protocols import Listening, Systemd
from imapd_ctl.operations import transaction
from imapd_ctl.operations.serving import Serving


class ServiceControl(Serving):
    systemd: Systemd
    listening: Listening
    journal: Journal

    def _wait_listening(self, verb: str) -> None:
        """Bounded wait until every unit listens on its port (Courier: 143 and 993)."""
        left = self.listening.wait_serving(self.unit_ports(), self.settings.listen_timeout)
        for unit, port in left.items():
            raise ActionFailed(
                f"{verb} {unit}: the unit is {self.systemd.active_state(unit)} but nothing of it "
                f"listens on port {port} after {self.settings.listen_timeout:.0f} s; "
                f"last journal lines:\n{self.systemd.journal_tail(unit)}")

    def _preflight(self, verb: str, units: list[str]) -> None:
        """Refuse to (re)start a server whose configuration it would not start with: the units
        that serve keep serving (docs/failures.md)."""
        try:
            self.flavour.preflight()
        except ConfigInvalid as exc:
            serving = [u for u in units if self.systemd.active_state(u) == "active"]
            kept = f"; {', '.join(serving)} {'keeps' if len(serving) == 1 else 'keep'} serving" if serving else ""
            raise ConfigInvalid(f"{verb} refused: the IMAP server would not start with its configuration"
                                f"{kept}. {exc.message}. Fix the file, then {verb} again") from None

    def _serve_or_go_back(self, verb: str, units: list[str], job: Callable[[str], None]) -> None:
        """Run `job` on every unit and wait until they serve. If they do not, and the live files
        are still those of the last update, go back to the configuration before it
        (transaction.failed_start; docs/failures.md)."""
        def run(job: Callable[[str], None]) -> None:
            for unit in units:
                job(unit)
            self._wait_listening(verb)

        try:
            run(job)
        except Unavailable:
            raise
        except ActionFailed as exc:
            raise transaction.failed_start(self.flavour, self.journal, verb, tuple(units), exc,
                                           restart=lambda: run(self.systemd.restart)) from None

    def start(self) -> str:
        units = list(self.unit_ports())
        self._preflight("start", units)
        self._serve_or_go_back("start", units, self.systemd.start)
        return self.acted("started", units)

    def stop(self) -> str:
        units = list(self.unit_ports())
        idle = [unit for unit in units if self.systemd.unit(unit).active_state in ("inactive", "failed")]
        for unit in reversed(units):
            self.systemd.stop(unit)       # also for an idle unit: harmless, and never a race lost
        if len(idle) == len(units):
            return self.acted("nothing to stop:", units, " already stopped")
        return self.acted("stopped", units)

    def restart(self) -> str:
        units = list(self.unit_ports())
        self._preflight("restart", units)
        self._serve_or_go_back("restart", units, self.systemd.restart)
        return self.acted("restarted", units)

    def start_on_boot(self, mda_imap_startonboot: int) -> str:
        enable = mda_imap_startonboot == 1
        units = list(self.unit_ports())
        for unit in units:
            (self.systemd.enable if enable else self.systemd.disable)(unit)
        return self.acted("enabled" if enable else "disabled", units, " at boot")
