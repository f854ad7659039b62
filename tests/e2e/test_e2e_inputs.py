"""Bad input and bad credentials through the real server: clear errors, nothing changed."""
from __future__ import annotations

import json
import socket

import pytest

from imapd_ctl.core.actions import ACTIONS

pytestmark = pytest.mark.mailhost

DROPIN = "/etc/dovecot/conf.d/99-imapd-ctl.conf"

BAD_VALUES = [
    "abc", "4x", "40.5", 40.5, -5, "-5", 0, "0", 10**13, "99999999999999999999", "40\n",
    "40}", "{40", "４０", True, [], {"a": 1}, "", None,
]


def state(host):
    r = host.run(["stat", "-c", "%Y.%Z %s", DROPIN], check=False)
    content = host.run(["cat", DROPIN], check=False).stdout
    return r.stdout, content


@pytest.fixture(scope="module", autouse=True)
def baseline(daemon):
    assert daemon.call("update", {"imap_mem_limit": 256000000, "imap_max_connections": 40,
                                  "imap_secure_mem_limit": 256000000,
                                  "imap_secure_max_connections": 40})[0] == 0


@pytest.mark.parametrize("field", ["imap_mem_limit", "imap_max_connections",
                                   "imap_secure_mem_limit", "imap_secure_max_connections"])
def test_bad_update_values_are_400_and_change_nothing(daemon, mailhost, field):
    before = state(mailhost)
    for value in BAD_VALUES:
        if value is None or isinstance(value, (dict, list)):
            continue  # JSON-only shapes are covered below
        for transport, call in (("http", daemon.call), ("xmlrpc", daemon.route), ("soap", daemon.soap)):
            if transport == "xmlrpc" and isinstance(value, int) and not isinstance(value, bool) \
                    and abs(value) > 2**31 - 1:
                continue  # not representable as an XML-RPC int
            status, payload = call("update", {field: value})
            assert status == 400, (transport, value, payload)
            assert payload.startswith(f"{field}: must be an integer from"), payload
    for value in (None, [], {"a": 1}):
        status, payload = daemon.call("update", {field: value})
        assert status == 400 and field in payload
    assert state(mailhost) == before


def test_bad_flags_and_node_ids(daemon):
    for action, field, value in [("startOnBoot", "mda_imap_startonboot", 2),
                                 ("startOnBoot", "mda_imap_startonboot", "yes"),
                                 ("restart", "cascade_to_nodes", -1),
                                 ("update", "dry_run", "1\n"),
                                 ("stopOnNode", "node_id", "node1\n"),
                                 ("stopOnNode", "node_id", "{node1}"),
                                 ("stopOnNode", "node_id", "a" * 65),
                                 ("isRunningOnNode", "node_id", 7)]:
        for call in (daemon.call, daemon.route, daemon.soap):
            status, payload = call(action, {field: value})
            assert status == 400 and payload.startswith(f"{field}: must be"), (action, value, payload)
    assert daemon.call("isRunning") == (0, True)


def test_http_body_shapes(daemon):
    url = "/nodeworx/mail/imap/update"
    for body, ctype in [(b"[1, 2]", "application/json"), (b"{not json", "application/json"),
                        (b'{"imap_max_connections": "\xff"}', "application/json")]:
        status, reply = daemon.http("POST", url, key=daemon.key, body=body, content_type=ctype)
        assert status == 400, (body, reply)
    status, reply = daemon.http("POST", url + "?imap_max_connections=3", key=daemon.key,
                                body=b"imap_max_connections=4",
                                content_type="application/x-www-form-urlencoded")
    assert status == 400 and b"more than once" in reply
    status, reply = daemon.http("POST", url, key=daemon.key, body=b"x" * (70 * 1024),
                                content_type="application/x-www-form-urlencoded")
    assert status == 413


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_auth_on_every_action_and_both_transports(daemon, action):
    for key, expected in [(None, 401), ("", 401), ("ictl_not-a-key", 401),
                          (daemon.key_without_email, 403)]:
        status, payload = daemon.call(action, {}, key=key)
        assert status == expected, (action, key, payload)
        status, payload = daemon.route(action, {}, key=key if key is not None else "")
        assert status == expected, (action, key, payload)
    status, payload = daemon.route(action, {}, key={"apikey": "ictl_not-a-key"})
    assert status == 401
    status, payload = daemon.route(action, {}, key={"email": "a@b.c", "password": "x"})
    assert status == 401 and "apikey" in payload


@pytest.mark.parametrize("raw", [b"GARBAGE\r\n\r\n", b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n",
                                 b"POST /xmlrpc HTTP/1.1\r\nContent-Length: x\r\n\r\n"])
def test_requests_gunicorn_rejects_still_get_the_envelope(daemon, raw):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(daemon.socket)
        sock.sendall(raw)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert 400 <= status < 500 and b"application/json" in head
    assert json.loads(body)["status"] == status
