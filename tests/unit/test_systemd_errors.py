"""The systemd adapter without systemd: D-Bus errors (real GLib.Error objects) mapped to typed
errors, the connection's drop-and-reconnect logic, and the unit state kept from signals, with
a fake link (what bus.Link does over Gio)."""

import pytest
from gi.repository import Gio, GLib

from imapd_ctl.adapters import quickcalls
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


# --- the state kept from signals, reconnecting -----------------------------------------------

DOVECOT = "dovecot.service"
PATH = "/org/freedesktop/systemd1/unit/dovecot_2eservice"


class FakeLink:
    """One connection: method calls answered from `world`, signals sent by the test."""

    def __init__(self, world, on_signal, on_closed):
        self.world, self.on_signal, self.on_closed = world, on_signal, on_closed
        self.closed = False
        self.matches = []
        self.calls = []
        self.pending = []

    def call(self, dest, path, iface, method, signature, args, reply):
        if self.world.fail is not None:
            raise self.world.fail
        self.calls.append(method)
        if method == "LoadUnit":
            return (f"/org/freedesktop/systemd1/unit/{args[0].replace('.', '_2e')}",)
        if method == "GetAll":
            reply = dict(self.world.props[args[0]])
            if self.world.during_read is not None:   # a signal arrives while the read is under way
                self.world.during_read, during = None, self.world.during_read
                during()
            return (reply,)
        if method == "Get":
            return ("254",)
        if method in self.world.jobs:
            return (self.world.jobs[method](args[0]),)
        return ()

    def add_match(self, rule):
        if self.world.fail is not None:
            raise self.world.fail
        self.matches.append(rule)

    def close(self):
        self.closed = True

    def idle(self, fn):
        self.pending.append(fn)     # the loop thread: after the signal's handling

    def run_loop(self):
        while self.pending:
            self.pending.pop(0)()

    def emit(self, path, iface, member, args):
        self.on_signal(path, iface, member, args)
        self.run_loop()


class World:
    def __init__(self):
        self.fail = None
        self.down = False
        self.links = []
        self.jobs = {}
        self.during_read = None
        self.props = {
            "org.freedesktop.systemd1.Unit": {"LoadState": "loaded", "ActiveState": "active",
                                              "SubState": "running", "UnitFileState": "enabled"},
            "org.freedesktop.systemd1.Service": {"MainPID": 42, "Result": "success", "NRestarts": 0},
        }

    def opener(self, address, on_signal, on_closed):
        if self.down:
            raise GLib.Error("Could not connect: No such file or directory")
        link = FakeLink(self, on_signal, on_closed)
        self.links.append(link)
        return link

    def systemd(self, **kw):
        return Systemd(bus_address="unix:path=/nonexistent", opener=self.opener, **kw)

    def set(self, **props):
        for iface in self.props.values():
            for k, v in props.items():
                if k in iface:
                    iface[k] = v

    def changed(self, **values):
        """PropertiesChanged as systemd sends it: the new values; the rest invalidated."""
        self.set(**values)
        self.links[-1].emit(PATH, "org.freedesktop.DBus.Properties", "PropertiesChanged",
                            ("org.freedesktop.systemd1.Unit", values, []))


def test_connects_lazily_and_asks_only_for_the_watched_units_signals():
    world = World()
    sd = world.systemd()
    assert world.links == []                           # nothing at construction (gunicorn's master)
    assert sd.unit(DOVECOT).main_pid == 42
    [link] = world.links
    assert "Subscribe" in link.calls
    assert any("member='JobRemoved'" in r and "arg2='dovecot.service'" in r for r in link.matches)
    assert any(f"path='{PATH}'" in r and "PropertiesChanged" in r for r in link.matches)
    assert not any("JobRemoved" in r and "arg2" not in r for r in link.matches)  # never every job


def test_reads_come_from_memory_and_follow_the_signals():
    world = World()
    sd = world.systemd()
    assert sd.active_state(DOVECOT) == "active"
    world.links[0].run_loop()                            # the watch's second read
    calls = len(world.links[0].calls)
    for _ in range(100):
        assert sd.active_state(DOVECOT) == "active" and sd.main_pid(DOVECOT) == 42
    assert len(world.links[0].calls) == calls           # no round trip per read
    world.changed(ActiveState="inactive", MainPID=0, NRestarts=3)
    assert sd.active_state(DOVECOT) == "inactive" and sd.unit(DOVECOT).n_restarts == 3
    assert len(world.links[0].calls) == calls           # the signal carried the values
    world.set(SubState="dead")
    world.links[0].emit(PATH, "org.freedesktop.DBus.Properties", "PropertiesChanged",
                        ("org.freedesktop.systemd1.Unit", {}, ["SubState"]))
    assert sd.unit(DOVECOT).sub_state == "dead"          # invalidated: read again
    world.set(UnitFileState="disabled")                  # no change signal of its own
    world.links[0].emit("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
                        "UnitFilesChanged", ())
    assert sd.unit(DOVECOT).unit_file_state == "disabled"


def test_unreachable_drops_the_connection_and_the_next_read_reads_afresh():
    world = World()
    sd = world.systemd()
    sd.active_state(DOVECOT)
    first = world.links[0]
    world.set(ActiveState="inactive")                    # changed while nobody was told
    first.on_closed()                                    # the bus went away
    world.down = True
    with pytest.raises(Unavailable):                     # 503, never the stale "active"
        sd.active_state(DOVECOT)
    assert first.closed
    world.down = False
    assert sd.active_state(DOVECOT) == "inactive"
    assert len(world.links) == 2


