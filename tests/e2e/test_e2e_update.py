"""update as a transaction on a real Dovecot: mapped values on disk and in the running server,
exact read-back, idempotence, dry runs, and a validator failure that changes nothing."""
from __future__ import annotations

import imaplib

import pytest

from imapd_ctl.adapters.flavours.dovecot import parse_size

pytestmark = pytest.mark.mailhost

DROPIN = "/etc/dovecot/conf.d/99-imapd-ctl.conf"
RELOADED = "SIGHUP received - reloading configuration"


def doveconf(host, name: str) -> str:
    return host.run(["doveconf", "-h", name]).stdout.strip()


def running_limit(host) -> int:
    out = host.run(["doveadm", "service", "status", "imap"]).stdout
    return int(next(l.split(":")[1] for l in out.splitlines() if l.startswith("process_limit:")))


def reloads(host) -> int:
    return host.run(["journalctl", "--no-pager", "-o", "cat", "-u", "dovecot"]).stdout.count(RELOADED)


def serving(host) -> bool:
    conn = imaplib.IMAP4(host.address, 143, timeout=10)
    ok = conn.welcome.startswith(b"* OK")
    conn.logout()
    return ok


def dropin(host) -> bytes | None:
    r = host.run(["cat", DROPIN], check=False)
    return r.stdout.encode() if r.returncode == 0 else None


VALUES = {"imap_mem_limit": 300_000_000, "imap_max_connections": 25,
          "imap_secure_mem_limit": 200_000_000, "imap_secure_max_connections": 15}


@pytest.mark.parametrize("transport", ["http", "xmlrpc"])
def test_update_maps_values_into_dovecot(daemon, mailhost, transport):
    call = daemon.call if transport == "http" else daemon.route
    values = {k: v + (1 if transport == "xmlrpc" else 0) for k, v in VALUES.items()}
    status, payload = call("update", values)
    assert status == 0, payload
    assert int(doveconf(mailhost, "service/imap/process_limit")) == 25 + 15 + (2 if transport == "xmlrpc" else 0)
    assert parse_size(doveconf(mailhost, "service/imap/vsz_limit")) == values["imap_mem_limit"]
    assert running_limit(mailhost) == values["imap_max_connections"] + values["imap_secure_max_connections"]
    assert call("queryUpdate") == (0, values)
    assert serving(mailhost)


def test_identical_update_does_not_reload(daemon, mailhost):
    assert daemon.call("update", VALUES)[0] == 0
    count = reloads(mailhost)
    status, payload = daemon.call("update", VALUES)
    assert status == 0 and "unchanged" in payload
    status, payload = daemon.route("update", {})
    assert status == 0 and "unchanged" in payload
    assert reloads(mailhost) == count
    # ...while a real change does reload, so the counter above can move.
    assert daemon.call("update", {"imap_max_connections": 26})[0] == 0
    assert reloads(mailhost) == count + 1
    assert daemon.call("queryUpdate")[1] == {**VALUES, "imap_max_connections": 26}


def test_partial_update_keeps_the_other_values(daemon):
    assert daemon.call("update", VALUES)[0] == 0
    assert daemon.call("update", {"imap_secure_max_connections": 9})[0] == 0
    assert daemon.call("queryUpdate") == (0, {**VALUES, "imap_secure_max_connections": 9})


def test_dry_run_returns_the_diff_and_changes_nothing(daemon, mailhost):
    assert daemon.call("update", VALUES)[0] == 0
    before = dropin(mailhost)
    status, diff = daemon.call("update", {"imap_max_connections": 33, "dry_run": 1})
    assert status == 0
    assert "-  process_limit = 40" in diff and "+  process_limit = 48" in diff
    assert dropin(mailhost) == before
    assert daemon.call("queryUpdate") == (0, VALUES)
    assert daemon.call("update", {**VALUES, "dry_run": 1}) == (0, "")


def test_config_that_fails_validation_changes_nothing(daemon, mailhost):
    assert daemon.call("update", VALUES)[0] == 0
    before, count = dropin(mailhost), reloads(mailhost)
    broken = "/etc/dovecot/conf.d/50-broken.conf"
    mailhost.write_file(broken, "service imap {\n  this is not dovecot syntax\n")
    try:
        for call in (daemon.call, daemon.route):
            status, payload = call("update", {"imap_max_connections": 77})
            assert status == 500
            assert "Dovecot rejects the configuration" in payload and broken in payload, payload
        assert dropin(mailhost) == before
        assert reloads(mailhost) == count
        assert daemon.call("isRunning") == (0, True)
        assert serving(mailhost)
        assert daemon.call("queryUpdate") == (0, VALUES)
    finally:
        mailhost.run(["rm", "-f", broken])


def test_a_file_overriding_our_limits_is_refused(daemon, mailhost):
    assert daemon.call("update", VALUES)[0] == 0
    before = dropin(mailhost)
    mailhost.write_file("/etc/dovecot/local.conf", "service imap {\n  process_limit = 7\n}\n")
    try:
        status, payload = daemon.call("update", {"imap_max_connections": 50})
        assert status == 500 and "overrides" in payload and "process_limit=7" in payload
        assert dropin(mailhost) == before
    finally:
        mailhost.run(["rm", "-f", "/etc/dovecot/local.conf"])


def test_update_of_a_stopped_server_applies_at_start(daemon, mailhost):
    assert daemon.call("stop")[0] == 0
    try:
        status, payload = daemon.call("update", {**VALUES, "imap_max_connections": 5})
        assert status == 0 and "when it starts" in payload
        assert daemon.call("isRunning") == (0, False)
    finally:
        assert daemon.call("start")[0] == 0
    assert running_limit(mailhost) == 5 + VALUES["imap_secure_max_connections"]
