"""XML-RPC iworx.route (imapd_ctl.transports.xmlrpc) through Flask's test client, as InterWorx API clients
call it, with the `env` fixture of tests/unit/conftest.py (real wiring, Controller, KeyStore, dispatch)."""
import xmlrpc.client

import pytest


from imapd_ctl.core.actions import ACTIONS, CONTROLLER

CTRL = "/nodeworx/mail/imap"


def route(env, *params):
    """POST an iworx.route call; return the decoded reply struct (a Fault reply raises)."""
    body = xmlrpc.client.dumps(params, "iworx.route", allow_none=True)
    reply = env.client.post("/xmlrpc", data=body, content_type="text/xml")
    assert reply.status_code == 200
    assert reply.mimetype == "text/xml"
    (value,), method = xmlrpc.client.loads(reply.get_data(), use_builtin_types=True)
    assert method is None
    assert isinstance(value, dict) and sorted(value) == ["payload", "status"], value
    return value


def test_controller_path_constant():
    assert CONTROLLER == CTRL


def test_key_as_string(env):
    assert route(env, env.key, CTRL, "isRunning", {}) == {"status": 0, "payload": True}


def test_key_as_apikey_struct(env):
    assert route(env, {"apikey": env.key}, CTRL, "isRunning", {}) == {"status": 0, "payload": True}


@pytest.mark.parametrize("params", [({},), (None,), ()])
def test_input_may_be_struct_empty_nil_or_left_out(env, params):
    assert route(env, env.key, CTRL, "listServiceName", *params) == {"status": 0, "payload": "imap4"}


def test_unknown_input_keys_such_as_perms_are_ignored(env):
    reply = route(env, env.key, CTRL, "listPortNumbersArray", {"perms": ["EMAIL"], "junk": "x"})
    assert reply == {"status": 0, "payload": [143]}


def test_apikey_struct_with_extra_keys_works(env):
    reply = route(env, {"apikey": env.key, "perms": ["EMAIL"]}, CTRL, "isRunning", {})
    assert reply == {"status": 0, "payload": True}


def test_list_service_info_struct(env):
    reply = route(env, env.key, CTRL, "listServiceInfo", None)
    assert reply == {"status": 0, "payload": {
        "id": "imap4", "name": "##LG_IMAP##", "ports": "143", "page": "/nodeworx/mail/mda",
        "ctrl": CTRL, "is_running": 1}}


@pytest.mark.parametrize("auth", [
    {"email": "admin@example.com", "password": "secret"},
    {"sessionid": "abc123"},
])
def test_other_auth_forms_get_401_with_a_message(env, auth):
    reply = route(env, auth, CTRL, "isRunning", {})
    assert reply["status"] == 401
    assert "apikey" in reply["payload"]
    assert "secret" not in reply["payload"]


@pytest.mark.parametrize("auth", ["", "wrong-key-" * 4, {}, {"apikey": ""}, {"apikey": 12345}, None, 12345])
def test_missing_or_bad_key_is_401(env, auth):
    assert route(env, auth, CTRL, "isRunning", {})["status"] == 401


def test_key_without_email_is_403(env):
    reply = route(env, env.dns_key, CTRL, "isRunning", {})
    assert reply["status"] == 403 and "EMAIL" in reply["payload"]


@pytest.mark.parametrize("ctrl", ["/nodeworx/mail/pop3", "/nodeworx/mail/imap/", "", "/NODEWORX/mail/imap"])
def test_wrong_controller_is_404_only_with_a_valid_key(env, ctrl):
    reply = route(env, env.key, ctrl, "isRunning", {})
    assert reply["status"] == 404 and CTRL in reply["payload"]
    assert route(env, "wrong-key-" * 4, ctrl, "isRunning", {})["status"] == 401
    assert route(env, {"email": "a@b.c", "password": "x"}, ctrl, "isRunning", {})["status"] == 401
    assert route(env, env.dns_key, ctrl, "isRunning", {})["status"] == 403


def test_unknown_action_is_404_only_with_a_valid_key(env):
    assert route(env, env.key, CTRL, "nope", {})["status"] == 404
    assert route(env, "wrong-key-" * 4, CTRL, "nope", {})["status"] == 401


