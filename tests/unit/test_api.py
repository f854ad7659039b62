"""The HTTP JSON API (imapd_ctl.transports.http, mounted by transports.app) through Flask's
test client, with the real wiring, Controller, dispatch, KeyStore and audit log; only systemd,
the IMAP server and psutil are faked (tests/unit/fakes.py, built by
conftest.py's fixtures)."""
import json
import os

import pytest

from imapd_ctl.core.errors import ConfigInvalid

from imapd_ctl.core.actions import ACTIONS, CONTROLLER, CONTROLLERS, UPDATE_FIELDS
from imapd_ctl.transports.http import MAX_BODY

MUTATING = sorted(n for n, a in ACTIONS.items() if a.mutating)
READ_ONLY = sorted(n for n, a in ACTIONS.items() if not a.mutating)


def envelope(reply):
    """The reply's envelope, checking its shape and that HTTP status == envelope status."""
    assert reply.mimetype == "application/json"
    body = json.loads(reply.get_data(as_text=True))
    assert list(body) == ["status", "payload"]
    assert reply.status_code == (body["status"] or 200)
    return body


# --- envelope and the seed's payloads ------------------------------------------------------

def test_is_running_envelope_is_byte_exact(env):
    reply = env.call("isRunning")
    assert reply.status_code == 200
    assert reply.get_data(as_text=True).strip() == '{"status": 0, "payload": true}'
    assert env.ports.asked == [(4242, 143)]


def test_is_running_false_when_unit_inactive_or_not_listening(env):
    env.ports.listening = False
    assert envelope(env.call("isRunning")) == {"status": 0, "payload": False}
    env.ports.listening = True
    env.systemd.states[env.unit] = "failed"
    assert envelope(env.call("isRunning")) == {"status": 0, "payload": False}


@pytest.mark.parametrize("action, payload", [
    ("listGeneralName", "##LG_IMAP##"),
    ("listPortNumbers", "143"),
    ("listPortNumbersArray", [143]),
    ("listRequiredPermissions", ["EMAIL"]),
    ("listServiceName", "imap4"),
    ("listServicePage", "/nodeworx/mail/mda"),
])
def test_list_actions_return_the_seed_payloads(env, action, payload):
    assert envelope(env.call(action)) == {"status": 0, "payload": payload}
    assert envelope(env.call(action, method="GET")) == {"status": 0, "payload": payload}


def test_list_service_info_is_the_seed_payload(env):
    body = envelope(env.call("listServiceInfo"))
    assert body == {"status": 0, "payload": {
        "id": "imap4", "name": "##LG_IMAP##", "ports": "143", "page": "/nodeworx/mail/mda",
        "ctrl": "/nodeworx/mail/imap", "is_running": 1}}
    assert list(body["payload"]) == ["id", "name", "ports", "page", "ctrl", "is_running"]
    env.systemd.states[env.unit] = "inactive"
    assert envelope(env.call("listServiceInfo"))["payload"]["is_running"] == 0


def test_query_extensions(env):
    assert envelope(env.call("queryUpdate", method="GET")) == {"status": 0, "payload": env.flavour.DEFAULTS}
    assert envelope(env.call("queryStartOnBoot")) == {"status": 0, "payload": {"mda_imap_startonboot": 1}}


# --- methods ------------------------------------------------------------------------------

@pytest.mark.parametrize("action", READ_ONLY)
def test_get_allowed_for_read_only_actions(env, action):
    assert envelope(env.call(action, method="GET"))["status"] == 0


@pytest.mark.parametrize("action", MUTATING)
def test_get_on_mutating_action_is_405_and_does_nothing(env, action):
    body = envelope(env.call(action, method="GET"))
    assert body["status"] == 405
    assert "POST" in body["payload"]
    assert env.systemd.jobs == []
    assert env.flavour.events == []


def test_other_methods_get_an_envelope(env):
    body = envelope(env.call("isRunning", method="PUT"))
    assert body["status"] == 405


# --- input sources -------------------------------------------------------------------------

def test_inputs_from_query_string(env):
    body = envelope(env.call("update", query_string={"imap_max_connections": "50", "dry_run": "1"}))
    assert body["status"] == 0
    assert "+imap_max_connections = 50\n" in body["payload"]


def test_inputs_from_form_body(env):
    body = envelope(env.call("update", data={"imap_max_connections": "50", "dry_run": "1"}))
    assert body["status"] == 0
    assert "+imap_max_connections = 50\n" in body["payload"]


