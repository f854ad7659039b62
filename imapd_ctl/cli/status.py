"""`imapd-ctl status`: what this node (or every node of the registry) is doing, as data.

The API's answers (isRunning, queryStartOnBoot, queryUpdate, and queryCapacity where the action
table has it) are kept exactly as the daemon gave them, under "api", so `--json` matches what a
panel sees; beside them, for this node, the facts only the host can tell: the IMAP server and
its version, each unit and port, restarts, an interrupted change, the daemon's health. Making
words of it is cli.show's job.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable

from imapd_ctl.adapters import hostinfo
from imapd_ctl.core.errors import ApiError
from imapd_ctl.operations import prose
from imapd_ctl.core.settings import Settings
from imapd_ctl.cli import client
from imapd_ctl.cli.access import OK, FAILED, Refusal, refused_key, unreachable
from imapd_ctl.cli.calls import Answer, Caller, fan_out, has_action

CAPACITY = "queryCapacity"


def plan() -> list[tuple[str, dict[str, Any]]]:
    """The read-only actions status asks each node."""
    names = ["isRunning", "queryStartOnBoot", "queryUpdate"] + ([CAPACITY] if has_action(CAPACITY) else [])
    return [(name, {}) for name in names]


def health(sock: str, timeout: float) -> dict[str, Any]:
    """The daemon's /healthz over its socket (no key needed)."""
    try:
        code, body = client.request(sock, "GET", "/healthz",
                                    conn=client.UnixHTTPConnection(sock, timeout))
    except OSError as exc:
        refusal = unreachable(sock, exc)
        return {"ok": False, "socket": sock, "detail": refusal.message, "exit": refusal.code}
    ok = code == 200
    return {"ok": ok, "socket": sock, "detail": "answers" if ok else f"HTTP {code}: {body[:200]!r}",
            "exit": OK if ok else FAILED}


def _answers(results: dict[str, Answer]) -> dict[str, dict[str, Any]]:
    return {action: {"status": a.status, "payload": a.payload} for action, a in results.items()}


def _problems_of_api(api: dict[str, dict[str, Any]]) -> list[str]:
    problems = [f"{action}: status {a['status']}: {a['payload']}" for action, a in api.items() if a["status"]]
    if api.get("isRunning", {}).get("payload") is False:
        problems.append("the IMAP server is not serving (isRunning false)")
    capacity = api.get(CAPACITY, {}).get("payload")
    if isinstance(capacity, dict) and capacity.get("saturated") is True:
        problems.append(f"saturated: {capacity.get('summary', 'see queryCapacity')}")
    return problems


def ports_of(settings: Settings, flavour: Any) -> list[tuple[str, int]]:
    """(unit, port) of every port the IMAP server should listen on: the flavour's, and the
    secure port's unit where the flavour names one (the simap controller's secure_unit and
    ssl_port; Dovecot serves 143 and 993 from one unit)."""
    pairs = list(flavour.unit_ports().items())
    secure, ssl_port = getattr(flavour, "secure_unit", None), getattr(settings, "ssl_port", None)
    if secure and isinstance(ssl_port, int) and (secure, ssl_port) not in pairs:
        pairs.append((secure, ssl_port))
    return pairs


def local_facts(settings: Settings, flavour_of: Callable[[], Any]) -> dict[str, Any]:
    """The IMAP server, its units and ports, and an interrupted change, read on this host."""
    facts: dict[str, Any] = {"node": settings.node_id}
    try:
        flavour = flavour_of()
        facts["server"] = {"flavour": flavour.name, "version": hostinfo.server_version(flavour.name),
                           "units": list(flavour.units)}
        facts["ports"] = [asdict(hostinfo.port_state(unit, port)) for unit, port in ports_of(settings, flavour)]
    except ApiError as exc:
        facts["server"] = {"error": prose.message(exc)}
        facts["ports"] = []
    facts["interrupted_change"] = _pending(settings)
    return facts


def _pending(settings: Settings) -> dict[str, Any] | None:
    from imapd_ctl.adapters.journal import Journal
    try:
        entry = Journal(settings.state_dir).pending()
    except PermissionError:
        return {"error": f"cannot read {settings.state_dir}: permission denied (run as root)"}
    except (ApiError, OSError) as exc:
        return {"error": prose.message(exc)}
    if entry is None:
        return None
    return {"txn_id": entry.txn_id, "action": entry.action, "step": entry.step,
            "started": entry.started, "next": "imapd-ctl recover"}


def node_status(settings: Settings, sock: str, key_of: Callable[[], str | None],
                caller_of: Callable[[str | None], Caller], flavour_of: Callable[[], Any]) -> dict[str, Any]:
    """This node: host facts, the daemon's health and, if it answers and a key is given, the
    API's answers. `exit` is the exit code status should end with."""
    report = local_facts(settings, flavour_of)
    report["daemon"] = daemon = health(sock, settings.node_timeout)
    problems: list[str] = []
    exit_code = OK
    if daemon["ok"]:
        try:
            key = key_of()
            results = fan_out({settings.node_id: caller_of(key)}, plan())[settings.node_id]
            denied = next((refused_key(a.status, a.payload, keyless=key is None) for a in results.values()
                           if a.reached and a.status in (401, 403)), None)
            if denied is not None:
                raise denied
            report["api"] = _answers(results)
            refused = [a for a in results.values() if not a.reached]
            if refused:
                exit_code = refused[0].status
            problems += _problems_of_api(report["api"])
        except Refusal as exc:      # no key: the rest of the screen still helps
            report["api"] = None
            problems.append(exc.message)
            exit_code = exc.code
    else:
        report["api"] = None
        problems.append(f"daemon: {daemon['detail']}")
        exit_code = daemon["exit"]
    for port in report["ports"]:
        if not port["listening"]:
            problems.append(f"{port['unit']}: {port['active_state']}, nothing of it listens on port {port['port']}")
    if "error" in report["server"]:
        problems.append(f"IMAP server: {report['server']['error']}")
    if report["interrupted_change"] is not None:
        change = report["interrupted_change"]
        problems.append(f"interrupted change: {change.get('error') or change['txn_id']} "
                        f"(run `imapd-ctl recover`)")
    report["problems"] = problems
    report["exit"] = exit_code if exit_code != OK else (FAILED if problems else OK)
    return report


def cluster_status(local_id: str, callers: dict[str, Caller], parallel: int = 4096) -> dict[str, Any]:
    """One row per node (this node first), every node asked at once (up to `parallel` nodes):
    {"nodes": [...], "exit"}."""
    results = fan_out(callers, plan(), parallel)
    rows = []
    for node, answers in results.items():
        unreached = next((a for a in answers.values() if not a.reached), None)
        api = _answers(answers)
        row: dict[str, Any] = {"node": node, "this_node": node == local_id,
                               "reached": unreached is None, "api": None if unreached else api}
        row["problems"] = [str(unreached.payload)] if unreached else _problems_of_api(api)
        rows.append(row)
    return {"nodes": rows, "exit": FAILED if any(r["problems"] for r in rows) else OK}
