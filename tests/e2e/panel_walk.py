"""The panels' walk through route() that every real API client test makes (PHP's SoapClient and
ext/xmlrpc in test_e2e_php.py, Go's kolo/xmlrpc in test_e2e_go.py), and the check that each reply
is the one Python's xmlrpc.client gets for the same call.

A client driver gives one entry per call: {"is_array": the reply decoded to the client's
associative container (a PHP array, a Go map), "result": the reply} or {"fault": its text}.
"""
from __future__ import annotations

from imapd_ctl.core.actions import CONTROLLER

UPDATE = {"imap_mem_limit": 268435456, "imap_max_connections": 61, "imap_secure_mem_limit": 201326592,
          "imap_secure_max_connections": 41}


def walk(key: str, current: dict, ctrl: str = CONTROLLER, *, numbers: type = str,
         no_input: dict | list | None = None) -> list[tuple[str, list]]:
    """(label, route's parameters) for the panels' calls, leaving the host as it was: update
    with numbers sent as `numbers` (str, as billing modules send them; int), startOnBoot 0 and 1
    (a boolean true), restart. `no_input` is what the client passes for no input: by default {}
    (PHP's array()), or [] (an empty array)."""
    none = {} if no_input is None else no_input
    return [
        ("isRunning", [key, ctrl, "isRunning", none]),
        ("listServiceInfo", [key, ctrl, "listServiceInfo", none]),
        ("queryUpdate", [key, ctrl, "queryUpdate", none]),
        ("update", [key, ctrl, "update", {n: numbers(v) for n, v in UPDATE.items()}]),
        ("queryUpdate-raised", [key, ctrl, "queryUpdate", none]),
        ("update-back", [key, ctrl, "update", {n: numbers(v) for n, v in current.items()}]),
        ("startOnBoot-0", [key, ctrl, "startOnBoot", {"mda_imap_startonboot": numbers(0)}]),
        ("queryStartOnBoot-0", [key, ctrl, "queryStartOnBoot", none]),
        ("startOnBoot-true", [key, ctrl, "startOnBoot", {"mda_imap_startonboot": True, "perms": ["EMAIL"]}]),
        ("queryStartOnBoot-1", [key, ctrl, "queryStartOnBoot", none]),
        ("restart", [key, ctrl, "restart", none]),
        ("apikey-map-nil-input", [{"apikey": key}, ctrl, "listPortNumbersArray", None]),
        ("wrong-key", ["wrong-" + key, ctrl, "isRunning", none]),
    ]


def xmlrpc_answers(daemon, calls: list) -> list[dict]:
    """The same calls through Python's xmlrpc.client (PHP's {} is an empty struct there)."""
    proxy = daemon.xmlrpc()
    return [proxy.iworx.route(*params) for _, params in calls]


def check_same_as_xmlrpc(daemon, calls: list, entries: list[dict]) -> None:
    """Each entry is the reply Python's xmlrpc.client gets for the same call (made after the
    client's), and the walk did what it says; the last call is the wrong key's (401 in band)."""
    expected = xmlrpc_answers(daemon, calls)
    for (label, _), entry, want in zip(calls, entries, expected):
        assert "fault" not in entry, (label, entry)
        assert entry["is_array"] is True, (label, entry)
        assert entry["result"] == want, label
    assert len(entries) == len(calls)
    assert [e["result"]["status"] for e in entries] == [0] * (len(calls) - 1) + [401]
    labelled = dict(zip((label for label, _ in calls), (e["result"] for e in entries)))
    assert labelled["isRunning"] == {"status": 0, "payload": True}
    assert labelled["queryStartOnBoot-0"] == {"status": 0, "payload": {"mda_imap_startonboot": 0}}
    assert labelled["queryStartOnBoot-1"] == {"status": 0, "payload": {"mda_imap_startonboot": 1}}
    assert labelled["listServiceInfo"]["payload"]["is_running"] == 1
    assert labelled["queryUpdate-raised"] == {"status": 0, "payload": UPDATE}
