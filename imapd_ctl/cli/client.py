"""Calling a running imapd-ctl over its unix socket (the CLI's `call`, tests, benchmarks)."""
from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
import xmlrpc.client
from typing import Any

from imapd_ctl.core.actions import CONTROLLER


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 120):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class UnixTransport(xmlrpc.client.Transport):
    """xmlrpc.client transport over a unix socket: ServerProxy('http://localhost/xmlrpc',
    transport=UnixTransport(path))."""

    def __init__(self, path: str, timeout: float = 120):
        super().__init__()
        self.unix_path, self.timeout = path, timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return UnixHTTPConnection(self.unix_path, self.timeout)


def request(path: str, method: str, url: str, *, key: str | None = None, body: bytes | None = None,
            content_type: str | None = None, headers: dict | None = None,
            conn: UnixHTTPConnection | None = None) -> tuple[int, bytes]:
    """One HTTP request over the unix socket; returns (HTTP status, body)."""
    own = conn is None
    conn = conn or UnixHTTPConnection(path)
    hdrs = dict(headers or {})
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    if content_type:
        hdrs["Content-Type"] = content_type
    try:
        conn.request(method, url, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        if own:
            conn.close()


def call(path: str, key: str | None, action: str, inputs: dict | None = None, *,
         method: str = "POST", controller: str = CONTROLLER, timeout: float = 120) -> tuple[int, Any]:
    """Call an action of `controller` (a path of actions.CONTROLLERS) with a JSON body; returns
    the envelope's (status, payload)."""
    url = f"{controller}/{urllib.parse.quote(action, safe='')}"
    body = json.dumps(inputs or {}).encode() if method == "POST" else None
    if method == "GET" and inputs:
        url += "?" + urllib.parse.urlencode(inputs)
    conn = UnixHTTPConnection(path, timeout)
    try:
        _, data = request(path, method, url, key=key, body=body, conn=conn,
                          content_type="application/json" if body is not None else None)
    finally:
        conn.close()
    reply = json.loads(data)
    return reply["status"], reply["payload"]
