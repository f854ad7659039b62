"""`doveadm -f json service status`: the running Dovecot's process pools, parsed.

Both 2.3 and 2.4 print the same 13 columns (name, process_count, process_avail, process_limit,
client_limit, throttle_secs, exit_failure_last, exit_failures_in_sec, last_drop_warning,
listen_pending, listening, doveadm_stop, process_total). 2.3.19 prints every value as a JSON
string ("0", "y"/"n"); this parser also takes numbers and booleans, and an unlimited limit
written as "unlimited", an empty string, 0 or UINT_MAX (2.4 accepts `unlimited` in the
config where 2.3 used 0).
"""
from __future__ import annotations

import json
from typing import Any

from imapd_ctl.core.capacity import Pool

COLUMNS = ("name", "process_count", "process_limit", "client_limit", "throttle_secs",
           "exit_failures_in_sec", "last_drop_warning", "listen_pending")
_UNLIMITED_FROM = (1 << 32) - 1


class StatusError(ValueError):
    pass


def _int(row: dict[str, Any], key: str) -> int:
    raw = row.get(key, 0)
    if isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    if raw in ("", None):
        return 0
    raise StatusError(f"{row.get('name', '?')}: {key} is {raw!r}, not a number")


def _limit(row: dict[str, Any], key: str) -> int | None:
    raw = row.get(key)
    if isinstance(raw, str) and raw.strip().lower() in ("", "unlimited"):
        return None
    value = _int(row, key)
    return None if value == 0 or value >= _UNLIMITED_FROM else value


def _flag(row: dict[str, Any], key: str) -> bool:
    raw = row.get(key, False)
    if isinstance(raw, str):
        return raw.strip().lower() in ("y", "yes", "1", "true")
    return bool(raw)


def parse(text: str) -> dict[str, dict[str, Any]]:
    """{service name: its row with typed values} of the JSON doveadm prints."""
    try:
        rows = json.loads(text)
    except ValueError as exc:
        raise StatusError(f"doveadm service status: not JSON ({exc})") from None
    if isinstance(rows, dict):      # one service as an object
        rows = [rows]
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "name" in r for r in rows):
        raise StatusError("doveadm service status: expected a list of objects with a name")
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        out[str(row["name"])] = {
            "processes": _int(row, "process_count"),
            "process_limit": _limit(row, "process_limit"),
            "client_limit": _limit(row, "client_limit") or 1,
            "throttle_secs": _int(row, "throttle_secs"),
            "exit_failures_in_sec": _int(row, "exit_failures_in_sec"),
            "last_drop_warning": _int(row, "last_drop_warning"),
            "listen_pending": _flag(row, "listen_pending"),
        }
    return out


def pools(text: str, unit: str, ports: tuple[int, ...]) -> tuple[Pool, ...]:
    """The two pools an IMAP connection passes through: imap-login (before login) and imap
    (logged in; its process_limit is what `update` sets)."""
    found = parse(text)
    result = []
    for name, limiting in (("imap", True), ("imap-login", False)):
        if name not in found:
            raise StatusError(f"doveadm service status: no service {name!r} "
                              f"(services: {', '.join(sorted(found)) or 'none'})")
        result.append(Pool(name=name, unit=unit, ports=ports, limits_connections=limiting, **found[name]))
    return tuple(result)