@pytest.mark.parametrize("action, inputs, field", [
    ("update", {"imap_max_connections": 0}, "imap_max_connections"),
    ("update", {"imap_max_connections": True}, "imap_max_connections"),
    ("update", {"imap_mem_limit": 1.5e9}, "imap_mem_limit"),
    ("update", {"imap_secure_mem_limit": "1e9"}, "imap_secure_mem_limit"),
    ("startOnBoot", {"mda_imap_startonboot": 2}, "mda_imap_startonboot"),
    ("stopOnNode", {"node_id": "a\nb"}, "node_id"),
])
def test_bad_input_is_a_400_struct(env, action, inputs, field):
    reply = route(env, env.key, CTRL, action, inputs)
    assert reply["status"] == 400
    assert reply["payload"].startswith(f"{field}: must be ")
    assert env.systemd.jobs == [] and env.flavour.events == []


@pytest.mark.parametrize("inputs", [["imap_max_connections", 5], "imap_max_connections=5", 5])
def test_input_that_is_not_a_struct_is_400(env, inputs):
    reply = route(env, env.key, CTRL, "update", inputs)
    assert reply["status"] == 400 and "struct" in reply["payload"]


def test_bad_input_is_reported_only_after_auth(env):
    assert route(env, "wrong-key-" * 4, CTRL, "update", {"imap_max_connections": 0})["status"] == 401
    assert route(env, "wrong-key-" * 4, CTRL, "update", ["x"])["status"] == 401


def test_large_mem_limit_as_a_string(env):
    reply = route(env, env.key, CTRL, "update", {"imap_mem_limit": str(4 << 30), "dry_run": 1})
    assert reply["status"] == 0
    assert "+imap_mem_limit = 4294967296\n" in reply["payload"]


def test_mutating_call_is_audited_with_transport_xmlrpc(env):
    reply = route(env, {"apikey": env.key}, CTRL, "stop", {"cascade_to_nodes": 0, "perms": "x"})
    assert reply["status"] == 0
    assert env.systemd.jobs == [("stop", env.unit)]
    (line,) = env.audit_lines()
    assert (line["key"], line["transport"], line["action"], line["status"]) == ("panel", "xmlrpc", "stop", 0)
    assert line["inputs"] == {"cascade_to_nodes": 0}
    assert env.key not in env.audit_log.read_text()


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_every_action_answers_with_a_status_payload_struct(env, action):
    reply = route(env, env.key, CTRL, action, {"dry_run": 1} if action == "update" else None)
    assert reply["status"] == 0, reply


def test_query_update_with_a_large_mem_limit(env):
    """XML-RPC ints are 32-bit: a 4 GiB limit comes back as a decimal string (not a Fault),
    and that string is accepted as input again."""
    env.flavour.current_values = lambda: {**env.flavour.DEFAULTS, "imap_mem_limit": 4 << 30}
    assert route(env, env.key, CTRL, "queryUpdate", {}) == {
        "status": 0, "payload": {**env.flavour.DEFAULTS, "imap_mem_limit": str(4 << 30)}}
    assert route(env, env.key, CTRL, "update", {"imap_mem_limit": str(4 << 30), "dry_run": 1})["status"] == 0


def test_too_few_parameters_is_a_400_struct(env):
    body = xmlrpc.client.dumps((env.key, CTRL), "iworx.route")
    reply = env.client.post("/xmlrpc", data=body, content_type="text/xml")
    (result,), _ = xmlrpc.client.loads(reply.data)
    assert result["status"] == 400 and "iworx.route takes" in result["payload"]


# --- one parse: repeated members, and faults exactly as the standard library's dispatcher ---

def raw_call(env, body):
    reply = env.client.post("/xmlrpc", data=body, content_type="text/xml")
    assert reply.status_code == 200 and reply.mimetype == "text/xml"
    return reply.get_data()


def member(name, value):
    return f"<member><name>{name}</name><value>{value}</value></member>"


def call_body(key, inputs_xml):
    return (f"<?xml version='1.0'?><methodCall><methodName>iworx.route</methodName><params>"
            f"<param><value><string>{key}</string></value></param>"
            f"<param><value><string>{CTRL}</string></value></param>"
            f"<param><value><string>stopOnNode</string></value></param>"
            f"<param><value>{inputs_xml}</value></param></params></methodCall>").encode()


