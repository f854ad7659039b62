"""Hostile SOAP calls, generated from the action table with the value strategies of
test_hostile_input.py (carrier "soap"), and the contract each reply must keep. Used by the e2e
hostile-input test (through the real gunicorn server) and its unit counterpart
(tests/unit/test_hostile_soap.py, through Flask's test client).

Families: invalid inputs in the Map; a non-empty array, string, number... where the input map
belongs, and arrays for the apikey map or a Map key; arity; key shapes; a Map key given twice;
unknown controller/action; values typed wrongly (a float, base64, a Map, nil... for an input);
lexically broken typed values (xsd:int "1x", boolean "yes"...); nesting past the depth limit;
DTDs (entities, billion laughs, external entities); broken envelopes and XML; other operations;
a Content-Type of the other SOAP version or none; bodies over the size limit.

The contract: a 200 reply whose <return> Map is {status: 4xx, payload: text} (the status and
payload prefix the case calls for), or a Fault (Client/Sender; HTTP 500 in SOAP 1.1, 400 in 1.2,
413 for a body over the limit) where the case allows one; never a reply quoting a file.
"""
from __future__ import annotations

from dataclasses import dataclass

from hypothesis import assume, strategies as st

import soapwire
import test_hostile_input as H
from imapd_ctl.core.actions import CONTROLLER, CONTROLLERS, Action
from imapd_ctl.transports.http import MAX_BODY
from soapwire import CTYPE, Items, Raw, envelope

PATHS = ("/soap", "/nodeworx/soap")
KINDS = ("inputs", "not-a-map", "array-for-map", "arity", "key-shape", "duplicate-key", "controller",
         "action-name", "wrong-type", "bad-lexical", "deep-nesting", "dtd", "envelope", "malformed",
         "operation", "content-type", "oversize")
WRONG_TYPES = (   # whatever the input's kind, never a valid value
    '<value xsi:type="xsd:double">1.0</value>', '<value xsi:type="xsd:base64Binary">MQ==</value>',
    '<value xsi:type="ns2:Map"/>', '<value xsi:type="SOAP-ENC:Array"><item xsi:type="xsd:int">1</item></value>',
    '<value xsi:type="xsd:string"><b>1</b></value>', '<value xsi:nil="true"/>', '<value><a>1</a><b>2</b></value>',
    '<value xsi:type="SOAP-ENC:Struct"><node_id>node1</node_id></value>', '<value xsi:type="xsd:float">NaN</value>',
)
BAD_LEXICAL = (
    '<value xsi:type="xsd:int">1x</value>', '<value xsi:type="xsd:int"></value>', '<value xsi:type="xsd:int">1.5</value>',
    '<value xsi:type="xsd:int">\u0664\u0660</value>', '<value xsi:type="xsd:int">\uff14\uff10</value>',
    '<value xsi:type="xsd:long">' + "9" * 500 + "</value>", '<value xsi:type="xsd:boolean">yes</value>',
    '<value xsi:type="xsd:boolean">2</value>', '<value xsi:type="xsd:boolean">TRUE</value>',
    '<value xsi:type="xsd:double">x</value>', '<value xsi:type="xsd:double">1,5</value>',
    '<value xsi:type="xsd:base64Binary">====</value>', '<value href="#id1"/>',
    '<value xsi:type="ns2:Map"><item><key>a</key></item></value>',
    '<value xsi:type="ns2:Map"><item><key xsi:type="ns2:Map"/><value>1</value></item></value>',
    '<value xsi:type="xsd:string">&undefined;</value>', '<value xsi:type="xsd:string">&#0;</value>',
)
BAD_ENVELOPES = (
    b"<Envelope/>", b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"/>',
    b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body/></e:Envelope>',
    b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body/><e:Body/></e:Envelope>',
    b"<methodCall><methodName>iworx.route</methodName><params/></methodCall>", b"<route/>",
)
OPERATIONS = ("Route", "routes", "system.listMethods", "iworx.route", "__init__", "x")


