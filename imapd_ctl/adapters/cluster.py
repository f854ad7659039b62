"""The cluster: other nodes' imapd-ctl daemons, called over HTTPS with certificate checks.

The registry (adapters.registry: the settings' `[[nodes]]` and the nodes_dir files; id, url,
ca, and the key or the file holding it, read at each call) is asked at each call. `*OnNode`
forwards to one node; `cascade_to_nodes=1` replays an action on every node at once, each with
its own timeout, so a cascade takes the slowest node's time and a dead node costs one timeout.
A replay is sent with cascade_to_nodes=0, so it never cascades again.

All at once means a thread and a connection per node: the threads wait on the network, and the
TLS work they do lets go of the GIL. `parallel` (the settings' cascade_parallel) caps them well
above any real fleet; what bounds them in practice is the file descriptors, so the soft
RLIMIT_NOFILE is raised toward the hard one when a fan-out needs it.
"""
from __future__ import annotations

import http.client
import json
import os
import queue
import resource
import select
import socket
import ssl
import urllib.parse
import threading
from typing import Any, Callable

from imapd_ctl.adapters import secrets
from imapd_ctl.core.actions import CONTROLLER
from imapd_ctl.core.errors import NotFound
from imapd_ctl.core.settings import Node, SecretFile

__all__ = ["Cluster", "Node", "Session", "at_once", "room_for"]

Reply = tuple[int, Any]

_contexts: dict[str, tuple[tuple[int, int], ssl.SSLContext]] = {}   # CA file -> (its version, context)
_contexts_lock = threading.Lock()
FD_RESERVE = 64       # descriptors a fan-out leaves to the rest of the process (logs, listeners, the bus)


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


