"""The SOAP transport, drop-in for the PHP panels' InterWorx modules: `new SoapClient(
'https://HOST:2443/soap?wsdl')` then `->route($apikey, $ctrl_name, $action, $input)`.

GET (at /soap and /nodeworx/soap, as older InterWorx docs have it) answers the WSDL: one
rpc/encoded operation, route, with a SOAP 1.1 and a SOAP 1.2 binding. POST takes a call in
either version (text/xml or application/soap+xml; SOAPAction is not needed) and answers an
Apache Map {status, payload} that PHP decodes to an array; every error of the call itself is in
band (status 401, 400, 404, ... in a 200 reply), exactly as over XML-RPC, since both go through
transports.rpc. A body that is not such a call gets a Fault: HTTP 500 in SOAP 1.1 (its HTTP
binding says so), 400 (Sender) in SOAP 1.2. The codec is transports.soapcodec.
"""
from __future__ import annotations

import logging
from typing import Callable
from xml.sax.saxutils import quoteattr

from imapd_ctl.core.request import Request, Result
from imapd_ctl.transports import rpc, soapcodec
from imapd_ctl.transports.soapcodec import ENC11, ENC12, TNS, Malformed

log = logging.getLogger(__name__)

PATHS = ("/soap", "/nodeworx/soap")
CONTENT_TYPES = {"1.1": "text/xml; charset=utf-8", "1.2": "application/soap+xml; charset=utf-8"}

_WSDL = """<?xml version="1.0" encoding="UTF-8"?>
<definitions name="imapd-ctl" targetNamespace="{tns}" xmlns:tns="{tns}"
 xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:soap12="http://schemas.xmlsoap.org/wsdl/soap12/"
 xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns="http://schemas.xmlsoap.org/wsdl/">
 <documentation>InterWorx API (imapd-ctl): route(apikey, ctrl_name, action, input) returns a map of
 status (0 on success, else the error: 400, 401, 403, 404, ...) and payload. apikey: the key, or a
 map holding apikey. input: a map of named inputs; an empty array, an empty string or nil for none.</documentation>
 <message name="routeRequest">
  <part name="apikey" type="xsd:anyType"/>
  <part name="ctrl_name" type="xsd:string"/>
  <part name="action" type="xsd:string"/>
  <part name="input" type="xsd:anyType"/>
 </message>
 <message name="routeResponse">
  <part name="return" type="xsd:anyType"/>
 </message>
 <portType name="InterWorxPortType">
  <operation name="route" parameterOrder="apikey ctrl_name action input">
   <input message="tns:routeRequest"/>
   <output message="tns:routeResponse"/>
  </operation>
 </portType>
{bindings}
 <service name="InterWorx">
  <port name="InterWorxPort" binding="tns:InterWorxBinding"><soap:address location={location}/></port>
  <port name="InterWorxPort12" binding="tns:InterWorxBinding12"><soap12:address location={location}/></port>
 </service>
</definitions>
"""
_BINDING = """ <binding name="InterWorxBinding{suffix}" type="tns:InterWorxPortType">
  <{soap}:binding style="rpc" transport="http://schemas.xmlsoap.org/soap/http"/>
  <operation name="route">
   <{soap}:operation soapAction="{tns}#route" style="rpc"/>
   <input><{soap}:body use="encoded" namespace="{tns}" encodingStyle="{enc}"/></input>
   <output><{soap}:body use="encoded" namespace="{tns}" encodingStyle="{enc}"/></output>
  </operation>
 </binding>"""


def wsdl(location: str) -> bytes:
    """The WSDL, with `location` (the URL it was fetched from, without the query) as the
    endpoint of both ports."""
    bindings = "\n".join(_BINDING.format(suffix=suffix, soap=prefix, tns=TNS, enc=enc)
                         for suffix, prefix, enc in (("", "soap", ENC11), ("12", "soap12", ENC12)))
    return _WSDL.format(tns=TNS, bindings=bindings, location=quoteattr(location)).encode("utf-8")


def version_of(content_type: str | None) -> str:
    """The SOAP version a request's Content-Type announces (for a Fault before the envelope
    says which)."""
    return "1.2" if (content_type or "").split(";")[0].strip().lower() == "application/soap+xml" else "1.1"


def fault(version: str, reason: str, status: int | None = None, *, client: bool = True) -> tuple[bytes, int, str]:
    """(body, HTTP status, Content-Type) of a Fault, of the caller's making (`client`) or ours;
    `status` overrides the version's own (HTTP errors met before the envelope: 413, 405)."""
    own = 400 if version == "1.2" and client else 500
    return soapcodec.fault(version, reason, client), status or own, CONTENT_TYPES[version]


def handle(body: bytes, content_type: str | None, peer: str,
           dispatch: Callable[[Request], Result]) -> tuple[bytes, int, str]:
    """One POSTed SOAP body -> (reply body, HTTP status, Content-Type)."""
    try:
        version, params, repeated = soapcodec.parse(body)
    except Malformed as exc:
        return fault(version_of(content_type), f"cannot read the SOAP call: {exc}")
    except Exception:   # a bug in the codec: still a Fault for the client, the traceback in the log
        log.exception("reading a SOAP call failed unexpectedly")
        return fault(version_of(content_type), "internal error in imapd-ctl reading the call", client=False)
    answer = rpc.route("soap", params, repeated, peer, dispatch)
    return soapcodec.reply(version, answer), 200, CONTENT_TYPES[version]
