"""SOAP 1.1/1.2 rpc/encoded, only as far as InterWorx's one call needs: reading a call of
route(apikey, ctrl_name, action, input) and writing its answer or a Fault, in the shapes PHP's
SoapClient sends and decodes (tests/unit/fixtures/soap: envelopes captured from it).

Reading is safe by construction: defusedxml's expat parser refuses any DTD (SOAP 1.1 section 3
and SOAP 1.2 part 1 section 5 forbid one in a message anyway), so no entity other than the five
predefined ones can be declared or expanded and nothing external is fetched; elements nested
deeper than MAX_DEPTH and bodies larger than MAX_BODY are refused before anything is decoded.
Every problem raises Malformed, which the transport answers with a Fault.

Values are decoded by xsi:type (by local name, as SOAP toolkits disagree on prefixes):
string-like XSD types -> str, the integer types -> int, boolean -> bool, double/float/decimal
-> float, base64Binary -> bytes, SOAP-ENC:Array -> list, Apache Map (<item><key/><value/></item>)
-> dict, SOAP-ENC:Struct -> dict, xsi:nil -> None; an untyped element with children is a Map if
its children are items, else a struct; without children, a string. A name given twice in a map
is noted (the first one), not resolved.
"""
from __future__ import annotations

import base64
import binascii
import re
from typing import Any
from xml.etree.ElementTree import ParseError
from xml.sax.saxutils import escape, quoteattr

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from imapd_ctl.transports.rpc import PARAMS

ENV11 = "http://schemas.xmlsoap.org/soap/envelope/"
ENV12 = "http://www.w3.org/2003/05/soap-envelope"
ENC11 = "http://schemas.xmlsoap.org/soap/encoding/"
ENC12 = "http://www.w3.org/2003/05/soap-encoding"
XSD = "http://www.w3.org/2001/XMLSchema"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
APACHE = "http://xml.apache.org/xml-soap"
TNS = "urn:imapd-ctl"
OPERATION = "route"
MAX_DEPTH = 32            # Envelope, Body, route, input, item, value: 16 levels of maps to spare
MAX_BODY = 64 * 1024

_INTEGERS = {"int", "integer", "long", "short", "byte", "unsignedInt", "unsignedLong", "unsignedShort",
             "unsignedByte", "nonNegativeInteger", "positiveInteger", "negativeInteger", "nonPositiveInteger"}
_FLOATS = {"double", "float", "decimal"}
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,64}", re.ASCII)
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,4})?|[+-]?INF|NaN", re.ASCII)
_XML_WS = " \t\r\n"
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class Malformed(Exception):
    """The body is not a SOAP call of route that can be read; the text says why."""


class _Node:
    __slots__ = ("tag", "attrib", "children", "text")

    def __init__(self, tag: str, attrib: dict[str, str]):
        self.tag, self.attrib = tag, attrib
        self.children: list[_Node] = []
        self.text: list[str] = []

    @property
    def local(self) -> str:
        return self.tag.rpartition("}")[2]

    @property
    def ns(self) -> str:
        return self.tag[1:].partition("}")[0] if self.tag.startswith("{") else ""

    def attr(self, local: str, ns_suffix: str = "") -> str | None:
        """An attribute by local name (and a namespace ending in ns_suffix, if given)."""
        for name, value in self.attrib.items():
            ns, _, name_local = name[1:].rpartition("}") if name.startswith("{") else ("", "", name)
            if name_local == local and ns.endswith(ns_suffix):
                return value
        return None


class _Builder:
    """The parser's target: a tree of _Node, no deeper than MAX_DEPTH."""

    def __init__(self) -> None:
        self.stack: list[_Node] = []
        self.root: _Node | None = None

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise Malformed(f"elements nested deeper than {MAX_DEPTH} levels")
        node = _Node(tag, attrib)
        if self.stack:
            self.stack[-1].children.append(node)
        else:
            self.root = node
        self.stack.append(node)

    def end(self, tag: str) -> None:
        self.stack.pop()

    def data(self, text: str) -> None:
        if self.stack:
            self.stack[-1].text.append(text)

    def close(self) -> _Node | None:
        return self.root


