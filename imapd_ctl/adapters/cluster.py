"""The cluster: other nodes' imapd-ctl daemons, called over HTTPS with certificate checks.

The registry (adapters.registry: the settings' `[[nodes]]` and the nodes_dir files; id, url,
ca, and the key or the file holding it, read at each call) is asked at each call. `*OnNode`
forwards to one node; `cascade_to_nodes=1` replays an action on every node at once (up to
`cascade_parallel` calls), each with its own timeout, so a cascade takes the slowest node's
time and a dead node costs one timeout. A replay is sent with cascade_to_nodes=0, so it never
cascades again.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import urllib.parse
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from imapd_ctl.adapters import secrets
from imapd_ctl.core.actions import CONTROLLER
from imapd_ctl.core.errors import NotFound
from imapd_ctl.core.settings import Node, SecretFile

__all__ = ["Cluster", "Node"]


_contexts: dict[str, tuple[tuple[int, int], ssl.SSLContext]] = {}   # CA file -> (its version, context)
_contexts_lock = threading.Lock()


def _context(ca: str) -> ssl.SSLContext:
    """A client context trusting `ca` only; one per CA file, made again when the file changes."""
    st = os.stat(ca)
    version = (st.st_mtime_ns, st.st_size)
    with _contexts_lock:
        known = _contexts.get(ca)
        if known is None or known[0] != version:
            ctx = ssl.create_default_context(cafile=ca)   # verifies the chain and the host name/IP
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            known = _contexts[ca] = (version, ctx)
        return known[1]


def _fixed(nodes: list[Node]) -> Callable[[], list[Node]]:
    listed = list(nodes)
    return lambda: listed


class Cluster:
    """`nodes`: the registry, asked at each call (adapters.registry.Registry.nodes), or a fixed list."""

    def __init__(self, local_id: str, nodes: Callable[[], list[Node]] | list[Node], timeout: float,
                 parallel: int = 256):
        self.local_id = local_id
        self._nodes = nodes if callable(nodes) else _fixed(nodes)
        self.timeout = timeout
        self.parallel = max(1, parallel)

    @property
    def nodes(self) -> dict[str, Node]:
        return {n.id: n for n in self._nodes() if n.id != self.local_id}

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
        if node.key_file:
            wrong = secrets.problem(SecretFile(node.key_file, f"the key of node {node.id}"))
            if wrong is not None:
                return 502, f"node {node.id}: not called: {wrong}"
        try:
            key = node.key or secrets.read_key(node.key_file)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return 502, f"node {node.id}: cannot read its key from {node.key_file}: {reason}"
        url = urllib.parse.urlsplit(node.url)
        try:
            context = _context(node.ca)
        except (OSError, ssl.SSLError) as exc:
            return 502, f"node {node.id}: cannot use its CA file {node.ca}: {exc}"
        try:
            conn = http.client.HTTPSConnection(url.hostname or "", url.port or 443, timeout=self.timeout,
                                               context=context)
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
        return [{"id": n.id, "status": s, "payload": p} for n, (s, p) in self.on_each(action, inputs, controller)]

    def on_each(self, action: str, inputs: dict[str, Any],
                controller: str = CONTROLLER) -> list[tuple[Node, tuple[int, Any]]]:
        """The action on every other node at once (up to `parallel` calls), by id: each node
        with its (status, payload)."""
        nodes = sorted(self.nodes.values(), key=lambda n: n.id)
        if not nodes:
            return []
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(nodes))) as pool:
            return list(zip(nodes, pool.map(lambda n: self.call(n, action, inputs, controller), nodes)))
