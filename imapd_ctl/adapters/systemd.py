"""systemd over D-Bus: the only module that imports pydbus/gi.

A thin adapter in the spirit of pystemd: unit state, jobs whose result we wait for, unit file
enable/disable, and D-Bus errors mapped to the typed errors of imapd_ctl.core.errors.

The bus is opened lazily and per process: a D-Bus connection made before fork() hangs every
call in the child, so gunicorn's master must never touch it.
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass

from imapd_ctl.core.errors import ActionFailed, ApiError, Unavailable

log = logging.getLogger(__name__)

BUS_NAME = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
CALL_TIMEOUT_MS = 25_000


class NoSuchUnit(ActionFailed):
    pass


class JobFailed(ActionFailed):
    pass


@dataclass(frozen=True)
class UnitState:
    name: str
    load_state: str        # loaded | not-found | masked | ...
    active_state: str      # active | inactive | failed | activating | ...
    sub_state: str
    main_pid: int
    unit_file_state: str   # enabled | disabled | static | ...
    result: str            # the service's last result: success | exit-code | ...

    @property
    def active(self) -> bool:
        return self.active_state == "active"


def _map_error(exc: Exception, what: str) -> ApiError:
    """Turn a GLib/D-Bus error into a typed error a person can act on."""
    from gi.repository import Gio, GLib
    if not isinstance(exc, GLib.Error):
        return Unavailable(f"systemd is unreachable over D-Bus while trying to {what}: {exc}")
    name = Gio.DBusError.get_remote_error(exc) or ""
    message = Gio.DBusError.strip_remote_error(exc) if name else exc.message
    if name in ("org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.DBus.Error.FileNotFound"):
        return NoSuchUnit(f"cannot {what}: {message}")
    if name.endswith(".AccessDenied") or name.endswith(".InteractiveAuthorizationRequired"):
        return ActionFailed(f"systemd refused to {what}: permission denied ({message})")
    if name.startswith("org.freedesktop.systemd1."):
        return ActionFailed(f"systemd could not {what}: {message}")
    # Anything else (no bus, bus gone, systemd not answering, timeouts) is "unreachable".
    return Unavailable(f"systemd is unreachable over D-Bus while trying to {what}: {message or name}")


class Systemd:
    def __init__(self, bus_address: str | None = None, job_timeout: float = 90.0):
        self.bus_address = bus_address or os.environ.get("IMAPD_CTL_SYSTEM_BUS")
        self.job_timeout = job_timeout
        self._pid = None
        self._bus = None
        self._manager = None
        self._removed: dict[str, str] = {}   # job path -> result, filled by JobRemoved
        self._unit_paths: dict[str, str] = {}

    # -- connection ------------------------------------------------------------
    def _open(self):
        """A private connection to the system bus, never Gio's shared singleton: after the bus
        went away (dbus stopped and started again) g_bus_get_sync kept handing a worker the
        closed singleton, so it answered 503 until the daemon was restarted; and the singleton
        is "exit-on-close": GLib raise(SIGTERM)s the process once the main context runs after
        the bus died (our job waits run it). tests/test_e2e_faults.py covers both."""
        import pydbus
        from gi.repository import Gio
        address = self.bus_address or Gio.dbus_address_get_for_bus_sync(Gio.BusType.SYSTEM, None)
        bus = pydbus.connect(address)
        bus.con.set_exit_on_close(False)
        return bus

    def _drop(self) -> None:
        """Forget the connection (it failed or the bus went away); the next call reconnects."""
        bus, self._bus, self._manager = self._bus, None, None
        self._unit_paths.clear()
        if bus is not None:
            try:
                if not bus.con.is_closed():
                    bus.con.close_sync(None)
            except Exception:  # noqa: BLE001 - it is being thrown away
                pass

    def _connect(self):
        if self._bus is not None and self._pid == os.getpid() and not self._bus.con.is_closed():
            return self._manager
        if self._pid == os.getpid():
            self._drop()
        else:  # inherited across fork(): unusable here, and must not be closed from this side
            self._bus = self._manager = None
            self._unit_paths.clear()
        bus = None
        try:
            bus = self._open()
            manager = bus.get(BUS_NAME, MANAGER_PATH)
            # systemd only emits JobRemoved to clients that subscribed.
            manager.Subscribe()
            manager.JobRemoved.connect(self._on_job_removed)
        except Exception as exc:  # GLib.Error or a connect failure
            if bus is not None:
                try:
                    bus.con.close_sync(None)
                except Exception:  # noqa: BLE001
                    pass
            raise _map_error(exc, "connect to the system bus") from None
        self._bus, self._manager, self._pid = bus, manager, os.getpid()
        return manager

    def _on_job_removed(self, _id, job, _unit, result):
        self._removed[job] = result
        if len(self._removed) > 256:  # jobs of others that nobody waits for
            for stale in list(self._removed)[:128]:
                self._removed.pop(stale, None)

    def _call(self, what: str, fn, *args):
        manager = self._connect()
        try:
            return fn(manager)(*args)
        except Exception as exc:
            err = _map_error(exc, what)
            if isinstance(err, Unavailable):
                self._drop()  # reconnect on the next call
            raise err from None

    def _unit_path(self, name: str) -> str:
        path = self._unit_paths.get(name)
        if path is None:
            path = self._call(f"load {name}", lambda m: m.LoadUnit, name)
            self._unit_paths[name] = path
        return path

    def _get(self, path: str, iface: str, prop: str, what: str):
        """One property read through Gio directly: no introspection round trip."""
        from gi.repository import GLib
        self._connect()
        try:
            reply = self._bus.con.call_sync(
                BUS_NAME, path, "org.freedesktop.DBus.Properties", "Get",
                GLib.Variant("(ss)", (iface, prop)), GLib.VariantType.new("(v)"),
                0, CALL_TIMEOUT_MS, None)
        except Exception as exc:
            err = _map_error(exc, what)
            if isinstance(err, Unavailable):
                self._drop()
            raise err from None
        return reply.unpack()[0]

    # -- reading ---------------------------------------------------------------
    def ping(self) -> str:
        """Raise Unavailable if systemd cannot be reached; return its version."""
        self._connect()
        return str(self._get(MANAGER_PATH, "org.freedesktop.systemd1.Manager", "Version", "read the version"))

    def active_state(self, name: str) -> str:
        return self._get(self._unit_path(name), UNIT_IFACE, "ActiveState", f"read the state of {name}")

    def main_pid(self, name: str) -> int:
        return int(self._get(self._unit_path(name), SERVICE_IFACE, "MainPID", f"read the MainPID of {name}"))

    def unit(self, name: str) -> UnitState:
        path = self._unit_path(name)
        get = lambda iface, prop: self._get(path, iface, prop, f"read the state of {name}")  # noqa: E731
        load_state = get(UNIT_IFACE, "LoadState")
        service = name.endswith(".service") and load_state == "loaded"
        return UnitState(
            name=name, load_state=load_state,
            active_state=get(UNIT_IFACE, "ActiveState"), sub_state=get(UNIT_IFACE, "SubState"),
            main_pid=int(get(SERVICE_IFACE, "MainPID")) if service else 0,
            unit_file_state=get(UNIT_IFACE, "UnitFileState"),
            result=get(SERVICE_IFACE, "Result") if service else "",
        )

    def journal_tail(self, name: str, lines: int = 10, since: float | None = None) -> str:
        argv = ["journalctl", "--no-pager", "-o", "cat", "-n", str(lines), "-u", name]
        if since is not None:
            argv += ["--since", f"@{since:.6f}"]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"(journal unavailable: {exc})"
        return out.strip()

    def _failure_tail(self, name: str, since: float) -> str:
        """The unit's journal lines since the job began. journald may lag a little behind
        systemd's job result, so wait (bounded) until systemd's own "Failed" line is in."""
        deadline = time.monotonic() + 3
        while True:
            tail = self.journal_tail(name, since=since)
            if "Failed" in tail or "failed" in tail or time.monotonic() > deadline:
                return tail
            time.sleep(0.1)

    # -- jobs --------------------------------------------------------------------
    def _job(self, verb: str, method: str, name: str, *, since: float | None = None) -> None:
        """Queue a job and wait for JobRemoved; raise JobFailed with systemd's result and
        the unit's last journal lines unless the result is 'done'."""
        from gi.repository import GLib
        started = time.time()
        job = self._call(f"{verb} {name}", lambda m: getattr(m, method), name, "replace")
        deadline = time.monotonic() + self.job_timeout
        context = GLib.MainContext.default()
        # Signals are only delivered while the main context runs; pump it until ours arrives.
        while job not in self._removed:
            if time.monotonic() > deadline:
                raise JobFailed(f"{verb} {name}: no result from systemd after {self.job_timeout:.0f} s "
                                f"(job {job} still queued or running)")
            if not context.pending():
                time.sleep(0.005)
            context.iteration(False)
            if self._bus is None or self._bus.con.is_closed():
                self._drop()
                raise Unavailable(f"{verb} {name}: lost the D-Bus connection while waiting for the job")
        result = self._removed.pop(job)
        log.info("systemd job %s %s: %s (%.2f s)", verb, name, result, time.time() - started)
        if result == "done":
            return
        if since is None and method in ("StartUnit", "RestartUnit") and self._unit_result(name) == "start-limit-hit":
            # systemd's crash-loop brake also stops an operator's explicit request after a few
            # quick restarts; like `systemctl reset-failed`, clear it once and try again.
            log.warning("%s hit its start limit; resetting it and retrying %s once", name, verb)
            self._call(f"reset the start limit of {name}", lambda m: m.ResetFailedUnit, name)
            return self._job(verb, method, name, since=started)
        tail = self._failure_tail(name, since or started)
        raise JobFailed(f"{verb} {name} failed: systemd job result '{result}'"
                        + (f"; last journal lines of {name}:\n{tail}" if tail else ""))

    def _unit_result(self, name: str) -> str:
        return str(self._get(self._unit_path(name), SERVICE_IFACE, "Result", f"read the result of {name}"))

    def start(self, name: str) -> None:
        self._job("start", "StartUnit", name)

    def stop(self, name: str) -> None:
        self._job("stop", "StopUnit", name)

    def restart(self, name: str) -> None:
        self._job("restart", "RestartUnit", name)

    def reload(self, name: str) -> None:
        self._job("reload", "ReloadUnit", name)

    # -- unit files ----------------------------------------------------------------
    def enable(self, name: str) -> None:
        # (files, runtime=False, force=True); then Reload so the manager sees the change.
        self._call(f"enable {name}", lambda m: m.EnableUnitFiles, [name], False, True)
        self._call("reload the systemd manager", lambda m: m.Reload)

    def disable(self, name: str) -> None:
        self._call(f"disable {name}", lambda m: m.DisableUnitFiles, [name], False)
        self._call("reload the systemd manager", lambda m: m.Reload)