def _tree(body: bytes) -> _Node:
    if len(body) > MAX_BODY:
        raise Malformed(f"the body is larger than {MAX_BODY} bytes")
    builder = _Builder()
    parser = DefusedXMLParser(target=builder, forbid_dtd=True)
    try:
        parser.feed(body)
        root = parser.close()
    except DefusedXmlException as exc:
        raise Malformed(f"not allowed in a SOAP message: {type(exc).__name__} (no DTD, no entities)") from None
    except ParseError as exc:
        raise Malformed(f"not well-formed XML: {exc}") from None
    if not isinstance(root, _Node):
        raise Malformed("no XML element")
    return root


class _Decoder:
    def __init__(self) -> None:
        self.repeated: str | None = None     # the first name given twice in a map or struct

    def value(self, node: _Node) -> Any:
        if node.attr("href") is not None or node.attr("ref") is not None:
            raise Malformed(f"<{node.local}>: multi-reference values (href) are not supported")
        if (node.attr("nil", "XMLSchema-instance") or "").strip(_XML_WS) in ("true", "1"):
            return None
        kind = (node.attr("type", "XMLSchema-instance") or "").strip(_XML_WS).rpartition(":")[2]
        text = "".join(node.text)
        if kind == "Array":
            return [self.value(child) for child in node.children]
        if kind == "Map":
            return self._map(node)
        if kind == "Struct":
            return self._struct(node)
        if node.children:     # untyped, anyType or a type of the client's own: by its shape
            if all(c.local == "item" for c in node.children):
                if all({g.local for g in c.children} == {"key", "value"} for c in node.children):
                    return self._map(node)
                return [self.value(child) for child in node.children]
            return self._struct(node)
        if kind in _INTEGERS:
            number = text.strip(_XML_WS)
            if not _INT_TEXT.fullmatch(number):
                raise Malformed(f"<{node.local}>: {kind} value {number[:40]!r} is not an integer")
            return int(number)
        if kind == "boolean":
            flag = text.strip(_XML_WS)
            if flag not in ("true", "false", "1", "0"):
                raise Malformed(f"<{node.local}>: boolean value {flag[:40]!r} is not true, false, 1 or 0")
            return flag in ("true", "1")
        if kind in _FLOATS:
            number = text.strip(_XML_WS)
            if not _FLOAT_TEXT.fullmatch(number):
                raise Malformed(f"<{node.local}>: {kind} value {number[:40]!r} is not a number")
            return float(number.replace("INF", "inf"))
        if kind in ("base64Binary", "base64"):
            try:
                return base64.b64decode("".join(text.split()), validate=True)
            except (binascii.Error, ValueError):
                raise Malformed(f"<{node.local}>: not base64") from None
        return text

    def _map(self, node: _Node) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for item in node.children:
            parts = {c.local: c for c in item.children}
            if item.local != "item" or len(item.children) != 2 or set(parts) != {"key", "value"}:
                raise Malformed(f"<{node.local}>: a Map holds <item> elements of one <key> and one <value>")
            key = self.value(parts["key"])
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise Malformed(f"<{node.local}>: a Map key must be a string or an integer")
            self._put(found, str(key), self.value(parts["value"]))
        return found

    def _struct(self, node: _Node) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for child in node.children:
            self._put(found, child.local, self.value(child))
        return found

    def _put(self, found: dict[str, Any], name: str, value: Any) -> None:
        if name in found and self.repeated is None:
            self.repeated = name
        found[name] = value


def parse(body: bytes) -> tuple[str, tuple[Any, ...], str | None]:
    """(SOAP version "1.1"/"1.2", route's parameters in order, the first repeated map key or
    None). Parameters are taken by name when each child of <route> is one of route's parameter
    names, at most once (WSDL mode); otherwise by position (non-WSDL clients send param0...)."""
    root = _tree(body)
    if root.local != "Envelope" or root.ns not in (ENV11, ENV12):
        raise Malformed(f"not a SOAP 1.1 or 1.2 Envelope: <{root.tag}>")
    version = "1.1" if root.ns == ENV11 else "1.2"
    bodies = [c for c in root.children if c.tag == f"{{{root.ns}}}Body"]
    for header in (c for c in root.children if c.tag == f"{{{root.ns}}}Header"):
        for block in header.children:
            if (block.attr("mustUnderstand", root.ns) or "").strip(_XML_WS) in ("1", "true"):
                raise Malformed(f"header <{block.local}> must be understood, and is not")
    if len(bodies) != 1:
        raise Malformed("the Envelope must hold one Body")
    calls = bodies[0].children
    if len(calls) != 1:
        raise Malformed(f"the Body must hold one call of {OPERATION}, it holds {len(calls)} elements")
    call = calls[0]
    if call.local != OPERATION:
        raise Malformed(f"operation {call.local[:60]!r} is not supported; this server has {OPERATION}")
    decoder = _Decoder()
    names = [c.local for c in call.children]
    if set(names) <= set(PARAMS) and len(set(names)) == len(names):
        given = {c.local: c for c in call.children}
        # Left out at the end: fewer parameters; left out before one given: None.
        count = max((PARAMS.index(n) + 1 for n in names), default=0)
        params = tuple(decoder.value(given[n]) if n in given else None for n in PARAMS[:count])
    else:
        params = tuple(decoder.value(c) for c in call.children)
    return version, params, decoder.repeated


