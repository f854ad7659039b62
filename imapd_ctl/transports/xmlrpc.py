"""XML-RPC, drop-in for InterWorx API clients: iworx.route(apikey, ctrl_name, action, input).

Marshalling is the standard library's dispatcher; we only supply the one method.
"""
from __future__ import annotations

import xmlrpc.client
from typing import Any
from xmlrpc.server import SimpleXMLRPCDispatcher

from imapd_ctl.core.actions import CONTROLLER, PERMISSION, brief
from imapd_ctl.operations.controller import dispatch
from imapd_ctl.core.errors import ApiError, BadInput, NotFound, Unauthorized


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


class _MemberNames(xmlrpc.client.Unmarshaller):
    """The standard unmarshaller, noting struct member names given more than once. It keeps
    the last value silently, so {node_id: <invalid>, node_id: <valid>} would pass as valid;
    like a JSON body that names an input twice, such a call is refused."""
    dispatch = dict(xmlrpc.client.Unmarshaller.dispatch)

    def __init__(self):
        super().__init__(use_builtin_types=True)
        self.repeated: list = []

    def end_struct(self, data):
        seen = set()
        for name in self._stack[self._marks[-1]::2]:
            if isinstance(name, str):
                if name in seen:
                    self.repeated.append(name)
                seen.add(name)
        xmlrpc.client.Unmarshaller.end_struct(self, data)
    dispatch["struct"] = end_struct


def _repeated_member(body: bytes) -> str | None:
    target = _MemberNames()
    try:
        parser = xmlrpc.client.ExpatParser(target)
        parser.feed(body)
        parser.close()
    except Exception:
        return None     # not a call at all: the dispatcher answers that with a fault
    return target.repeated[0] if target.repeated else None


def handle_xmlrpc(body: bytes, controller, keys, *, peer: str) -> bytes:
    repeated = _repeated_member(body)

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
                raise NotFound(f"unknown controller {brief(ctrl_name, 60)}; this server serves {CONTROLLER}")
        except ApiError as exc:
            return {"status": exc.status, "payload": exc.message}
        raw = args[3] if len(args) == 4 else None
        if repeated is not None:   # reported after authentication, like any input error
            raw = BadInput(f"{repeated}: given more than once")
        status, payload = dispatch(controller, keys, key, action, raw, transport="xmlrpc", peer=peer)
        return {"status": status, "payload": _marshallable(payload)}

    dispatcher = SimpleXMLRPCDispatcher(allow_none=True, encoding="utf-8", use_builtin_types=True)
    dispatcher.register_function(route, "iworx.route")
    return dispatcher._marshaled_dispatch(body)
