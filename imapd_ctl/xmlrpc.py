"""XML-RPC, drop-in for InterWorx API clients: iworx.route(apikey, ctrl_name, action, input).

Marshalling is the standard library's dispatcher; we only supply the one method.
"""
from __future__ import annotations

from typing import Any
from xmlrpc.server import SimpleXMLRPCDispatcher

from .actions import CONTROLLER, PERMISSION
from .controller import dispatch
from .errors import ApiError, NotFound, Unauthorized


def _key(apikey: Any):
    """The key from a string or {'apikey': ...}; other InterWorx auth forms are refused."""
    if isinstance(apikey, str):
        return apikey
    if isinstance(apikey, dict) and "apikey" in apikey:
        return apikey["apikey"] if isinstance(apikey["apikey"], str) else None
    if isinstance(apikey, dict) and apikey:
        raise Unauthorized("only API key authentication is supported: pass the key as a string "
                           "or as {'apikey': KEY} (session and email/password logins are not)")
    return None


def handle_xmlrpc(body: bytes, controller, keys, *, peer: str) -> bytes:
    def route(apikey, ctrl_name, action, input=None):  # noqa: A002 - InterWorx's name
        try:
            key = _key(apikey)
            if ctrl_name != CONTROLLER:
                # Authenticate first: an unknown caller learns nothing about controllers.
                keys.authenticate(key, PERMISSION)
                raise NotFound(f"unknown controller {str(ctrl_name)[:60]!r}; this server serves {CONTROLLER}")
        except ApiError as exc:
            return {"status": exc.status, "payload": exc.message}
        status, payload = dispatch(controller, keys, key, action, input, transport="xmlrpc", peer=peer)
        return {"status": status, "payload": payload}

    dispatcher = SimpleXMLRPCDispatcher(allow_none=True, encoding="utf-8", use_builtin_types=True)
    dispatcher.register_function(route, "iworx.route")
    return dispatcher._marshaled_dispatch(body)
