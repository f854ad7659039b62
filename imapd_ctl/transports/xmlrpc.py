"""The XML-RPC transport, drop-in for InterWorx API clients:
iworx.route(apikey, ctrl_name, action[, input]).

The body is parsed once, by expat with defusedxml's guard (no DTD, no entity declarations, no
external references: an entity that expands in the parser is a memory bomb, and no real client
sends one; SOAP is read the same way) and the standard library's unmarshaller (the same values,
faults and limits as xmlrpc.client.loads), and the reply is built with
xmlrpc.client.dumps: a struct {status, payload} for every call of iworx.route, and a fault,
exactly as Python's SimpleXMLRPCDispatcher gives one, for a body that is not such a call.
From the decoded parameters on, the call is transports.rpc's, shared with SOAP.
"""
from __future__ import annotations

import xmlrpc.client
from typing import Any, Callable

from defusedxml import DefusedXmlException
from defusedxml.xmlrpc import DefusedExpatParser

from imapd_ctl.core.request import Request, Result
from imapd_ctl.transports import rpc

METHOD = "iworx.route"
ENCODING = "utf-8"


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
    parser = DefusedExpatParser(target, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    try:
        parser.feed(body)
        parser.close()
    except DefusedXmlException as exc:
        raise _fault(ValueError(f"not allowed in an XML-RPC call: {type(exc).__name__} "
                                "(no DTD, no entities)")) from None
    return target.close(), target.getmethodname(), target.repeated


def _fault(exc: BaseException) -> xmlrpc.client.Fault:
    """The fault SimpleXMLRPCDispatcher sends for an exception: code 1, "<class ...>:text"
    (cut short: a parser's message may quote the input)."""
    return xmlrpc.client.Fault(1, _cut(f"{type(exc)}:{exc}"))


def _cut(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def handle(body: bytes, peer: str, dispatch: Callable[[Request], Result]) -> bytes:
    """One XML-RPC body -> the reply body."""
    try:
        params, method, repeated = _parse(body)
        if method != METHOD:
            raise _fault(Exception(f'method "{_cut(str(method), 80)}" is not supported'))
        answer = rpc.route("xmlrpc", params, repeated, peer, dispatch, METHOD)
        reply = xmlrpc.client.dumps((answer,), methodresponse=True, allow_none=True, encoding=ENCODING)
    except xmlrpc.client.Fault as fault:   # one we raise, or a <fault> the body carried (cut short)
        code = fault.faultCode if isinstance(fault.faultCode, int) and not isinstance(fault.faultCode, bool) else 1
        reply = xmlrpc.client.dumps(xmlrpc.client.Fault(code, _cut(str(fault.faultString))),
                                    allow_none=True, encoding=ENCODING)
    except Exception as exc:   # not XML-RPC, or not XML at all
        reply = xmlrpc.client.dumps(_fault(exc), allow_none=True, encoding=ENCODING)
    return reply.encode(ENCODING, "xmlcharrefreplace")
