"""Fakes of the protocols in imapd_ctl.core.protocols, for the fast tests: no root, no D-Bus,
no IMAP server. Every fake systemd, flavour and port probe of tests/unit lives here;
conftest.py only has the fixtures that build them.

FakeSystemd   units with states, MainPIDs and unit-file states, every call recorded, faults
              injected per method (or for every call: `unreachable`), hooks run after a job
              (e.g. "the reload took the server down").
FakeFlavour   owns two files (the plain and the secure values), records every protocol call with
              the live files and the journal step at that moment, faults injected per call;
              apply() reloads its units.
FakePorts     stands in for adapters.ports.unit_listens (psutil): which (MainPID, port) asked;
              and for adapters.ports.connections: `held` {port: (accepted, queued)}.
FakeKeyStore  one good key, counts the authentications.
FakeAudit     keeps the recorded lines as dicts.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from imapd_ctl.adapters.files import read_bytes_or_none
from imapd_ctl.adapters.journal import Journal
from imapd_ctl.core.capacity import Pool
from imapd_ctl.core.errors import ChangesRefused, Unauthorized, Unavailable
from imapd_ctl.core.protocols import Applied, Check, Files, Principal, UnitState, Values

MiB = 1 << 20
DEFAULTS = {"imap_mem_limit": 256 * MiB, "imap_max_connections": 40,
            "imap_secure_mem_limit": 256 * MiB, "imap_secure_max_connections": 40}
PLAIN = ("imap_mem_limit", "imap_max_connections")
SECURE = ("imap_secure_mem_limit", "imap_secure_max_connections")
JOBS = ("start", "stop", "restart", "reload")


class FakeSystemd:
    """systemd with units. `states`: {unit: ActiveState} (units not named are "inactive");
    `loaded`: the units whose unit file exists (default: those named in states).
    Jobs change the state as systemd would (start/restart: active with a new MainPID; stop:
    inactive). Faults: `faults[method] = exc` (raised by every call of that method, or
    `faults[(method, unit)]` for one unit; a callable is called with the unit and may raise),
    `unreachable = True` (every call raises Unavailable, like a dead bus). `after[method]`:
    called with the unit after a job succeeded. `unit_files`: {unit: UnitFileState} (loaded
    units not named are "enabled"); enable/disable change it."""

    def __init__(self, states: dict[str, str] | None = None, loaded: Iterable[str] | None = None,
                 pids: dict[str, int] | None = None):
        self.states = dict(states or {})
        self.loaded = set(self.states if loaded is None else loaded)
        self.pids = dict(pids or {})
        self.calls: list[tuple[Any, ...]] = []     # (method, *args), reads included
        self.faults: dict[Any, Any] = {}
        self.after: dict[str, Callable[[str], None]] = {}
        self.unit_files: dict[str, str] = {}
        self.restarts: dict[str, int] = {}          # NRestarts by unit (0 if not named)
        self.results: dict[str, str] = {}           # Result by unit ("success" if not named)
        self.procs: dict[str, list[tuple[int, str]]] = {}   # (pid, command line) by unit, while active
        self.unreachable = False
        self.version = "252 (fake)"

    @property
    def jobs(self) -> list[tuple[str, str]]:
        """The jobs and unit-file changes asked for, in order."""
        return [c for c in self.calls if c[0] in JOBS + ("enable", "disable")]  # type: ignore[misc]

    def _enter(self, method: str, unit: str = "", *args: Any) -> None:
        self.calls.append((method, unit, *args) if unit else (method, *args))
        if self.unreachable:
            raise Unavailable(f"systemd is unreachable over D-Bus while trying to {method} {unit}".rstrip())
        for key in ((method, unit), method):
            fault = self.faults.get(key)
            if fault is None:
                continue
            if isinstance(fault, BaseException):
                raise fault
            fault(unit)

    # -- reading ---------------------------------------------------------------------
    def ping(self) -> str:
        self._enter("ping")
        return self.version

    def active_state(self, name: str) -> str:
        self._enter("active_state", name)
        return self.states.get(name, "inactive")

    def processes(self, name: str) -> list[tuple[int, str]]:
        self._enter("processes", name)
        return list(self.procs.get(name, [])) if self.states.get(name) == "active" else []

    def control_group(self, name: str) -> str:
        self._enter("control_group", name)
        return f"/system.slice/{name}"

    def main_pid(self, name: str) -> int:
        self._enter("main_pid", name)
        return self.pids.get(name, 0) if self.states.get(name) == "active" else 0

    def unit(self, name: str) -> UnitState:
        self._enter("unit", name)
        loaded = name in self.loaded
        return UnitState(name=name, load_state="loaded" if loaded else "not-found",
                         active_state=self.states.get(name, "inactive"), sub_state="",
                         main_pid=self.pids.get(name, 0),
                         unit_file_state=self.unit_files.get(name, "enabled") if loaded else "",
                         result=self.results.get(name, "success"), n_restarts=self.restarts.get(name, 0))

    def journal_tail(self, name: str, lines: int = 10, since: float | None = None) -> str:
        return "(journal)"

    # -- jobs --------------------------------------------------------------------------
    def _job(self, method: str, name: str, state: str | None) -> None:
        self._enter(method, name)
        if state is not None:
            self.states[name] = state
        if state == "active":
            self.pids[name] = self.pids.get(name, 100) + 1
        hook = self.after.get(method)
        if hook is not None:
            hook(name)

    def start(self, name: str) -> None:
        self._job("start", name, "active")

    def stop(self, name: str) -> None:
        self._job("stop", name, "inactive")

    def restart(self, name: str) -> None:
        self._job("restart", name, "active")

    def reload(self, name: str) -> None:
        self._job("reload", name, None)

    def enable(self, name: str) -> None:
        self._enter("enable", name)
        self.unit_files[name] = "enabled"

    def disable(self, name: str) -> None:
        self._enter("disable", name)
        self.unit_files[name] = "disabled"


class FakeFlavour:
    """Owns two files: `main` (always present, the plain values) and `secure` (present only
    when the secure values differ from the defaults; otherwise planned as None = absent).
    apply() reloads every unit through the systemd it is given (the server takes up the files).
    Faults: validate_error, verify_error, preflight_error, apply_errors {1-based call number: exception}."""

    DEFAULTS = DEFAULTS
    name = "fake"
    units: tuple[str, ...] = ("fake-imapd.service",)
    primary_unit = "fake-imapd.service"
    secure_unit: str | None = "fake-imapd.service"     # like Dovecot: one unit serves 143 and 993

    def __init__(self, main: Any, secure: Any, journal: Journal | None = None):
        self.main, self.secure = os.fspath(main), os.fspath(secure)
        self.owned = (self.main, self.secure)
        self.journal = journal          # to observe the journal step at each call
        self.events: list[tuple[Any, ...]] = []   # ("validate", files) | ("apply", systemd) | ("verify", systemd, values)
        self.applies: list[tuple[list[str], list[str]]] = []   # (changed, serving) of each apply
        self.verified: list[Applied] = []                      # what each verify was told apply did
        self.validate_error: BaseException | None = None
        self.apply_errors: dict[int, BaseException] = {}
        self.verify_error: BaseException | None = None
        self.preflight_error: BaseException | None = None
        self.apply_count = 0
        self.snapshots: list[tuple[str, Files, str | None]] = []   # (event, live files, journal step)

    # -- helpers -----------------------------------------------------------------------
    @staticmethod
    def render(values: Values, keys: Sequence[str]) -> bytes:
        return "".join(f"{k} = {values[k]}\n" for k in keys).encode()

    @staticmethod
    def _parse(data: bytes) -> Values:
        out = {}
        for line in data.decode().splitlines():
            key, _, value = line.partition(" = ")
            out[key] = int(value)
        return out

    def live(self) -> Files:
        return {self.main: read_bytes_or_none(self.main), self.secure: read_bytes_or_none(self.secure)}

    def _snap(self, event: str) -> None:
        entry = self.journal.pending() if self.journal is not None else None
        self.snapshots.append((event, self.live(), entry.step if entry else None))

    def count(self, event: str) -> int:
        return sum(1 for e in self.events if e[0] == event)

    # -- the Flavour protocol ----------------------------------------------------------
    def unit_ports(self) -> dict[str, int]:
        return {"fake-imapd.service": 143}

    def current_values(self) -> Values:
        values = dict(DEFAULTS)
        for path in (self.main, self.secure):
            data = read_bytes_or_none(path)
            if data is not None:
                values.update(self._parse(data))
        return values

    def plan(self, values: Values) -> Files:
        secure = None if all(values[k] == DEFAULTS[k] for k in SECURE) else self.render(values, SECURE)
        return {self.main: self.render(values, PLAIN), self.secure: secure}

    def validate(self, files: Files) -> None:
        self.events.append(("validate", dict(files)))
        self._snap("validate")
        if self.validate_error is not None:
            raise self.validate_error

    def apply(self, systemd: Any, changed: Sequence[str], serving: Sequence[str]) -> Applied:
        self.apply_count += 1
        self.events.append(("apply", systemd))
        self.applies.append((list(changed), list(serving)))
        self._snap("apply")
        exc = self.apply_errors.get(self.apply_count)
        if exc is not None:
            raise exc
        for unit in self.units:
            systemd.reload(unit)
        return Applied(reloaded=self.units)

    def server_version(self) -> str:
        return "0.0-fake"

    def preflight(self) -> None:
        self.events.append(("preflight",))
        if self.preflight_error is not None:
            raise self.preflight_error

    def verify(self, listening: Any, values: Values, applied: Applied) -> None:
        self.events.append(("verify", listening.systemd, dict(values)))
        self.verified.append(applied)
        self._snap("verify")
        if self.verify_error is not None:
            raise self.verify_error

    def checks(self) -> list[Check]:
        return [Check("config writable", True, os.path.dirname(self.main))]

    def pools(self, systemd: Any) -> tuple[Pool, ...]:
        """`pool_list` if set; else one pool serving 143 with imap_max_connections as its
        limit, `processes` running while the unit is active."""
        if self.pool_list is not None:
            return self.pool_list
        active = systemd.active_state(self.primary_unit) == "active"
        return (Pool(name="fake-pool", unit=self.primary_unit, ports=(143,),
                     processes=self.processes if active else 0,
                     process_limit=self.current_values()["imap_max_connections"]),)

    processes = 0
    pool_list: tuple[Pool, ...] | None = None


class FakePorts:
    """adapters.ports.unit_listens: the unit listens iff `listening`, it has a MainPID and the
    port is in `ports` (143; the simap tests add 993). `asked`: the (main_pid, port) of every
    probe."""

    def __init__(self) -> None:
        self.listening = True
        self.ports = {143}
        self.asked: list[tuple[int, int]] = []
        self.held: dict[int, tuple[int, int]] = {}

    def connections(self, port: int) -> tuple[int, int]:
        return self.held.get(port, (0, 0))

    def __call__(self, main_pid: int, port: int, unit: str = "", control_group: object = None) -> bool:
        self.asked.append((main_pid, port))
        return self.listening and main_pid > 0 and port in self.ports


class FakeKeyStore:
    """Knows one key, `good`, held by "panel" with whatever permission is required."""

    def __init__(self, good: str = "good-key") -> None:
        self.good = good
        self.asked = 0

    def authenticate(self, secret: Any, required: str) -> Principal:
        self.asked += 1
        if secret != self.good:
            raise Unauthorized("unknown API key")
        return Principal("panel", (required,))


class FakeAudit:
    """Keeps the result lines; `begun` the changes announced; `broken` refuses them."""

    def __init__(self, broken: bool = False) -> None:
        self.lines: list[dict[str, Any]] = []
        self.begun: list[dict[str, Any]] = []
        self.broken = broken

    def begin(self, **line: Any) -> None:
        if self.broken:
            raise ChangesRefused(f"{line['action']} refused: the audit log cannot be written")
        self.begun.append(line)

    def record(self, **line: Any) -> None:
        self.lines.append(line)


if TYPE_CHECKING:     # mypy: the fakes satisfy the protocols
    from imapd_ctl.core.protocols import Audit, Flavour, KeyStore, Systemd
    _systemd: Systemd = FakeSystemd()
    _flavour: Flavour = FakeFlavour("main", "secure")
    _keys: KeyStore = FakeKeyStore()
    _audit: Audit = FakeAudit()
