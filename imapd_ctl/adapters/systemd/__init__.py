"""systemd over D-Bus: the only package that imports pydbus/gi.

A thin adapter in the spirit of pystemd, split along its seams: bus.py (the connection, its
reconnects and signals), errors.py (D-Bus errors -> typed errors: map_error), jobs.py (jobs
whose result we wait for, the journal lines of a failure). `Systemd` here is the one facade
that implements core.protocols.Systemd: unit properties, jobs, unit files.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from imapd_ctl.adapters.systemd import jobs
from imapd_ctl.adapters.systemd.bus import MANAGER_PATH, Bus, open_private
from imapd_ctl.adapters.systemd.errors import JobFailed, NoSuchUnit, map_error
from imapd_ctl.core.protocols import UnitState

UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = jobs.SERVICE_IFACE

__all__ = ["Systemd", "NoSuchUnit", "JobFailed", "map_error", "UnitState"]


# The packaged one-shot units that enable/disable an IMAP unit at boot, for a daemon that
# does not run as root (systemd/imapd-ctl-enable@.service, imapd-ctl-disable@.service).
ONBOOT_HELPER = "imapd-ctl-{verb}@{unit}.service"


class Systemd:
    def __init__(self, bus_address: str | None = None, job_timeout: float = 90.0,
                 opener: Callable[[str | None], Any] = open_private,
                 on_reconnect: Callable[[], None] = lambda: None, via_helpers: bool | None = None):
        self.bus_address = bus_address or os.environ.get("IMAPD_CTL_SYSTEM_BUS")
        self.job_timeout = job_timeout
        self.bus = Bus(self.bus_address, opener, on_reconnect)
        # Not root: polkit decides. It can allow jobs of the IMAP units only, but not unit-file
        # changes of some units only (systemd 252 tells it no unit), so startOnBoot starts the
        # packaged helper instance for that unit, the only ones the polkit rule allows.
        self.via_helpers = os.geteuid() != 0 if via_helpers is None else via_helpers

    # -- properties ----------------------------------------------------------------
    def _prop(self, name: str, iface: str, prop: str, what: str) -> Any:
        return self.bus.get(self.bus.unit_path(name), iface, prop, what)

    def ping(self) -> str:
        """Raise Unavailable if systemd cannot be reached; return its version."""
        return str(self.bus.get(MANAGER_PATH, "org.freedesktop.systemd1.Manager", "Version", "read the version"))

    def active_state(self, name: str) -> str:
        return str(self._prop(name, UNIT_IFACE, "ActiveState", f"read the state of {name}"))

    def main_pid(self, name: str) -> int:
        return int(self._prop(name, SERVICE_IFACE, "MainPID", f"read the MainPID of {name}"))

    def unit(self, name: str) -> UnitState:
        what = f"read the state of {name}"
        load_state = str(self._prop(name, UNIT_IFACE, "LoadState", what))
        service = name.endswith(".service") and load_state == "loaded"
        return UnitState(
            name=name, load_state=load_state,
            active_state=str(self._prop(name, UNIT_IFACE, "ActiveState", what)),
            sub_state=str(self._prop(name, UNIT_IFACE, "SubState", what)),
            main_pid=int(self._prop(name, SERVICE_IFACE, "MainPID", what)) if service else 0,
            unit_file_state=str(self._prop(name, UNIT_IFACE, "UnitFileState", what)),
            result=str(self._prop(name, SERVICE_IFACE, "Result", what)) if service else "",
            n_restarts=int(self._prop(name, SERVICE_IFACE, "NRestarts", what)) if service else 0,
        )

    def journal_tail(self, name: str, lines: int = 10, since: float | None = None) -> str:
        return jobs.journal_tail(name, lines, since)

    # -- jobs --------------------------------------------------------------------
    def start(self, name: str) -> None:
        jobs.run_job(self.bus, "start", "StartUnit", name, self.job_timeout)

    def stop(self, name: str) -> None:
        jobs.run_job(self.bus, "stop", "StopUnit", name, self.job_timeout)

    def restart(self, name: str) -> None:
        jobs.run_job(self.bus, "restart", "RestartUnit", name, self.job_timeout)

    def reload(self, name: str) -> None:
        jobs.run_job(self.bus, "reload", "ReloadUnit", name, self.job_timeout)

    # -- unit files ----------------------------------------------------------------
    def _helper(self, verb: str, name: str) -> None:
        """`systemctl enable|disable name` (which reloads the manager) in the helper unit."""
        jobs.run_job(self.bus, verb, "StartUnit", ONBOOT_HELPER.format(verb=verb, unit=name), self.job_timeout)

    def enable(self, name: str) -> None:
        if self.via_helpers:
            return self._helper("enable", name)
        # (files, runtime=False, force=True); then Reload so the manager sees the change.
        self.bus.call(f"enable {name}", lambda m: m.EnableUnitFiles, [name], False, True)
        self.bus.call("reload the systemd manager", lambda m: m.Reload)

    def disable(self, name: str) -> None:
        if self.via_helpers:
            return self._helper("disable", name)
        self.bus.call(f"disable {name}", lambda m: m.DisableUnitFiles, [name], False)
        self.bus.call("reload the systemd manager", lambda m: m.Reload)
