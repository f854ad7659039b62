"""Where the command line sends an action: this node's daemon over its unix socket (the
operator's key), or another node of the registry over HTTPS with the key this host holds for it
(adapters.cluster, exactly as the *OnNode actions forward). Answers stay data: (status, payload).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from imapd_ctl.adapters.cluster import Cluster, at_once
from imapd_ctl.core import actions
from imapd_ctl.core.actions import ACTIONS, CONTROLLER
from imapd_ctl.core.errors import ApiError
from imapd_ctl.core.settings import Settings
from imapd_ctl.cli import client
from imapd_ctl.cli.access import Refusal, USAGE, unreachable

CONTROLLER_BASE = CONTROLLER.rsplit("/", 1)[0]      # /nodeworx/mail


def controllers() -> dict[str, str]:
    """{short name: path} of the controllers the action table serves: `imap` always; the table's
    CONTROLLERS (a mapping or sequence of paths or short names) when it declares more."""
    declared: Iterable[Any] = getattr(actions, "CONTROLLERS", None) or (CONTROLLER,)
    found: dict[str, str] = {}
    for entry in declared:
        path = entry if isinstance(entry, str) else str(getattr(entry, "path", entry))
        if not path.startswith("/"):
            path = f"{CONTROLLER_BASE}/{path}"
        found[path.rsplit("/", 1)[-1]] = path
    return found


def has_action(name: str) -> bool:
    """Whether this build's action table has `name` (queryCapacity lights up status)."""
    return name in ACTIONS


@dataclass(frozen=True)
class Answer:
    """One node's answer to one action; `reached` is False when the node itself could not be
    called (its payload then says why)."""
    status: int
    payload: Any
    reached: bool = True


Caller = Callable[[str, dict[str, Any]], Answer]


def local(sock: str, key: str | None, controller: str = CONTROLLER, timeout: float = 120) -> Caller:
    """Calls to this node's daemon over its unix socket; an unreachable socket is a Refusal
    (exit code and what to do), since nothing else can be shown without the daemon."""
    def call(action: str, inputs: dict[str, Any]) -> Answer:
        try:
            status, payload = client.call(sock, key, action, inputs, controller=controller,
                                          timeout=timeout)
        except OSError as exc:
            raise unreachable(sock, exc) from None
        return Answer(status, payload)
    return call


def remote(cluster: Cluster, node_id: str, controller: str = CONTROLLER) -> Caller:
    """Calls to `controller` on another node of the registry (HTTPS, verified, node_timeout per
    call), over one connection kept alive between them (the caller's `close` ends it); once the
    node could not be reached, later calls say so at once. An unknown id is a Refusal listing
    the known ones."""
    try:
        node = cluster.node(node_id)
    except ApiError as exc:            # NotFound: its message lists the known ids
        raise Refusal(USAGE, exc.message) from None
    session = cluster.session(node, controller)
    one_at_a_time = threading.Lock()   # one connection: its calls go in turn

    def call(action: str, inputs: dict[str, Any]) -> Answer:
        with one_at_a_time:
            status, payload = session.call(action, inputs)
        # A Session answers 502 with the reason when the node could not be reached at all.
        reached = not (status == 502 and isinstance(payload, str) and payload.startswith(f"node {node.id}:"))
        return Answer(status, payload, reached)
    call.close = session.close         # type: ignore[attr-defined]
    return call


def call_timeout(settings: Settings) -> float:
    """How long the command line waits for this node's daemon: the longest an action may
    rightly take (a change waiting for the lock, its systemd job, the port), and some."""
    return settings.lock_timeout + settings.job_timeout + settings.listen_timeout + 30


def target(settings: Settings, cluster: Cluster, node_id: str | None, *, sock: str, key: str | None,
           controller: str = CONTROLLER) -> Caller:
    """The caller for --node ID (None or this node's id: the local daemon)."""
    if node_id is None or node_id == settings.node_id:
        return local(sock, key, controller, timeout=call_timeout(settings))
    return remote(cluster, node_id, controller)


def fan_out(callers: dict[str, Caller], plan: list[tuple[str, dict[str, Any]]],
            parallel: int = 4096) -> dict[str, dict[str, Answer]]:
    """Every node of `callers` at once, each asked the plan's actions in turn (over one
    connection where the caller keeps one): {node: {action: Answer}}. Each call has its own
    timeout (the node's), so the whole takes about as long as the slowest node's plan. A node
    that cannot be called at all gives Answers with reached=False and the reason."""
    def one(node: str, action: str, inputs: dict[str, Any]) -> Answer:
        try:
            return callers[node](action, inputs)
        except Refusal as exc:
            return Answer(exc.code, exc.message, reached=False)
        except (OSError, ValueError, KeyError) as exc:
            return Answer(502, f"{type(exc).__name__}: {exc}", reached=False)

    def node_plan(node: str) -> dict[str, Answer]:
        try:
            return {action: one(node, action, inputs) for action, inputs in plan}
        finally:
            close = getattr(callers[node], "close", None)
            if close is not None:
                close()

    nodes = list(callers)
    return dict(zip(nodes, at_once(nodes, node_plan, parallel)))
