"""What every IMAP server flavour provides (certbot's installer interface, cut to our needs).

The transaction (imapd_ctl.operations.transaction) drives a flavour through
plan -> validate -> (write) -> apply -> verify, and on failure restores and applies again.
"""
from __future__ import annotations

from typing import Protocol

from imapd_ctl.core.actions import UPDATE_FIELDS

Values = dict[str, int]   # the four update inputs, by name (see actions.UPDATE_FIELDS)


class Flavour(Protocol):
    name: str
    units: tuple[str, ...]      # every unit that serves IMAP, in start order
    primary_unit: str           # the unit that listens on settings.port

    def unit_ports(self) -> dict[str, int]:
        """{unit: the port it serves}; start/restart wait until each listens."""

    def current_values(self) -> Values:
        """The four update values now in force (exactly as last requested, if we wrote them)."""

    def plan(self, values: Values) -> dict[str, bytes | None]:
        """New contents of each file the flavour owns (None: the file should not exist)."""

    def validate(self, files: dict[str, bytes | None]) -> None:
        """Raise ConfigInvalid unless the server accepts the config with these files in place.
        Must not touch the live files."""

    def apply(self, systemd, changed: list[str]) -> str:
        """Make the running server take up the live files (`changed`: the paths that were
        just written or restored); return what was done."""

    def verify(self, systemd, values: Values) -> None:
        """Raise ActionFailed unless the live files and the running server show values."""


__all__ = ["Flavour", "Values", "UPDATE_FIELDS"]