def test_a_failed_call_that_means_unreachable_drops_the_link():
    world = World()
    sd = world.systemd()
    sd.active_state(DOVECOT)
    world.fail = dbus_error("org.freedesktop.DBus.Error.NoReply", "Did not receive a reply")
    with pytest.raises(Unavailable):
        sd.ping()
    assert world.links[0].closed
    world.fail = None
    assert sd.ping() == "254" and len(world.links) == 2


def test_systemd_errors_keep_the_connection():
    world = World()
    sd = world.systemd(via_helpers=False)
    sd.active_state(DOVECOT)
    world.fail = dbus_error("org.freedesktop.systemd1.NoSuchUnit", "Unit x.service not found.")
    with pytest.raises(NoSuchUnit):
        sd.active_state("x.service")
    world.fail = None
    sd.enable(DOVECOT)
    assert len(world.links) == 1 and not world.links[0].closed
    assert "EnableUnitFiles" in world.links[0].calls


def test_a_connection_inherited_across_fork_is_replaced_not_closed(monkeypatch):
    world = World()
    sd = world.systemd()
    sd.active_state(DOVECOT)
    parent = world.links[0]
    monkeypatch.setattr(quickcalls, "_pid", -1)         # "we are the child now" (the fork hook's value)
    sd.active_state(DOVECOT)
    assert len(world.links) == 2
    assert not parent.closed                            # the parent's connection is left alone


def test_job_results_arrive_through_job_removed_and_stay_bounded(monkeypatch):
    world = World()
    sd = world.systemd(job_timeout=0.2)

    def job(result, n):
        def run(name):
            link = world.links[-1]
            world.changed(ActiveState="active", MainPID=100 + n)
            link.emit("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "JobRemoved",
                      (n, f"/job/{n}", name, result))
            return f"/job/{n}"
        return run

    world.jobs["RestartUnit"] = job("done", 7)
    sd.restart(DOVECOT)
    assert sd.main_pid(DOVECOT) == 107                  # the state the job left, at once
    assert sd.state.results == {}
    world.jobs["StartUnit"] = job("failed", 8)
    world.set(Result="exit-code")
    monkeypatch.setattr(jobs, "failure_tail", lambda name, since: "dovecot: Fatal: bad config")
    with pytest.raises(JobFailed, match="(?s)result 'failed'.*Fatal: bad config"):
        sd.start(DOVECOT)
    for n in range(1000):                               # jobs nobody waits for stay bounded
        world.links[-1].emit("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
                             "JobRemoved", (n, f"/job/x{n}", DOVECOT, "done"))
    assert len(sd.state.results) <= 64
    world.jobs["StopUnit"] = lambda name: "/job/never"
    with pytest.raises(JobFailed, match="no result from systemd after 0 s"):
        sd.stop(DOVECOT)


def test_a_read_under_way_never_overwrites_a_newer_signal():
    world = World()
    sd = world.systemd()
    sd.active_state(DOVECOT)
    # A re-read (after UnitFilesChanged) answers "active"; while it is under way systemd
    # announces "deactivating". The signal is newer: it stays, and a further read confirms it.
    world.during_read = lambda: world.changed(ActiveState="deactivating")
    world.links[0].emit("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
                        "UnitFilesChanged", ())
    assert sd.active_state(DOVECOT) == "deactivating"


def test_an_announced_change_is_seen_by_the_next_read_before_the_loop_handles_it():
    """UnitFilesChanged (or an invalidation) owes a re-read; a read while it is owed reads at
    once instead of answering from memory, whether the loop thread has come to it or not."""
    world = World()
    sd = world.systemd()
    sd.active_state(DOVECOT)
    world.links[0].run_loop()
    world.set(UnitFileState="disabled")
    world.links[0].on_signal("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
                             "UnitFilesChanged", ())       # handled by GDBus; the loop not yet run
    assert sd.unit(DOVECOT).unit_file_state == "disabled"
    calls = len(world.links[0].calls)
    assert sd.unit(DOVECOT).unit_file_state == "disabled"
    assert len(world.links[0].calls) == calls              # paid: memory again


def test_our_own_disable_is_seen_even_when_a_signal_races_its_reread():
    """The re-read after DisableUnitFiles meets a PropertiesChanged: it keeps the newer signal
    and still owes the read, so the next request sees the unit file disabled."""
    world = World()
    sd = world.systemd()
    sd.active_state(DOVECOT)
    world.links[0].run_loop()
    world.set(UnitFileState="disabled")
    world.during_read = lambda: world.links[0].on_signal(
        PATH, "org.freedesktop.DBus.Properties", "PropertiesChanged",
        ("org.freedesktop.systemd1.Unit", {"SubState": "running"}, ["ActiveState"]))
    sd.disable(DOVECOT)
    assert sd.unit(DOVECOT).unit_file_state == "disabled"


@pytest.mark.parametrize("verb", ["enable", "disable"])
def test_without_root_start_on_boot_goes_through_the_packaged_helper_unit(verb):
    """polkit cannot limit unit-file changes to some units (systemd 252 names none), so a
    daemon that is not root starts the one-shot helper instance for that unit instead."""
    world = World()
    sd = world.systemd(via_helpers=True)
    started = []

    def start(name):
        started.append(name)
        world.links[-1].emit("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
                             "JobRemoved", (1, "/job/1", name, "done"))
        return "/job/1"

    world.jobs["StartUnit"] = start
    getattr(sd, verb)(DOVECOT)
    assert started == [f"imapd-ctl-{verb}@dovecot.service.service"]
    assert not {"EnableUnitFiles", "DisableUnitFiles"} & set(world.links[-1].calls)
