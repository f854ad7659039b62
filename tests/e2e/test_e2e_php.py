"""PHP's own InterWorx API clients against the real daemon on a real Dovecot host: SoapClient
through the WSDL (SOAP 1.1 and 1.2, at /soap and /nodeworx/soap) and ext/xmlrpc, driven by
tests/e2e/php_client.php inside the host, exactly as the panels' modules call: `array()` for no
input, numbers as strings, `true` for a flag. Each reply must be a PHP array with the same
status and payload Python's xmlrpc.client gets for the same call.

The SOAP envelopes PHP sends here are the codec's unit-test fixtures (tests/unit/fixtures/soap,
the key replaced by KEY): this test fails when they differ, and rewrites them with
IMAPD_CTL_SOAP_CAPTURE=1 (then review the diff and commit it).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon import REPO
from imapd_ctl.core.actions import CONTROLLER, CONTROLLERS

pytestmark = pytest.mark.mailhost

FIXTURES = REPO / "tests" / "unit" / "fixtures" / "soap"
CAPTURE = os.environ.get("IMAPD_CTL_SOAP_CAPTURE") == "1"


UPDATE = {"imap_mem_limit": 268435456, "imap_max_connections": 61, "imap_secure_mem_limit": 201326592,
          "imap_secure_max_connections": 41}


def walk(key: str, current: dict, ctrl: str = CONTROLLER) -> list[tuple[str, list]]:
    """(label, route's parameters as PHP passes them) for the panels' calls, leaving the host as
    it was: update with numbers as strings, startOnBoot 0 and 1 (PHP's true), restart."""
    return [
        ("isRunning", [key, ctrl, "isRunning", {}]),           # {} is PHP's array()
        ("listServiceInfo", [key, ctrl, "listServiceInfo", {}]),
        ("queryUpdate", [key, ctrl, "queryUpdate", {}]),
        ("update", [key, ctrl, "update", {n: str(v) for n, v in UPDATE.items()}]),
        ("queryUpdate-raised", [key, ctrl, "queryUpdate", {}]),
        ("update-back", [key, ctrl, "update", {n: str(v) for n, v in current.items()}]),
        ("startOnBoot-0", [key, ctrl, "startOnBoot", {"mda_imap_startonboot": "0"}]),
        ("queryStartOnBoot-0", [key, ctrl, "queryStartOnBoot", {}]),
        ("startOnBoot-true", [key, ctrl, "startOnBoot", {"mda_imap_startonboot": True, "perms": ["EMAIL"]}]),
        ("queryStartOnBoot-1", [key, ctrl, "queryStartOnBoot", {}]),
        ("restart", [key, ctrl, "restart", {}]),
        ("apikey-map-nil-input", [{"apikey": key}, ctrl, "listPortNumbersArray", None]),
        ("wrong-key", ["wrong-" + key, ctrl, "isRunning", {}]),
    ]


def xmlrpc_answers(daemon, calls: list) -> list[dict]:
    """The same calls through Python's xmlrpc.client (PHP's {} is an empty struct there)."""
    proxy = daemon.xmlrpc()
    return [proxy.iworx.route(*params) for _, params in calls]


def check_same_as_xmlrpc(daemon, calls: list, entries: list[dict]) -> None:
    expected = xmlrpc_answers(daemon, calls)
    for (label, _), entry, want in zip(calls, entries, expected):
        assert "fault" not in entry, (label, entry)
        assert entry["is_array"] is True, (label, entry)
        assert entry["result"] == want, label
    assert [e["result"]["status"] for e in entries] == [0] * (len(calls) - 1) + [401]
    labelled = dict(zip((label for label, _ in calls), (e["result"] for e in entries)))
    assert labelled["isRunning"] == {"status": 0, "payload": True}
    assert labelled["queryStartOnBoot-0"] == {"status": 0, "payload": {"mda_imap_startonboot": 0}}
    assert labelled["queryStartOnBoot-1"] == {"status": 0, "payload": {"mda_imap_startonboot": 1}}
    assert labelled["listServiceInfo"]["payload"]["is_running"] == 1
    assert labelled["queryUpdate-raised"] == {"status": 0, "payload": UPDATE}


def fixture_text(envelope: str, key: str) -> str:
    return envelope.replace(key, "KEY")


CAPTURED = ("isRunning", "update", "startOnBoot-true", "apikey-map-nil-input")


@pytest.mark.parametrize("ctrl", list(CONTROLLERS))
@pytest.mark.parametrize("path", ["/soap", "/nodeworx/soap"])
@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_php_soapclient_through_the_wsdl(daemon, version, path, ctrl):
    current = daemon.call("queryUpdate")[1]
    assert current != UPDATE
    calls = walk(daemon.key, current, ctrl)
    entries = daemon.php("soap", f"{path}?wsdl", [params for _, params in calls], version)
    check_same_as_xmlrpc(daemon, calls, entries)
    ctype = "text/xml" if version == "1.1" else "application/soap+xml"
    for entry in entries:
        assert f"POST {path} HTTP/1.1" in entry["request_headers"]
        assert f"Content-Type: {ctype}; charset=utf-8" in entry["request_headers"]
    assert daemon.call("queryUpdate") == (0, current)
    assert daemon.host.systemctl("is-enabled", "dovecot.service").stdout.strip() == "enabled"
    # The envelopes PHP sent are the codec's unit-test fixtures.
    if path != "/soap" or ctrl != CONTROLLER:
        return
    for label, entry in zip((label for label, _ in calls), entries):
        if label not in CAPTURED:
            continue
        text = fixture_text(entry["request"], daemon.key)
        name = f"php-soap{version}-{label}.xml"
        if CAPTURE:
            FIXTURES.mkdir(parents=True, exist_ok=True)
            (FIXTURES / name).write_text(text)
        assert (FIXTURES / name).read_text() == text, f"PHP now sends another {name}: IMAPD_CTL_SOAP_CAPTURE=1"


@pytest.mark.parametrize("ctrl", list(CONTROLLERS))
def test_php_xmlrpc_extension_with_array_input(daemon, ctrl):
    """PHP ext/xmlrpc as InterWorx's documentation shows it: array() for no input (an empty
    <array>), true for a flag (<boolean>1</boolean>), null (an empty <string/>)."""
    current = daemon.call("queryUpdate")[1]
    calls = walk(daemon.key, current, ctrl)
    entries = daemon.php("xmlrpc", "/xmlrpc", [params for _, params in calls])
    sent = dict(zip((label for label, _ in calls), (e["request"] for e in entries)))
    assert "<array>" in sent["isRunning"] and "<data/>" in sent["isRunning"]
    assert "<boolean>1</boolean>" in sent["startOnBoot-true"]
    assert 'encoding="iso-8859-1"' in sent["isRunning"]
    check_same_as_xmlrpc(daemon, calls, entries)
    assert daemon.call("queryUpdate") == (0, current)


def test_the_wsdl_names_the_endpoint_it_was_fetched_from(daemon):
    for path in ("/soap", "/nodeworx/soap"):
        status, body = daemon.http("GET", f"{path}?wsdl")
        assert status == 200 and b'style="rpc"' in body and b'use="encoded"' in body
        assert b'location="http://localhost' + path.encode() + b'"' in body, body[-600:]
