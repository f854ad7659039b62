"""queryCapacity: per port, the connections in use against the limit in force, with the server's
own saturation signals, read fresh on every call (nothing is cached between calls).

Connections in use come from the kernel (sockets on the port that a process of the server has
accepted: the same count for Dovecot and Courier, before and after login); the limit and the
saturation signals from the server itself (flavour.pools: Dovecot's `doveadm service status`,
Courier's couriertcpd) and systemd (NRestarts, Result). The reading is a state source behind
two seams: `listening` (the units' state and whether they serve their ports, the one answer
every layer uses) and `probe` (the connections on a port).
"""
from __future__ import annotations

import time
from typing import Callable

from imapd_ctl.adapters import ports
from imapd_ctl.core import capacity as cap
from imapd_ctl.core.capacity import Capacity, Pool, PortLoad, Signal, UnitHealth
from imapd_ctl.core.protocols import Flavour, Listening

DROP_RECENT = 300      # seconds: a drop warning this recent is a saturation signal


class Probe:
    """The host's sockets (adapters.ports, looked up at each call): (accepted, queued)
    connections on a port."""

    def connections(self, port: int) -> tuple[int, int]:
        return ports.connections(port)


def _signals(pools: tuple[Pool, ...], loads: tuple[PortLoad, ...], units: tuple[UnitHealth, ...],
             now: int) -> tuple[Signal, ...]:
    found: list[Signal] = []
    for pool in pools:
        if pool.full:
            found.append(Signal(cap.FULL, pool.name, pool.processes))
        if pool.last_drop_warning and now - pool.last_drop_warning < DROP_RECENT:
            found.append(Signal(cap.DROPPED, pool.name, pool.last_drop_warning))
        if pool.exit_failures_in_sec or pool.throttle_secs:
            found.append(Signal(cap.FAILING, pool.name, pool.exit_failures_in_sec))
        if pool.listen_pending:
            found.append(Signal(cap.PENDING, pool.name))
    for load in loads:
        if not load.up:
            found.append(Signal(cap.DOWN, str(load.port)))
        if load.queued:
            found.append(Signal(cap.QUEUED, str(load.port), load.queued))
    for unit in units:
        if unit.restarts:
            found.append(Signal(cap.RESTARTED, unit.unit, unit.restarts))
        if unit.result not in ("success", ""):
            found.append(Signal(cap.FAILED, unit.unit))
    return tuple(found)


def read(flavour: Flavour, listening: Listening, probe: Probe = Probe(),
         clock: Callable[[], float] = time.time) -> Capacity:
    systemd = listening.systemd
    pools = flavour.pools(systemd)
    states = {unit: systemd.unit(unit) for unit in flavour.units}
    units = tuple(UnitHealth(unit=s.name, active_state=s.active_state, sub_state=s.sub_state,
                             result=s.result, restarts=s.n_restarts) for s in states.values())
    # Every port a pool serves, then any the flavour waits on that no pool names.
    port_unit: dict[int, str] = {}
    for pool in pools:
        for port in pool.ports:
            port_unit.setdefault(port, pool.unit)
    for unit, port in flavour.unit_ports().items():
        port_unit.setdefault(port, unit)
    counts = {port: probe.connections(port) for port in port_unit}
    loads = []
    for port, unit in port_unit.items():
        limiting = next((p for p in pools if p.limits_connections and port in p.ports), None)
        state = states.get(unit)
        up = state is not None and listening.serves(unit, port, state)
        sharing = limiting.ports if limiting is not None else (port,)
        loads.append(PortLoad(
            port=port, unit=unit, up=up, in_use=counts[port][0], queued=counts[port][1],
            limit=limiting.capacity if limiting is not None else None,
            shared_with=tuple(p for p in sharing if p != port),
            pool_in_use=sum(counts[p][0] for p in sharing if p in counts)))
    now = int(clock())
    return Capacity(flavour=flavour.name, ports=tuple(loads), pools=pools, units=units,
                    signals=_signals(pools, tuple(loads), units, now), checked_at=now)
