"""Facts about this host that `imapd-ctl status` shows beside the API's answers: each IMAP
unit's state as systemd reports it (`systemctl show`, readable by any user, no D-Bus
connection kept), the IMAP server's version (the package manager's record), and whether a
process of the unit listens on its port (adapters.ports, as isRunning asks it)."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass

from imapd_ctl.adapters.listening import serving

UNIT_PROPERTIES = ("ActiveState", "SubState", "UnitFileState", "NRestarts", "Result", "MainPID", "ControlGroup")

# Where each flavour's version is recorded: Debian's package, then the RPM's.
PACKAGES = {"dovecot": ("dovecot-core", "dovecot"), "courier": ("courier-imap",)}


@dataclass(frozen=True)
class PortState:
    unit: str
    port: int
    active_state: str        # active | inactive | failed | activating | ... ("unknown": not asked)
    sub_state: str
    enabled: str             # systemd's UnitFileState: enabled | disabled | masked | ...
    restarts: int | None     # NRestarts (systemd >= 235)
    result: str              # success | exit-code | signal | ...
    listening: bool          # a process of the unit listens on the port


def _run(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def unit_properties(unit: str) -> dict[str, str]:
    """The UNIT_PROPERTIES of a unit ({} if systemctl cannot be asked)."""
    out = _run(["systemctl", "show", "--property=" + ",".join(UNIT_PROPERTIES), "--", unit])
    props: dict[str, str] = {}
    for line in (out or "").splitlines():
        name, sep, value = line.partition("=")
        if sep:
            props[name] = value
    return props


def port_state(unit: str, port: int) -> PortState:
    props = unit_properties(unit)
    try:
        pid = int(props.get("MainPID", "0"))
    except ValueError:
        pid = 0
    try:
        restarts: int | None = int(props["NRestarts"])
    except (KeyError, ValueError):
        restarts = None
    active = props.get("ActiveState", "unknown")
    try:
        listening = serving(active, pid, port, unit, lambda _: props.get("ControlGroup", ""))
    except OSError:
        listening = False
    return PortState(unit=unit, port=port, active_state=active, sub_state=props.get("SubState", ""),
                     enabled=props.get("UnitFileState", "") or "unknown", restarts=restarts,
                     result=props.get("Result", ""), listening=listening)


def server_version(flavour: str) -> str | None:
    """The installed version of the flavour's package, or None if no package manager knows it."""
    for package in PACKAGES.get(flavour, ()):
        status, _, version = (_run(["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", package])
                              or "").partition(" ")
        if status == "installed" and version.strip():
            return version.strip()
        found = _run(["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}", package])
        if found and found.strip():
            return found.strip()
    return None
