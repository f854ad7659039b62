"""How full the IMAP server is, as data: queryCapacity's result and the gauges of /metrics.

The flavours read their server's own process pools (Dovecot's `doveadm service status`,
Courier's couriertcpd) into `Pool`s; operations.capacity adds the kernel's count of connections
per port and systemd's view of each unit, and gives a `Capacity`. Words for it are made only at
the edge (operations.prose).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pool:
    """One process pool of the server, as the running server reports it.

    Dovecot: a `service` (imap: logged-in sessions, imap-login: connections before login);
    Courier: one couriertcpd (its children are the connections of its port)."""
    name: str                        # "imap", "imap-login"; Courier: the unit
    unit: str                        # the systemd unit that runs it
    ports: tuple[int, ...]           # the ports whose connections it serves
    processes: int                   # processes now running in it
    process_limit: int | None        # None: unlimited
    client_limit: int = 1            # connections one process serves
    limits_connections: bool = True  # its capacity is the ports' connection limit (what `update` sets)
    last_drop_warning: int = 0       # unix time the server last warned it dropped connections (0: never)
    exit_failures_in_sec: int = 0    # processes that failed in the last second (Dovecot)
    throttle_secs: int = 0           # the server throttles process creation after failures (Dovecot)
    listen_pending: bool = False     # connections wait and no process accepts them (Dovecot)

    @property
    def capacity(self) -> int | None:
        """Connections the pool can serve at once (None: unlimited)."""
        return None if self.process_limit is None else self.process_limit * max(1, self.client_limit)

    @property
    def full(self) -> bool:
        return self.process_limit is not None and self.processes >= self.process_limit


@dataclass(frozen=True)
class UnitHealth:
    """systemd's view of one unit of the server."""
    unit: str
    active_state: str
    sub_state: str
    result: str                      # success | exit-code | signal | timeout | ...
    restarts: int                    # NRestarts: automatic restarts since the last manual start


@dataclass(frozen=True)
class PortLoad:
    """One port the server answers on."""
    port: int
    unit: str
    up: bool                         # the unit is active and one of its processes listens
    in_use: int                      # connections the server has accepted and holds
    queued: int                      # connections the kernel completed but nobody accepted yet
    limit: int | None                # the connection limit in force for this port (None: unlimited)
    shared_with: tuple[int, ...] = ()  # other ports counted against the same limit (Dovecot)
    pool_in_use: int = 0             # connections counted against the limit (this port's and the others')

    @property
    def headroom(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.pool_in_use)


# Saturation signals, as codes (prose words them).
FULL = "pool_full"                   # a pool runs at its process limit
DROPPED = "dropped_recently"         # the server warned it dropped connections lately
FAILING = "exit_failures"            # processes are failing (Dovecot throttles them)
PENDING = "listen_pending"           # connections wait with no process accepting them
QUEUED = "queued"                    # connections wait in a port's listen queue
RESTARTED = "restarted"              # systemd restarted a unit on its own
FAILED = "unit_failed"               # a unit's last run did not end in success
DOWN = "down"                        # a port is not served


@dataclass(frozen=True)
class Signal:
    code: str                        # one of the codes above
    subject: str                     # the pool, port or unit it is about
    value: int = 0                   # the figure behind it (processes, connections, restarts, time)


@dataclass(frozen=True)
class Capacity:
    flavour: str
    ports: tuple[PortLoad, ...]
    pools: tuple[Pool, ...]
    units: tuple[UnitHealth, ...]
    signals: tuple[Signal, ...] = ()
    checked_at: int = 0              # unix time of the reading

    @property
    def saturated(self) -> bool:
        return bool(self.signals)