def test_inputs_from_json_body(env):
    body = envelope(env.call("update", json={"imap_max_connections": 50, "dry_run": 1}))
    assert body["status"] == 0
    assert "+imap_max_connections = 50\n" in body["payload"]


def test_get_takes_inputs_from_the_query_string(env):
    body = envelope(env.call("isRunningOnNode", method="GET", query_string={"node_id": "mail1"}))
    assert body == {"status": 0, "payload": True}
    body = envelope(env.call("isRunningOnNode", method="GET", query_string={"node_id": "mail9"}))
    assert body["status"] == 404 and "mail9" in body["payload"]


def test_update_changes_the_file_and_keeps_left_out_values(env):
    body = envelope(env.call("update", json={"imap_max_connections": "50"}))
    assert body["status"] == 0, body
    assert env.flavour.current_values() == {**env.flavour.DEFAULTS, "imap_max_connections": 50}
    assert ("reload", env.unit) in env.systemd.jobs
    env.systemd.calls.clear()
    body = envelope(env.call("update", json={"imap_max_connections": 50}))
    assert body["status"] == 0 and "unchanged" in body["payload"]
    assert env.systemd.jobs == []


def test_dry_run_changes_nothing(env):
    body = envelope(env.call("update", json={"imap_mem_limit": 1 << 30, "dry_run": 1}))
    assert body["status"] == 0
    assert body["payload"].startswith("--- /dev/null\n+++ b")
    assert not os.path.exists(env.flavour.main)
    assert env.systemd.jobs == [] and env.flavour.events == []


@pytest.mark.parametrize("kw", [
    {"json": {"imap_max_connections": "0"}},
    {"json": {"imap_max_connections": 4.0}},
    {"json": {"imap_max_connections": True}},
    {"data": {"imap_max_connections": "４０"}},
    {"query_string": "imap_max_connections=40%0A"},
])
def test_bad_input_is_400_naming_the_field(env, kw):
    body = envelope(env.call("update", **kw))
    assert body["status"] == 400
    assert body["payload"].startswith("imap_max_connections: must be an integer from 1 to 50000")
    assert not os.path.exists(env.flavour.main)


@pytest.mark.parametrize("kw", [
    {"query_string": "cascade_to_nodes=1", "json": {"cascade_to_nodes": 1}},
    {"query_string": "cascade_to_nodes=1", "data": {"cascade_to_nodes": "1"}},
    {"query_string": "cascade_to_nodes=1&cascade_to_nodes=1"},
    {"data": {"cascade_to_nodes": ["0", "1"]}},
])
def test_duplicate_input_name_is_400(env, kw):
    body = envelope(env.call("restart", **kw))
    assert body == {"status": 400, "payload": "cascade_to_nodes: given more than once"}
    assert env.systemd.jobs == []


def test_duplicate_key_inside_a_json_body_is_400(env):
    body = envelope(env.call("update", data=b'{"imap_max_connections": 5, "imap_max_connections": 6}',
                             content_type="application/json"))
    assert body == {"status": 400, "payload": "imap_max_connections: given more than once"}


@pytest.mark.parametrize("data", [b"[1, 2]", b'"text"', b"{not json", b'{"a": 1', b"\xff\xfe{}", b'{"a": "\xe9"}'])
def test_bad_json_body_is_400_after_auth(env, data):
    reply = env.call("update", data=data, content_type="application/json")
    body = envelope(reply)
    assert body["status"] == 400
    assert body["payload"].startswith("body: ")
    assert envelope(env.call("update", data=data, content_type="application/json", key=False))["status"] == 401
    assert envelope(env.call("update", data=data, content_type="application/json",
                             key=env.dns_key))["status"] == 403


def test_empty_json_body_means_no_inputs(env):
    body = envelope(env.call("queryUpdate", data=b"  ", content_type="application/json"))
    assert body["status"] == 0


def test_oversized_body_is_413(env):
    big = {"imap_max_connections": "5", "pad": "x" * (MAX_BODY + 1)}
    for kw in ({"json": big}, {"data": big}, {"data": b"x" * (MAX_BODY + 1)}):
        body = envelope(env.call("update", **kw))
        assert body["status"] == 413, kw.keys()
    assert env.systemd.jobs == [] and not os.path.exists(env.flavour.main)


