"""SOAP route(...) (imapd_ctl.transports.soap, soapcodec) through Flask's test client with the real
wiring (tests/unit/conftest.py `env`): the codec on envelopes captured from PHP's SoapClient
(tests/unit/fixtures/soap), replies in band exactly as XML-RPC's, Faults for what cannot be read."""
import xmlrpc.client

import pytest
import soapwire
from soapwire import CTYPE, Items, Raw, envelope, fixture, read

from imapd_ctl.core.actions import ACTIONS, CONTROLLER
from imapd_ctl.transports import soapcodec

FIXTURES = sorted(p.name for p in soapwire.FIXTURES.glob("*.xml"))


def post(env, body: bytes, version: str = "1.1", path: str = "/soap", ctype: str | None = None):
    reply = env.client.post(path, data=body, content_type=ctype or CTYPE[version],
                            headers={"SOAPAction": '"urn:imapd-ctl#route"'} if version == "1.1" else {})
    return reply, read(reply.get_data())


def route(env, *params, version="1.1", **kw):
    """The {status, payload} of one call; asserts the reply is a 200 answer, not a Fault."""
    reply, answer = post(env, envelope(params, version, **kw), version)
    assert reply.status_code == 200 and answer.fault is None, answer
    assert reply.content_type == CTYPE[version] and answer.version == version
    return answer.result


def xmlrpc_route(env, *params):
    body = xmlrpc.client.dumps(params, "iworx.route", allow_none=True)
    (value,), _ = xmlrpc.client.loads(env.client.post("/xmlrpc", data=body, content_type="text/xml").get_data(),
                                      use_builtin_types=True)
    return value


# -- the codec on PHP's own envelopes -----------------------------------------------------------

def test_the_fixtures_are_there():
    assert len(FIXTURES) == 8, FIXTURES     # written by tests/e2e/test_e2e_php.py


@pytest.mark.parametrize("name", FIXTURES)
def test_codec_reads_php_envelopes(name):
    version, params, repeated = soapcodec.parse(fixture(name, "KEY-1"))
    assert version == name[8:11] and repeated is None
    label = name[12:-4]
    expected = {
        "isRunning": ("KEY-1", CONTROLLER, "isRunning", []),
        "update": ("KEY-1", CONTROLLER, "update", {"imap_mem_limit": "268435456", "imap_max_connections": "61",
                                                   "imap_secure_mem_limit": "201326592",
                                                   "imap_secure_max_connections": "41"}),
        "startOnBoot-true": ("KEY-1", CONTROLLER, "startOnBoot", {"mda_imap_startonboot": True, "perms": ["EMAIL"]}),
        "apikey-map-nil-input": ({"apikey": "KEY-1"}, CONTROLLER, "listPortNumbersArray", None),
    }[label]
    assert params == expected


@pytest.mark.parametrize("name", FIXTURES)
def test_php_envelopes_get_the_answers_xmlrpc_gives(env, name):
    version = name[8:11]
    reply, answer = post(env, fixture(name, env.key), version)
    assert reply.status_code == 200 and answer.fault is None
    _, params, _ = soapcodec.parse(fixture(name, env.key))
    assert answer.result["status"] == 0
    if params[2] != "update" and params[2] != "startOnBoot":     # those changed the state: compare reads
        assert answer.result == xmlrpc_route(env, *params)


# -- replies, in band like XML-RPC ---------------------------------------------------------------

@pytest.mark.parametrize("action", [a for a in ACTIONS if not ACTIONS[a].mutating])
@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_every_read_action_answers_as_over_xmlrpc(env, action, version):
    assert route(env, env.key, CONTROLLER, action, [], version=version) == xmlrpc_route(env, env.key, CONTROLLER, action, {})


@pytest.mark.parametrize("path", ["/soap", "/nodeworx/soap"])
def test_both_paths_serve_route(env, path):
    reply, answer = post(env, envelope([env.key, CONTROLLER, "isRunning", []]), path=path)
    assert answer.result == {"status": 0, "payload": True}


