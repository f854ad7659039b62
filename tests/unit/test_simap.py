"""The secure-IMAP controller /nodeworx/mail/simap (service imap4-ssl, port 993): the same table
and handlers as /nodeworx/mail/imap, answering for the port and units of IMAP over TLS. Through
the real app, wiring, Controller and dispatch, over HTTP JSON and XML-RPC; systemd, the IMAP
server and the port check are the fakes of conftest.py."""
import json
import xmlrpc.client

import pytest

from imapd_ctl.core.settings import Node

from imapd_ctl.core.actions import IMAP, SIMAP

SSL_UNIT = "fake-imapd-ssl.service"


def call(env, transport, action, inputs=None, controller=SIMAP.path):
    """(status, payload) of one call of `controller` over HTTP JSON or XML-RPC."""
    if transport == "http":
        reply = env.client.post(f"{controller}/{action}", json=inputs or {}, headers=env.auth())
        body = json.loads(reply.get_data(as_text=True))
        assert reply.status_code == (body["status"] or 200)
        return body["status"], body["payload"]
    request = xmlrpc.client.dumps((env.key, controller, action, inputs or {}), "iworx.route")
    reply = xmlrpc.client.loads(env.client.post("/xmlrpc", data=request).get_data())[0][0]
    return reply["status"], reply["payload"]


@pytest.fixture
def courier_like(env):
    """The fake flavour with a unit of its own for 993, as Courier has (courier-imap-ssl.service)."""
    env.flavour.units = (env.unit, SSL_UNIT)
    env.flavour.secure_unit = SSL_UNIT
    env.flavour.unit_ports = lambda: {env.unit: 143, SSL_UNIT: 993}
    env.systemd.states[SSL_UNIT] = "active"
    env.systemd.loaded.add(SSL_UNIT)
    env.systemd.pids[SSL_UNIT] = 4343
    return env


BOTH = pytest.mark.parametrize("transport", ["http", "xmlrpc"])


@pytest.fixture(autouse=True)
def serving_993(env):
    """The fake flavour's unit listens on 993 too (as Dovecot's does)."""
    env.ports.ports = {143, 993}


@BOTH
def test_list_actions_describe_the_secure_service(env, transport):
    assert call(env, transport, "listServiceName") == (0, "imap4-ssl")
    assert call(env, transport, "listPortNumbers") == (0, "993")
    assert call(env, transport, "listPortNumbersArray") == (0, [993])
    assert call(env, transport, "listServicePage") == (0, "/nodeworx/mail/mda")
    assert call(env, transport, "listRequiredPermissions") == (0, ["EMAIL"])
    assert call(env, transport, "listGeneralName") == (0, SIMAP.general_name)
    assert call(env, transport, "listServiceInfo") == (0, {
        "id": "imap4-ssl", "name": SIMAP.general_name, "ports": "993", "page": "/nodeworx/mail/mda",
        "ctrl": "/nodeworx/mail/simap", "is_running": 1})
    # ... and imap's stay the seed's.
    assert call(env, transport, "listServiceInfo", controller=IMAP.path)[1]["ports"] == "143"


def test_is_running_checks_port_993_of_the_unit_serving_it(env):
    assert call(env, "http", "isRunning") == (0, True)
    assert env.ports.asked == [(4242, 993)]
    env.ports.ports = {143}             # the unit is up, but nothing of it listens on 993
    assert call(env, "http", "isRunning") == (0, False)
    assert call(env, "http", "isRunning", controller=IMAP.path) == (0, True)
    assert call(env, "http", "listServiceInfo")[1]["is_running"] == 0


def test_ssl_port_is_a_setting(env):
    env.settings.ssl_port = 1993
    env.ports.ports = {143, 1993}
    assert call(env, "http", "listPortNumbersArray") == (0, [1993])
    assert call(env, "http", "isRunning") == (0, True)
    assert env.ports.asked[-1] == (4242, 1993)


@BOTH
def test_one_unit_for_both_ports_is_acted_on_and_the_reply_says_so(env, transport):
    """Dovecot: dovecot.service serves 143 and 993; simap's stop/start/restart act on it, so on
    IMAP of both ports, and the reply says so."""
    note = " (it serves ports 143 and 993: IMAP on both is affected)"
    assert call(env, transport, "stop") == (0, f"stopped {env.unit}{note}")
    assert env.systemd.states[env.unit] == "inactive"
    assert call(env, transport, "isRunning", controller=IMAP.path) == (0, False)
    assert call(env, transport, "start") == (0, f"started {env.unit}{note}")
    assert call(env, transport, "restart") == (0, f"restarted {env.unit}{note}")
    assert call(env, transport, "startOnBoot", {"mda_imap_startonboot": 0}) == (
        0, f"disabled {env.unit} at boot{note}")
    assert env.systemd.jobs == [("stop", env.unit), ("start", env.unit), ("restart", env.unit),
                                ("disable", env.unit)]