def test_body_just_under_the_limit_is_read(env):
    data = json.dumps({"imap_max_connections": 5, "dry_run": 1})
    body = envelope(env.call("update", data=data + " " * (MAX_BODY - 100 - len(data)), content_type="application/json"))
    assert body["status"] == 0


@pytest.mark.parametrize("how", ["json", "form", "query"])
def test_an_unknown_input_over_http_is_refused_naming_it_and_nothing_changes(env, how):
    inputs = {"imap_max_conections": "60"}
    kw = {"json": {"json": inputs}, "form": {"data": inputs}, "query": {"query_string": inputs}}[how]
    body = envelope(env.call("update", **kw))
    assert body["status"] == 400, body
    assert body["payload"].startswith("imap_max_conections: not an input of update (its inputs: imap_mem_limit, "), body
    assert env.flavour.applies == [] and env.audit_lines("begin") == []   # refused before it began


# --- authentication and authorization -----------------------------------------------------

@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_every_action_needs_a_key_with_email(env, action):
    method = "POST"
    assert envelope(env.call(action, method=method, key=False))["status"] == 401
    assert envelope(env.call(action, method=method, key="ictl_not-a-real-key-0000000000000000000000"))[
        "status"] == 401
    body = envelope(env.call(action, method=method, key=env.dns_key))
    assert body["status"] == 403 and "EMAIL" in body["payload"]
    if not ACTIONS[action].mutating:
        assert envelope(env.call(action, method="GET", key=False))["status"] == 401
        assert envelope(env.call(action, method="GET", key=env.dns_key))["status"] == 403
    assert env.systemd.jobs == [] and env.flavour.events == []
    assert env.ports.asked == []


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token {key}", "{key}",
                                    "Bearer {key}x"])
def test_malformed_authorization_header_is_401(env, header):
    reply = env.client.post(f"{CONTROLLER}/isRunning", headers={"Authorization": header.format(key=env.key)})
    assert envelope(reply)["status"] == 401


def test_lowercase_bearer_scheme_is_accepted(env):
    reply = env.client.post(f"{CONTROLLER}/isRunning", headers={"Authorization": f"bearer {env.key}"})
    assert envelope(reply) == {"status": 0, "payload": True}


def test_unknown_action_is_404_only_with_a_valid_key(env):
    body = envelope(env.call("isrunning"))
    assert body["status"] == 404 and "isrunning" in body["payload"]
    assert envelope(env.call("isrunning", key=False))["status"] == 401
    assert envelope(env.call("isrunning", key="wrong-key-" * 4))["status"] == 401
    assert envelope(env.call("isrunning", key=env.dns_key))["status"] == 403
    assert envelope(env.call("isrunning", method="GET"))["status"] == 404


def test_unknown_path_gets_an_envelope(env):
    reply = env.client.get("/nodeworx/mail/imap")
    assert envelope(reply)["status"] == 404


def test_revoked_key_stops_working(env):
    assert envelope(env.call("isRunning"))["status"] == 0
    env.keys.revoke("panel")
    assert envelope(env.call("isRunning"))["status"] == 401


# --- healthz and openapi --------------------------------------------------------------------

def test_healthz_needs_no_auth(env):
    reply = env.client.get("/healthz")
    assert envelope(reply) == {"status": 0, "payload": "ok"}


def test_openapi_lists_every_action(env):
    reply = env.client.get("/openapi.json")
    assert reply.status_code == 200
    doc = reply.get_json()
    assert {p for p in doc["paths"] if p.startswith("/nodeworx/")} == {f"{c}/{name}" for c in CONTROLLERS
                                                                       for name in ACTIONS}
    op_ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(op_ids) == len(set(op_ids))
    for path, name in ((c, name) for c in CONTROLLERS for name in ACTIONS):
        action = ACTIONS[name]
        item = doc["paths"][f"{path}/{name}"]
        assert set(item) == ({"post"} if action.mutating else {"get", "post"})
        body = item["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/Inputs_{name}"}
    assert doc["paths"][f"{CONTROLLER}/isRunning"]["get"]["operationId"] == "isRunningGet"


# --- audit ------------------------------------------------------------------------------------