def room_for(calls: int) -> int:
    """How many of `calls` connections this process can hold open at once, after raising the
    soft RLIMIT_NOFILE (up to the hard limit) if they would not fit under it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    need = in_use + calls + FD_RESERVE
    if need > soft and soft != hard:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    return max(1, min(calls, soft - in_use - FD_RESERVE))


def _closed_by_peer(sock: socket.socket) -> bool:
    """Has the other end of an idle kept-alive connection closed it (readable with nothing to
    say: EOF, or TLS close_notify)?"""
    poller = select.poll()      # not select(): a fan-out's descriptors go past 1024
    try:
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _fixed(nodes: list[Node]) -> Callable[[], list[Node]]:
    listed = list(nodes)
    return lambda: listed


class Session:
    """Calls to one node over one HTTPS connection, kept alive between them. Once the node could
    not be reached, every later call of the session gets that reason at once: a dead node is
    waited on once, not once per call."""

    def __init__(self, node: Node, timeout: float, controller: str = CONTROLLER):
        self.node, self.timeout, self.controller = node, timeout, controller
        self._conn: http.client.HTTPSConnection | None = None
        self._unreached: Reply | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, action: str, inputs: dict[str, Any]) -> Reply:
        """(status, payload) of one action; failures to reach the node are status 502 with the
        reason (refused, timed out, certificate not trusted...)."""
        if self._unreached is not None:
            return self._unreached
        node = self.node
        if node.key_file:
            wrong = secrets.problem(SecretFile(node.key_file, f"the key of node {node.id}"))
            if wrong is not None:
                return 502, f"node {node.id}: not called: {wrong}"
        try:
            key = node.key or secrets.read_key(node.key_file)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return 502, f"node {node.id}: cannot read its key from {node.key_file}: {reason}"
        try:
            context = _context(node.ca)
        except (OSError, ssl.SSLError) as exc:
            return 502, f"node {node.id}: cannot use its CA file {node.ca}: {exc}"
        try:
            status, body = self._exchange(context, action, inputs, key)
        except ssl.SSLCertVerificationError as exc:
            return self._gone(f"refused its TLS certificate ({exc.verify_message or exc.reason})")
        except (socket.timeout, TimeoutError):
            return self._gone(f"no answer from {node.url} within {self.timeout:g} s")
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            return self._gone(f"cannot reach {node.url}: {exc}")
        try:
            reply = json.loads(body)
            return int(reply["status"]), reply["payload"]
        except (ValueError, KeyError, TypeError):
            return 502, f"node {node.id}: not an imapd-ctl reply (HTTP {status})"

    def _gone(self, reason: str) -> Reply:
        self.close()
        self._unreached = (502, f"node {self.node.id}: {reason}")
        return self._unreached

    def _exchange(self, context: ssl.SSLContext, action: str, inputs: dict[str, Any], key: str) -> tuple[int, bytes]:
        url = urllib.parse.urlsplit(self.node.url)
        request = (f"{url.path.rstrip('/')}{self.controller}/{action}", json.dumps(inputs),
                   {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        if self._conn is not None and self._conn.sock is not None and _closed_by_peer(self._conn.sock):
            self.close()       # the node ended the kept-alive connection while it was idle
        kept = self._conn is not None
        try:
            return self._send(url, context, *request)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
            if not kept:
                raise
        # The node closed a kept-alive connection as the request went out, before reading it (it
        # answers every request it reads): the request is sent once more, on a new connection.
        self.close()
        return self._send(url, context, *request)

    def _send(self, url: urllib.parse.SplitResult, context: ssl.SSLContext, path: str, body: str,
              headers: dict[str, str]) -> tuple[int, bytes]:
        """The request over the kept connection, or a new one when there is none."""
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(url.hostname or "", url.port or 443, timeout=self.timeout,
                                                     context=context)
        self._conn.request("POST", path, body=body, headers=headers)
        resp = self._conn.getresponse()
        data = resp.read()
        if resp.will_close:
            self.close()
        return resp.status, data


class Cluster:
    """`nodes`: the registry, asked at each call (adapters.registry.Registry.nodes), or a fixed list."""

    def __init__(self, local_id: str, nodes: Callable[[], list[Node]] | list[Node], timeout: float,
                 parallel: int = 4096):
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

    def session(self, node: Node, controller: str = CONTROLLER) -> Session:
        return Session(node, self.timeout, controller)

    def call(self, node: Node, action: str, inputs: dict[str, Any], controller: str = CONTROLLER) -> Reply:
        """(status, payload) of one action of `controller` on a node (Session.call)."""
        with self.session(node, controller) as s:
            return s.call(action, inputs)

    def replay(self, action: str, inputs: dict[str, Any], controller: str = CONTROLLER) -> list[dict[str, Any]]:
        """Run the action (of `controller`) on every other node at once; one outcome per node, by id."""
        inputs = {k: v for k, v in inputs.items() if v is not None}   # None: "keep current"
        inputs["cascade_to_nodes"] = 0
        return [{"id": n.id, "status": s, "payload": p} for n, (s, p) in self.on_each(action, inputs, controller)]

    def on_each(self, action: str, inputs: dict[str, Any],
                controller: str = CONTROLLER) -> list[tuple[Node, Reply]]:
        """The action on every other node at once, by id: each node with its (status, payload)."""
        nodes = sorted(self.nodes.values(), key=lambda n: n.id)
        return list(zip(nodes, at_once(nodes, lambda n: self.call(n, action, inputs, controller), self.parallel)))


def at_once(items: list[Any], fn: Callable[[Any], Any], cap: int) -> list[Any]:
    """fn(item) for every item, a thread each (up to `cap` and what the file descriptors allow;
    the threads take the items left as they finish), in the items' order. A thread the process
    cannot start (its unit's TasksMax, memory) is not an error: the threads already running
    take the rest, or this one does. An exception of fn is raised here, after every call ended."""
    results: list[Any] = [None] * len(items)
    failures: list[BaseException] = []
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(len(items)):
        todo.put(i)

    def work() -> None:
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results[i] = fn(items[i])
            except BaseException as exc:       # raised once every call has ended
                failures.append(exc)

    threads: list[threading.Thread] = []
    for _ in range(min(max(1, cap), room_for(len(items))) if items else 0):
        thread = threading.Thread(target=work, name="fan-out", daemon=True)
        try:
            thread.start()
        except RuntimeError:                   # "can't start new thread"
            break
        threads.append(thread)
    if not threads:
        work()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return results
