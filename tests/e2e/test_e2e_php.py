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
from panel_walk import UPDATE, check_same_as_xmlrpc, walk

pytestmark = pytest.mark.mailhost

FIXTURES = REPO / "tests" / "unit" / "fixtures" / "soap"
CAPTURE = os.environ.get("IMAPD_CTL_SOAP_CAPTURE") == "1"


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