@dataclass
class SoapCase:
    family: str
    body: bytes
    version: str
    path: str = "/soap"
    ctype: str | None = None       # None: the version's own
    expect: str = "answer"         # "answer", "fault", "either", "too-large"
    status: int | None = 400       # the answer's status (None: any 4xx)
    prefix: str | None = None
    chunk: int = 0

    def http(self) -> "H.HttpCase":
        ctype = self.ctype if self.ctype is not None else CTYPE[self.version]
        return H.HttpCase(self.family, "POST", self.path.encode(), ctype or None, self.body, self.chunk)

    def __repr__(self) -> str:
        shown = self.body if len(self.body) < 800 else self.body[:600] + b"...%d bytes" % len(self.body)
        return (f"SoapCase({self.family} {self.version} {self.path} type={self.ctype!r}: {shown!r} "
                f"expect={self.expect} {self.status} {self.prefix!r})")

    def _repr_pretty_(self, printer, cycle):
        printer.text(repr(self))


def deep(depth: int, tag: str = "value") -> str:
    """Arrays nested `depth` deep in one <tag> element."""
    return (f'<{tag} xsi:type="SOAP-ENC:Array">' + '<item xsi:type="SOAP-ENC:Array">' * depth
            + "</item>" * depth + f"</{tag}>")