def test_mutating_call_appends_one_audit_line(env):
    assert envelope(env.call("restart", json={"cascade_to_nodes": 0}))["status"] == 0
    lines = env.audit_lines()
    assert len(lines) == 1
    line = lines[0]
    assert line["key"] == "panel"
    assert line["action"] == "restart"
    assert line["inputs"] == {"cascade_to_nodes": 0}
    assert line["status"] == 0
    assert line["transport"] == "http"


def test_a_change_is_announced_durably_before_its_result(env):
    assert envelope(env.call("stop", json={"cascade_to_nodes": 0}))["status"] == 0
    begin, end = (env.audit_lines(phase) for phase in ("begin", "end"))
    assert len(begin) == len(end) == 1
    assert {k: begin[0][k] for k in ("key", "action", "inputs")} == {
        "key": "panel", "action": "stop", "inputs": {"cascade_to_nodes": 0}}


def test_a_full_audit_disk_refuses_changes_and_reads_go_on(env):
    """/dev/full: every write fails with ENOSPC, as on a full disk."""
    env.services.audit.path = "/dev/full"
    before = env.flavour.current_values()
    body = envelope(env.call("update", json={"imap_max_connections": 77}))
    assert body["status"] == 503 and "/dev/full cannot be written (No space left on device)" in body["payload"]
    assert "nothing was changed" in body["payload"]
    assert env.flavour.current_values() == before and env.systemd.jobs == []
    assert envelope(env.call("stop", data={"cascade_to_nodes": "0"}))["status"] == 503
    assert env.systemd.unit(env.unit).active_state == "active"
    assert envelope(env.call("isRunning"))["status"] == 0
    assert envelope(env.call("queryUpdate"))["payload"] == before


def test_failed_and_read_only_calls_are_audited_correctly(env):
    envelope(env.call("isRunning"))
    envelope(env.call("listServiceInfo", method="GET"))
    assert env.audit_lines() == []
    envelope(env.call("update", json={"imap_max_connections": 0}))
    envelope(env.call("startOnBoot", data={"mda_imap_startonboot": "0"}))
    lines = env.audit_lines()
    assert [(l["action"], l["status"]) for l in lines] == [("update", 400), ("startOnBoot", 0)]
    assert lines[1]["inputs"] == {"mda_imap_startonboot": 0, "cascade_to_nodes": 0}
    assert env.systemd.unit(env.unit).unit_file_state == "disabled"


def test_audit_log_never_contains_a_key(env):
    env.call("update", json={"imap_max_connections": 77})
    env.call("stop", data={"cascade_to_nodes": "0"})
    env.call("stop", key=env.dns_key)
    env.call("start", key=env.key + "x")
    env.call("start", json={"cascade_to_nodes": env.key})   # a key pasted into the wrong field
    text = env.audit_log.read_text()
    assert len(text.splitlines()) >= 3
    assert env.key not in text
    assert env.dns_key not in text


# --- service control through the API --------------------------------------------------------

def test_start_stop_restart_drive_systemd(env):
    assert envelope(env.call("stop"))["status"] == 0
    assert envelope(env.call("start"))["status"] == 0
    assert envelope(env.call("restart"))["status"] == 0
    assert env.systemd.jobs == [("stop", env.unit), ("start", env.unit), ("restart", env.unit)]


def test_start_and_restart_refuse_a_configuration_the_server_would_not_start_with(env):
    env.flavour.preflight_error = ConfigInvalid("Dovecot rejects its configuration: Error in configuration "
                                                "file /etc/dovecot/conf.d/50-admin.conf line 1: Garbage after '{'")
    for action in ("restart", "start", "restartOnNode"):
        body = envelope(env.call(action))
        assert body["status"] == 500, body
        assert body["payload"].startswith(f"{action.removesuffix('OnNode')} refused: the IMAP server would not "
                                          f"start with its configuration; {env.unit} keeps serving."), body
        assert "/etc/dovecot/conf.d/50-admin.conf line 1" in body["payload"]
    assert env.systemd.jobs == []                  # nothing was stopped
    assert envelope(env.call("stop"))["status"] == 0   # stopping needs no preflight


def test_on_node_actions_run_locally_for_the_local_node(env):
    assert envelope(env.call("stopOnNode", json={"node_id": "mail1"}))["status"] == 0
    assert envelope(env.call("startOnNode"))["status"] == 0  # default: this node
    assert env.systemd.jobs == [("stop", env.unit), ("start", env.unit)]
    body = envelope(env.call("restartOnNode", json={"node_id": "other"}))
    assert body["status"] == 404
    assert envelope(env.call("restartOnNode", json={"node_id": "bad\nnode"}))["status"] == 400
    assert env.systemd.jobs == [("stop", env.unit), ("start", env.unit)]


