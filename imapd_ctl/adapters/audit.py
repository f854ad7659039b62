"""Audit trail of mutating calls (key name, peer, transport, controller, action, inputs, result); keys
themselves are never logged.

It fails closed: each change writes a "begin" line, flushed to disk, before it runs, and is
refused (ChangesRefused, 503, nothing touched) if that line cannot be written (disk full,
permissions, a read-only file system). The "end" line, with the result, follows the change;
if it cannot be written the change has already happened, so the line goes to the daemon's
log (the journal) instead, with the reason. Read-only calls write nothing and go on."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from imapd_ctl.core.errors import ChangesRefused

log = logging.getLogger("imapd_ctl.audit")
_PAYLOAD_MAX = 500


class AuditLog:
    """The core.protocols.Audit of the daemon: JSON lines appended to `path` (each line one
    O_APPEND write of a file opened for it, so lines of several workers stay whole and a
    rotated or re-created file is picked up). An empty path sends the lines to the
    "imapd_ctl.audit" logger only (no file of ours, nothing to fail closed on)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path) if path else ""

    def open(self) -> None:
        """At serve start: make the directory and say so if the file cannot be written (the
        daemon serves anyway; changes are refused until it can)."""
        if not self.path:
            return
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o750, exist_ok=True)
            os.close(self._open())
        except OSError as exc:
            log.error("audit log %s cannot be written (%s): changes will be refused until it can",
                      self.path, exc.strerror or exc)

    def close(self) -> None:
        """Nothing is kept open between lines (kept for callers that build many graphs)."""

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def _append(self, line: dict[str, Any], *, sync: bool) -> None:
        """Append one line; raises OSError if it is not all written (and, with sync, on disk)."""
        data = (json.dumps(line) + "\n").encode()
        if not self.path:
            log.info("%s", data.decode().rstrip("\n"))
            return
        fd = self._open()
        try:
            written = os.write(fd, data)
            if written != len(data):
                if written:        # end the torn line, so the next one parses
                    os.write(fd, b"\n")
                raise OSError(28, f"only {written} of {len(data)} bytes written")
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _line(phase: str, who: str, peer: str, transport: str, controller: str, action: str,
              inputs: dict[str, Any]) -> dict[str, Any]:
        return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "phase": phase, "key": who,
                "peer": peer, "transport": transport, "controller": controller, "action": action,
                "inputs": inputs}

    def begin(self, *, who: str, peer: str, transport: str, controller: str, action: str,
              inputs: dict[str, Any]) -> None:
        try:
            self._append(self._line("begin", who, peer, transport, controller, action, inputs), sync=True)
        except OSError as exc:
            raise ChangesRefused(
                f"{action} refused: the audit log {self.path} cannot be written "
                f"({exc.strerror or exc}); nothing was changed. Changes are refused until the "
                "audit log can be written; read-only actions still answer") from None

    def record(self, *, who: str, peer: str, transport: str, controller: str, action: str,
               inputs: dict[str, Any], status: int, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload, default=str)
        if len(text) > _PAYLOAD_MAX:
            text = text[:_PAYLOAD_MAX] + "..."
        line = {**self._line("end", who, peer, transport, controller, action, inputs), "status": status,
                "result": text}
        try:
            self._append(line, sync=False)
        except OSError as exc:
            log.error("audit log %s cannot be written (%s); the line: %s", self.path,
                      exc.strerror or exc, json.dumps(line))