@st.composite
def soap_case(draw, action: Action, ctx):
    declared = [spec.name for spec in action.inputs]
    kind = draw(st.sampled_from([k for k in KINDS + ("inputs",) * 3 if declared or k != "inputs"]))
    version, path = draw(st.sampled_from(["1.1", "1.2"])), draw(st.sampled_from(PATHS))
    auth = draw(st.sampled_from(H.valid_auth(ctx)))
    case = SoapCase(kind, b"", version, path)

    def call(params, **kw) -> bytes:
        return envelope(params, version, **kw)

    def invalid_input():
        if declared:
            return Items(tuple(draw(H.hostile_inputs(action, "soap", ctx))[0]))
        return draw(st.lists(H.junk_values("soap"), min_size=1, max_size=3) | st.integers(-10**9, 10**9)
                    | H.texts("soap", min_size=1))

    def hostile_at(fragment: str):
        """The input with `fragment` (a <value> element) as the first declared input, every
        other declared input invalid; without inputs, the fragment inside an array."""
        if not declared:
            return Raw(f'<input xsi:type="SOAP-ENC:Array">{fragment.replace("<value", "<item").replace("</value>", "</item>")}</input>')
        items = f"<item><key>{declared[0]}</key>{fragment}</item>" + "".join(
            f"<item><key>{spec.name}</key>{soapwire.value('value', draw(H.invalid_values(spec, 'soap', ctx)), version)}</item>"
            for spec in action.inputs[1:])
        return Raw(f'<input xsi:type="ns2:Map">{items}</input>')

    first = f"{declared[0]}: " if declared else "input: must be a struct"
    if kind == "inputs":
        pairs, first_bad = draw(H.hostile_inputs(action, "soap", ctx))
        case.body, case.prefix = call([auth, CONTROLLER, action.name, Items(tuple(pairs))]), f"{first_bad}: "
    elif kind == "not-a-map":
        value = draw(st.one_of(st.lists(H.junk_values("soap"), min_size=1, max_size=3), st.integers(-10**9, 10**9),
                               H.texts("soap", min_size=1), st.booleans(), st.floats(allow_nan=False)))
        if declared:
            pairs = draw(H.hostile_inputs(action, "soap", ctx))[0]
            value = draw(st.sampled_from([[Items(tuple(pairs))], [[k, v] for k, v in pairs], value]))
        case.body, case.prefix = call([auth, CONTROLLER, action.name, value]), "input: must be a struct"
    elif kind == "array-for-map":
        where = draw(st.sampled_from(["apikey", "input", "map-key"]))
        case.family = f"array-for-map/{where}"
        if where == "apikey":
            case.body, case.status = call([[ctx.key], CONTROLLER, action.name, invalid_input()]), 401
        elif where == "input":
            case.body, case.prefix = call([auth, CONTROLLER, action.name, [[ctx.key]]]), "input: must be a struct"
        else:
            case.body = call([auth, CONTROLLER, action.name, Raw(
                '<input xsi:type="ns2:Map"><item><key xsi:type="SOAP-ENC:Array"><item>a</item></key>'
                '<value>1</value></item></input>')])
            case.expect = "fault"
    elif kind == "arity":
        n = draw(st.sampled_from([0, 1, 2, 5, 6]))
        params = [auth, CONTROLLER, action.name, invalid_input()] + draw(
            st.lists(H.junk_values("soap"), min_size=max(0, n - 4), max_size=max(0, n - 4)))
        case.body, case.prefix = call(params[:n], names=draw(st.sampled_from([soapwire.NAMES, None]))), "route takes"
    elif kind == "key-shape":
        key = draw(st.one_of(
            st.integers(-10**9, 10**9), st.lists(H.junk_values("soap"), max_size=2), st.just({}), st.none(),
            st.dictionaries(H.texts("soap", max_size=8).filter(lambda k: k != "apikey"), H.junk_values("soap"),
                            min_size=1, max_size=2),
            st.builds(lambda v: {"apikey": v}, st.integers(-10**9, 10**9) | st.none() | st.just([ctx.key])),
            H.texts("soap", max_size=40), st.sampled_from([ctx.key.upper(), ctx.key[:-1], ctx.key + "\x85",
                                                           ctx.key[:5] + "\n" + ctx.key[5:], ctx.key.encode()]),
        ))
        case.body, case.status = call([key, CONTROLLER, action.name, invalid_input()]), 401
    elif kind == "duplicate-key":
        name, one, other = draw(H.duplicate(action, "soap", ctx))
        rest = [p for p in (draw(H.hostile_inputs(action, "soap", ctx))[0] if declared else []) if p[0] != name]
        pairs = draw(st.permutations(rest + [(name, one)]))
        at = draw(st.integers(0, len(pairs)))
        items = Items(tuple(pairs[:at] + [(name, other)] + pairs[at:]))
        case.body, case.prefix = call([auth, CONTROLLER, action.name, items]), f"{name}: given more than once"
    elif kind == "controller":
        ctrl = draw(st.one_of(H.texts("soap", max_size=30), st.integers(-10**9, 10**9), st.none(),
                              st.sampled_from([CONTROLLER + "/", CONTROLLER.upper(), CONTROLLER + " ", [CONTROLLER],
                                               "/nodeworx/mail/smtp", CONTROLLER + "/" + action.name])))
        assume(not (isinstance(ctrl, str) and ctrl in CONTROLLERS))
        case.body, case.status = call([auth, ctrl, action.name, invalid_input()]), 404
    elif kind == "action-name":
        name = draw(st.one_of(H.texts("soap", max_size=30), st.integers(-10**9, 10**9), st.none(),
                              st.just([action.name]), st.sampled_from([action.name.lower(), action.name + " ",
                                                                       action.name + "\ufeff", "__init__", "run"])))
        assume(not (isinstance(name, str) and name in H.ACTIONS))
        case.body, case.status = call([auth, CONTROLLER, name, invalid_input()]), 404
    elif kind == "wrong-type":
        case.body, case.prefix = call([auth, CONTROLLER, action.name, hostile_at(draw(st.sampled_from(WRONG_TYPES)))]), first
    elif kind == "bad-lexical":
        case.body, case.expect = call([auth, CONTROLLER, action.name, hostile_at(draw(st.sampled_from(BAD_LEXICAL)))]), "fault"
    elif kind == "deep-nesting":   # within the depth limit an answer (400), past it a Fault
        where = draw(st.sampled_from(["input", "key", "action"]))
        depth = draw(st.integers(1, 60) | st.integers(20, 40))
        params = {"input": [auth, CONTROLLER, action.name, hostile_at(deep(depth))],
                  "key": [Raw(deep(depth, "apikey")), CONTROLLER, action.name, invalid_input()],
                  "action": [auth, CONTROLLER, Raw(deep(depth, "action")), invalid_input()]}[where]
        case.body, case.family, case.expect = call(params), f"deep-nesting/{where}", "either"
        case.status, case.prefix = {"input": (400, first), "key": (401, None), "action": (404, None)}[where]
    elif kind == "dtd":
        how = draw(st.sampled_from(["external", "billion-laughs", "internal", "doctype-only"]))
        if how == "external":
            prolog = draw(st.sampled_from(H.XXE_PROLOGS)).replace("methodCall", "SOAP-ENV:Envelope")
        elif how == "billion-laughs":
            depth, fanout = draw(st.integers(1, 12)), draw(st.integers(2, 16))
            prolog = "<!DOCTYPE x [<!ENTITY l0 \"lol\">" + "".join(
                f'<!ENTITY l{i} "{f"&l{i - 1};" * fanout}">' for i in range(1, depth + 1)) + "]>"
        else:
            prolog = '<!DOCTYPE x [<!ENTITY e "x">]>' if how == "internal" else "<!DOCTYPE x>"
        ref = draw(st.sampled_from(["&e;", "&l1;", "x", "&e;&e;"]))
        case.body = call([auth, CONTROLLER, action.name, hostile_at(f'<value xsi:type="xsd:string">{ref}</value>')],
                         prolog=prolog)
        case.family, case.expect = f"dtd/{how}", "fault"
    elif kind == "envelope":
        case.expect = "fault"
        case.body = draw(st.sampled_from(BAD_ENVELOPES) | st.just(call(
            [auth, CONTROLLER, action.name, invalid_input()],
            header='<SOAP-ENV:Header><h:x xmlns:h="urn:x" SOAP-ENV:mustUnderstand="1"/></SOAP-ENV:Header>')))
    elif kind == "malformed":
        good = call([auth, CONTROLLER, action.name, invalid_input()])
        case.body, case.expect = draw(st.one_of(
            st.integers(0, len(good) - 1).map(lambda cut: good[:cut]),
            st.builds(lambda pos, junk: good[:pos] + junk + good[pos:], st.integers(0, len(good)),
                      st.sampled_from([b"<", b"&", b"\x00", b"\xff", b"</x>", b"<x>", b"]]>", b"<?", b"<!--"])),
            st.binary(max_size=300), st.just(good + good),
        )), "either"
        case.status = None
    elif kind == "operation":
        operation = draw(st.sampled_from(OPERATIONS))
        case.body, case.expect = call([auth, CONTROLLER, action.name, invalid_input()], operation=operation), "fault"
    elif kind == "content-type":
        pairs, first_bad = draw(H.hostile_inputs(action, "soap", ctx)) if declared else ([], None)
        case.body = call([auth, CONTROLLER, action.name, Items(tuple(pairs)) if declared else invalid_input()])
        case.ctype = draw(st.sampled_from(["", "text/xml", "application/soap+xml", "application/xml",
                                           "application/json", "text/plain; charset=latin1"]))
        case.prefix = f"{first_bad}: " if declared else "input: must be a struct"
    elif kind == "oversize":
        case.body = call([auth, CONTROLLER, action.name, invalid_input(), "x" * (MAX_BODY + draw(st.integers(1, 64 * 1024)))])
        case.expect, case.chunk = "too-large", draw(st.sampled_from([0, 4096, 65536]))
    if case.chunk == 0 and case.expect != "too-large":
        case.chunk = draw(st.sampled_from([0, 0, 0, 512]))
    return case


