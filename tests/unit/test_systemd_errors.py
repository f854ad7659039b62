"""The systemd adapter without systemd: D-Bus errors (real GLib.Error objects) mapped to typed
errors, and the connection's drop-and-reconnect logic with a fake pydbus connection."""
import os

import pytest
from gi.repository import Gio, GLib

from imapd_ctl.adapters.systemd import JobFailed, NoSuchUnit, Systemd, map_error
from imapd_ctl.adapters.systemd import jobs
from imapd_ctl.core.errors import ActionFailed, Unavailable


def dbus_error(name, message):
    return Gio.DBusError.new_for_dbus_error(name, message)


# --- map_error ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.DBus.Error.FileNotFound"])
def test_no_such_unit(name):
    err = map_error(dbus_error(name, "Unit nope.service not found."), "load nope.service")
    assert type(err) is NoSuchUnit and isinstance(err, ActionFailed) and err.status == 500
    assert err.message == "cannot load nope.service: Unit nope.service not found."


@pytest.mark.parametrize("name", ["org.freedesktop.DBus.Error.AccessDenied",
                                  "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"])
def test_access_denied_is_permission_denied(name):
    err = map_error(dbus_error(name, "Access denied"), "restart dovecot.service")
    assert type(err) is ActionFailed and err.status == 500
    assert err.message == "systemd refused to restart dovecot.service: permission denied (Access denied)"


def test_other_systemd_errors_are_action_failed():
    err = map_error(dbus_error("org.freedesktop.systemd1.UnitMasked", "Unit dovecot.service is masked."),
                    "start dovecot.service")
    assert type(err) is ActionFailed and err.status == 500
    assert err.message == "systemd could not start dovecot.service: Unit dovecot.service is masked."


@pytest.mark.parametrize("error", [
    dbus_error("org.freedesktop.DBus.Error.NoReply", "Did not receive a reply"),
    dbus_error("org.freedesktop.DBus.Error.ServiceUnknown", "The name is not activatable"),
    GLib.Error("Connection is closed"),                    # no D-Bus error name at all
    ConnectionRefusedError("connect: Connection refused"),  # not a GLib error
], ids=["NoReply", "ServiceUnknown", "plain-GLib", "OSError"])
def test_anything_else_is_unavailable(error):
    err = map_error(error, "read the state of dovecot.service")
    assert type(err) is Unavailable and err.status == 503
    assert err.message.startswith("systemd is unreachable over D-Bus while trying to read the state of "
                                  "dovecot.service: ")
    assert err.message.endswith(("Did not receive a reply", "The name is not activatable", "Connection is closed",
                                 "Connection refused"))


# --- reconnecting ---------------------------------------------------------------------------

class FakeSignal:
    def __init__(self):
        self.handlers = []

    def connect(self, fn):
        self.handlers.append(fn)


class FakeManager:
    def __init__(self, conn):
        self.conn = conn
        self.JobRemoved = FakeSignal()
        self.subscribed = False

    def Subscribe(self):
        self.subscribed = True

    def LoadUnit(self, name):
        self.conn.check()
        return f"/org/freedesktop/systemd1/unit/{name.replace('.', '_2e')}"

    def Reload(self):
        self.conn.check()

    def EnableUnitFiles(self, names, runtime, force):
        self.conn.check()
        self.conn.enabled += names

    def StartUnit(self, name, mode):
        """A job that finishes at once (JobRemoved delivered before the caller waits)."""
        self.conn.check()
        self.conn.started.append(name)
        job = f"/org/freedesktop/systemd1/job/{len(self.conn.started)}"
        for handler in self.JobRemoved.handlers:
            handler(len(self.conn.started), job, name, "done")
        return job


class FakeCon:
    def __init__(self, bus):
        self.bus = bus
        self.closed = False

    def is_closed(self):
        return self.closed

    def close_sync(self, _cancellable):
        self.closed = True

    def set_exit_on_close(self, flag):
        self.exit_on_close = flag

    def call_sync(self, bus_name, path, iface, method, params, reply_type, flags, timeout, cancellable):
        self.bus.check()
        prop = params.unpack()[1]
        return GLib.Variant("(v)", (GLib.Variant("s", self.bus.props.get((path, prop), "active")),))


class FakeBus:
    """What pydbus.connect() returns: .con and .get(); `fail` makes the next calls raise."""

    def __init__(self, world):
        self.world = world
        self.con = FakeCon(self)
        self.enabled = []
        self.started = []
        self.props = world.props
        self.manager = FakeManager(self)

    def check(self):
        if self.world.fail is not None:
            raise self.world.fail

    def get(self, bus_name, path):
        self.check()
        return self.manager


class World:
    def __init__(self):
        self.fail = None
        self.connects = []
        self.props = {}

    def opener(self, address):
        if self.world_down:
            raise GLib.Error("Could not connect: No such file or directory")
        bus = FakeBus(self)
        self.connects.append(bus)
        return bus

    world_down = False


