"""Audit trail of mutating calls: one JSON line each (key name, peer, transport, action,
inputs, result). Keys themselves are never logged."""
from __future__ import annotations

import json
import logging
import os
import time

log = logging.getLogger("imapd_ctl.audit")
_PAYLOAD_MAX = 500


def setup(path: str) -> None:
    """Append audit lines to `path` (O_APPEND keeps lines from several workers whole)."""
    if not path or any(getattr(h, "baseFilename", None) == os.path.abspath(path) for h in log.handlers):
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o750, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def record(*, who: str, peer: str, transport: str, action: str, inputs: dict,
           status: int, payload) -> None:
    text = payload if isinstance(payload, str) else json.dumps(payload, default=str)
    if len(text) > _PAYLOAD_MAX:
        text = text[:_PAYLOAD_MAX] + "..."
    log.info(json.dumps({
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "key": who, "peer": peer,
        "transport": transport, "action": action, "inputs": inputs, "status": status,
        "result": text,
    }, sort_keys=False))
