"""The readers of the servers' own load figures: `doveadm -f json service status` (Dovecot 2.3's
strings and the numbers/booleans/unlimited forms 2.4 may print) and couriertcpd's -maxprocs."""
import json

import pytest
from fakes import FakeSystemd

from imapd_ctl.adapters.flavours.dovecot import status as dovecot_status
from imapd_ctl.adapters.flavours.dovecot import Dovecot
from imapd_ctl.adapters.flavours.courier import tcpd
from imapd_ctl.adapters.flavours.dovecot.status import StatusError
from imapd_ctl.core.errors import ActionFailed
from imapd_ctl.core.settings import Settings

# As Dovecot 2.3.19.1 printed it on the test host with 3 clients connected (not logged in).
REAL_23 = (
    '[{"name":"imap","process_count":"0","process_avail":"0","process_limit":"1024","client_limit":"1",'
    '"throttle_secs":"0","exit_failure_last":"0","exit_failures_in_sec":"0","last_drop_warning":"0",'
    '"listen_pending":"n","listening":"y","doveadm_stop":"n","process_total":"0"},'
    '{"name":"imap-login","process_count":"3","process_avail":"0","process_limit":"100","client_limit":"1",'
    '"throttle_secs":"0","exit_failure_last":"0","exit_failures_in_sec":"0","last_drop_warning":"0",'
    '"listen_pending":"n","listening":"y","doveadm_stop":"n","process_total":"4"}]')


def row(**fields):
    base = {"name": "imap", "process_count": 2, "process_avail": 0, "process_limit": 50, "client_limit": 1,
            "throttle_secs": 0, "exit_failure_last": 0, "exit_failures_in_sec": 0, "last_drop_warning": 0,
            "listen_pending": False, "listening": True, "doveadm_stop": False, "process_total": 9}
    base.update(fields)
    return base


def test_dovecot_23_output_as_printed():
    imap, login = dovecot_status.pools(REAL_23, "dovecot.service", (143, 993))
    assert (imap.name, imap.processes, imap.process_limit, imap.capacity, imap.limits_connections) == \
        ("imap", 0, 1024, 1024, True)
    assert (login.name, login.processes, login.process_limit, login.limits_connections) == \
        ("imap-login", 3, 100, False)
    assert imap.ports == login.ports == (143, 993) and imap.unit == "dovecot.service"
    assert not imap.full and not imap.listen_pending and imap.last_drop_warning == 0


def test_typed_json_values_are_read_alike():
    text = json.dumps([row(), row(name="imap-login", process_count=100, process_limit=100,
                                  listen_pending=True, last_drop_warning=1764000000,
                                  exit_failures_in_sec=3, throttle_secs=2)])
    imap, login = dovecot_status.pools(text, "dovecot.service", (143,))
    assert (imap.processes, imap.process_limit) == (2, 50)
    assert login.full and login.listen_pending
    assert (login.last_drop_warning, login.exit_failures_in_sec, login.throttle_secs) == (1764000000, 3, 2)


@pytest.mark.parametrize("unlimited", ["unlimited", "", 0, "0", 4294967295, str((1 << 64) - 1)])
def test_an_unlimited_process_limit_is_none(unlimited):
    parsed = dovecot_status.parse(json.dumps([row(process_limit=unlimited)]))
    assert parsed["imap"]["process_limit"] is None


def test_client_limit_multiplies_the_capacity():
    imap, _ = dovecot_status.pools(json.dumps([row(client_limit="4"), row(name="imap-login")]), "d", (143,))
    assert imap.capacity == 200


def test_one_service_as_an_object():
    assert dovecot_status.parse(json.dumps(row()))["imap"]["processes"] == 2


@pytest.mark.parametrize("text, words", [
    ("doveadm(root): Fatal: ...", "not JSON"),
    ('[{"process_count": "1"}]', "list of objects with a name"),
    (json.dumps([row(process_count="many")]), "imap: process_count is 'many', not a number"),
    (json.dumps([row()]), "no service 'imap-login'"),
])
def test_unreadable_output_is_an_error_naming_what(text, words):
    with pytest.raises(StatusError, match=words.replace("(", r"\(").replace(")", r"\)")):
        dovecot_status.pools(text, "dovecot.service", (143,))


@pytest.mark.parametrize("argv, limit", [
    (["/usr/sbin/couriertcpd", "-address=0", "-maxprocs=40", "-maxperip=20", "143", "imaplogin"], 40),
    (["couriertcpd", "-maxprocs=7", "993"], 7),
    (["couriertcpd", "143"], None),
    (["couriertcpd", "-maxprocs=x", "143"], None),
])
def test_couriertcpd_maxprocs(argv, limit):
    assert tcpd.maxprocs(argv) == limit


def test_couriertcpd_is_found_among_the_units_processes_as_systemd_lists_them(monkeypatch):
    monkeypatch.setattr(tcpd.ports, "connections", lambda port: {143: (3, 1)}[port])
    listed = [(10, "/usr/sbin/courierlogger -pid=/run/courier/imapd.pid -start imapd"),
              (11, "/usr/sbin/couriertcpd -address=0 -maxprocs=40 -maxperip=20 143 /usr/lib/courier/imaplogin"),
              (12, "/usr/lib/courier/courier/imaplogin")]
    assert tcpd.load(listed, 143) == (3, 40)
    assert tcpd.load(listed[:1], 143) is None and tcpd.load([], 143) is None


# -- the Dovecot flavour's pools, with stand-in doveadm/doveconf programs ---------------------

def flavour_with(tmp_path, doveadm: str, doveconf: str):
    for name, body in (("doveadm", doveadm), ("doveconf", doveconf)):
        (tmp_path / name).write_text(f"#!/bin/sh\n{body}\n")
        (tmp_path / name).chmod(0o755)
    settings = Settings(state_dir=str(tmp_path / "state"))
    settings.dovecot.doveadm, settings.dovecot.doveconf = str(tmp_path / "doveadm"), str(tmp_path / "doveconf")
    return Dovecot(settings)


def test_dovecot_pools_of_the_running_server(tmp_path):
    flavour = flavour_with(tmp_path, f"cat <<'EOF'\n{REAL_23}\nEOF", "printf '143\\n993\\n'")
    imap, login = flavour.pools(FakeSystemd({"dovecot.service": "active"}))
    assert imap.ports == (143, 993) and login.processes == 3


def test_dovecot_ports_fall_back_to_the_setting_and_a_failing_doveadm_is_an_error(tmp_path):
    flavour = flavour_with(tmp_path, "echo 'Fatal: connect(/run/dovecot/stats) failed' >&2; exit 75",
                           "echo 'Fatal: unknown setting' >&2; exit 89")
    assert flavour.capacity_ports() == (143,)
    with pytest.raises(ActionFailed, match="doveadm service status failed: Fatal: connect"):
        flavour.pools(FakeSystemd({"dovecot.service": "active"}))


def test_dovecot_restarting_master_gives_the_configured_pool(tmp_path):
    """systemd says active before Dovecot's master socket answers (a restart): no process can be
    serving, so the pool is the configured one with none in use, not an error."""
    flavour = flavour_with(tmp_path,
                           "echo 'Fatal: net_connect_unix(/run/dovecot/master) failed: Connection refused' >&2; exit 75",
                           "printf '143\\n'")
    flavour.effective = lambda: (7, None)  # type: ignore[method-assign]
    (imap,) = flavour.pools(FakeSystemd({"dovecot.service": "active"}))
    assert (imap.processes, imap.process_limit) == (0, 7)
