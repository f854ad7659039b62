"""Audit trail of mutating calls: one JSON line each (key name, peer, transport, controller,
action, inputs, result). Keys themselves are never logged."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

log = logging.getLogger("imapd_ctl.audit")
_PAYLOAD_MAX = 500


class AuditLog:
    """The core.protocols.Audit of the daemon: lines to the "imapd_ctl.audit" logger, which
    appends them to `path` (O_APPEND keeps lines from several workers whole). An empty path
    keeps the logger as it is (no file of ours). The file is opened by `open()` (the serving
    graph's context does it, so a worker that cannot write it fails at start), never by a
    command that only reads keys or nodes."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path) if path else ""
        self._handler: logging.Handler | None = None

    def open(self) -> None:
        """Attach the file handler (once per file, however many graphs a process builds)."""
        if not self.path or any(getattr(h, "baseFilename", None) == self.path for h in log.handlers):
            return
        os.makedirs(os.path.dirname(self.path), mode=0o750, exist_ok=True)
        handler = logging.FileHandler(self.path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        self._handler = handler

    def close(self) -> None:
        """Detach the file handler this object attached (tests build many graphs)."""
        if self._handler is not None:
            log.removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    def record(self, *, who: str, peer: str, transport: str, controller: str, action: str,
               inputs: dict[str, Any], status: int, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload, default=str)
        if len(text) > _PAYLOAD_MAX:
            text = text[:_PAYLOAD_MAX] + "..."
        log.info(json.dumps({
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "key": who, "peer": peer,
            "transport": transport, "controller": controller, "action": action, "inputs": inputs, "status": status,
            "result": text,
        }, sort_keys=False))
