"""The connection to systemd's manager, through Gio's GDBus (PyGObject): signals handled as
GDBus reads them, and one GLib main loop in a thread of its own for the work they schedule.

Why Gio and not pydbus (which is built on it): pydbus delivers signals only on the process's
default main context, which nothing runs in a server (the old code pumped it while waiting
for its own jobs, so every worker queued JobRemoved for every job on the host), and it cannot
subscribe without adding its own broad match rule. Here a message filter sees each signal as
it arrives, each connection has a private main context run by its own thread for follow-up
reads, and the bus daemon is asked (AddMatch) only for the signals of the units we watch: JobRemoved with arg2 = the unit, PropertiesChanged on the unit's path,
and the manager's UnitFilesChanged/Reloading. Other units' signals never reach this process.

Opened lazily and per process, dropped when it fails or closes so that the next call
reconnects. A D-Bus connection made before fork() hangs every call in the child, so gunicorn's
master must never touch it; one inherited across fork() is forgotten, never closed.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from typing import Any, Callable

from imapd_ctl.adapters.quickcalls import pid
from imapd_ctl.adapters.systemd.errors import map_error
from imapd_ctl.core.errors import Unavailable

log = logging.getLogger(__name__)

BUS_NAME = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
CALL_TIMEOUT_MS = 25_000

# (path, interface, member, args) of one signal, delivered on the loop thread.
SignalHandler = Callable[[str, str, str, tuple], None]


class Link:
    """One live connection: a GDBusConnection, its main context and the thread running it."""

    def __init__(self, address: str | None, on_signal: SignalHandler, on_closed: Callable[[], None]):
        from gi.repository import Gio, GLib
        self._glib = GLib
        self.context = GLib.MainContext.new()
        address = address or Gio.dbus_address_get_for_bus_sync(Gio.BusType.SYSTEM, None)
        self.context.push_thread_default()   # signals and "closed" are delivered on this context
        try:
            flags = (Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
                     | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION)
            self.con = Gio.DBusConnection.new_for_address_sync(address, flags, None, None)
            # Never Gio's "exit-on-close": GLib would SIGTERM the process when the bus goes away.
            self.con.set_exit_on_close(False)
            # Known from GDBus's "closed" signal, not asked of it on every read: a GObject
            # call releases the GIL, and each release costs a busy worker two thread switches.
            self.closed = False
            self.con.connect("closed", lambda *_: self._on_closed(on_closed))
            # Signals are handled as GDBus reads them, on its worker thread, before anything
            # else sees the connection again: a request that comes after systemd announced a
            # change finds it applied (no hop to a main loop that may lag under load). The
            # handlers only update memory and schedule work on the loop; they never call.
            self._signal_type = Gio.DBusMessageType.SIGNAL
            self._on_signal = on_signal
            self._filter_id = self.con.add_filter(self._filter)
        finally:
            self.context.pop_thread_default()
        self.loop = GLib.MainLoop.new(self.context, False)
        self.thread = threading.Thread(target=self._run, name="dbus-signals", daemon=True)
        self.thread.start()
        self._pid = pid()
        _open.add(self)

    def _filter(self, _con: Any, message: Any, incoming: bool) -> Any:
        try:
            if incoming and message.get_message_type() == self._signal_type:
                body = message.get_body()
                self._on_signal(message.get_path() or "", message.get_interface() or "",
                                message.get_member() or "", tuple(body.unpack()) if body else ())
        except Exception:  # noqa: BLE001 - never break the connection's reader
            log.exception("handling a D-Bus signal failed")
        return message

    def _run(self) -> None:
        self.context.push_thread_default()
        try:
            self.loop.run()
        finally:
            self.context.pop_thread_default()

    def _on_closed(self, on_closed: Callable[[], None]) -> None:
        self.closed = True
        on_closed()

    def call(self, dest: str, path: str, iface: str, method: str, signature: str | None,
             args: tuple, reply: str | None) -> tuple:
        GLib = self._glib
        params = GLib.Variant(signature, args) if signature else None
        reply_type = GLib.VariantType.new(reply) if reply else None
        result = self.con.call_sync(dest, path, iface, method, params, reply_type, 0,
                                    CALL_TIMEOUT_MS, None)
        return tuple(result.unpack()) if result is not None else ()

    def idle(self, fn: Callable[[], None]) -> None:
        """Run fn on the loop thread once the events queued before it are handled."""
        def once(*_: Any) -> bool:
            fn()
            return False    # the source is removed

        source = self._glib.idle_source_new()
        source.set_callback(once)
        source.attach(self.context)

    def add_match(self, rule: str) -> None:
        self.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                  "AddMatch", "(s)", (rule,), None)

    def close(self) -> None:
        """Stop the filter, the loop and the connection (in the process that made them)."""
        self.closed = True
        _open.discard(self)
        self.loop.quit()
        try:
            self.con.remove_filter(self._filter_id)   # GDBus's thread stops calling into Python
            if not self.con.is_closed():
                self.con.close_sync(None)
        except Exception:  # noqa: BLE001 - it is being thrown away
            pass


# Links of this process still open. At exit they are closed before Python is torn down:
# GDBus's own thread runs the filter for every message, and calling it into a finalizing
# interpreter crashed `imapd-ctl check` once (SIGSEGV after its output, in
# g_dbus_message_to_blob, Debian 12 CI).
_open: "weakref.WeakSet[Link]" = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for link in list(_open):
        if link._pid == pid():        # one inherited across fork() is the parent's
            link.close()


def rule(member: str, *, iface: str = MANAGER_IFACE, path: str = MANAGER_PATH, **args: str) -> str:
    extra = "".join(f",{k}='{v}'" for k, v in args.items())
    return (f"type='signal',sender='{BUS_NAME}',path='{path}',interface='{iface}',"
            f"member='{member}'{extra}")


class Bus:
    """One process's connection to the manager. `opener(address, on_signal, on_closed)` makes
    a Link; the fast tests pass a fake one. `listeners` get every signal (on the loop thread)
    and `on_connect` is called with each new link (before it is used)."""

    def __init__(self, address: str | None = None, opener: Callable[..., Any] = Link,
                 on_reconnect: Callable[[], None] = lambda: None):
        self.address = address
        self.opener = opener
        self.on_reconnect = on_reconnect      # told each connection after this process's first
        self._connected_in: int | None = None  # the pid that made a connection before
        self.unit_paths: dict[str, str] = {}   # unit name -> object path (per connection)
        self.listeners: list[SignalHandler] = []
        self.on_connect: list[Callable[[], None]] = []
        self.on_drop: list[Callable[[], None]] = []
        self._pid: int | None = None
        self._link: Any = None
        self._lock = threading.RLock()

    @property
    def closed(self) -> bool:
        link = self._link
        return link is None or self._pid != pid() or link.closed

    def drop(self, link: Any = None) -> None:
        """Forget the connection (it failed or the bus went away); the next call reconnects."""
        with self._lock:
            if link is not None and link is not self._link:
                return
            old, self._link = self._link, None
            self.unit_paths.clear()
            for fn in self.on_drop:
                fn()
        if old is not None and self._pid == pid():
            old.close()

    def link(self) -> Any:
        """The live link, connecting (again) when there is none."""
        link = self._link
        if link is not None and self._pid == pid() and not link.closed:
            return link
        with self._lock:
            if self._link is not None and self._pid == pid() and not self._link.closed:
                return self._link
            if self._pid == pid():
                self.drop()
            else:   # inherited across fork(): unusable here, and must not be closed from here
                self._link = None
                self.unit_paths.clear()
            self._pid = pid()
            holder: list[Any] = []
            try:
                link = self.opener(self.address, self._signal,
                                   lambda: self._closed(holder[0] if holder else None))
                holder.append(link)
                self._link = link
                link.add_match(rule("UnitFilesChanged"))
                link.add_match(rule("Reloading"))
                # systemd only emits signals once some client subscribed.
                link.call(BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "Subscribe", None, (), None)
                for fn in self.on_connect:
                    fn()
            except Exception as exc:  # GLib.Error or a connect failure
                self._link = None
                if holder:
                    holder[0].close()
                raise map_error(exc, "connect to the system bus") from None
            if self._connected_in == self._pid:
                self.on_reconnect()
            self._connected_in = self._pid
            return link

    def _closed(self, link: Any) -> None:
        log.warning("the D-Bus connection closed; the next call reconnects")
        self.drop(link)

    def _signal(self, path: str, iface: str, member: str, args: tuple) -> None:
        for fn in list(self.listeners):
            try:
                fn(path, iface, member, args)
            except Exception:  # noqa: BLE001 - the loop must live on
                log.exception("handling the D-Bus signal %s.%s failed", iface, member)

    def call(self, what: str, path: str, iface: str, method: str, signature: str | None = None,
             args: tuple = (), reply: str | None = None) -> tuple:
        """One method call; a failure that means "unreachable" drops the connection."""
        link = self.link()
        try:
            return link.call(BUS_NAME, path, iface, method, signature, args, reply)
        except Exception as exc:
            raise self._failed(exc, what, link) from None

    def manager_call(self, what: str, method: str, signature: str | None = None,
                     args: tuple = (), reply: str | None = None) -> tuple:
        return self.call(what, MANAGER_PATH, MANAGER_IFACE, method, signature, args, reply)

    def idle(self, fn: Callable[[], None]) -> None:
        link = self._link
        if link is not None and self._pid == pid():
            link.idle(fn)

    def add_match(self, what: str, match: str) -> None:
        link = self.link()
        try:
            link.add_match(match)
        except Exception as exc:
            raise self._failed(exc, what, link) from None

    def _failed(self, exc: Exception, what: str, link: Any) -> Exception:
        err = map_error(exc, what)
        if isinstance(err, Unavailable):
            self.drop(link)
        return err

    def unit_path(self, name: str) -> str:
        path = self.unit_paths.get(name)
        if path is None:
            path = str(self.manager_call(f"load {name}", "LoadUnit", "(s)", (name,), "(o)")[0])
            self.unit_paths[name] = path
        return path

    def get(self, path: str, iface: str, prop: str, what: str) -> Any:
        return self.call(what, path, PROPS_IFACE, "Get", "(ss)", (iface, prop), "(v)")[0]

    def get_all(self, path: str, iface: str, what: str) -> dict[str, Any]:
        return dict(self.call(what, path, PROPS_IFACE, "GetAll", "(s)", (iface,), "(a{sv})")[0])
