"""`imapd-ctl audit`: the audit trail (adapters.audit's JSON lines) read for the operator, the
newest last, filtered by action, key or failure. A change whose "begin" line has no "end" was
cut short (the daemon died mid-change): it is shown as such."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterator

from imapd_ctl.cli import access


def _lines(path: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                entry = json.loads(line)
            except ValueError:
                continue              # a torn line (the disk filled mid-write)
            if isinstance(entry, dict):
                yield entry


def entries(path: str) -> list[dict[str, Any]]:
    """Each change once: its "end" line, or its "begin" line marked unfinished if none came."""
    shown: list[dict[str, Any]] = []
    begun: list[dict[str, Any]] = []
    for entry in _lines(path):
        if entry.get("phase") == "begin":
            begun.append(entry)
            continue
        same = next((b for b in begun if all(b.get(k) == entry.get(k)
                                             for k in ("key", "peer", "action", "inputs"))), None)
        if same is not None:
            begun.remove(same)
        shown.append(entry)
    shown += [{**b, "status": None, "result": "no end line: cut short (see `imapd-ctl check`)"} for b in begun]
    return sorted(shown, key=lambda e: str(e.get("time", "")))


def _row(e: dict[str, Any]) -> str:
    inputs = " ".join(f"{k}={v}" for k, v in (e.get("inputs") or {}).items())
    result = str(e.get("result", ""))
    return "\t".join([str(e.get("time", "")), str(e.get("key", "")), str(e.get("peer", "")),
                      str(e.get("action", "")) + (f" {inputs}" if inputs else ""),
                      "-" if e.get("status") is None else str(e["status"]),
                      result if len(result) <= 100 else result[:97] + "..."])


def cmd_audit(args: argparse.Namespace) -> int:
    s = access.load_settings(args.config)
    if not s.audit_log:
        raise access.Refusal(access.FAILED, "audit_log is empty in the settings: the audit lines go to "
                                            "the daemon's log (journalctl -u imapd-ctl.service)")
    try:
        found = entries(s.audit_log)
    except FileNotFoundError:
        found = []
    except PermissionError:
        raise access.Refusal(access.DENIED, f"{s.audit_log} can be read by root and the daemon's user only") from None
    found = [e for e in found
             if (args.action is None or e.get("action") == args.action)
             and (args.key is None or e.get("key") == args.key)
             and (not args.failed or e.get("status") != 0)][-args.last:]
    if args.json:
        print(json.dumps(found, indent=1))
    else:
        for e in found:
            print(_row(e))
        if not found:
            print(f"no change recorded in {s.audit_log} matches", file=sys.stderr)
    return access.OK


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def add_audit(sub: Any) -> None:
    a = sub.add_parser("audit", help="read the audit trail of changes",
                       description="The changes made through the daemon, newest last: time, key (or the "
                                   "operator and uid, without a key), peer, action and inputs, status, "
                                   "result (tab-separated). Read from the settings' audit_log.")
    a.add_argument("--action", metavar="ACTION", help="only this action (e.g. update)")
    a.add_argument("--key", metavar="NAME", help="only calls made with this key name")
    a.add_argument("--failed", action="store_true", help="only changes that did not succeed")
    a.add_argument("--last", type=_count, default=20, metavar="N", help="the last N (default 20)")
    a.add_argument("--json", action="store_true", help="the lines as a JSON array")
    a.set_defaults(fn=cmd_audit)
