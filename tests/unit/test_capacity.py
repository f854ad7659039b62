"""queryCapacity's reading (operations.capacity) from fake pools, units and sockets, its reply
(prose) through the real wiring, and what the Controller tells telemetry."""
import dataclasses

import pytest
from fakes import FakeFlavour, FakePorts, FakeSystemd

from imapd_ctl.adapters.listening import UnitListening
from imapd_ctl.core import capacity as cap
from imapd_ctl.core.capacity import Pool
from imapd_ctl.core.errors import ActionFailed, Unavailable
from imapd_ctl.operations import capacity

UNIT = FakeFlavour.primary_unit
NOW = 1_800_000_000


@pytest.fixture
def host(tmp_path, fake_ports):
    systemd = FakeSystemd({UNIT: "active"}, pids={UNIT: 4242})
    flavour = FakeFlavour(tmp_path / "a", tmp_path / "b")
    return systemd, flavour, fake_ports


def read(host):
    systemd, flavour, _ = host
    return capacity.read(flavour, UnitListening(systemd), clock=lambda: NOW)


def shared(**imap):
    """Dovecot's shape: one limiting pool for 143 and 993, imap-login beside it."""
    return (Pool(**{"name": "imap", "unit": UNIT, "ports": (143, 993), "processes": 3,
                    "process_limit": 10, **imap}),
            Pool(name="imap-login", unit=UNIT, ports=(143, 993), processes=1, process_limit=100,
                 limits_connections=False))


def test_in_use_comes_from_the_sockets_and_the_limit_from_the_pool(host):
    _, flavour, ports = host
    flavour.processes = 3
    ports.held[143] = (3, 0)
    got = read(host)
    (plain,) = got.ports
    assert (plain.port, plain.unit, plain.up, plain.in_use, plain.limit, plain.headroom) == \
        (143, UNIT, True, 3, 40, 37)
    assert got.signals == () and not got.saturated and got.checked_at == NOW


def test_ports_sharing_a_limit_share_its_headroom(host):
    _, flavour, ports = host
    flavour.pool_list = shared()
    ports.held.update({143: (3, 0), 993: (4, 0)})
    plain, secure = read(host).ports
    assert (plain.in_use, secure.in_use) == (3, 4)
    assert plain.limit == secure.limit == 10 and plain.headroom == secure.headroom == 3
    assert (plain.shared_with, secure.shared_with) == ((993,), (143,))
    assert secure.up is False      # FakePorts: only 143 listens


def test_client_limit_and_unlimited_pools(host):
    _, flavour, _ = host
    flavour.pool_list = shared(client_limit=5)
    assert read(host).ports[0].limit == 50
    flavour.pool_list = shared(process_limit=None)
    assert (read(host).ports[0].limit, read(host).ports[0].headroom) == (None, None)


def test_a_stopped_unit_is_down(host):
    systemd, _, ports = host
    systemd.states[UNIT] = "inactive"
    got = read(host)
    assert got.ports[0].up is False
    assert cap.Signal(cap.DOWN, "143") in got.signals


@pytest.mark.parametrize("change, signal", [
    ({"processes": 10}, cap.Signal(cap.FULL, "imap", 10)),
    ({"last_drop_warning": NOW - 30}, cap.Signal(cap.DROPPED, "imap", NOW - 30)),
    ({"exit_failures_in_sec": 2}, cap.Signal(cap.FAILING, "imap", 2)),
    ({"throttle_secs": 4}, cap.Signal(cap.FAILING, "imap", 0)),
    ({"listen_pending": True}, cap.Signal(cap.PENDING, "imap")),
])
def test_the_servers_saturation_signals(host, change, signal):
    _, flavour, _ = host
    flavour.pool_list = shared(**change)
    got = read(host)
    assert signal in got.signals and got.saturated


def test_an_old_drop_warning_is_no_signal(host):
    _, flavour, _ = host
    flavour.pool_list = shared(last_drop_warning=NOW - capacity.DROP_RECENT)
    assert read(host).signals == (cap.Signal(cap.DOWN, "993"),)


