"""queryCapacity on real hosts through the real server: open IMAP sessions are counted as
connections in use, against the limit in force, on Dovecot and on Courier, over HTTP JSON and
XML-RPC alike."""
from __future__ import annotations

import imaplib
import time

import pytest
from sessions import login

pytestmark = pytest.mark.mailhost

SESSIONS = 3


@pytest.fixture(params=["dovecot", "courier"])
def served(request, dist):  # dist: the hosts looked up below are parametrized by it
    """(flavour, host, daemon); Dovecot's sessions log in (a user is added), Courier's are
    connections that got their greeting (each is one couriertcpd child, imaplogin)."""
    if request.param == "dovecot":
        request.getfixturevalue("mail_user")
        return "dovecot", request.getfixturevalue("mailhost"), request.getfixturevalue("daemon")
    return "courier", request.getfixturevalue("courierhost"), request.getfixturevalue("courier_daemon")


def open_sessions(flavour: str, host, n: int) -> list[imaplib.IMAP4]:
    if flavour == "dovecot":
        return [login(host) for _ in range(n)]
    return [imaplib.IMAP4(host.address, 143, timeout=10) for _ in range(n)]


def reading(call) -> dict:
    status, payload = call("queryCapacity")
    assert status == 0, payload
    return payload


def port(payload: dict, number: int) -> dict:
    return next(p for p in payload["ports"] if p["port"] == number)


def limiting_pool(payload: dict, flavour: str) -> dict:
    name = "imap" if flavour == "dovecot" else "courier-imap.service"
    return next(p for p in payload["pools"] if p["name"] == name)


def in_use_becomes(daemon, count: int, timeout: float = 10) -> int:
    """Poll (bounded) until port 143 shows `count` connections in use; the last count seen."""
    deadline = time.monotonic() + timeout
    while True:
        seen = port(reading(daemon.call), 143)["in_use"]
        if seen == count or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def test_open_sessions_are_connections_in_use(served):
    flavour, host, daemon = served
    assert in_use_becomes(daemon, 0) == 0
    limits = daemon.call("queryUpdate")[1]
    sessions = open_sessions(flavour, host, SESSIONS)
    try:
        for call in (daemon.call, daemon.route):       # HTTP JSON and XML-RPC
            payload = reading(call)
            plain = port(payload, 143)
            assert plain["up"] is True and plain["unit"] in {u["unit"] for u in payload["units"]}
            assert plain["in_use"] == SESSIONS, payload
            assert plain["queued"] == 0
            pool = limiting_pool(payload, flavour)
            assert pool["processes"] == SESSIONS, payload
            if flavour == "dovecot":
                # One post-login service for 143 and 993: its process_limit is the sum `update` set.
                assert plain["limit"] == limits["imap_max_connections"] + limits["imap_secure_max_connections"]
                assert plain["shared_with"] == [993]
                assert port(payload, 993)["limit"] == plain["limit"]
            else:
                # Each port has its own couriertcpd and MAXDAEMONS.
                assert plain["limit"] == limits["imap_max_connections"] == pool["process_limit"]
                assert port(payload, 993)["limit"] == limits["imap_secure_max_connections"]
                assert port(payload, 993)["in_use"] == 0
            assert plain["headroom"] == plain["limit"] - SESSIONS
            assert payload["flavour"] == flavour and payload["saturated"] is False, payload
            assert all(u["restarts"] == 0 and u["result"] == "success" for u in payload["units"])
            assert f"143: {SESSIONS} in use" in payload["summary"]
    finally:
        for s in sessions:
            s.logout()
    assert in_use_becomes(daemon, 0) == 0


def test_a_stopped_server_is_reported_down_with_its_configured_limit(served):
    flavour, host, daemon = served
    assert daemon.call("stop")[0] == 0
    try:
        payload = reading(daemon.call)
        plain = port(payload, 143)
        assert plain["up"] is False and plain["in_use"] == 0
        assert plain["limit"] == limiting_pool(payload, flavour)["process_limit"] > 0
        assert payload["saturated"] is True
        assert {"code": "down", "subject": "143", "value": 0, "text": "port 143 is not served"} in payload["signals"]
    finally:
        assert daemon.call("start")[0] == 0
    assert port(reading(daemon.call), 143)["up"] is True


def test_an_automatic_restart_is_a_signal(mailhost, daemon):
    """Dovecot killed behind the daemon's back and restarted by systemd (Restart=on-failure in a
    runtime drop-in): NRestarts shows in queryCapacity and in /metrics. Last in the module: the
    unit keeps its count."""
    dropin = "/run/systemd/system/dovecot.service.d/imapd-ctl-test-restart.conf"
    mailhost.write_file(dropin, "[Service]\nRestart=on-failure\nRestartSec=200ms\n")
    mailhost.systemctl("daemon-reload")
    try:
        main = mailhost.systemctl("show", "-p", "MainPID", "--value", "dovecot").stdout.strip()
        mailhost.run(["kill", "-KILL", main])
        deadline = time.monotonic() + 20
        while True:
            payload = reading(daemon.call)
            if (payload["units"][0]["restarts"] == 1 and port(payload, 143)["up"]) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert payload["units"][0]["restarts"] == 1 and port(payload, 143)["up"], payload
        assert {"code": "restarted", "subject": "dovecot.service", "value": 1} in \
            [{k: s[k] for k in ("code", "subject", "value")} for s in payload["signals"]]
        # /metrics: within metrics_state_interval (10 s) of a change made behind the daemon's back.
        deadline = time.monotonic() + 15
        while 'imapd_ctl_unit_restarts{unit="dovecot.service"} 1.0' not in (
                body := daemon.http("GET", "/metrics")[1].decode()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert 'imapd_ctl_unit_restarts{unit="dovecot.service"} 1.0' in body, body
    finally:
        mailhost.run(["rm", "-f", dropin])
        mailhost.systemctl("daemon-reload")