@pytest.mark.parametrize("params, status, start", [
    (["wrong-key-" * 4, CONTROLLER, "isRunning", []], 401, "unknown API key"),
    ([{"email": "a@b.c", "password": "x"}, CONTROLLER, "isRunning", []], 401, "only API key"),
    ([None, CONTROLLER, "isRunning", []], 401, "an API key is required"),
    (["KEY", "/nodeworx/mail/pop3", "isRunning", []], 404, "unknown controller"),
    (["KEY", CONTROLLER, "reboot", []], 404, "unknown action"),
    (["KEY", CONTROLLER, "update", {"imap_max_connections": "0"}], 400, "imap_max_connections: must be"),
    (["KEY", CONTROLLER, "update", {"imap_max_connections": True}], 400, "imap_max_connections: must be"),
    (["KEY", CONTROLLER, "update", ["imap_max_connections", 5]], 400, "input: must be a struct"),
    (["KEY", CONTROLLER, "isRunning", ["x"]], 400, "input: must be a struct"),
    (["KEY", CONTROLLER, "isRunning", "x"], 400, "input: must be a struct"),
    (["KEY", CONTROLLER, "update", Items((("dry_run", 1), ("dry_run", 0)))], 400, "dry_run: given more than once"),
    (["KEY", CONTROLLER], 400, "route takes"),
    (["KEY", CONTROLLER, "isRunning", [], "extra"], 400, "route takes"),
])
def test_errors_are_in_band_as_over_xmlrpc(env, params, status, start):
    params = [env.key if p == "KEY" else p for p in params]
    for version in ("1.1", "1.2"):
        result = route(env, *params, version=version)
        assert result["status"] == status and result["payload"].startswith(start), result
    if not any(isinstance(p, Items) for p in params):    # (XML-RPC names its method iworx.route)
        expected = xmlrpc_route(env, *params)
        assert result["status"] == expected["status"] and expected["payload"].endswith(result["payload"])
    assert env.systemd.jobs == [] and env.flavour.events == []


@pytest.mark.parametrize("inputs", [[], "", None])
def test_empty_array_empty_string_and_nil_mean_no_input(env, inputs):
    assert route(env, env.key, CONTROLLER, "listServiceName", inputs) == {"status": 0, "payload": "imap4"}
    assert xmlrpc_route(env, env.key, CONTROLLER, "listServiceName", inputs) == {"status": 0, "payload": "imap4"}


@pytest.mark.parametrize("flag, expected", [(True, "enabled"), (False, "disabled")])
def test_a_boolean_is_1_or_0_for_a_flag_input(env, flag, expected):
    for send in (lambda i: route(env, env.key, CONTROLLER, "startOnBoot", i),
                 lambda i: xmlrpc_route(env, env.key, CONTROLLER, "startOnBoot", i)):
        result = send({"mda_imap_startonboot": flag, "cascade_to_nodes": False})
        assert result["status"] == 0 and result["payload"].startswith(expected), result


def test_json_stays_strict_about_booleans(env):
    reply = env.client.post(f"{CONTROLLER}/startOnBoot", json={"mda_imap_startonboot": True},
                            headers={"Authorization": f"Bearer {env.key}"})
    assert reply.status_code == 400 and "wrong type bool" in reply.get_json()["payload"]


def test_positional_parameters_as_non_wsdl_clients_send_them(env):
    assert route(env, env.key, CONTROLLER, "isRunning", names=None) == {"status": 0, "payload": True}


def test_large_numbers_travel_as_strings_like_xmlrpc(env):
    result = route(env, env.key, CONTROLLER, "update", {"imap_mem_limit": str(4 << 30), "dry_run": 1})
    assert result["status"] == 0 and "imap_mem_limit = 4294967296" in result["payload"]
    assert route(env, env.key, CONTROLLER, "queryUpdate", []) == xmlrpc_route(env, env.key, CONTROLLER, "queryUpdate", {})


def test_a_mutating_call_is_audited_with_transport_soap(env):
    route(env, env.key, CONTROLLER, "restart", [])
    assert '"transport": "soap"' in env.audit_log.read_text()


def test_payload_text_xml_cannot_carry_is_replaced(env):
    body = soapcodec.reply("1.1", {"status": 0, "payload": "a\x00b\x1bc\rd"})
    assert read(body).result == {"status": 0, "payload": "a\ufffdb\ufffdc\rd"}


# -- Faults: what cannot be read -----------------------------------------------------------------