def check_soap(case: SoapCase, status: int, ctype: str, body: bytes) -> None:
    """The reply (HTTP status, Content-Type, body) keeps the contract of the module docstring."""
    for secret in (b"root:", b"/bin/", b"PATH="):     # an external entity was read
        assert secret not in body, body[:1000]
    answer = soapwire.read(body)        # raises unless a route answer or a Fault
    assert ctype == CTYPE[answer.version], (ctype, answer.version)
    if answer.fault is not None:
        assert case.expect in ("fault", "either", "too-large"), f"a Fault for a readable call: {answer.fault}"
        code, reason = answer.fault
        assert code == ("SOAP-ENV:Client" if answer.version == "1.1" else "SOAP-ENV:Sender"), code
        assert isinstance(reason, str) and reason
        assert status == (413 if case.expect == "too-large" else 500 if answer.version == "1.1" else 400), status
        return
    assert case.expect in ("answer", "either"), f"expected a Fault, got {answer.result!r}"
    assert status == 200 and answer.version == case.version, (status, answer.version)
    result = answer.result
    assert isinstance(result, dict) and set(result) == {"status", "payload"}, result
    assert isinstance(result["status"], int) and 400 <= result["status"] < 500, result
    assert isinstance(result["payload"], str) and result["payload"], result
    if case.status is not None:
        assert result["status"] == case.status, result
    if case.prefix is not None:
        assert result["payload"].startswith(case.prefix), f"expected {case.prefix!r}..., got {result['payload']!r}"
