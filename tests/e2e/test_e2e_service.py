"""Service control and start-on-boot against real systemd and a real Dovecot, checked with a
real IMAP client from outside the host."""
from __future__ import annotations

import imaplib

import pytest

pytestmark = pytest.mark.mailhost

KEY = "/etc/dovecot/private/dovecot.key"


def greeting(host) -> bytes:
    conn = imaplib.IMAP4(host.address, 143, timeout=10)
    try:
        return conn.welcome
    finally:
        conn.logout()


def unit_prop(host, prop: str) -> str:
    return host.systemctl("show", "-p", prop, "--value", "dovecot").stdout.strip()


@pytest.mark.parametrize("transport", ["http", "xmlrpc"])
def test_stop_start_restart(daemon, mailhost, transport):
    call = daemon.call if transport == "http" else daemon.route
    assert call("stop")[0] == 0
    assert call("isRunning") == (0, False)
    assert not mailhost.listening(143)
    assert unit_prop(mailhost, "ActiveState") == "inactive"
    with pytest.raises(OSError):
        imaplib.IMAP4(mailhost.address, 143, timeout=3)

    assert call("start")[0] == 0
    assert call("isRunning") == (0, True)
    assert greeting(mailhost).startswith(b"* OK")

    before = unit_prop(mailhost, "MainPID")
    assert call("restart")[0] == 0
    after = unit_prop(mailhost, "MainPID")
    assert after != before and int(after) > 0
    assert greeting(mailhost).startswith(b"* OK")


# How Dovecot says it (2.3 / 2.4).
CANNOT_OPEN = {"bookworm": "Can't open file {key}", "trixie": "open({key}) failed: No such file or directory"}


def test_start_that_cannot_succeed_quotes_dovecots_reason(daemon, mailhost, dist):
    reason = CANNOT_OPEN[dist].format(key=KEY)
    assert daemon.call("stop")[0] == 0
    mailhost.run(["mv", KEY, KEY + ".moved"])
    try:
        status, payload = daemon.call("start")
        assert status == 500
        assert "failed" in payload
        # Dovecot's own words, from the unit's journal:
        assert reason in payload, payload
        assert daemon.call("isRunning") == (0, False)
        status, payload = daemon.route("restart")
        assert status == 500 and reason in payload
    finally:
        mailhost.run(["mv", KEY + ".moved", KEY])
    assert daemon.call("start")[0] == 0
    assert greeting(mailhost).startswith(b"* OK")


def test_start_on_boot_toggles_the_unit_file_state(daemon, mailhost):
    assert daemon.call("startOnBoot", {"mda_imap_startonboot": 0})[0] == 0
    assert unit_prop(mailhost, "UnitFileState") == "disabled"
    assert daemon.call("queryStartOnBoot") == (0, {"mda_imap_startonboot": 0})
    assert daemon.route("startOnBoot", {"mda_imap_startonboot": "1"})[0] == 0
    assert unit_prop(mailhost, "UnitFileState") == "enabled"
    assert daemon.route("queryStartOnBoot") == (0, {"mda_imap_startonboot": 1})
    # The seed's default for mda_imap_startonboot is 1.
    assert daemon.call("startOnBoot", {"mda_imap_startonboot": 0})[0] == 0
    assert daemon.call("startOnBoot")[0] == 0
    assert unit_prop(mailhost, "UnitFileState") == "enabled"
