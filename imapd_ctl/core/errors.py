"""Typed errors. Each carries the status that the envelope and the HTTP reply use.

Adapters raise these (or subclasses); the API layer turns them into
``{"status": <code>, "payload": <message>}`` without knowing where they came from.
"""
from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 500

    def __init__(self, message: str, payload: Any = None):
        super().__init__(message)
        self.message = message
        self.payload = payload    # a structured payload for the reply; None: the message


class Relayed(ApiError):
    """Another node's non-zero answer, passed on with its own status and payload."""

    def __init__(self, status: int, payload: Any):
        super().__init__(payload if isinstance(payload, str) else f"status {status}", payload)
        self.status = status


class BadInput(ApiError):
    """The request's inputs are wrong; nothing was changed."""
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class MethodNotAllowed(ApiError):
    status = 405


class Busy(ApiError):
    """Another change holds the configuration lock."""
    status = 409


class ActionFailed(ApiError):
    """The action ran and failed (failed job, config rejected, rolled back)."""
    status = 500


class ConfigInvalid(ActionFailed):
    """The IMAP server's validator rejected a candidate configuration."""


class ConfigWriteError(ActionFailed):
    """A configuration file could not be written (disk full, permissions...)."""


class NodeFailed(ApiError):
    status = 502


class Unavailable(ApiError):
    """systemd / D-Bus cannot be reached."""
    status = 503


class ChangesRefused(ApiError):
    """A change refused before anything was touched, because the daemon cannot do it safely
    now (the audit log cannot be written; an interrupted change is not recovered yet).
    Read-only calls still answer."""
    status = 503
