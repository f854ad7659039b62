"""`imapd-ctl status` as a person reads it: one screen for this node, or one table row per node
(--all). Made from cli.status's data; nothing here asks anything."""
from __future__ import annotations

from typing import Any

from imapd_ctl.cli.show import PLAIN, Style, payload_text, scalar, table

_IN_USE = ("in_use", "connections", "used", "process_count", "children")
_LIMIT = ("limit", "process_limit", "max_connections", "maxdaemons")


def _payload(api: dict[str, Any] | None, action: str) -> Any:
    """The payload of a successful answer, else None."""
    if not api or action not in api or api[action]["status"] != 0:
        return None
    return api[action]["payload"]


def _records(capacity: Any) -> list[dict[str, Any]]:
    """queryCapacity's per-port records, wherever the payload keeps them."""
    if isinstance(capacity, list):
        return [r for r in capacity if isinstance(r, dict)]
    if isinstance(capacity, dict):
        for key in ("ports", "per_port"):
            if isinstance(capacity.get(key), list):
                return _records(capacity[key])
            if isinstance(capacity.get(key), dict):
                return [{"port": p, **r} for p, r in capacity[key].items() if isinstance(r, dict)]
        if all(isinstance(v, dict) for v in capacity.values()) and capacity:
            return [{"port": p, **r} for p, r in capacity.items()]
    return []


def connections(capacity: Any) -> str:
    """'143: 3/100, 993: 0/100' from queryCapacity, '-' when it says nothing we know; ports that
    share one limit (Dovecot's one imap pool serves both) are said to."""
    parts, shared = [], []
    for rec in _records(capacity):
        used = next((rec[k] for k in _IN_USE if isinstance(rec.get(k), int)), None)
        limit = next((rec[k] for k in _LIMIT if isinstance(rec.get(k), int)), None)
        if used is not None:
            where = f"{rec['port']}: " if "port" in rec else ""
            parts.append(f"{where}{used}/{limit if limit is not None else 'no limit'}")
        group = sorted({rec.get("port"), *(rec.get("shared_with") or [])} - {None})
        if len(group) > 1 and group not in shared:
            shared.append(group)
    notes = [f"{' and '.join(map(str, group))} share one limit" for group in shared]
    return (", ".join(parts) or "-") + (f" ({'; '.join(notes)})" if notes and parts else "")


def _yes(style: Style, good: bool | None, yes: str, no: str) -> str:
    if good is None:
        return style("warn", "unknown")
    return style("ok", yes) if good else style("bad", no)


def node_screen(report: dict[str, Any], style: Style = PLAIN) -> str:
    """One node, one screen."""
    api = report.get("api")
    lines = [style("bold", f"imapd-ctl status of {report['node']}")]
    server = report["server"]
    if "error" in server:
        lines.append(f"IMAP server   {style('bad', server['error'])}")
    else:
        version = server.get("version") or "version unknown"
        lines.append(f"IMAP server   {server['flavour']} {version} ({', '.join(server['units'])})")
    running = _payload(api, "isRunning")
    lines.append(f"serving       {_yes(style, running, 'yes (isRunning)', 'NO (isRunning false)')}")
    if report["ports"]:
        rows = [[str(p["port"]), p["unit"], _yes(style, p["active_state"] == "active", p["active_state"],
                                                  p["active_state"]),
                 _yes(style, p["listening"], "listening", "not listening"), p["enabled"],
                 scalar(p["restarts"]), p["result"] or "-"] for p in report["ports"]]
        lines.append("")
        lines.append(table(["PORT", "UNIT", "STATE", "SOCKET", "AT BOOT", "RESTARTS", "LAST RESULT"],
                           rows, style))
        lines.append("")
    boot = _payload(api, "queryStartOnBoot")
    if isinstance(boot, dict):
        on = boot.get("mda_imap_startonboot")
        lines.append(f"start on boot {_yes(style, on == 1 if on is not None else None, 'enabled', 'disabled')}")
    if "queryCapacity" in (api or {}):
        capacity = _payload(api, "queryCapacity")
        lines.append(f"connections   {connections(capacity)} (in use/limit)")
        signals = capacity.get("signals") if isinstance(capacity, dict) else None
        for signal in signals if isinstance(signals, list) else []:
            text = signal.get("text") if isinstance(signal, dict) else signal
            lines.append("              " + style("warn", f"saturation: {text}"))
    limits = _payload(api, "queryUpdate")
    if isinstance(limits, dict):
        lines.append("limits        " + payload_text(limits).replace("\n", "\n              "))
    change = report.get("interrupted_change")
    if change is None:
        lines.append("changes       none interrupted")
    elif "error" in change:
        lines.append(f"changes       {style('warn', change['error'])}")
    else:
        lines.append("changes       " + style("bad", f"interrupted: {change['txn_id']} ({change['action']}) "
                                                     f"at step {change['step']}; run `imapd-ctl recover`"))
    daemon = report["daemon"]
    lines.append(f"daemon        {_yes(style, daemon['ok'], 'answers', 'DOWN')} on {daemon['socket']}")
    if report["problems"]:
        lines.append("")
        lines.extend(style("bad", f"! {p}") for p in report["problems"])
    return "\n".join(lines)


def cluster_table(result: dict[str, Any], style: Style = PLAIN) -> str:
    """One row per node: whether it answers, serves, starts at boot, its connections and limits."""
    rows = []
    for row in result["nodes"]:
        name = row["node"] + (" (this node)" if row["this_node"] else "")
        if not row["reached"]:
            rows.append([name, style("bad", "UNREACHABLE"), "-", "-", "-", "-", row["problems"][0]])
            continue
        api = row["api"]
        running = _payload(api, "isRunning")
        boot = _payload(api, "queryStartOnBoot")
        limits = _payload(api, "queryUpdate")
        conns = connections(_payload(api, "queryCapacity")) if "queryCapacity" in api else "-"
        max_conn = (f"{limits.get('imap_max_connections', '?')}/{limits.get('imap_secure_max_connections', '?')}"
                    if isinstance(limits, dict) else "-")
        on_boot = boot.get("mda_imap_startonboot") if isinstance(boot, dict) else None
        rows.append([name, style("ok", "answers"), _yes(style, running, "yes", "NO"),
                     _yes(style, on_boot == 1 if on_boot is not None else None, "enabled", "disabled"),
                     conns, max_conn, "; ".join(row["problems"]) or "-"])
    return table(["NODE", "DAEMON", "SERVING", "AT BOOT", "CONNECTIONS", "MAX CONN (143/993)", "NOTE"],
                 rows, style)
