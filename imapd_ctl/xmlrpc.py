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


_I4 = 2**31 - 1


def _marshallable(value: Any) -> Any:
    """XML-RPC integers are 32-bit: larger ones (memory limits above 2 GiB) are sent as
    decimal strings, which InterWorx clients and our own inputs accept."""
    if isinstance(value, int) and not isinstance(value, bool) and not -_I4 - 1 <= value <= _I4:
        return str(value)
    if isinstance(value, dict):
        return {k: _marshallable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_marshallable(v) for v in value]
    return value


def handle_xmlrpc(body: bytes, controller, keys, *, peer: str) -> bytes:
    def route(*args):
        if not 3 <= len(args) <= 4:
            return {"status": 400, "payload": "iworx.route takes (apikey, ctrl_name, action[, input]); "
                                              f"got {len(args)} parameters"}
        apikey, ctrl_name, action = args[:3]
        try:
            key = _key(apikey)
            if ctrl_name != CONTROLLER:
                # Authenticate first: an unknown caller learns nothing about controllers.
                keys.authenticate(key, PERMISSION)
                raise NotFound(f"unknown controller {str(ctrl_name)[:60]!r}; this server serves {CONTROLLER}")
        except ApiError as exc:
            return {"status": exc.status, "payload": exc.message}
        status, payload = dispatch(controller, keys, key, action, args[3] if len(args) == 4 else None,
                                   transport="xmlrpc", peer=peer)
        return {"status": status, "payload": _marshallable(payload)}

    dispatcher = SimpleXMLRPCDispatcher(allow_none=True, encoding="utf-8", use_builtin_types=True)
    dispatcher.register_function(route, "iworx.route")
    return dispatcher._marshaled_dispatch(body)
