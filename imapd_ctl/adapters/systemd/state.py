"""Unit state pushed by systemd: what the IMAP units are now, kept in memory.

A unit is watched from the first time it is asked for: the bus daemon is asked for its
PropertiesChanged and its JobRemoved signals, then its properties are read. The values a
PropertiesChanged carries are applied as GDBus reads the signal (systemd sends them before
the JobRemoved of the job that caused them, so a job's caller sees the state the job left);
invalidated properties, unit-file changes and the manager's reloads make the loop read the
unit again (one GetAll per interface, once per burst). Reads take the latest snapshot: no
D-Bus round trip.

Races: reads and writes of a unit's snapshot are one reference swap; all refreshes of a unit
are serialised, so the last stored is the freshest. When the connection drops, everything
is forgotten: the next read reconnects and reads afresh, or answers 503, never stale.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from typing import Any

from imapd_ctl.adapters.systemd.bus import MANAGER_IFACE, MANAGER_PATH, PROPS_IFACE, Bus, rule
from imapd_ctl.core.errors import Unavailable
from imapd_ctl.core.protocols import UnitState

log = logging.getLogger(__name__)

UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
MAX_RESULTS = 64        # JobRemoved results kept for waiters (only our units' jobs arrive)
# D-Bus property -> UnitState field, and how its value is read.
FIELDS = {"ActiveState": "active_state", "SubState": "sub_state", "LoadState": "load_state",
          "UnitFileState": "unit_file_state", "MainPID": "main_pid", "Result": "result",
          "NRestarts": "n_restarts"}
CASTS: dict[str, Any] = {k: (int if k in ("MainPID", "NRestarts") else str) for k in FIELDS}


class UnitCache:
    def __init__(self, bus: Bus):
        self.bus = bus
        self.units: dict[str, UnitState] = {}       # name -> latest snapshot
        self.paths: dict[str, str] = {}             # object path -> unit name
        self.results: OrderedDict[str, str] = OrderedDict()   # job path -> result
        self.jobs = threading.Condition()
        self._refresh_locks: dict[str, threading.Lock] = {}
        self._watch_lock = threading.Lock()
        self._dirty: set[str] = set()
        self.versions: dict[str, int] = {}          # name -> signals applied to it so far
        # Re-reads asked for (a signal without values, unit files changed) and those done: a
        # read while one is owed reads now, so an announced change is seen by the next request.
        self.owed: dict[str, int] = {}
        self.paid: dict[str, int] = {}
        self.generation = 0                         # bumped on every drop
        bus.listeners.append(self._signal)
        bus.on_drop.append(self._forget)

    # -- reading -------------------------------------------------------------------
    def get(self, name: str) -> UnitState:
        """The unit's state now: from memory once watched (connecting first if need be)."""
        self.bus.link()          # raises Unavailable with the bus down; reconnects if dropped
        state = self.units.get(name)
        if state is None:
            return self.watch(name)
        if self.paid.get(name, 0) < self.owed.get(name, 0):
            path = self.bus.unit_paths.get(name)
            if path is not None:
                state = self.refresh(name, path)
        return state

    def watch(self, name: str) -> UnitState:
        with self._watch_lock:
            state = self.units.get(name)
            if state is not None:
                return state
            generation = self.generation
            path = self.bus.unit_path(name)
            what = f"watch {name}"
            # Signals first, then the read: nothing that happens in between is missed.
            self.bus.add_match(what, rule("PropertiesChanged", iface=PROPS_IFACE, path=path))
            self.bus.add_match(what, rule("JobRemoved", arg2=name))
            self.paths[path] = name
            if generation != self.generation:   # the rules went to a connection since dropped
                raise Unavailable(f"systemd is unreachable over D-Bus while trying to {what}: "
                                  "the connection was lost")
            state = self.refresh(name, path)
            # A signal sent before that read may be handled after it: read once more after
            # the signals queued by now (on the loop thread), so the last word is a read.
            self._refresh_soon(name)
            return state

    def refresh(self, name: str, path: str) -> UnitState:
        lock = self._refresh_locks.setdefault(name, threading.Lock())
        with lock:
            generation = self.generation
            seen = self.versions.get(name, 0)
            owed = self.owed.get(name, 0)
            what = f"read the state of {name}"
            unit = self.bus.get_all(path, UNIT_IFACE, what)
            load_state = str(unit.get("LoadState", ""))
            service: dict[str, Any] = {}
            if name.endswith(".service") and load_state == "loaded":
                service = self.bus.get_all(path, SERVICE_IFACE, what)
            state = UnitState(
                name=name, load_state=load_state,
                active_state=str(unit.get("ActiveState", "")), sub_state=str(unit.get("SubState", "")),
                main_pid=int(service.get("MainPID", 0)),
                unit_file_state=str(unit.get("UnitFileState", "")),
                result=str(service.get("Result", "")),
                n_restarts=int(service.get("NRestarts", 0)),
            )
            if generation != self.generation:   # read through a connection since dropped
                return state
            if name in self.units and self.versions.get(name, 0) != seen:
                # A signal was applied while this read was under way: it may be newer than
                # the read, which must not overwrite it; read once more instead.
                self._refresh_soon(name)
                return self.units[name]
            self.units[name] = state
            self.paid[name] = max(self.paid.get(name, 0), owed)
            return state

    # -- signals (on GDBus's reader thread: memory only, nothing that calls) ------------
    def _signal(self, path: str, iface: str, member: str, args: tuple) -> None:
        if member == "PropertiesChanged" and iface == PROPS_IFACE:
            name = self.paths.get(path)
            state = self.units.get(name) if name is not None else None
            if name is None or state is None:
                return
            _iface, changed, invalidated = args
            values = {FIELDS[k]: CASTS[k](v) for k, v in changed.items() if k in FIELDS}
            self.versions[name] = self.versions.get(name, 0) + 1
            if values:      # systemd sends the new values: applied at once, no round trip
                self.units[name] = dataclasses.replace(state, **values)
            if any(k in FIELDS for k in invalidated):
                self._refresh_soon(name)
        elif member == "JobRemoved" and iface == MANAGER_IFACE and path == MANAGER_PATH:
            _id, job, _unit, result = args
            # systemd sends a unit's PropertiesChanged before its job's JobRemoved: the waiter
            # woken here sees the state the job left.
            with self.jobs:
                self.results[job] = result
                while len(self.results) > MAX_RESULTS:
                    self.results.popitem(last=False)
                self.jobs.notify_all()
        elif member in ("UnitFilesChanged", "Reloading") and iface == MANAGER_IFACE:
            for name in list(self.units):       # UnitFileState has no change signal
                self._refresh_soon(name)

    def _refresh_soon(self, name: str) -> None:
        """Read the unit again once the signals already queued are handled (one read per
        burst), on the loop thread."""
        self.owed[name] = self.owed.get(name, 0) + 1
        if name in self._dirty:
            return
        self._dirty.add(name)
        self.bus.idle(lambda: self._refresh_queued(name))

    def _refresh_queued(self, name: str) -> None:
        self._dirty.discard(name)
        path = self.bus.unit_paths.get(name)
        if path is None or name not in self.units:
            return
        try:
            self.refresh(name, path)
        except Exception as exc:  # noqa: BLE001 - unreachable: the bus dropped, reads say 503
            log.warning("could not read the state of %s after a signal: %s", name, exc)
            self.units.pop(name, None)

    def _forget(self) -> None:
        self.generation += 1
        self.units.clear()
        self.paths.clear()
        with self.jobs:
            self.jobs.notify_all()   # waiters see the bus closed

    # -- jobs --------------------------------------------------------------------------
    def wait_job(self, job: str, timeout: float) -> str | None:
        """The job's result, None after `timeout` seconds; raises nothing (the caller checks
        the bus when None comes back early)."""
        with self.jobs:
            self.jobs.wait_for(lambda: job in self.results or self.bus.closed, timeout)
            return self.results.pop(job, None)