DEEP = "<x>" * 40 + "</x>" * 40
BAD = {
    "not xml": b"hello",
    "empty": b"",
    "truncated": envelope(["k", CONTROLLER, "isRunning", []])[:-20],
    "dtd": envelope(["k", CONTROLLER, "isRunning", []], prolog='<!DOCTYPE x [<!ENTITY e "y">]>'),
    "external entity": envelope([Raw("<apikey>&e;</apikey>"), CONTROLLER, "isRunning", []],
                                prolog='<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'),
    "undeclared entity": envelope([Raw("<apikey>&e;</apikey>"), CONTROLLER, "isRunning", []]),
    "deep": envelope(["k", CONTROLLER, "isRunning", Raw(f"<input>{DEEP}</input>")]),
    "not an envelope": b"<methodCall><methodName>iworx.route</methodName></methodCall>",
    "other envelope namespace": envelope(["k"]).replace(b"http://schemas.xmlsoap.org/soap/envelope/", b"urn:x"),
    "other operation": envelope(["k", CONTROLLER, "isRunning", []], operation="system.listMethods"),
    "bad int": envelope(["k", CONTROLLER, "update", Raw('<input xsi:type="ns2:Map"><item><key>dry_run</key>'
                                                        '<value xsi:type="xsd:int">1x</value></item></input>')]),
    "bad boolean": envelope(["k", CONTROLLER, "startOnBoot", Raw('<input xsi:type="ns2:Map"><item><key>dry_run</key>'
                                                                 '<value xsi:type="xsd:boolean">yes</value></item></input>')]),
    "broken map": envelope(["k", CONTROLLER, "update", Raw('<input xsi:type="ns2:Map"><item><key>a</key></item></input>')]),
    "href": envelope([Raw('<apikey href="#id1"/>'), CONTROLLER, "isRunning", []]),
    "must understand": envelope(["k", CONTROLLER, "isRunning", []],
                                header='<SOAP-ENV:Header><x:s xmlns:x="urn:x" SOAP-ENV:mustUnderstand="1"/></SOAP-ENV:Header>'),
}


@pytest.mark.parametrize("version", ["1.1", "1.2"])
@pytest.mark.parametrize("case", list(BAD))
def test_an_unreadable_call_gets_a_fault(env, case, version):
    body = BAD[case]
    if version == "1.2":
        body = body.replace(soapwire.ENV["1.1"].encode(), soapwire.ENV["1.2"].encode())
    reply, answer = post(env, body.replace(b"'k'", env.key.encode()), version)
    assert answer.fault is not None and answer.fault[1].startswith("cannot read the SOAP call: "), answer
    assert answer.fault[0] == ("SOAP-ENV:Client" if version == "1.1" else "SOAP-ENV:Sender")
    assert reply.status_code == (500 if version == "1.1" else 400)    # SOAP's HTTP bindings
    assert b"root:" not in reply.get_data()
    assert env.systemd.jobs == [] and env.flavour.events == []


def test_a_body_over_the_limit_gets_a_fault_with_413(env):
    reply, answer = post(env, envelope([env.key, CONTROLLER, "isRunning", "x" * (70 * 1024)]))
    assert reply.status_code == 413 and answer.fault[0] == "SOAP-ENV:Client"


def test_other_methods_get_a_fault(env):
    reply = env.client.put("/soap", data=b"x", content_type="application/soap+xml")
    answer = read(reply.get_data())
    assert reply.status_code == 405 and answer.version == "1.2" and answer.fault[0] == "SOAP-ENV:Sender"


# -- the WSDL ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/soap?wsdl", "/soap?WSDL", "/nodeworx/soap?wsdl"])
def test_the_wsdl_describes_route_at_the_url_it_was_fetched_from(env, path):
    import xml.etree.ElementTree as ET
    reply = env.client.get(path, base_url="https://panel.example:2443")
    assert reply.status_code == 200 and reply.content_type.startswith("text/xml")
    doc = ET.fromstring(reply.get_data())
    wsdl = "{http://schemas.xmlsoap.org/wsdl/}"
    parts = [p.get("name") for p in doc.find(f"{wsdl}message[@name='routeRequest']")]
    assert parts == ["apikey", "ctrl_name", "action", "input"]
    locations = {a.get("location") for a in doc.iter() if a.tag.endswith("}address")}
    assert locations == {"https://panel.example:2443" + path.partition("?")[0]}
    bodies = [b for b in doc.iter() if b.tag.endswith("}body")]
    assert len(bodies) == 4 and all(b.get("use") == "encoded" for b in bodies)


@pytest.mark.parametrize("version, code", [("1.1", "SOAP-ENV:Server"), ("1.2", "SOAP-ENV:Receiver")])
def test_a_codec_bug_is_a_server_fault_and_logged(env, monkeypatch, caplog, version, code):
    def broken(body):
        raise RuntimeError("bug")
    monkeypatch.setattr(soapcodec, "parse", broken)
    reply, answer = post(env, envelope([env.key, CONTROLLER, "isRunning", []], version), version)
    assert reply.status_code == 500 and answer.fault[0] == code
    assert "reading a SOAP call failed unexpectedly" in caplog.text
