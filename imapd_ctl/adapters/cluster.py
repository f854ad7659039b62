"""The cluster: other nodes' imapd-ctl daemons, called over HTTPS with certificate checks.

The registry lives in the settings (`[[nodes]]`: id, url, ca, and key_file: the file holding
the key, read at each call; or the key inline). `*OnNode` forwards to one
node; `cascade_to_nodes=1` replays an action on every node in parallel, each with its own
timeout. A replay is sent with cascade_to_nodes=0, so it never cascades again.
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from imapd_ctl.adapters import secrets
from imapd_ctl.core.actions import CONTROLLER
from imapd_ctl.core.errors import NotFound
from imapd_ctl.core.settings import Node

__all__ = ["Cluster", "Node"]


def _context(ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)   # verifies the chain and the host name/IP
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Cluster:
    def __init__(self, local_id: str, nodes: list[Node], timeout: float):
        self.local_id = local_id
        self.nodes = {n.id: n for n in nodes if n.id != local_id}
        self.timeout = timeout

    def known(self) -> str:
        return ", ".join([f"{self.local_id} (this node)"] + sorted(self.nodes))

    def node(self, node_id: str) -> Node:
        node = self.nodes.get(node_id)
        if node is None:
            raise NotFound(f"node_id: unknown node {node_id!r}; known nodes: {self.known()}")
        return node

    def call(self, node: Node, action: str, inputs: dict[str, Any],
             controller: str = CONTROLLER) -> tuple[int, Any]:
        """(status, payload) of one action of `controller` on a node; failures to reach it are status 502
        with the reason (refused, timed out, certificate not trusted...)."""
        try:
            key = node.key or secrets.read_key(node.key_file)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return 502, f"node {node.id}: cannot read its key from {node.key_file}: {reason}"
        url = urllib.parse.urlsplit(node.url)
        try:
            conn = http.client.HTTPSConnection(url.hostname or "", url.port or 443, timeout=self.timeout,
                                               context=_context(node.ca))
            try:
                conn.request("POST", f"{url.path.rstrip('/')}{controller}/{action}",
                             body=json.dumps(inputs),
                             headers={"Authorization": f"Bearer {key}",
                                      "Content-Type": "application/json"})
                resp = conn.getresponse()
                body = resp.read()
            finally:
                conn.close()
        except ssl.SSLCertVerificationError as exc:
            return 502, f"node {node.id}: refused its TLS certificate ({exc.verify_message or exc.reason})"
        except (socket.timeout, TimeoutError):
            return 502, f"node {node.id}: no answer from {node.url} within {self.timeout:.0f} s"
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            return 502, f"node {node.id}: cannot reach {node.url}: {exc}"
        try:
            reply = json.loads(body)
            return int(reply["status"]), reply["payload"]
        except (ValueError, KeyError, TypeError):
            return 502, f"node {node.id}: not an imapd-ctl reply (HTTP {resp.status})"

    def replay(self, action: str, inputs: dict[str, Any], controller: str = CONTROLLER) -> list[dict[str, Any]]:
        """Run the action (of `controller`) on every other node at once; one outcome per node, by id."""
        inputs = {k: v for k, v in inputs.items() if v is not None}   # None: "keep current"
        inputs["cascade_to_nodes"] = 0
        nodes = sorted(self.nodes.values(), key=lambda n: n.id)
        if not nodes:
            return []
        with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:
            results = list(pool.map(lambda n: self.call(n, action, inputs, controller), nodes))
        return [{"id": n.id, "status": s, "payload": p} for n, (s, p) in zip(nodes, results)]
