"""The test side of SOAP, written from the bytes PHP's SoapClient sends and reads (the captured
envelopes in tests/unit/fixtures/soap), not from imapd_ctl.transports.soapcodec: envelopes of
route(...) in PHP's shape, and a reader of the daemon's replies and Faults. Used by the unit
tests, the hostile-input tests (unit and e2e) and the e2e tests."""
from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ENV = {"1.1": "http://schemas.xmlsoap.org/soap/envelope/", "1.2": "http://www.w3.org/2003/05/soap-envelope"}
ENC = {"1.1": "http://schemas.xmlsoap.org/soap/encoding/", "1.2": "http://www.w3.org/2003/05/soap-encoding"}
CTYPE = {"1.1": "text/xml; charset=utf-8", "1.2": "application/soap+xml; charset=utf-8"}
XSI = "http://www.w3.org/2001/XMLSchema-instance"
FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "soap"
NAMES = ("apikey", "ctrl_name", "action", "input")


@dataclass(frozen=True)
class Raw:
    """An XML fragment written as is in place of a value (its element written by the caller)."""
    xml: str


@dataclass(frozen=True)
class Items:
    """A Map written item by item (so a key can repeat)."""
    pairs: tuple


def esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def value(tag: str, v, version: str = "1.1") -> str:
    """One accessor as PHP writes it: typed scalars, ns2:Map for dicts, SOAP-ENC:Array for lists."""
    if isinstance(v, Raw):
        return v.xml
    if v is None:
        return f'<{tag} xsi:nil="true"/>'
    if isinstance(v, bool):
        return f'<{tag} xsi:type="xsd:boolean">{"true" if v else "false"}</{tag}>'
    if isinstance(v, int):
        return f'<{tag} xsi:type="xsd:int">{v}</{tag}>'
    if isinstance(v, float):   # XSD's lexical forms of the specials
        return f'<{tag} xsi:type="xsd:float">{ {"inf": "INF", "-inf": "-INF", "nan": "NaN"}.get(repr(v), repr(v))}</{tag}>'
    if isinstance(v, bytes):
        return f'<{tag} xsi:type="xsd:base64Binary">{base64.b64encode(v).decode()}</{tag}>'
    if isinstance(v, str):
        return f'<{tag} xsi:type="xsd:string">{esc(v)}</{tag}>'
    if isinstance(v, dict):
        v = Items(tuple(v.items()))
    if isinstance(v, Items):
        return (f'<{tag} xsi:type="ns2:Map">' + "".join(
            f"<item>{value('key', k, version)}{value('value', x, version)}</item>" for k, x in v.pairs) + f"</{tag}>")
    if isinstance(v, (list, tuple)):
        size = (f'SOAP-ENC:arrayType="xsd:ur-type[{len(v)}]"' if version == "1.1"
                else f'SOAP-ENC:itemType="xsd:anyType" SOAP-ENC:arraySize="{len(v)}"')
        return f'<{tag} {size} xsi:type="SOAP-ENC:Array">' + "".join(value("item", x, version) for x in v) + f"</{tag}>"
    raise TypeError(f"no SOAP form for {v!r}")


def envelope(params, version: str = "1.1", *, operation: str = "route", names=NAMES, prolog: str = "",
             header: str = "") -> bytes:
    """A call of `operation` with `params` as PHP's SoapClient writes it (WSDL mode: each
    parameter named as in the WSDL; names=None: param0, param1, ... as in non-WSDL mode)."""
    accessors = "".join(value(names[i] if names and i < len(names) else f"param{i}", p, version)
                        for i, p in enumerate(params))
    style = f' SOAP-ENV:encodingStyle="{ENC[version]}"'
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n{prolog}<SOAP-ENV:Envelope xmlns:SOAP-ENV="{ENV[version]}" '
            f'xmlns:ns1="urn:imapd-ctl" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="{XSI}" '
            f'xmlns:ns2="http://xml.apache.org/xml-soap" xmlns:SOAP-ENC="{ENC[version]}"'
            f'{style if version == "1.1" else ""}>{header}<SOAP-ENV:Body><ns1:{operation}'
            f'{style if version == "1.2" else ""}>{accessors}</ns1:{operation}></SOAP-ENV:Body>'
            f'</SOAP-ENV:Envelope>').encode("utf-8")


def fixture(name: str, key: str) -> bytes:
    """A captured PHP envelope with `key` in place of KEY."""
    return (FIXTURES / name).read_text().replace("KEY", esc(key)).encode("utf-8")


@dataclass
class Answer:
    version: str
    result: dict | None = None       # {status, payload} of a reply
    fault: tuple[str, str] | None = None   # (code, reason) of a Fault


def _read(node: ET.Element):
    if node.get(f"{{{XSI}}}nil") in ("true", "1"):
        return None
    kind = (node.get(f"{{{XSI}}}type") or "").rpartition(":")[2]
    if kind == "Map":
        out = {}
        for item in node:
            k, v = item.find("key"), item.find("value")
            out[_read(k)] = _read(v)
        return out
    if kind == "Array":
        return [_read(child) for child in node]
    text = node.text or ""
    return {"int": int, "boolean": lambda t: t == "true", "double": float}.get(kind, str)(text)


def read(body: bytes) -> Answer:
    """The daemon's reply: a route answer ({status, payload}) or a Fault; raises if neither."""
    root = ET.fromstring(body)
    version = next(v for v, ns in ENV.items() if root.tag == f"{{{ns}}}Envelope")
    ns = ENV[version]
    (content,) = list(root.find(f"{{{ns}}}Body"))
    if content.tag == f"{{{ns}}}Fault":
        if version == "1.1":
            return Answer(version, fault=(content.findtext("faultcode"), content.findtext("faultstring")))
        return Answer(version, fault=(content.findtext(f"{{{ns}}}Code/{{{ns}}}Value"),
                                      content.findtext(f"{{{ns}}}Reason/{{{ns}}}Text")))
    assert content.tag == "{urn:imapd-ctl}routeResponse", content.tag
    (ret,) = list(content)
    assert ret.tag == "return", ret.tag
    return Answer(version, result=_read(ret))
