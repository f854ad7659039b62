"""The operator's command line on a real mail host (systemd, Dovecot, the daemon under
gunicorn): `imapd-ctl status` shows each field and its --json is the API's own answers; an
interrupted change and a stopped IMAP server show; a key never comes from argv."""
from __future__ import annotations

import json
import socket

import pytest
from daemon import IMAPD_CTL, REPO, project_python

from imapd_ctl.core.actions import ACTIONS

pytestmark = pytest.mark.mailhost


def status(daemon, *args: str, check: bool = True):
    return daemon.ctl("status", "--key-stdin", *args, input=daemon.key, check=check)


def _undated(payload):
    """(payload without its reading time, the reading time or 0)."""
    if not isinstance(payload, dict) or "checked_at" not in payload:
        return payload, 0
    return {k: v for k, v in payload.items() if k != "checked_at"}, payload["checked_at"]


def test_status_json_is_the_apis_answers_and_the_hosts_facts(daemon, mailhost):
    report = json.loads(status(daemon, "--json").stdout)
    assert report["exit"] == 0 and report["problems"] == []
    for action, answer in report["api"].items():
        status_code, payload = daemon.call(action)
        # A capacity reading carries the second it was taken; the two readings may straddle one.
        shown, now = _undated(answer["payload"]), _undated(payload)
        assert [answer["status"], shown[0]] == [status_code, now[0]], action
        assert 0 <= now[1] - shown[1] <= 5, (action, shown[1], now[1])
    assert {"isRunning", "queryStartOnBoot", "queryUpdate"} <= set(report["api"])
    version = mailhost.run(["dpkg-query", "-W", "-f=${Version}", "dovecot-core"]).stdout.strip()
    assert report["server"] == {"flavour": "dovecot", "version": version, "units": ["dovecot.service"]}
    restarts = int(mailhost.systemctl("show", "-p", "NRestarts", "--value", "dovecot").stdout)
    enabled = mailhost.systemctl("show", "-p", "UnitFileState", "--value", "dovecot").stdout.strip()
    # 143, and 993 where the flavour names the secure port's unit (Dovecot serves both).
    assert {p["port"] for p in report["ports"]} in ({143}, {143, 993})
    for port in report["ports"]:
        assert port == {"unit": "dovecot.service", "port": port["port"], "active_state": "active",
                        "sub_state": "running", "enabled": enabled, "restarts": restarts, "result": "success",
                        "listening": True}
    assert report["interrupted_change"] is None
    assert report["daemon"]["ok"] and report["daemon"]["socket"] == daemon.socket


def test_status_screen_shows_each_field(daemon, mailhost):
    screen = status(daemon).stdout
    limits = daemon.call("queryUpdate")[1]
    for shown in ("IMAP server   dovecot ", "serving       yes (isRunning)", "143   dovecot.service  active  listening",
                  "start on boot enabled", f"imap_max_connections         {limits['imap_max_connections']}",
                  "changes       none interrupted", f"daemon        answers on {daemon.socket}"):
        assert shown in screen, (shown, screen)
    assert "\x1b[" not in screen                       # a pipe: no colour


def test_status_with_sessions_open_shows_them(daemon, mailhost):
    if "queryCapacity" not in ACTIONS:
        pytest.skip("no queryCapacity in this build's action table (the live-core issue adds it)")
    sessions = [socket.create_connection((mailhost.address, 143), timeout=5) for _ in range(3)]
    try:
        for s in sessions:
            assert s.recv(200).startswith(b"* OK")
        report = json.loads(status(daemon, "--json").stdout)
        assert report["api"]["queryCapacity"]["status"] == 0
        assert "3/" in status(daemon).stdout.split("connections", 1)[1].splitlines()[0]
    finally:
        for s in sessions:
            s.close()


def test_status_names_what_is_down_and_exits_1(daemon, mailhost):
    journal = ("from imapd_ctl.adapters.journal import Journal; "
               "Journal('/var/lib/imapd-ctl').begin('t-cli', 'update', {}, {}, {})")
    mailhost.run([project_python(mailhost), "-c", journal], env={"PYTHONPATH": str(REPO)})
    mailhost.systemctl("stop", "dovecot")
    try:
        r = status(daemon, check=False)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "serving       NO (isRunning false)" in r.stdout
        assert "interrupted: t-cli (update) at step begun; run `imapd-ctl recover`" in r.stdout
        assert "! dovecot.service: inactive, nothing of it listens on port 143" in r.stdout
    finally:
        mailhost.start_dovecot()
        daemon.ctl("recover")
    assert json.loads(status(daemon, "--json").stdout)["exit"] == 0


@pytest.mark.parametrize("argv, code, says", [
    (["call", "isRunning", "--key", "K"], 2, "--key is refused"),
    (["call", "isRunning", "--socket", "/run/nothing.sock", "--key-stdin"], 3, "is imapd-ctl.socket active?"),
])
def test_errors_say_what_to_do_next(daemon, argv, code, says):
    r = daemon.ctl(*argv, check=False, input=daemon.key)
    assert r.returncode == code and says in r.stderr, r.stderr


def test_root_needs_no_key_and_another_user_is_told_to_bring_one(daemon, mailhost):
    r = daemon.ctl("call", "isRunning", check=False)
    assert (r.returncode, r.stdout.strip()) == (0, "true"), r.stderr
    r = mailhost.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", IMAPD_CTL,
                      "--config", "/dev/null", "call", "isRunning", "--socket", daemon.socket], check=False)
    assert r.returncode == 5 and "an API key is needed (root needs none on this host)" in r.stderr, r.stderr
    assert "imapd-ctl key create NAME" in r.stderr


def test_permission_denied_names_the_group(daemon, mailhost):
    r = mailhost.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", IMAPD_CTL,
                      "--config", "/dev/null", "call", "isRunning", "--socket", daemon.socket, "--key-stdin"],
                     check=False, input=daemon.key)
    assert r.returncode == 4, r.stdout + r.stderr
    assert "permission denied on" in r.stderr and "member of group" in r.stderr



def test_call_reaches_each_controller_of_the_table(daemon):
    from imapd_ctl.cli.calls import controllers
    paths = controllers()
    if "simap" not in paths:
        pytest.skip("this build's action table serves only /nodeworx/mail/imap (the simap branch adds simap)")
    for name in paths:
        r = daemon.ctl("call", "--controller", name, "--json", "listServiceInfo", "--key-stdin", input=daemon.key)
        assert json.loads(r.stdout)["payload"]["ctrl"] == paths[name]
