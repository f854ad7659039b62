"""The XML-RPC transport, drop-in for InterWorx API clients:
iworx.route(apikey, ctrl_name, action[, input]).

The body is parsed once, by the standard library's expat parser and unmarshaller (the same
values, faults and limits as xmlrpc.client.loads), and the reply is built with
xmlrpc.client.dumps: a struct {status, payload} for every call of iworx.route, and a fault,
exactly as Python's SimpleXMLRPCDispatcher gives one, for a body that is not such a call.
"""
from __future__ import annotations

import xmlrpc.client
from typing import Any, Callable

from imapd_ctl.core.errors import BadInput, Unauthorized
from imapd_ctl.core.request import Request, Result

METHOD = "iworx.route"
ENCODING = "utf-8"
_I4 = 2**31 - 1


def _key(apikey: Any) -> str | None:
    """The key from a string or {'apikey': ...}; other InterWorx auth forms are refused."""
    if isinstance(apikey, str):
        return apikey
    if isinstance(apikey, dict) and "apikey" in apikey:
        return apikey["apikey"] if isinstance(apikey["apikey"], str) else None
    if isinstance(apikey, dict) and apikey:
        raise Unauthorized("only API key authentication is supported: pass the key as a string "
                           "or as {'apikey': KEY} (session and email/password logins are not)")
    return None


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


class _Unmarshaller(xmlrpc.client.Unmarshaller):
    """The standard unmarshaller, also noting a struct member name given twice. It keeps the
    last value silently, so {node_id: <invalid>, node_id: <valid>} would pass as valid; like
    a JSON body that names an input twice, such a call is refused. Only the parser's public
    callbacks (start, data, end) are extended; the values are the standard library's."""

    def __init__(self) -> None:
        super().__init__(use_builtin_types=True)
        self.repeated: str | None = None           # the first name given twice in a struct
        self._containers: list[set[str] | None] = []   # open structs (their names) and arrays
        self._text: list[str] = []                 # character data since the last start tag

    def start(self, tag: str, attrs: Any) -> None:
        super().start(tag, attrs)
        local = tag.rpartition(":")[2]             # as the unmarshaller reads a prefixed tag
        if local == "struct":
            self._containers.append(set())
        elif local == "array":
            self._containers.append(None)
        self._text = []

    def data(self, text: str) -> None:
        super().data(text)
        self._text.append(text)

    def end(self, tag: str) -> Any:
        local = tag.rpartition(":")[2]
        if local == "name" and self._containers and self._containers[-1] is not None:
            name, names = "".join(self._text), self._containers[-1]
            if name in names and self.repeated is None:
                self.repeated = name
            names.add(name)
        elif local in ("struct", "array") and self._containers:
            self._containers.pop()
        return super().end(tag)


def _parse(body: bytes) -> tuple[tuple[Any, ...], str | None, str | None]:
    """(params, method name, a repeated member name or None); raises as xmlrpc.client.loads."""
    target = _Unmarshaller()
    parser = xmlrpc.client.ExpatParser(target)
    parser.feed(body)
    parser.close()
    return target.close(), target.getmethodname(), target.repeated


def _fault(exc: BaseException) -> xmlrpc.client.Fault:
    """The fault SimpleXMLRPCDispatcher sends for an exception: code 1, "<class ...>:text"."""
    return xmlrpc.client.Fault(1, f"{type(exc)}:{exc}")


def _route(params: tuple[Any, ...], repeated: str | None, peer: str,
           dispatch: Callable[[Request], Result]) -> dict[str, Any]:
    if not 3 <= len(params) <= 4:
        return {"status": 400, "payload": f"{METHOD} takes (apikey, ctrl_name, action[, input]); "
                                          f"got {len(params)} parameters"}
    apikey, ctrl_name, action = params[:3]

    def inputs() -> Any:
        if repeated is not None:   # reported after authentication, like any input error
            raise BadInput(f"{repeated}: given more than once")
        return params[3] if len(params) == 4 else None

    result = dispatch(Request(transport="xmlrpc", peer=peer, action=action, controller=ctrl_name,
                              read_key=lambda: _key(apikey), read_inputs=inputs))
    return {"status": result.status, "payload": _marshallable(result.payload)}


def handle(body: bytes, peer: str, dispatch: Callable[[Request], Result]) -> bytes:
    """One XML-RPC body -> the reply body."""
    try:
        params, method, repeated = _parse(body)
        if method != METHOD:
            raise _fault(Exception(f'method "{method}" is not supported'))
        reply = xmlrpc.client.dumps((_route(params, repeated, peer, dispatch),), methodresponse=True,
                                    allow_none=True, encoding=ENCODING)
    except xmlrpc.client.Fault as fault:   # one we raise, or a <fault> the body carried
        reply = xmlrpc.client.dumps(fault, allow_none=True, encoding=ENCODING)
    except Exception as exc:   # not XML-RPC, or not XML at all
        reply = xmlrpc.client.dumps(_fault(exc), allow_none=True, encoding=ENCODING)
    return reply.encode(ENCODING, "xmlcharrefreplace")