def test_connects_lazily_once_and_subscribes():
    world = World()
    sd = Systemd(bus_address="unix:path=/nonexistent", opener=world.opener)
    assert world.connects == []                        # nothing at construction (gunicorn's master)
    assert sd.active_state("dovecot.service") == "active"
    sd.active_state("dovecot.service")
    [bus] = world.connects
    assert bus.manager.subscribed and bus.manager.JobRemoved.handlers


def test_unreachable_drops_the_connection_and_the_next_call_reconnects():
    world = World()
    sd = Systemd(bus_address="unix:path=/nonexistent", opener=world.opener)
    sd.active_state("dovecot.service")
    first = world.connects[0]
    world.fail = dbus_error("org.freedesktop.DBus.Error.NoReply", "Did not receive a reply")
    with pytest.raises(Unavailable):
        sd.active_state("dovecot.service")
    assert first.con.closed                             # dropped (and closed)
    assert sd.bus.unit_paths == {}                      # unit paths belong to the old connection
    world.fail = None
    assert sd.active_state("dovecot.service") == "active"
    assert len(world.connects) == 2 and world.connects[1] is not first


def test_systemd_errors_keep_the_connection():
    world = World()
    sd = Systemd(bus_address="unix:path=/nonexistent", opener=world.opener, via_helpers=False)
    sd.active_state("dovecot.service")
    world.fail = dbus_error("org.freedesktop.systemd1.NoSuchUnit", "Unit x.service not found.")
    with pytest.raises(NoSuchUnit):
        sd.active_state("x.service")
    world.fail = None
    sd.enable("dovecot.service")
    assert len(world.connects) == 1 and not world.connects[0].con.closed
    assert world.connects[0].enabled == ["dovecot.service"]


def test_no_bus_at_all_is_unavailable_and_retried():
    world = World()
    world.world_down = True
    sd = Systemd(bus_address="unix:path=/nonexistent", opener=world.opener)
    with pytest.raises(Unavailable, match="connect to the system bus"):
        sd.ping()
    world.world_down = False
    assert sd.ping() == "active"


def test_a_connection_inherited_across_fork_is_replaced_not_closed(monkeypatch):
    world = World()
    sd = Systemd(bus_address="unix:path=/nonexistent", opener=world.opener)
    sd.active_state("dovecot.service")
    parent = world.connects[0]
    monkeypatch.setattr(os, "getpid", lambda: -1)       # "we are the child now"
    sd.active_state("dovecot.service")
    assert len(world.connects) == 2
    assert not parent.con.closed                        # the parent's connection is left alone


def test_a_job_that_never_ends_times_out_and_a_lost_bus_is_unavailable(monkeypatch):
    world = World()
    sd = Systemd(bus_address="unix:path=/nonexistent", job_timeout=0.05, opener=world.opener)
    def restart(name, mode):
        return "/org/freedesktop/systemd1/job/1"

    sd.bus.manager()
    world.connects[0].manager.RestartUnit = restart
    with pytest.raises(JobFailed, match="no result from systemd after 0 s"):
        sd.restart("dovecot.service")
    # the bus goes away while waiting
    world.connects[0].con.closed = True
    monkeypatch.setattr(type(sd.bus), "manager", lambda self: world.connects[0].manager)
    with pytest.raises(Unavailable, match="lost the D-Bus connection"):
        sd.restart("dovecot.service")


def test_a_job_result_arrives_through_job_removed(monkeypatch):
    world = World()
    sd = Systemd(bus_address="unix:path=/nonexistent", opener=world.opener)
    sd.bus.manager()
    manager = world.connects[0].manager

    def reload(name, mode):
        for handler in manager.JobRemoved.handlers:
            handler(1, "/job/7", name, "done")
        return "/job/7"

    manager.ReloadUnit = reload
    sd.reload("dovecot.service")
    assert "/job/7" not in sd.bus.removed

    def start(name, mode):
        for handler in manager.JobRemoved.handlers:
            handler(2, "/job/8", name, "failed")
        return "/job/8"

    manager.StartUnit = start
    world.props[("/org/freedesktop/systemd1/unit/dovecot_2eservice", "Result")] = "exit-code"
    monkeypatch.setattr(jobs, "failure_tail", lambda name, since: "dovecot: Fatal: bad config")
    with pytest.raises(JobFailed) as ei:
        sd.start("dovecot.service")
    assert ei.value.message == ("start dovecot.service failed: systemd job result 'failed'; last journal lines "
                                "of dovecot.service:\ndovecot: Fatal: bad config")


@pytest.mark.parametrize("verb", ["enable", "disable"])
def test_without_root_start_on_boot_goes_through_the_packaged_helper_unit(verb):
    """polkit cannot limit unit-file changes to some units (systemd 252 names none), so a
    daemon that is not root starts the one-shot helper instance for that unit instead."""
    world = World()
    sd = Systemd(bus_address="unix:path=/nonexistent", opener=world.opener, via_helpers=True)
    getattr(sd, verb)("dovecot.service")
    [bus] = world.connects
    assert bus.started == [f"imapd-ctl-{verb}@dovecot.service.service"]
    assert bus.enabled == []                            # no EnableUnitFiles / DisableUnitFiles