# -- writing -----------------------------------------------------------------------------------

def _text(value: str) -> str:
    """Character data: escaped, CR kept (as &#13;), characters XML cannot carry as U+FFFD."""
    return escape(_NOT_XML.sub("\ufffd", value)).replace("\r", "&#13;")


def _value(tag: str, value: Any, version: str) -> str:
    if value is None:
        return f'<{tag} xsi:nil="true"/>'
    if isinstance(value, bool):
        return f'<{tag} xsi:type="xsd:boolean">{"true" if value else "false"}</{tag}>'
    if isinstance(value, int):
        return f'<{tag} xsi:type="xsd:int">{value}</{tag}>'
    if isinstance(value, float):
        return f'<{tag} xsi:type="xsd:double">{value!r}</{tag}>'.replace("inf<", "INF<").replace("nan<", "NaN<")
    if isinstance(value, dict):
        items = "".join(f"<item>{_value('key', str(k), version)}{_value('value', v, version)}</item>"
                        for k, v in value.items())
        return f'<{tag} xsi:type="ns2:Map">{items}</{tag}>'
    if isinstance(value, (list, tuple)):
        size = (f'SOAP-ENC:arrayType="xsd:anyType[{len(value)}]"' if version == "1.1"
                else f'SOAP-ENC:itemType="xsd:anyType" SOAP-ENC:arraySize="{len(value)}"')
        items = "".join(_value("item", v, version) for v in value)
        return f'<{tag} {size} xsi:type="SOAP-ENC:Array">{items}</{tag}>'
    return f'<{tag} xsi:type="xsd:string">{_text(str(value))}</{tag}>'


def _envelope(version: str, content: str, encoded: bool) -> bytes:
    env, enc = (ENV11, ENC11) if version == "1.1" else (ENV12, ENC12)
    style = f' SOAP-ENV:encodingStyle="{enc}"' if encoded and version == "1.1" else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<SOAP-ENV:Envelope xmlns:SOAP-ENV="{env}" '
            f'xmlns:ns1="{TNS}" xmlns:xsd="{XSD}" xmlns:xsi="{XSI}" xmlns:SOAP-ENC="{enc}" '
            f'xmlns:ns2="{APACHE}"{style}><SOAP-ENV:Body>{content}</SOAP-ENV:Body></SOAP-ENV:Envelope>\n'
            ).encode("utf-8")


def reply(version: str, answer: Any) -> bytes:
    """The response to route: <return> holds `answer` (a map {status, payload})."""
    style = f' SOAP-ENV:encodingStyle="{ENC12}"' if version == "1.2" else ""
    return _envelope(version, f"<ns1:{OPERATION}Response{style}>{_value('return', answer, version)}"
                              f"</ns1:{OPERATION}Response>", encoded=True)


def fault(version: str, reason: str, client: bool = True) -> bytes:
    """A Fault: the sender's (Client/Sender) or ours (Server/Receiver)."""
    if version == "1.1":
        code = "SOAP-ENV:Client" if client else "SOAP-ENV:Server"
        content = f"<SOAP-ENV:Fault><faultcode>{code}</faultcode><faultstring>{_text(reason)}</faultstring></SOAP-ENV:Fault>"
    else:
        code = "SOAP-ENV:Sender" if client else "SOAP-ENV:Receiver"
        content = (f"<SOAP-ENV:Fault><SOAP-ENV:Code><SOAP-ENV:Value>{code}</SOAP-ENV:Value></SOAP-ENV:Code>"
                   f"<SOAP-ENV:Reason><SOAP-ENV:Text xml:lang={quoteattr('en')}>{_text(reason)}</SOAP-ENV:Text>"
                   "</SOAP-ENV:Reason></SOAP-ENV:Fault>")
    return _envelope(version, content, encoded=False)
