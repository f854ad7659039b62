"""The connection to systemd's manager: opened lazily and per process, dropped when it fails
so that the next call reconnects, and the JobRemoved signals it delivers.

A D-Bus connection made before fork() hangs every call in the child, so gunicorn's master must
never touch it; one inherited across fork() is forgotten, never closed from the child's side.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

from imapd_ctl.adapters.systemd.errors import map_error
from imapd_ctl.core.errors import Unavailable

log = logging.getLogger(__name__)

BUS_NAME = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
CALL_TIMEOUT_MS = 25_000


def open_private(address: str | None) -> Any:
    """A private connection to the system bus, never Gio's shared singleton: after the bus
    went away (dbus stopped and started again) g_bus_get_sync kept handing a worker the
    closed singleton, so it answered 503 until the daemon was restarted; and the singleton
    is "exit-on-close": GLib raise(SIGTERM)s the process once the main context runs after
    the bus died (our job waits run it). tests/e2e/test_e2e_faults.py covers both."""
    import pydbus
    from gi.repository import Gio
    bus = pydbus.connect(address or Gio.dbus_address_get_for_bus_sync(Gio.BusType.SYSTEM, None))
    bus.con.set_exit_on_close(False)
    return bus


def _close(bus: Any) -> None:
    try:
        if not bus.con.is_closed():
            bus.con.close_sync(None)
    except Exception:  # noqa: BLE001 - it is being thrown away
        pass


class Bus:
    """One process's connection to the manager. `opener(address)` makes a connection
    (a pydbus bus: .get(), .con); the fast tests pass a fake one."""

    def __init__(self, address: str | None = None, opener: Callable[[str | None], Any] = open_private,
                 on_reconnect: Callable[[], None] = lambda: None):
        self.address = address
        self.opener = opener
        self.on_reconnect = on_reconnect      # told each connection after this process's first
        self._connected_in: int | None = None  # the pid that made a connection before
        self.removed: dict[str, str] = {}     # job path -> result, filled by JobRemoved
        self.unit_paths: dict[str, str] = {}  # unit name -> object path (per connection)
        self._pid: int | None = None
        self._bus: Any = None
        self._manager: Any = None

    @property
    def closed(self) -> bool:
        return self._bus is None or self._bus.con.is_closed()

    def drop(self) -> None:
        """Forget the connection (it failed or the bus went away); the next call reconnects."""
        bus, self._bus, self._manager = self._bus, None, None
        self.unit_paths.clear()
        if bus is not None:
            _close(bus)

    def manager(self) -> Any:
        """The manager proxy, connecting (again) when there is no usable connection."""
        if self._bus is not None and self._pid == os.getpid() and not self._bus.con.is_closed():
            return self._manager
        if self._pid == os.getpid():
            self.drop()
        else:  # inherited across fork(): unusable here, and must not be closed from this side
            self._bus = self._manager = None
            self.unit_paths.clear()
        bus = None
        try:
            bus = self.opener(self.address)
            manager = bus.get(BUS_NAME, MANAGER_PATH)
            # systemd only emits JobRemoved to clients that subscribed.
            manager.Subscribe()
            manager.JobRemoved.connect(self._on_job_removed)
        except Exception as exc:  # GLib.Error or a connect failure
            if bus is not None:
                _close(bus)
            raise map_error(exc, "connect to the system bus") from None
        self._bus, self._manager, self._pid = bus, manager, os.getpid()
        if self._connected_in == self._pid:
            self.on_reconnect()
        self._connected_in = self._pid
        return manager

    def _on_job_removed(self, _id: int, job: str, _unit: str, result: str) -> None:
        self.removed[job] = result
        if len(self.removed) > 256:  # jobs of others that nobody waits for
            for stale in list(self.removed)[:128]:
                self.removed.pop(stale, None)

    def call(self, what: str, fn: Callable[[Any], Callable[..., Any]], *args: Any) -> Any:
        """fn(manager)(*args); a failure that means "unreachable" drops the connection."""
        manager = self.manager()
        try:
            return fn(manager)(*args)
        except Exception as exc:
            raise self._failed(exc, what) from None

    def _failed(self, exc: Exception, what: str) -> Exception:
        """The typed error for a failed call; "unreachable" drops the connection, so the next
        call reconnects."""
        err = map_error(exc, what)
        if isinstance(err, Unavailable):
            self.drop()
        return err

    def unit_path(self, name: str) -> str:
        path = self.unit_paths.get(name)
        if path is None:
            path = self.call(f"load {name}", lambda m: m.LoadUnit, name)
            self.unit_paths[name] = path
        return path

    def get(self, path: str, iface: str, prop: str, what: str) -> Any:
        """One property read through Gio directly: no introspection round trip."""
        from gi.repository import GLib
        self.manager()
        try:
            reply = self._bus.con.call_sync(
                BUS_NAME, path, "org.freedesktop.DBus.Properties", "Get",
                GLib.Variant("(ss)", (iface, prop)), GLib.VariantType.new("(v)"),
                0, CALL_TIMEOUT_MS, None)
        except Exception as exc:
            raise self._failed(exc, what) from None
        return reply.unpack()[0]

    def pump(self) -> None:
        """Deliver the signals that arrived (they only are while the main context runs)."""
        from gi.repository import GLib
        context = GLib.MainContext.default()
        while context.pending():
            context.iteration(False)
