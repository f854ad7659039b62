"""Every action end to end: real gunicorn, real systemd over the system bus, real Dovecot,
over HTTP JSON and over XML-RPC exactly as InterWorx API clients call it."""
from __future__ import annotations

import json

import pytest

from daemon import CONTROLLERS, assert_seed_payloads, caller, exercise_every_action, service_info
from imapd_ctl.core.actions import ACTIONS

pytestmark = pytest.mark.mailhost


def test_isrunning_envelope_is_byte_exact(daemon):
    status, body = daemon.http("GET", "/nodeworx/mail/imap/isRunning", key=daemon.key)
    assert (status, body) == (200, b'{"status": 0, "payload": true}\n')


@pytest.mark.parametrize("controller", CONTROLLERS)
@pytest.mark.parametrize("transport", ["http", "xmlrpc"])
def test_read_only_actions_return_the_seed_payloads(daemon, transport, controller):
    assert_seed_payloads(caller(daemon, transport, controller), daemon.node_id, controller)


def test_read_only_actions_reflect_a_stopped_server(daemon, mailhost):
    mailhost.systemctl("stop", "dovecot")
    try:
        for call in (daemon.call, daemon.route):
            assert call("isRunning") == (0, False)
            assert call("isRunningOnNode") == (0, False)
            assert call("listServiceInfo") == (0, service_info(0))
            assert call("listPortNumbers") == (0, "143")
    finally:
        mailhost.start_dovecot()


def test_simap_is_running_checks_port_993(daemon, mailhost):
    """Dovecot serves 143 and 993 from one unit: with its imaps listener switched off (and the
    unit still active), simap's isRunning is false while imap's stays true."""
    from imapd_ctl.core.waiting import wait_until
    simap = caller(daemon, "xmlrpc", "/nodeworx/mail/simap")
    dropin = "/etc/dovecot/conf.d/98-test-no-imaps.conf"
    mailhost.write_file(dropin, "service imap-login {\n  inet_listener imaps {\n    port = 0\n  }\n}\n")
    mailhost.systemctl("reload", "dovecot")
    try:
        assert wait_until(lambda: not mailhost.listening(993), 10, 0.1)
        assert mailhost.listening(143)
        assert simap("isRunning") == (0, False)
        assert simap("listServiceInfo") == (0, service_info(0, "/nodeworx/mail/simap"))
        assert daemon.route("isRunning") == (0, True)
    finally:
        mailhost.run(["rm", "-f", dropin])
        mailhost.systemctl("reload", "dovecot")
    assert wait_until(lambda: mailhost.listening(993), 10, 0.1)
    assert simap("isRunning") == (0, True)


def test_read_only_actions_answer_get_with_query_inputs(daemon):
    assert daemon.call("isRunningOnNode", {"node_id": daemon.node_id}, method="GET") == (0, True)
    assert daemon.call("listPortNumbersArray", method="GET") == (0, [143])


def test_xmlrpc_key_and_input_forms(daemon):
    proxy = daemon.xmlrpc()
    for key in (daemon.key, {"apikey": daemon.key}):
        for inputs in ({}, None, {"perms": ["EMAIL"], "node_id": daemon.node_id}):
            reply = proxy.iworx.route(key, "/nodeworx/mail/imap", "isRunningOnNode", inputs)
            assert reply == {"status": 0, "payload": True}, (key, inputs)
    # InterWorx clients may send the input struct with extra keys on mutating actions too.
    assert proxy.iworx.route({"apikey": daemon.key}, "/nodeworx/mail/imap", "startOnBoot",
                             {"mda_imap_startonboot": 1, "perms": "x"})["status"] == 0


@pytest.mark.parametrize("controller", CONTROLLERS)
@pytest.mark.parametrize("transport", ["http", "xmlrpc", "soap"])
def test_every_action_runs(daemon, mailhost, transport, controller):
    """All 19 actions of each controller, each with its usual inputs, succeed through the real
    stack (simap's stop/start/restart act on dovecot.service, which serves both ports)."""
    exercise_every_action(caller(daemon, transport, controller), daemon.node_id)
    assert mailhost.listening(143) and mailhost.listening(993)