@BOTH
def test_a_unit_of_its_own_is_the_only_one_acted_on(courier_like, transport):
    env = courier_like
    assert call(env, transport, "stop") == (0, f"stopped {SSL_UNIT}")
    assert call(env, transport, "isRunning") == (0, False)
    assert call(env, transport, "isRunning", controller=IMAP.path) == (0, True)
    assert call(env, transport, "start") == (0, f"started {SSL_UNIT}")
    assert call(env, transport, "restart") == (0, f"restarted {SSL_UNIT}")
    assert call(env, transport, "startOnBoot", {"mda_imap_startonboot": 0}) == (0, f"disabled {SSL_UNIT} at boot")
    assert call(env, transport, "queryStartOnBoot") == (0, {"mda_imap_startonboot": 0})
    assert call(env, transport, "queryStartOnBoot", controller=IMAP.path) == (0, {"mda_imap_startonboot": 1})
    assert env.systemd.jobs == [("stop", SSL_UNIT), ("start", SSL_UNIT), ("restart", SSL_UNIT),
                                ("disable", SSL_UNIT)]
    # imap drives both daemons, as before.
    assert call(env, transport, "stop", controller=IMAP.path) == (0, f"stopped {env.unit}, {SSL_UNIT}")


def test_start_waits_for_993_and_names_it(env):
    env.ports.ports = {143}
    status, payload = call(env, "http", "start")
    assert status == 500
    assert f"start {env.unit}: the unit is active but nothing of it listens on port 993" in payload


def test_no_unit_serving_993_is_an_error_not_false(env):
    env.flavour.secure_unit = None
    for action in ("isRunning", "stop", "listServiceInfo"):
        status, payload = call(env, "http", action)
        assert status == 500 and "serves IMAP over TLS on port 993" in payload, (action, payload)
    assert call(env, "http", "listPortNumbers") == (0, "993")   # the constant list* still answer
    assert env.systemd.jobs == []


def test_update_and_its_query_are_shared_by_both_controllers(env):
    assert call(env, "http", "update", {"imap_secure_max_connections": 77})[0] == 0
    for controller in (IMAP.path, SIMAP.path):
        assert call(env, "xmlrpc", "queryUpdate", controller=controller)[1]["imap_secure_max_connections"] == 77


def test_on_node_and_audit_name_the_controller(env):
    assert call(env, "http", "restartOnNode", {"node_id": "mail1"})[0] == 0
    assert call(env, "xmlrpc", "stopOnNode")[0] == 0
    lines = env.audit_lines()
    assert [(l["controller"], l["action"], l["transport"]) for l in lines] == [
        ("/nodeworx/mail/simap", "restartOnNode", "http"), ("/nodeworx/mail/simap", "stopOnNode", "xmlrpc")]


def test_unknown_controller_over_both_transports(env):
    assert call(env, "xmlrpc", "isRunning", controller="/nodeworx/mail/pop3")[0] == 404
    reply = env.client.post("/nodeworx/mail/pop3/isRunning", headers=env.auth())
    assert reply.status_code == 404


def test_forwarding_and_cascades_keep_the_controller(env, monkeypatch):
    """*OnNode for another node and cascade_to_nodes=1 call that node's simap, not its imap."""
    cluster = env.services.cluster
    sent = []
    monkeypatch.setattr(cluster, "_nodes", lambda: [Node("mail2", "https://mail2.example:2443", "k", "/ca.pem")])
    monkeypatch.setattr(cluster, "node", lambda node_id: node_id)
    monkeypatch.setattr(cluster, "call", lambda node, action, inputs, controller: (
        sent.append(("call", node, action, controller)) or (0, True)))
    monkeypatch.setattr(cluster, "replay", lambda action, values, controller: (
        sent.append(("replay", action, controller)) or [{"id": "mail2", "status": 0, "payload": "ok"}]))
    assert call(env, "http", "isRunningOnNode", {"node_id": "mail2"}) == (0, True)
    status, payload = call(env, "xmlrpc", "restart", {"cascade_to_nodes": 1})
    assert status == 0 and [o["id"] for o in payload] == ["mail1", "mail2"]
    assert sent == [("call", "mail2", "isRunning", SIMAP.path), ("replay", "restart", SIMAP.path)]