def test_update_fields_match_the_flavour(env):
    assert set(UPDATE_FIELDS) == set(env.flavour.DEFAULTS)


def test_a_body_that_is_neither_json_nor_a_form_is_400(env):
    reply = env.call("update", data=b'{"imap_max_connections": 5}', content_type="text/plain")
    assert envelope(reply)["status"] == 400
    assert "application/json or a form" in envelope(reply)["payload"]


def test_head_on_a_read_only_action_is_allowed(env):
    assert env.call("isRunning", method="HEAD").status_code == 200
    assert env.call("stop", method="HEAD").status_code == 405


def test_options_gets_the_envelope_everywhere(env):
    for url in ("/healthz", "/openapi.json", "/xmlrpc", f"{CONTROLLER}/isRunning"):
        reply = env.client.open(url, method="OPTIONS")
        assert reply.status_code == 405 and envelope(reply)["status"] == 405, url


def test_changes_are_refused_while_an_overrun_recovery_is_pending(env):
    """serve's recovery overran its deadline and left the journal: changes answer 503 with the
    reason (not a retry that would hang again), reads go on; once the journal is gone (after
    `imapd-ctl recover`), changes run again."""
    env.services.controller.unfinished_recovery = "an interrupted change could not be finished"
    env.services.journal.begin("t1", "update", {str(env.flavour.main): None}, {str(env.flavour.main): b"x"}, {})
    body = envelope(env.call("update", json={"imap_max_connections": 77}))
    assert body["status"] == 503 and body["payload"].startswith(
        "update refused: an interrupted change could not be finished (change t1, update, interrupted at step 'begun')")
    assert "`imapd-ctl recover`" in body["payload"] and env.systemd.jobs == []
    assert env.services.journal.pending() is not None
    assert envelope(env.call("isRunning"))["status"] == 0
    env.services.journal.clear()
    assert envelope(env.call("stop", json={"cascade_to_nodes": 0}))["status"] == 0


def test_an_end_line_that_cannot_be_written_goes_to_the_daemon_log(caplog):
    """The change has happened by then: the line is not lost, it goes to the journal."""
    from imapd_ctl.adapters.audit import AuditLog
    AuditLog("/dev/full").record(who="panel", peer="here", transport="http", controller="/nodeworx/mail/imap",
                                 action="stop", inputs={"cascade_to_nodes": 0}, status=0, payload="stopped x")
    assert "audit log /dev/full cannot be written (No space left on device); the line: {" in caplog.text
    assert '"phase": "end"' in caplog.text and '"result": "stopped x"' in caplog.text


def test_stop_says_so_when_the_server_was_already_stopped(env):
    assert envelope(env.call("stop", json={}))["payload"].startswith("stopped ")
    again = envelope(env.call("stop", json={}))
    assert again["status"] == 0 and again["payload"].startswith("nothing to stop: ") \
        and again["payload"].endswith(" already stopped"), again


@pytest.mark.parametrize("header, says", [
    ("KEY123", "has no scheme: put 'Bearer ' before the key"),
    ("Basic dXNlcjpwdw==", "uses the scheme 'Basic'"),
    ("Bearer ", "has no key after 'Bearer'"),
])
def test_an_authorization_header_of_another_form_is_told_how_to_write_it(env, header, says):
    reply = env.client.get(f"{CONTROLLER}/isRunning", headers={"Authorization": header})
    assert envelope(reply) == {"status": 401, "payload": "the Authorization header must be 'Bearer KEY' "
                                                         f"(this one {says}); nothing was run"}


def test_an_unknown_path_names_the_controllers_served(env):
    payload = envelope(env.client.get("/nodeworx/mail/imapx/isRunning"))["payload"]
    assert payload.startswith("no such path '/nodeworx/mail/imapx/isRunning': actions are at CONTROLLER/ACTION")
    assert "/nodeworx/mail/imap, /nodeworx/mail/simap" in payload and "spelling" not in payload


def test_a_json_boolean_is_named_as_json_names_it(env):
    payload = envelope(env.call("update", json={"imap_max_connections": True}))["payload"]
    assert "true" in payload and "True" not in payload, payload