def test_unknown_node_is_a_404_listing_the_known_node(daemon):
    for call in (daemon.call, daemon.route):
        status, payload = call("restartOnNode", {"node_id": "node9"})
        assert status == 404
        assert "node9" in payload and daemon.node_id in payload


def test_unknown_action_is_404_on_both_transports(daemon):
    assert daemon.call("reboot")[0] == 404
    assert daemon.route("reboot")[0] == 404


def test_mutating_actions_refuse_get(daemon):
    status, payload = daemon.call("stop", method="GET")
    assert status == 405 and "POST" in payload
    assert daemon.call("isRunning") == (0, True)


def test_mutating_calls_are_audited_without_the_key(daemon):
    before = len(daemon.audit_lines())
    assert daemon.call("startOnBoot", {"mda_imap_startonboot": 1})[0] == 0
    assert daemon.route("update", {"imap_max_connections": 0})[0] == 400
    lines = daemon.audit_lines()[before:]
    assert [(l["action"], l["status"], l["transport"], l["key"]) for l in lines] == [
        ("startOnBoot", 0, "http", "panel"), ("update", 400, "xmlrpc", "panel")]
    log = daemon.host.read_file("/var/log/imapd-ctl/audit.log").decode()
    assert daemon.key not in log


def test_cli_call_goes_through_the_daemon(daemon):
    out = daemon.ctl("call", "--key-stdin", "--socket", daemon.socket, "listServiceName", input=daemon.key)
    assert out.stdout.strip() == "imap4"
    out = daemon.ctl("call", "--key-stdin", "--socket", daemon.socket, "--json", "isRunning", input=daemon.key)
    assert out.stdout.strip() == '{"status": 0, "payload": true}'
    bad = daemon.ctl("call", "--key-stdin", "update", "imap_max_conections=5", check=False, input=daemon.key)
    assert bad.returncode == 2 and "imap_max_conections" in bad.stderr


def test_cli_check_reports_a_healthy_host(daemon):
    out = daemon.ctl("check")
    assert "FAIL" not in out.stdout, out.stdout
    assert "dovecot" in out.stdout


def test_openapi_and_healthz_are_served(daemon):
    status, body = daemon.http("GET", "/healthz")
    assert status == 200
    doc = json.loads(daemon.http("GET", "/openapi.json")[1])
    assert {p.rsplit("/", 1)[1] for p in doc["paths"] if p.startswith("/nodeworx/")} == set(ACTIONS)
    status, page = daemon.http("GET", "/docs")          # no key
    assert status == 200 and b'<h2 id="queryCapacity">' in page


def test_loopback_tcp_listener_serves_both_transports(daemon, mailhost):
    out = mailhost.run(["curl", "-s", "-H", f"Authorization: Bearer {daemon.key}",
                        "http://127.0.0.1:8143/nodeworx/mail/imap/isRunning"]).stdout
    assert out == '{"status": 0, "payload": true}\n'
    script = ("import sys, xmlrpc.client\n"
              "api = xmlrpc.client.ServerProxy('http://127.0.0.1:8143/xmlrpc', allow_none=True)\n"
              "print(api.iworx.route({'apikey': sys.argv[1]}, '/nodeworx/mail/imap', 'listServiceName', None))\n")
    out = mailhost.run(["python3", "-c", script, daemon.key]).stdout
    assert out.strip() == "{'status': 0, 'payload': 'imap4'}"
    # Loopback only: nothing of ours listens on the host's veth address.
    assert "127.0.0.1:8143" in mailhost.run(["ss", "-ltnH", "sport = :8143"]).stdout
    assert f"{mailhost.address}:8143" not in mailhost.run(["ss", "-ltnH"]).stdout
