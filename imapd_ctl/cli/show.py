"""Words for the command line, made from data at the edge: an action's payload by its kind (a
sentence, a yes/no, a record, a list, a cascade's per-node results as a table), and colour only
when the output is a terminal and NO_COLOR is not set (https://no-color.org)."""
from __future__ import annotations

import json
import os
from typing import Any, Sequence, TextIO

_CODES = {"ok": "32", "bad": "31", "warn": "33", "bold": "1", "dim": "2"}


class Style:
    """ANSI colour, or plain text when off."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    @staticmethod
    def for_stream(stream: TextIO) -> "Style":
        isatty = getattr(stream, "isatty", None)
        on = bool(isatty and isatty()) and not os.environ.get("NO_COLOR") \
            and os.environ.get("TERM", "") != "dumb"
        return Style(on)

    def __call__(self, kind: str, text: str) -> str:
        if not self.enabled or kind not in _CODES:
            return text
        return f"\033[{_CODES[kind]}m{text}\033[0m"

    def width(self, text: str) -> int:
        """Printed width (escape codes take none)."""
        import re
        return len(re.sub(r"\033\[[0-9;]*m", "", text))


PLAIN = Style(False)


def size(n: Any) -> str:
    """Bytes with a binary unit beside them: 268435456 (256 MiB)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1024:
        return str(n)
    value, unit = float(n), "B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{n} ({value:.0f} {unit})" if value == int(value) else f"{n} ({value:.1f} {unit})"


def scalar(value: Any, name: str = "") -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "-"
    if name.endswith("mem_limit"):
        return size(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], style: Style = PLAIN) -> str:
    """Columns padded to their widest cell (the last column is not padded)."""
    widths = [max([len(h)] + [style.width(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = []
    for cells, is_head in [(list(headers), True)] + [(list(r), False) for r in rows]:
        out = []
        for i, cell in enumerate(cells):
            pad = "" if i == len(cells) - 1 else " " * (widths[i] - style.width(cell))
            out.append((style("bold", cell) if is_head else cell) + pad)
        lines.append("  ".join(out).rstrip())
    return "\n".join(lines)


def is_cascade(payload: Any) -> bool:
    return (isinstance(payload, list) and bool(payload)
            and all(isinstance(o, dict) and set(o) >= {"id", "status", "payload"} for o in payload))


def cascade(payload: list[dict[str, Any]], style: Style = PLAIN) -> str:
    rows = []
    for outcome in payload:
        ok = outcome["status"] == 0
        rows.append([str(outcome["id"]), style("ok" if ok else "bad", "ok" if ok else str(outcome["status"])),
                     payload_text(outcome["payload"]).replace("\n", "\n    ")])
    return table(["NODE", "STATUS", "RESULT"], rows, style)


def payload_text(payload: Any, style: Style = PLAIN) -> str:
    """An action's payload as a person reads it, by its kind."""
    if isinstance(payload, str):
        return payload
    if is_cascade(payload):
        return cascade(payload, style)
    if isinstance(payload, dict) and all(not isinstance(v, (dict, list)) for v in payload.values()):
        width = max((len(k) for k in payload), default=0)
        return "\n".join(f"{k.ljust(width)}  {scalar(v, k)}" for k, v in payload.items())
    if isinstance(payload, list) and all(not isinstance(v, (dict, list)) for v in payload):
        return "\n".join(scalar(v) for v in payload)
    if isinstance(payload, (dict, list)):
        return json.dumps(payload, indent=2)
    return scalar(payload)


def failure_text(action: str, status: int, payload: Any, style: Style = PLAIN) -> str:
    """A non-zero answer: the status and what the daemon said (a cascade's table if it is one)."""
    head = f"imapd-ctl: {action} failed (status {status})"
    if is_cascade(payload):
        return f"{head}:\n{cascade(payload, style)}"
    return f"{head}: {payload_text(payload, style)}"
