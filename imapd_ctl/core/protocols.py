"""The seams between the core and the host adapters, as typed protocols.

The operations (controller, transaction) are written against these, never against a concrete
adapter: `adapters.systemd.Systemd`, the flavours in `adapters.flavours`, the key store and the
audit trail implement them, and the fakes of the fast tests (tests/unit/fakes.py) do too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from imapd_ctl.core.capacity import Pool

Values = dict[str, int]              # the four update inputs by name (actions.UPDATE_FIELDS)
Files = dict[str, "bytes | None"]    # path -> contents (None: the file should not exist)


@dataclass(frozen=True)
class UnitState:
    name: str
    load_state: str        # loaded | not-found | masked | ...
    active_state: str      # active | inactive | failed | activating | ...
    sub_state: str
    main_pid: int
    unit_file_state: str   # enabled | disabled | static | ...
    result: str            # the service's last result: success | exit-code | ...
    n_restarts: int = 0    # NRestarts: automatic restarts since the last manual start

    @property
    def active(self) -> bool:
        return self.active_state == "active"


class Systemd(Protocol):
    """systemd's manager over D-Bus. Errors are the typed ApiErrors of core.errors
    (Unavailable: the bus cannot be reached; NoSuchUnit, JobFailed: ActionFailed)."""

    def ping(self) -> str: ...
    def active_state(self, name: str) -> str: ...
    def main_pid(self, name: str) -> int: ...
    def unit(self, name: str) -> UnitState: ...
    def control_group(self, name: str) -> str: ...
    def processes(self, name: str) -> list[tuple[int, str]]:
        """(pid, command line) of each process of the unit, as systemd sees them."""
        ...
    def journal_tail(self, name: str, lines: int = 10, since: float | None = None) -> str: ...
    def start(self, name: str) -> None: ...
    def stop(self, name: str) -> None: ...
    def restart(self, name: str) -> None: ...
    def reload(self, name: str) -> None: ...
    def enable(self, name: str) -> None: ...
    def disable(self, name: str) -> None: ...


@dataclass(frozen=True)
class Applied:
    """What a flavour's apply() did to make the server take up the live files."""
    reloaded: tuple[str, ...] = ()   # units reloaded (Dovecot)
    restarted: tuple[str, ...] = ()  # units restarted (Courier has no reload)
    idle: tuple[str, ...] = ()       # affected units not running: the files apply when they start


@dataclass(frozen=True)
class Check:
    """One line of `imapd-ctl check`."""
    what: str
    ok: bool
    detail: str


class Listening(Protocol):
    """Is an IMAP unit serving on its port, and a bounded wait until it does (adapters.listening).
    `systemd`: the units' state, for the callers' own words about a unit that is not serving."""
    systemd: Systemd

    def serves(self, unit: str, port: int, state: UnitState | None = None) -> bool: ...

    def wait_serving(self, unit_ports: dict[str, int], timeout: float, *, interval: float = ...,
                     also: Callable[[], bool] | None = None,
                     gone: Callable[[str, str], None] | None = None) -> dict[str, int]: ...


class Flavour(Protocol):
    """An IMAP server flavour (certbot's installer interface, cut to our needs). Stateless:
    nothing is kept between calls; the transaction passes what it knows (which units served,
    what apply did). The transaction drives plan -> validate -> (write) -> apply -> verify,
    and on failure restores the files and applies again."""
    name: str
    units: tuple[str, ...]      # every unit that serves IMAP, in start order
    primary_unit: str           # the unit that listens on settings.port
    secure_unit: str | None     # the unit that listens on settings.ssl_port (993); None: none does
    owned: tuple[str, ...]      # the files it writes (plan's keys): all a recovery may restore

    def unit_ports(self) -> dict[str, int]:
        """{unit: the port it serves}; start/restart wait until each listens."""
        ...

    def current_values(self) -> Values:
        """The four update values now in force (exactly as last requested, if we wrote them)."""
        ...

    def plan(self, values: Values) -> Files:
        """New contents of each file the flavour owns."""
        ...

    def validate(self, files: Files) -> None:
        """Raise ConfigInvalid unless the server accepts the config with these files in place.
        Must not touch the live files."""
        ...

    def preflight(self) -> None:
        """Raise ConfigInvalid, naming the file and line, unless the server would start with
        its live configuration (start and restart ask first: a broken file must not turn a
        routine restart into an outage)."""
        ...

    def apply(self, systemd: Systemd, changed: Sequence[str], serving: Sequence[str]) -> Applied:
        """Make the running server take up the live files (`changed`: the paths just written
        or restored). `serving`: the units that served before the change; an undo passes
        them so that units a failed change took down are brought back too."""
        ...

    def verify(self, listening: Listening, values: Values, applied: Applied) -> None:
        """Raise ActionFailed unless the live files and the running server show `values`
        (`applied`: what apply() did, e.g. the units whose port to wait for)."""
        ...

    def checks(self) -> list[Check]:
        """The flavour's lines of `imapd-ctl check` (config dir writable, validator present)."""
        ...

    def server_version(self) -> str:
        """The installed server's version as it states it ("2.3.19.1"); "" if it cannot tell."""
        ...

    def pools(self, systemd: Systemd) -> tuple[Pool, ...]:
        """The server's own process pools as it reports them (queryCapacity, /metrics); with the
        configured limits for units that are not running."""
        ...


@dataclass(frozen=True)
class Principal:
    name: str
    perms: tuple[str, ...]


class KeyStore(Protocol):
    def authenticate(self, secret: Any, required: str) -> Principal:
        """Who is calling, or raise Unauthorized (no/unknown key) or Forbidden."""
        ...


class Telemetry(Protocol):
    """What the daemon counts for /metrics (adapters.metrics); every method is cheap and never
    raises. The no-op `Untold` stands in where nothing is counted (the CLI, tests)."""

    def action(self, name: str, status: int, seconds: float, controller: str = "imap") -> None: ...
    def change(self, outcome: str) -> None: ...          # "applied" | "rolled_back"
    def lock_wait(self, seconds: float, acquired: bool) -> None: ...
    def bus_reconnect(self) -> None: ...


class Untold:
    """Telemetry that counts nothing."""

    def action(self, name: str, status: int, seconds: float, controller: str = "imap") -> None:
        pass

    def change(self, outcome: str) -> None:
        pass

    def lock_wait(self, seconds: float, acquired: bool) -> None:
        pass

    def bus_reconnect(self) -> None:
        pass


class Audit(Protocol):
    """The audit trail; it fails closed for changes."""

    def begin(self, *, who: str, peer: str, transport: str, controller: str, action: str,
              inputs: dict[str, Any]) -> None:
        """Record a change about to run, durably; raise ChangesRefused if that cannot be done."""
        ...

    def record(self, *, who: str, peer: str, transport: str, controller: str, action: str,
               inputs: dict[str, Any], status: int, payload: Any) -> None:
        """Record the call's result (never raises)."""
        ...
