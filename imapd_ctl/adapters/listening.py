"""Is the IMAP server serving on its port: a unit active (or reloading, which Dovecot serves
through) and one of its processes listening on the port (adapters.ports); and a bounded wait
until it does. The one answer the controller (isRunning, start/restart), the transaction and
both flavours' verify, status and queryCapacity are given (core.protocols.Listening)."""
from __future__ import annotations

from typing import Callable

from imapd_ctl.adapters import ports
from imapd_ctl.core.protocols import Systemd, UnitState
from imapd_ctl.core.waiting import wait_until

SERVING = ("active", "reloading")
STOPPED = ("failed", "inactive", "deactivating")
INTERVAL = 0.05      # between looks while waiting


def serving(active_state: str, main_pid: int, port: int, unit: str, control_group: Callable[[str], str]) -> bool:
    """The definition, for a state already read (the CLI's `systemctl show` included);
    `control_group(unit)` says the unit's cgroup when it is needed (adapters.ports)."""
    return active_state in SERVING and main_pid > 0 and ports.unit_listens(main_pid, port, unit, control_group)


class UnitListening:
    def __init__(self, systemd: Systemd):
        self.systemd = systemd

    def serves(self, unit: str, port: int, state: UnitState | None = None) -> bool:
        """`state`: the unit's state if the caller has read it (else one snapshot is read here,
        so that state and pid agree)."""
        state = state if state is not None else self.systemd.unit(unit)
        return serving(state.active_state, state.main_pid, port, unit, self.systemd.control_group)

    def wait_serving(self, unit_ports: dict[str, int], timeout: float, *, interval: float = INTERVAL,
                     also: Callable[[], bool] | None = None,
                     gone: Callable[[str, str], None] | None = None) -> dict[str, int]:
        """Wait (bounded) until every unit serves its port and `also()` (the caller's own
        condition) holds; returns the units that still do not serve (empty: all serve).
        `gone(unit, state)` is told of a unit found stopped (it may raise: no point in waiting
        for a port that will not come)."""
        pending = dict(unit_ports)

        def done() -> bool:      # every unit looked at on every poll: all serve at once
            pending.clear()
            for unit, port in unit_ports.items():
                state = self.systemd.unit(unit)
                if gone is not None and state.active_state in STOPPED:
                    gone(unit, state.active_state)
                if not serving(state.active_state, state.main_pid, port, unit, self.systemd.control_group):
                    pending[unit] = port
            return not pending and (also is None or also())

        wait_until(done, timeout, interval)
        return pending