def test_a_repeated_member_is_400_after_auth(env):
    twice = "<struct>" + member("node_id", "<string>a\nb</string>") + member("node_id", "<string>mail1</string>") + "</struct>"
    (result,), _ = xmlrpc.client.loads(raw_call(env, call_body(env.key, twice)))
    assert result == {"status": 400, "payload": "node_id: given more than once"}
    (result,), _ = xmlrpc.client.loads(raw_call(env, call_body("wrong-key-" * 4, twice)))
    assert result["status"] == 401
    nested = ("<struct>" + member("node_id", "<string>mail1</string>")
              + member("x", "<struct>" + member("a", "<int>1</int>") * 2 + "</struct>") + "</struct>")
    (result,), _ = xmlrpc.client.loads(raw_call(env, call_body(env.key, nested)))
    assert result == {"status": 400, "payload": "a: given more than once"}
    assert env.systemd.jobs == []


def test_the_same_name_in_sibling_structs_is_not_repeated(env):
    siblings = ("<struct>" + member("node_id", "<string>mail1</string>")
                + member("x", "<array><data><value><struct>" + member("a", "<int>1</int>") + "</struct></value>"
                         "<value><struct>" + member("a", "<int>2</int>") + "</struct></value></data></array>")
                + "</struct>")
    (result,), _ = xmlrpc.client.loads(raw_call(env, call_body(env.key, siblings)))
    assert result["status"] == 0, result


def _stdlib_reply(body):
    """What Python's own dispatcher answers (the transport's former implementation)."""
    from xmlrpc.server import SimpleXMLRPCDispatcher
    dispatcher = SimpleXMLRPCDispatcher(allow_none=True, encoding="utf-8", use_builtin_types=True)
    dispatcher.register_function(lambda *args: pytest.fail("not a call to answer"), "iworx.route")
    return dispatcher._marshaled_dispatch(body)


@pytest.mark.parametrize("body", [
    b"", b"not xml", b"<methodCall/>", b"<methodCall></methodCall>", b"\xff\xfe<x/>",
    b"<methodResponse><params><param><value>1</value></param></params></methodResponse>",
    b"<methodResponse><fault><value><struct></struct></value></fault></methodResponse>",
    b"<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>4</int></value></member>"
    b"<member><name>faultString</name><value><string>x</string></value></member></struct></value></fault>"
    b"</methodResponse>",
    xmlrpc.client.dumps(("k", CTRL, "isRunning"), "system.listMethods").encode(),
    xmlrpc.client.dumps(("k", CTRL, "isRunning"), "IWORX.ROUTE").encode(),
    b'<?xml version="1.0" encoding="x-imapd-ctl"?><methodCall><methodName>iworx.route</methodName></methodCall>',
    b"<methodCall><methodName>iworx.route</methodName><params><param><value><i4>x</i4></value></param>"
    b"</params></methodCall>",
    b"<methodCall><methodName>iworx.route</methodName><params><param><value><bogus/></value></param>"
    b"</params></methodCall>",
])
def test_a_body_that_is_no_call_gets_the_standard_fault(env, body):
    assert raw_call(env, body) == _stdlib_reply(body)
    with pytest.raises(xmlrpc.client.Fault):
        xmlrpc.client.loads(raw_call(env, body))


@pytest.mark.parametrize("body", [
    b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><methodCall><methodName>&c;&c;&c;</methodName></methodCall>',
    b'<?xml version="1.0"?><!DOCTYPE m SYSTEM "file:///etc/passwd"><methodCall><methodName>x</methodName>'
    b"</methodCall>",
    b'<!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/hostname">]><methodCall><methodName>&x;</methodName>'
    b"</methodCall>",
])
def test_a_dtd_or_an_entity_is_refused_before_anything_expands(env, body):
    """Entity expansion (issue 18: 1,136 bytes in made an 8 MB fault out) and external entities."""
    reply = raw_call(env, body)
    assert len(reply) < 600 and b"aaaa" not in reply
    with pytest.raises(xmlrpc.client.Fault, match="not allowed in an XML-RPC call: .*no DTD, no entities"):
        xmlrpc.client.loads(reply)


def test_no_fault_echoes_a_long_name_or_text_whole(env):
    for body in (xmlrpc.client.dumps(("k",), "m" * 20_000).encode(),
                 xmlrpc.client.dumps(xmlrpc.client.Fault(4, "t" * 20_000), methodresponse=True).encode()):
        reply = raw_call(env, body)
        assert len(reply) < 1000
        with pytest.raises(xmlrpc.client.Fault):
            xmlrpc.client.loads(reply)
