"""systemd over D-Bus: the only package that imports gi (Gio's GDBus).

Split along its seams: bus.py (the connection, its reconnects, the thread that receives
signals), state.py (the watched units' state, pushed by systemd and kept in memory),
errors.py (D-Bus errors -> typed errors: map_error), jobs.py (jobs whose result we wait for,
the journal lines of a failure). `Systemd` here is the one facade that implements
core.protocols.Systemd: unit state (from memory), jobs, unit files.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from imapd_ctl.adapters.systemd import jobs
from imapd_ctl.adapters.systemd.bus import MANAGER_IFACE, MANAGER_PATH, Bus, Link
from imapd_ctl.adapters.systemd.errors import JobFailed, NoSuchUnit, map_error
from imapd_ctl.adapters.systemd.state import SERVICE_IFACE, UnitCache
from imapd_ctl.core.protocols import UnitState

__all__ = ["Systemd", "NoSuchUnit", "JobFailed", "map_error", "UnitState"]


# The packaged one-shot units that enable/disable an IMAP unit at boot, for a daemon that
# does not run as root (systemd/imapd-ctl-enable@.service, imapd-ctl-disable@.service).
ONBOOT_HELPER = "imapd-ctl-{verb}@{unit}.service"


class Systemd:
    def __init__(self, bus_address: str | None = None, job_timeout: float = 90.0,
                 opener: Callable[..., Any] = Link,
                 on_reconnect: Callable[[], None] = lambda: None, via_helpers: bool | None = None):
        self.bus_address = bus_address or os.environ.get("IMAPD_CTL_SYSTEM_BUS")
        self.job_timeout = job_timeout
        self.bus = Bus(self.bus_address, opener, on_reconnect)
        self.state = UnitCache(self.bus)
        # Not root: polkit decides. It can allow jobs of the IMAP units only, but not unit-file
        # changes of some units only (systemd 252 tells it no unit), so startOnBoot starts the
        # packaged helper instance for that unit, the only ones the polkit rule allows.
        self.via_helpers = os.geteuid() != 0 if via_helpers is None else via_helpers

    # -- state -----------------------------------------------------------------------
    def ping(self) -> str:
        """Raise Unavailable if systemd cannot be reached; return its version."""
        return str(self.bus.get(MANAGER_PATH, MANAGER_IFACE, "Version", "read the version"))

    def active_state(self, name: str) -> str:
        return self.state.get(name).active_state

    def main_pid(self, name: str) -> int:
        return self.state.get(name).main_pid

    def unit(self, name: str) -> UnitState:
        return self.state.get(name)

    def processes(self, name: str) -> list[tuple[int, str]]:
        """systemd's GetUnitProcesses: the manager reads the unit's processes for us, so this
        process needs no access to other users' /proc (the daemon's is hidden: ProtectProc=)."""
        found = self.bus.manager_call(f"list the processes of {name}", "GetUnitProcesses", "(s)", (name,),
                                      "(a(sus))")[0]
        return [(int(pid), str(cmdline)) for _cgroup, pid, cmdline in found]

    def control_group(self, name: str) -> str:
        """The unit's cgroup as systemd names it now ("" while it has none): asked at each call
        (adapters.ports asks only when it looks for a unit's listening socket anew)."""
        path = self.bus.unit_path(name)
        return str(self.bus.get(path, SERVICE_IFACE, "ControlGroup", f"read the cgroup of {name}"))

    def journal_tail(self, name: str, lines: int = 10, since: float | None = None) -> str:
        return jobs.journal_tail(name, lines, since)

    # -- jobs --------------------------------------------------------------------------
    def start(self, name: str) -> None:
        jobs.run_job(self.state, "start", "StartUnit", name, self.job_timeout)

    def stop(self, name: str) -> None:
        jobs.run_job(self.state, "stop", "StopUnit", name, self.job_timeout)

    def restart(self, name: str) -> None:
        jobs.run_job(self.state, "restart", "RestartUnit", name, self.job_timeout)

    def reload(self, name: str) -> None:
        jobs.run_job(self.state, "reload", "ReloadUnit", name, self.job_timeout)

    # -- unit files --------------------------------------------------------------------
    def _helper(self, verb: str, name: str) -> None:
        """`systemctl enable|disable name` (which reloads the manager) in the helper unit."""
        jobs.run_job(self.state, verb, "StartUnit", ONBOOT_HELPER.format(verb=verb, unit=name), self.job_timeout)
        self._reread(name)

    def enable(self, name: str) -> None:
        if self.via_helpers:
            return self._helper("enable", name)
        # (files, runtime=False, force=True); then Reload so the manager sees the change.
        self.bus.manager_call(f"enable {name}", "EnableUnitFiles", "(asbb)", ([name], False, True))
        self.bus.manager_call("reload the systemd manager", "Reload")
        self._reread(name)

    def disable(self, name: str) -> None:
        if self.via_helpers:
            return self._helper("disable", name)
        self.bus.manager_call(f"disable {name}", "DisableUnitFiles", "(asb)", ([name], False))
        self.bus.manager_call("reload the systemd manager", "Reload")
        self._reread(name)

    def _reread(self, name: str) -> None:
        """UnitFileState has no change signal of its own: read it now that we changed it."""
        self.state.get(name)
        self.state.refresh(name, self.bus.unit_path(name))
