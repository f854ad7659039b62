"""Which port and units a controller of the action table answers for (core.actions.Service):
/nodeworx/mail/imap, settings.port (143) and every IMAP unit; /nodeworx/mail/simap,
settings.ssl_port (993) and the unit that serves it. Courier runs a daemon per port, so simap acts
on courier-imap-ssl.service alone; Dovecot's one unit serves both ports, so simap acts on it and
its replies say that 143 is affected too. A base of operations.controller.Controller, which
provides the flavour (detected on first use)."""
from __future__ import annotations

from imapd_ctl.core.actions import Service
from imapd_ctl.core.errors import ActionFailed
from imapd_ctl.core.protocols import Flavour
from imapd_ctl.core.settings import Settings


class Serving:
    service: Service
    settings: Settings

    @property
    def flavour(self) -> Flavour:
        raise NotImplementedError

    @property
    def port(self) -> int:
        return self.settings.ssl_port if self.service.secure else self.settings.port

    def unit_ports(self) -> dict[str, int]:
        """{unit: port} acted on, in start order (isRunning checks the first): imap, every IMAP unit
        (both Courier daemons); simap, the unit serving 993 (Courier's SSL daemon, Dovecot's one)."""
        if not self.service.secure:
            return self.flavour.unit_ports()
        unit = self.flavour.secure_unit
        if unit is None:
            raise ActionFailed(f"no unit of this host's IMAP server ({self.flavour.name}) serves IMAP over "
                               f"TLS on port {self.port}; installed: {', '.join(self.flavour.units)}")
        return {unit: self.port}

    def acted(self, verb: str, units: list[str], what: str = "") -> str:
        """A service action's reply; on simap it says when the unit serves 143 as well."""
        shared = self.service.secure and self.flavour.primary_unit in units
        return f"{verb} {', '.join(units)}{what}" + (
            f" (it serves ports {self.settings.port} and {self.port}: IMAP on both is affected)" if shared else "")