def test_queued_connections_restarts_and_a_failed_result_are_signals(host):
    systemd, _, ports = host
    ports.held[143] = (40, 6)
    systemd.restarts[UNIT], systemd.results[UNIT] = 3, "exit-code"
    got = read(host)
    assert got.ports[0].queued == 6
    assert set(got.signals) == {cap.Signal(cap.QUEUED, "143", 6), cap.Signal(cap.RESTARTED, UNIT, 3),
                                cap.Signal(cap.FAILED, UNIT)}
    assert dataclasses.asdict(got.units[0])["restarts"] == 3


# -- the reply, through the real wiring and prose ---------------------------------------------

def test_the_reply_is_plain_data_with_words_for_people(env):
    env.flavour.processes = 2
    env.ports.held[143] = (2, 0)
    payload = env.call("queryCapacity").get_json()["payload"]
    assert payload["ports"] == [{"port": 143, "unit": UNIT, "up": True, "in_use": 2, "queued": 0, "limit": 40,
                                 "shared_with": [], "pool_in_use": 2, "headroom": 38}]
    assert payload["pools"][0]["processes"] == 2 and payload["pools"][0]["capacity"] == 40
    assert payload["units"] == [{"unit": UNIT, "active_state": "active", "sub_state": "", "result": "success",
                                 "restarts": 0}]
    assert payload["summary"] == "143: 2 in use (limit 40, 38 free)"
    assert payload["saturated"] is False and payload["signals"] == []


def test_signals_are_worded_in_the_reply(env):
    env.systemd.restarts[UNIT] = 2
    payload = env.call("queryCapacity").get_json()["payload"]
    assert payload["signals"] == [{"code": "restarted", "subject": UNIT, "value": 2,
                                   "text": f"{UNIT} was restarted automatically 2 times since its last manual start"}]
    assert payload["summary"].endswith("; saturation: " + payload["signals"][0]["text"])


# -- telemetry from the Controller --------------------------------------------------------------

class Told:
    def __init__(self):
        self.events = []

    def action(self, name, status, seconds):
        self.events.append(("action", name, status))

    def change(self, outcome):
        self.events.append(("change", outcome))

    def lock_wait(self, seconds, acquired):
        self.events.append(("lock", acquired))

    def bus_reconnect(self):
        self.events.append(("bus",))


@pytest.fixture
def told(env):
    env.services.controller.telemetry = told = Told()
    return told


def test_an_applied_change_and_its_lock_wait_are_told(env, told):
    assert env.call("update", data={"imap_max_connections": "41"}).status_code == 200
    assert told.events == [("lock", True), ("change", "applied")]
    told.events.clear()
    assert env.call("update", data={"imap_max_connections": "41"}).status_code == 200   # unchanged
    assert env.call("update", data={"imap_max_connections": "42", "dry_run": "1"}).status_code == 200
    assert told.events == [("lock", True), ("lock", True)]


def test_a_rolled_back_change_is_told(env, told):
    env.flavour.verify_error = ActionFailed("the server did not take it")
    assert env.call("update", data={"imap_max_connections": "41"}).status_code != 200
    assert told.events == [("lock", True), ("change", "rolled_back")]


def test_a_lock_given_up_is_told(env, told):
    env.settings.lock_timeout = 0.05
    with env.services.lock.hold(timeout=1):
        assert env.call("restart").status_code == 409
    assert told.events == [("lock", False)]


def test_a_rollback_left_pending_is_counted_once_by_the_recovery_that_finishes_it(env, told):
    env.systemd.faults["reload"] = Unavailable("cannot connect to the system bus")
    reply = env.call("update", data={"imap_max_connections": "41"})
    assert reply.status_code == 503 and env.services.journal.pending() is not None
    assert ("change", "rolled_back") not in told.events
    del env.systemd.faults["reload"]
    assert env.call("restart").status_code == 200          # recovers first, under the lock
    assert env.services.journal.pending() is None
    assert told.events.count(("change", "rolled_back")) == 1
