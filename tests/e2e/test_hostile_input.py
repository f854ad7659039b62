"""Hostile input through the real gunicorn server, generated from the action table.

For every action of ``imapd_ctl.core.actions.ACTIONS`` and all three transports, hypothesis builds
requests from the action's ``Input`` specs (kind, range, pattern), so a new action or input is
covered without touching this file (a new input *kind* fails loudly in ``is_valid`` until it
gets strategies here):

* values: wrong types, in-range numbers in other scripts' digits ('４０', '٤٠', '४०', '⁴⁰'),
  huge and negative numbers, floats (40.0 too), booleans, null, arrays, nested objects, strings
  with newlines/braces/NUL, invalid UTF-8; sent in JSON bodies, query strings, url-encoded and
  multipart forms (HTTP), or in the input struct of ``iworx.route`` (XML-RPC);
* bodies: malformed, non-object, deeply nested or duplicate-key JSON, broken forms, unknown
  content types, bodies over the 64 KiB limit (with Content-Length and chunked), broken chunked
  framing, other methods, raw non-ASCII request lines; XML-RPC: wrong arity, non-struct input,
  bad key shapes, unknown controller/action, repeated struct members, deep nesting, billion
  laughs, quadratic blowup, external entities (DOCTYPE SYSTEM/PUBLIC, parameter entities),
  malformed XML.

Every request carries at least one invalid input or is invalid as a whole, so a mutating
action never receives a request it could act on. The contract checked for each reply:

* HTTP: a 4xx status and the JSON envelope ``{"status": <same>, "payload": <str>}``, with the
  status (and payload prefix) the case calls for. A request line the server's framer refuses
  (raw non-ASCII bytes, too long) gets its 400/414 envelope before the app runs.
* XML-RPC: a ``{status: 4xx, payload: str}`` struct for every request the standard library
  can parse as a call of ``iworx.route``; an XML-RPC fault (HTTP 200) for XML it cannot parse
  (malformed, entity bombs past expat's amplification limit) or another method name; the
  4xx envelope for a body over the limit. No reply may quote a file (external entities are
  never fetched).
* SOAP: the cases and the contract of tests/e2e/hostile_soap.py (shared with the unit test
  tests/unit/test_hostile_soap.py): an in-band {status: 4xx, payload} Map, or a Fault where the
  body cannot be read (HTTP 500 in SOAP 1.1 and 400 in 1.2, as their HTTP bindings say; 413 over
  the size limit). Keys with the whitespace a key file or a panel's block brings are the key.
* never a 5xx (but a SOAP 1.1 Fault's 500), never a hang (each reply within TIMEOUT s), no worker crash.

Around every (action, transport) run: no file changed (the drop-in's bytes and mtime, the key
file), Dovecot was not restarted (MainPID) nor enabled/disabled (UnitFileState), and the same
gunicorn workers serve. At the end the daemon still answers isRunning true on all transports
and its journal holds no traceback. The number of generated cases (per transport and family)
is printed in pytest's terminal summary (and at module teardown with ``-s``).
"""
from __future__ import annotations

import collections
import datetime as dt
import http.client
import json
import os
import re
import socket
import string
import time
import urllib.parse
import xmlrpc.client
from base64 import b64encode
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, given, note, settings, strategies as st

from daemon import UNIT as DAEMON_UNIT
from soapwire import Raw as XmlRaw, esc as xml_escape   # one XML fragment type and escape for both codecs
from imapd_ctl.core.actions import ACTIONS, CONTROLLER, Action, Input
from imapd_ctl.transports.http import MAX_BODY

pytestmark = pytest.mark.mailhost

DROPIN = "/etc/dovecot/conf.d/99-imapd-ctl.conf"
KEYS = "/var/lib/imapd-ctl/keys.json"
IMAP_UNIT = "dovecot.service"
WORKERS = 2            # daemon.launch's default
I4 = 2**31 - 1
TIMEOUT = 20           # seconds for one reply: longer counts as a hang
# Examples per (action, transport); 20 actions x 2 transports. Raise it for a longer soak.
EXAMPLES = int(os.environ.get("IMAPD_CTL_HOSTILE_EXAMPLES", "80"))

HYPOTHESIS = settings(
    max_examples=EXAMPLES, deadline=None, database=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large, HealthCheck.large_base_example],
)

COUNTS: collections.Counter = collections.Counter()   # (transport, family) -> requests sent
TIMING: dict = {}


# ------------------------------------------------------------------ the contract of an input

@dataclass(frozen=True)
class RawJSON:
    """JSON text written as is: numbers json.dumps cannot write (1e999, 4E1, 5000 digits)."""
    text: str


@dataclass(frozen=True)
class BadBytes:
    """A string value carrying invalid UTF-8: raw in bodies, %XX in query strings."""
    data: bytes


def is_valid(spec: Input, value, rpc: bool = False) -> bool:
    """Would the action table's contract accept `value` for `spec`? Written from the contract
    (docs/api.md: integers are integers or ASCII digit strings in range; strings match their
    pattern; over XML-RPC and SOAP (`rpc`) a boolean is 1/0 for a 0/1 input), not from
    Input.parse, so that both can disagree. Generators only ever send values this calls invalid."""
    if rpc and type(value) is bool and spec.kind == "int":
        return (spec.minimum, spec.maximum) == (0, 1)
    if isinstance(value, RawJSON):
        try:
            value = json.loads(value.text)
        except ValueError:
            return False
    if spec.kind == "int":
        if type(value) is int:
            number = value
        elif type(value) is str and re.fullmatch(r"-?[0-9]+", value, re.ASCII):
            digits = value.lstrip("-").lstrip("0") or "0"
            if len(digits) > 30:          # beyond every range of the table
                return False
            number = int(("-" if value.startswith("-") else "") + digits)
        else:
            return False
        return spec.minimum <= number <= spec.maximum
    if spec.kind == "str":
        return type(value) is str and re.fullmatch(spec.pattern, value, re.ASCII) is not None
    raise AssertionError(f"input {spec.name} has the new kind {spec.kind!r}: teach "
                         "test_hostile_input.py (is_valid and invalid_values) what is invalid for it")


# ------------------------------------------------------------------ value strategies

XML_BAD_CHARS = "".join(chr(c) for c in range(32) if chr(c) not in "\t\n\r") + "\ufffe\uffff"
INVALID_UTF8 = (b"\xff", b"\xfe", b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc3", b"\xe2\x82",
                b"\xed\xa0\x80", b"\xef\xbf", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80")
LONE_SURROGATES = ("\ud800", "4\udc000", "node\udfff1")
# Other scripts' decimal digits (int() reads all of them: int('４０') == 40), and look-alikes
# str.isdigit() accepts: superscripts, subscripts, circled digits.
DIGIT_SETS = tuple("".join(chr(zero + d) for d in range(10)) for zero in (
    0x0660, 0x06F0, 0x0966, 0x09E6, 0x0E50, 0x0F20, 0x1040, 0xFF10, 0x1D7CE, 0x1D7F6,
)) + ("⁰¹²³⁴⁵⁶⁷⁸⁹", "₀₁₂₃₄₅₆₇₈₉", "⓪①②③④⑤⑥⑦⑧⑨")
HOSTILE_TEXT = (
    "", " ", "\n", "\r\n", "\t", "\x00", "{", "}", "{}", "[]", "null", "None", "true", "True",
    "false", "yes", "on", "NaN", "Infinity", "-Infinity", "1e3", "0x10", "0o7", "0b1", "1_0",
    "\n}\nservice imap {\n  process_limit = 1\n}\n", "!include /etc/passwd", "$(reboot)", "`id`",
    "%s%n", "%00", "../../etc/passwd", "<x/>", "]]>", "&amp;", "\\", '"', "'", "\u202e", "\u200b",
    "\ufeff", "\U0001F600", "\u00a0", "\u2028", "\u0660",
)
INT_TRICKS = (  # an in-range number, written so that it is not a plain ASCII digit string
    lambda n: f"+{n}", lambda n: f" {n}", lambda n: f"{n} ", lambda n: f"{n}\n", lambda n: f"\n{n}",
    lambda n: f"\t{n}", lambda n: f"{n}\r\n", lambda n: f"{n}\x00", lambda n: f"\x00{n}",
    lambda n: f"{{{n}}}", lambda n: f"{n}}}", lambda n: f"{{{n}", lambda n: f"{n}.0", lambda n: f"{n}.",
    lambda n: f"{n}e0", lambda n: f"{n}E+00", lambda n: f"0x{n:x}", lambda n: f"0o{n:o}",
    lambda n: f"0b{n:b}", lambda n: "_".join(str(n)) if n > 9 else f"{n}_", lambda n: f"{n:,}",
    lambda n: f"{n}L", lambda n: f"{n}j", lambda n: f"{n};", lambda n: f"{n} # x",
    lambda n: f"{n}\nprocess_limit = 1", lambda n: f"({n})", lambda n: f'"{n}"', lambda n: f"[{n}]",
    lambda n: f"{n}\u200b", lambda n: f"\u00a0{n}", lambda n: f"{n}\u2028", lambda n: f"{n}B",
    lambda n: f"{n}M", lambda n: f"--{n}", lambda n: f"{n}\ufeff",
)
FULLWIDTH = {c: chr(ord(c) + 0xFEE0) for c in string.ascii_letters + string.digits}
STR_TRICKS = (  # a pattern-valid string (the local node id among them) made invalid
    lambda s: s + "\n", lambda s: "\n" + s, lambda s: s + "\r\n", lambda s: s + "\x00",
    lambda s: "{" + s + "}", lambda s: s + "}", lambda s: s + " ", lambda s: " " + s,
    lambda s: s + "/..", lambda s: "../" + s, lambda s: s + ";reboot", lambda s: s + "$(id)",
    lambda s: "".join(FULLWIDTH.get(c, c) for c in s), lambda s: s + "\u043e",  # Cyrillic o
    lambda s: s + "\u0301", lambda s: "\u202e" + s, lambda s: s + "\t", lambda s: s.upper() + "\n",
    lambda s: s + "\u212a", lambda s: s + "\u00df", lambda s: s + "\u0661",
)


def xml_safe(value) -> bool:
    if isinstance(value, str):
        return not any(c in XML_BAD_CHARS or "\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, (list, tuple)):
        return all(map(xml_safe, value))
    if isinstance(value, dict):
        return all(xml_safe(k) and xml_safe(v) for k, v in value.items())
    return True


def texts(carrier: str, **kw):
    if carrier in ("xmlrpc", "soap"):
        return st.text(st.characters(exclude_categories=("Cs",), exclude_characters=XML_BAD_CHARS), **kw)
    if carrier == "multipart":
        return st.text(**kw).filter(lambda s: BOUNDARY not in s)
    return st.text(**kw)


def in_range(spec: Input):
    return st.integers(spec.minimum, spec.maximum) | st.sampled_from([spec.minimum, spec.maximum])


def out_of_range(spec: Input):
    lo, hi = spec.minimum, spec.maximum
    return st.one_of(
        st.integers(max_value=lo - 1), st.integers(min_value=hi + 1),
        st.sampled_from([lo - 1, hi + 1, -1, -hi, I4, I4 + 1, -I4 - 1, 2**32, 2**53 + 1, 2**63,
                         2**64, 10**30, -10**100, 10**400]),
    ).filter(lambda n: not lo <= n <= hi)


def foreign_digits(numbers):
    """An in-range number with at least one digit of another script ('４０' must not be 40)."""
    def write(n, digits, first, mask):
        text = str(n)
        first %= len(text)
        return "".join(digits[int(c)] if i == first or mask >> i & 1 else c for i, c in enumerate(text))
    return st.builds(write, numbers, st.sampled_from(DIGIT_SETS), st.integers(0, 20), st.integers(0, 2**20))


def bad_bytes():
    return st.builds(lambda pre, bad, post: BadBytes(pre.encode() + bad + post.encode()),
                     st.sampled_from(["", "4", "40", "1", "node1"]), st.sampled_from(INVALID_UTF8),
                     st.sampled_from(["", "0", "1"]))


def raw_json(numbers):
    return st.one_of(
        st.sampled_from([RawJSON(t) for t in ("1e999", "-1e999", "1E400", "9" * 5000, "-" + "9" * 5000,
                                              "1" + "0" * 400, "-0.0", "0e0")]),
        st.builds(lambda n, fmt: RawJSON(fmt.format(n)), numbers,
                  st.sampled_from(["{}.0", "{}e0", "{}E+0", "{}.000e0", "{}0e-1"])),
    )


def containers(leaf, carrier: str):
    keys = texts(carrier, max_size=6)
    nested = st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(keys, c, max_size=3),
                          max_leaves=8)
    return st.one_of(st.lists(nested, max_size=3), st.dictionaries(keys, nested, max_size=3),
                     leaf.map(lambda v: [v]), leaf.map(lambda v: {"value": v}))


def int_texts(spec: Input, carrier: str):
    numbers = in_range(spec)
    return st.one_of(
        out_of_range(spec).map(str),
        st.sampled_from(["9" * 31, "1" + "0" * 1000, "-" + "9" * 1500]),
        st.builds(lambda n, trick: trick(n), numbers, st.sampled_from(INT_TRICKS)),
        foreign_digits(numbers),
        st.floats().map(repr),
        st.sampled_from(HOSTILE_TEXT),
        texts(carrier, max_size=12),
    )


def str_seeds(spec: Input, ctx):
    seeds = st.from_regex(spec.pattern, fullmatch=True)
    return seeds | st.just(ctx.node_id) if spec.name == "node_id" else seeds


def str_texts(spec: Input, carrier: str, ctx):
    valid = str_seeds(spec, ctx)

    def insert(s, i, c):
        i %= len(s) + 1
        return s[:i] + c + s[i:]
    return st.one_of(
        st.builds(insert, valid, st.integers(0, 80), texts(carrier, min_size=1, max_size=1)),
        st.builds(lambda s, k: (s * 100)[:65 + k], valid, st.integers(0, 40)),
        st.builds(lambda s, trick: trick(s), valid, st.sampled_from(STR_TRICKS)),
        st.sampled_from(HOSTILE_TEXT),
        texts(carrier, max_size=12),
    )


def invalid_values(spec: Input, carrier: str, ctx):
    """Values `spec` must refuse, as `carrier` can carry them: "json" (any JSON value),
    "text" (query strings, url-encoded forms), "multipart", "xmlrpc" (XML-RPC values), "soap"
    (SOAP values as PHP sends them: integers of at most 64 bits' worth of digits)."""
    if spec.kind == "int":
        numbers, wrong_numbers, strings = in_range(spec), out_of_range(spec), int_texts(spec, carrier)
        leaf = numbers | numbers.map(str)
    elif spec.kind == "str":
        numbers, wrong_numbers, strings = st.integers(0, 100), st.integers(), str_texts(spec, carrier, ctx)
        leaf = str_seeds(spec, ctx)
    else:
        is_valid(spec, None)   # raises: a new kind needs strategies
    floats = st.floats() | numbers.map(float) | st.sampled_from([0.0, -0.0, 1.0, 0.5])
    if carrier in ("text", "multipart"):
        values = st.one_of(strings, bad_bytes())
    elif carrier == "json":
        values = st.one_of(
            strings, wrong_numbers, floats, st.booleans(), st.none(), containers(leaf | strings, carrier),
            raw_json(numbers), bad_bytes(), st.sampled_from(LONE_SURROGATES),
        )
    elif carrier == "xmlrpc":
        values = st.one_of(
            strings.filter(xml_safe), wrong_numbers, floats, st.booleans(), st.none(),
            numbers.map(lambda n: str(n).encode()), st.binary(max_size=8),
            st.datetimes(dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31)),
            containers(leaf | strings.filter(xml_safe), carrier),
        )
    elif carrier == "soap":
        values = st.one_of(
            strings.filter(xml_safe), wrong_numbers.filter(lambda n: abs(n) < 10**60), floats, st.booleans(),
            st.none(), numbers.map(lambda n: str(n).encode()), st.binary(max_size=8),
            containers(leaf | strings.filter(xml_safe), carrier),
        )
    else:
        raise AssertionError(carrier)
    return values.filter(lambda v: not is_valid(spec, v, rpc=carrier in ("xmlrpc", "soap")))


def valid_values(spec: Input, carrier: str, ctx):
    if spec.kind == "int":
        numbers = in_range(spec)
        return numbers.map(str) if carrier in ("text", "multipart") else numbers | numbers.map(str)
    return str_seeds(spec, ctx)


def junk_names(carrier: str, declared=()):
    if carrier == "multipart":
        names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
    else:
        names = texts(carrier, max_size=12) | st.sampled_from(["perms", "apikey", "", "__proto__"])
    return names.filter(lambda n: n not in declared)


def junk_values(carrier: str):
    if carrier in ("text", "multipart"):
        return texts(carrier, max_size=10)
    leaf = st.none() | st.booleans() | st.integers(-10**6, 10**6) | texts(carrier, max_size=8)
    return st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(texts(carrier, max_size=5), c,
                                                                                   max_size=3), max_leaves=5)


@st.composite
def hostile_inputs(draw, action: Action, carrier: str, ctx):
    """(name, value) pairs for `action`: at least one declared input invalid, the others
    absent, valid or invalid, plus unknown names (ignored by design) in any order.
    Returns (pairs, name of the first invalid input in the table's order)."""
    declared = [spec.name for spec in action.inputs]
    bad = draw(st.sets(st.sampled_from(declared), min_size=1))
    pairs = []
    for spec in action.inputs:
        if spec.name in bad:
            pairs.append((spec.name, draw(invalid_values(spec, carrier, ctx))))
        elif draw(st.booleans()):
            pairs.append((spec.name, draw(valid_values(spec, carrier, ctx))))
    pairs += draw(st.lists(st.tuples(junk_names(carrier, declared), junk_values(carrier)),
                           max_size=2, unique_by=lambda p: p[0]))
    first_bad = next(name for name in declared if name in bad)
    return draw(st.permutations(pairs)), first_bad


@st.composite
def some_pairs(draw, action: Action, carrier: str, ctx):
    """The inputs a request of a body-level case carries: for an action with inputs always at
    least one invalid one (a mutating action must never get a request it could act on)."""
    if action.inputs:
        return draw(hostile_inputs(action, carrier, ctx))[0]
    return draw(st.lists(st.tuples(junk_names(carrier), junk_values(carrier)), max_size=3,
                         unique_by=lambda p: p[0]))


# ------------------------------------------------------------------ encodings

BOUNDARY = "imapd-ctl-hostile-7f3a9c"
JSON_TYPES = ("application/json", "application/json; charset=utf-8", "APPLICATION/JSON")
FORM_TYPES = ("application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=utf-8")


def json_bytes(value) -> bytes:
    if isinstance(value, RawJSON):
        return value.text.encode()
    if isinstance(value, BadBytes):
        return b'"' + value.data + b'"'
    if isinstance(value, list):
        return b"[" + b", ".join(map(json_bytes, value)) + b"]"
    if isinstance(value, dict):
        return json_object(value.items())
    return json.dumps(value).encode()


def json_object(pairs) -> bytes:
    return b"{" + b", ".join(json.dumps(k).encode() + b": " + json_bytes(v) for k, v in pairs) + b"}"


def json_problem(body: bytes) -> str | None:
    """The payload prefix with which the API must refuse this JSON body, None if the body is a
    usable object (mirrors the contract: UTF-8, a JSON object, each name once)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "body: "
    if not body.strip():
        return None
    duplicates = []

    def hook(pairs):
        names = [name for name, _ in pairs]
        if not duplicates:
            duplicates.extend(name for name in names if names.count(name) > 1)
        return dict(pairs)
    try:
        doc = json.loads(text, object_pairs_hook=hook)
    except (ValueError, RecursionError):
        return "body: "
    if duplicates:
        return f"{duplicates[0]}: given more than once"
    return None if isinstance(doc, dict) else "body: "


def pct(value) -> str:
    return urllib.parse.quote(value.data if isinstance(value, BadBytes) else value, safe="")


def urlencoded(pairs) -> str:
    return "&".join(f"{pct(k)}={pct(v)}" for k, v in pairs)


def form_body(pairs, raw_bad: bool) -> bytes:
    """url-encoded; with raw_bad, invalid UTF-8 goes into the body as is (not %XX)."""
    return b"&".join(pct(k).encode() + b"=" + (v.data if raw_bad and isinstance(v, BadBytes) else pct(v).encode())
                     for k, v in pairs)


def multipart(pairs, files=frozenset(), boundary: str = BOUNDARY) -> bytes:
    out = []
    for name, value in pairs:
        data = value.data if isinstance(value, BadBytes) else value.encode()
        head = f'Content-Disposition: form-data; name="{name}"'
        if name in files:
            head += f'; filename="{name}.txt"\r\nContent-Type: application/octet-stream'
        out.append(f"--{boundary}\r\n{head}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(out) + f"--{boundary}--\r\n".encode()


def chunks(body: bytes, size: int) -> bytes:
    return b"".join(b"%x\r\n" % len(body[i:i + size]) + body[i:i + size] + b"\r\n"
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


@dataclass(frozen=True)
class Members:
    """An XML-RPC struct written member by member (so a name can repeat)."""
    pairs: tuple


def xml_value(v) -> str:
    """One XML-RPC <value> (test side: ints beyond i4 as <i8>, which the standard library reads)."""
    if isinstance(v, XmlRaw):
        return v.xml
    if v is None:
        return "<value><nil/></value>"
    if isinstance(v, bool):
        return f"<value><boolean>{int(v)}</boolean></value>"
    if isinstance(v, int):
        tag = "int" if -I4 - 1 <= v <= I4 else "i8"
        return f"<value><{tag}>{v}</{tag}></value>"
    if isinstance(v, float):
        return f"<value><double>{v!r}</double></value>"
    if isinstance(v, str):
        return f"<value><string>{xml_escape(v)}</string></value>"
    if isinstance(v, bytes):
        return f"<value><base64>{b64encode(v).decode()}</base64></value>"
    if isinstance(v, dt.datetime):
        return f"<value><dateTime.iso8601>{v:%Y%m%dT%H:%M:%S}</dateTime.iso8601></value>"
    if isinstance(v, (list, tuple)):
        return "<value><array><data>" + "".join(map(xml_value, v)) + "</data></array></value>"
    if isinstance(v, dict):
        v = Members(tuple(v.items()))
    if isinstance(v, Members):
        return "<value><struct>" + "".join(f"<member><name>{xml_escape(k)}</name>{xml_value(x)}</member>"
                                           for k, x in v.pairs) + "</struct></value>"
    raise TypeError(f"no XML-RPC form for {v!r}")


def method_call(params, method: str = "iworx.route", prolog: str = "") -> bytes:
    return ('<?xml version="1.0"?>\n' + prolog + f"<methodCall><methodName>{method}</methodName><params>"
            + "".join(f"<param>{xml_value(p)}</param>" for p in params) + "</params></methodCall>").encode()


def deep_array(depth: int) -> XmlRaw:
    return XmlRaw("<value><array><data>" * depth + "<value><int>1</int></value>" + "</data></array></value>" * depth)


# ------------------------------------------------------------------ cases

@dataclass
class Ctx:
    key: str
    node_id: str


@dataclass
class HttpCase:
    family: str
    method: str
    target: bytes
    ctype: str | None = None
    body: bytes | None = None
    chunk: int = 0                 # chunked transfer with this chunk size (0: Content-Length)
    wire_body: bytes | None = None  # the body exactly as sent (broken framing)
    extra_headers: tuple = ()
    status: int = 400              # expected
    prefix: str | None = None      # expected start of the payload
    server_level: bool = False     # refused by the server's framer before the app sees it

    def wire(self, key: str) -> bytes:
        lines = [self.method.encode() + b" " + self.target + b" HTTP/1.1", b"Host: localhost",
                 b"Connection: close", b"Authorization: Bearer " + key.encode(), *self.extra_headers]
        if self.ctype is not None:
            lines.append(b"Content-Type: " + self.ctype.encode())
        body = b""
        if self.wire_body is not None:
            body = self.wire_body
        elif self.body is not None and self.chunk:
            lines.append(b"Transfer-Encoding: chunked")
            body = chunks(self.body, self.chunk)
        elif self.body is not None:
            lines.append(b"Content-Length: %d" % len(self.body))
            body = self.body
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def __repr__(self) -> str:
        body = self.body if self.wire_body is None else self.wire_body
        shown = body if body is None or len(body) < 300 else body[:200] + b"...%d bytes" % len(body)
        return (f"HttpCase({self.family}: {self.method} {self.target[:300]!r} type={self.ctype!r} "
                f"chunk={self.chunk} body={shown!r} expect={self.status} {self.prefix!r})")

    def _repr_pretty_(self, printer, cycle):   # how hypothesis shows a falsifying example
        printer.text(repr(self))


@dataclass
class XmlCase:
    family: str
    body: bytes
    status: int | None = 400       # expected struct status; None: any 4xx
    prefix: str | None = None
    expect: str = "struct"         # "struct", "fault" or "envelope" (HTTP 413)
    chunk: int = 0

    def http(self) -> HttpCase:
        return HttpCase(self.family, "POST", b"/xmlrpc", "text/xml", self.body, self.chunk)

    def __repr__(self) -> str:
        shown = self.body if len(self.body) < 600 else self.body[:500] + b"...%d bytes" % len(self.body)
        return f"XmlCase({self.family}: {shown!r} chunk={self.chunk} expect={self.expect} {self.status} {self.prefix!r})"

    def _repr_pretty_(self, printer, cycle):
        printer.text(repr(self))


def target(action: Action, query: str = "") -> bytes:
    return f"{CONTROLLER}/{action.name}".encode() + (b"?" + query.encode() if query else b"")


@st.composite
def http_input_case(draw, action: Action, ctx):
    """Invalid values for declared inputs, in every place HTTP inputs come from."""
    how = draw(st.sampled_from(("json", "query", "form", "multipart", "query+json", "query+form")))
    carrier = {"json": "json", "multipart": "multipart"}.get(how, "text")
    pairs, first_bad = draw(hostile_inputs(action, carrier, ctx))
    query, body_pairs = [], pairs
    if how == "query":
        query, body_pairs = pairs, []
    elif how.startswith("query+"):
        to_query = draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs)))
        query = [p for p, q in zip(pairs, to_query) if q]
        body_pairs = [p for p, q in zip(pairs, to_query) if not q]
    method = "GET" if how == "query" and not action.mutating and draw(st.booleans()) else "POST"
    case = HttpCase("inputs/" + how, method, target(action, urlencoded(query)), prefix=f"{first_bad}: ")
    assume(len(case.target) < 4000)    # the request line limit (gunicorn's setting; a separate case below)
    kind = how.split("+")[-1]
    if kind == "json":
        case.body, case.ctype = json_object(body_pairs), draw(st.sampled_from(JSON_TYPES))
        case.prefix = json_problem(case.body) or case.prefix
    elif kind == "form":
        raw = draw(st.booleans())
        case.body, case.ctype = form_body(body_pairs, raw), draw(st.sampled_from(FORM_TYPES))
        if raw and any(isinstance(v, BadBytes) for _, v in body_pairs):
            case.prefix = "body: "
    elif kind == "multipart":
        case.body, case.ctype = multipart(body_pairs), f"multipart/form-data; boundary={BOUNDARY}"
    if case.body is not None and method == "POST":
        case.chunk = draw(st.sampled_from([0, 0, 1, 7, 512, 4096]))
    return case


HTTP_KINDS = ("deep-json", "json-not-object", "json-malformed", "json-bad-utf8", "json-duplicate",
              "query-duplicate", "wrong-content-type", "form-bad-utf8", "multipart-broken",
              "multipart-file", "oversize", "oversize-chunked", "broken-framing", "method",
              "raw-request-line", "long-request-line")
OTHER_TYPES = (None, "text/plain", "text/xml", "application/xml", "application/octet-stream", "text/json",
               "application/jsonp", "application/x-json", "application/vnd.api+json", "text/html; charset=utf-8",
               "multipart/mixed; boundary=x", "application/x-url-encoded", "image/png", "*/*")
MALFORMED_JSON = (b"{", b"}", b"{'a': 1}", b'{"a": 1,}', b'{"a" 1}', b"{a: 1}", b'{"a": 1} x', b"{/**/}",
                  b"\xef\xbb\xbf{}", b'{"a": 01}', b'{"a": .5}', b'{"a": +1}', b'{"a": 0x1}', b'{"a": "\x01"}',
                  b'{"a": "\\x41"}', b'{"a": "\\ud800"', b"nul", b"tru", b"{}{}", b"[}", b'{"a":1}\x00',
                  b"\x00", b'"\\"', b"{" * 10)


@st.composite
def http_hostile_case(draw, action: Action, ctx):
    """A request that is invalid as a whole (its body, framing, method or request line)."""
    declared = [spec.name for spec in action.inputs]
    kinds = HTTP_KINDS + ("multipart-file",) * 2 if declared else tuple(k for k in HTTP_KINDS if k != "multipart-file")
    kind = draw(st.sampled_from(kinds))
    case = HttpCase(kind, "POST", target(action))
    if kind == "deep-json":
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a": ', "}")])) if declared else ("[", "]")
        depth = draw(st.integers(100, 30000) | st.integers(960, 1010))
        depth = min(depth, (MAX_BODY - 200) // (len(opener) + len(closer)))
        deep = opener * depth + "1" + closer * depth
        # As the value of a declared input (refused however deep), or as the whole body.
        case.body = (f'{{"{draw(st.sampled_from(declared))}": {deep}}}' if declared else deep).encode()
        case.ctype, case.prefix = "application/json", None   # "name: ..." or "body: ...", by depth
    elif kind == "json-not-object":
        if declared:   # the invalid inputs, but not as an object of named inputs
            pairs = draw(some_pairs(action, "json", ctx))
            case.body = draw(st.sampled_from([b"[" + json_object(pairs) + b"]", json_bytes([[k, v] for k, v in pairs]),
                                              json_bytes([v for _, v in pairs])]))
        else:
            case.body = json_bytes(draw(st.one_of(st.lists(junk_values("json"), max_size=3), st.integers(),
                                                  texts("json"), st.none(), st.booleans(), st.floats())))
        case.ctype, case.prefix = "application/json", "body: "
    elif kind == "json-malformed":
        good = json_object(draw(some_pairs(action, "json", ctx)))
        damaged = [   # the invalid inputs stay whole: a lenient parser must not find a valid request
            st.sampled_from([b"x", b",", b"}", b"{}", b" 1", b"\x00", b"]", b",}"]).map(lambda tail: good + tail),
            st.sampled_from([good[:-1], good[:-1] + b",}", b"[" + good, good.replace(b"{", b"{,", 1),
                             good.replace(b": ", b" : :", 1), b"{" + good]),
        ]
        if not declared:
            damaged += [st.sampled_from(MALFORMED_JSON), st.binary(min_size=1, max_size=64),
                        st.integers(1, len(good) - 1).map(lambda cut: good[:cut])]
        case.body = draw(st.one_of(damaged))
        case.ctype, case.prefix = "application/json", json_problem(case.body)
        assume(case.prefix is not None)   # an accident that parses as an object is no hostile body
    elif kind == "json-bad-utf8":
        good = json_object(draw(some_pairs(action, "json", ctx)))
        pos = draw(st.integers(0, len(good)))
        case.body = good[:pos] + draw(st.sampled_from(INVALID_UTF8)) + good[pos:]
        case.ctype, case.prefix = draw(st.sampled_from(JSON_TYPES)), "body: not valid UTF-8"
        assume(json_problem(case.body) == "body: ")
    elif kind == "json-duplicate":
        name, first, second = draw(duplicate(action, "json", ctx))
        rest = [p for p in draw(some_pairs(action, "json", ctx)) if p[0] != name]
        pairs = draw(st.permutations(rest + [(name, first)]))
        at = draw(st.integers(0, len(pairs)))
        case.body = json_object(pairs[:at] + [(name, second)] + pairs[at:])
        case.ctype, case.prefix = "application/json", json_problem(case.body)
    elif kind == "query-duplicate":
        name, first, second = draw(duplicate(action, "text", ctx))
        where = draw(st.sampled_from(["query", "query+form", "query+json"]))
        case.target = target(action, urlencoded([(name, first)] + ([(name, second)] if where == "query" else [])))
        if where == "query+form":
            case.body, case.ctype = form_body([(name, second)], raw_bad=False), FORM_TYPES[0]
        elif where == "query+json":
            case.body, case.ctype = json_object([(name, second)]), "application/json"
        case.prefix = f"{name}: given more than once"
    elif kind == "wrong-content-type":
        text_pairs = draw(some_pairs(action, "text", ctx))
        case.body = draw(st.sampled_from([json_object(draw(some_pairs(action, "json", ctx))),
                                          form_body(text_pairs, raw_bad=False) or b"a=1"]
                                         + ([] if declared else [b"<x/>", b"a=1"])))
        case.ctype, case.prefix = draw(st.sampled_from(OTHER_TYPES)), "body: send application/json or a form"
    elif kind == "form-bad-utf8":
        good = form_body(draw(some_pairs(action, "text", ctx)), raw_bad=True)
        pos = draw(st.integers(0, len(good)))
        case.body = good[:pos] + draw(st.sampled_from(INVALID_UTF8)) + good[pos:]
        case.ctype, case.prefix = draw(st.sampled_from(FORM_TYPES)), "body: "
    elif kind == "multipart-broken":
        good = multipart(draw(some_pairs(action, "multipart", ctx)))
        how = draw(st.sampled_from(["no boundary", "other boundary", "unterminated", "no disposition",
                                    "non-ASCII boundary"] + ([] if declared else ["garbage"])))
        case.ctype, case.body = f"multipart/form-data; boundary={BOUNDARY}", good
        if how == "no boundary":
            case.ctype = "multipart/form-data"
        elif how == "other boundary":
            case.ctype = "multipart/form-data; boundary=zzz"
        elif how == "non-ASCII boundary":
            case.ctype = "multipart/form-data; boundary=\u00e9t\u00e9"
        elif how == "unterminated":
            opened = good[:-len(f"--{BOUNDARY}--\r\n")] or f"--{BOUNDARY}\r\n".encode()
            case.body = opened if declared else opened[:draw(st.integers(1, len(opened)))]
        elif how == "garbage":
            case.body = draw(st.binary(min_size=1, max_size=200).filter(lambda b: BOUNDARY.encode() not in b))
        elif how == "no disposition":
            case.body = f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\n1\r\n".encode() + good
        case.family, case.prefix = f"multipart-broken/{how}", "body: "
    elif kind == "multipart-file":
        files = draw(st.sets(st.sampled_from(declared), min_size=1))
        pairs = [(name, draw(valid_values(action.input(name), "multipart", ctx) | texts("multipart", max_size=10)))
                 for name in declared if name in files]
        case.body = multipart(draw(st.permutations(pairs)), files=files)
        case.ctype = f"multipart/form-data; boundary={BOUNDARY}"
        case.prefix = next(f"{name}: must be" for name in declared if name in files)
    elif kind in ("oversize", "oversize-chunked"):
        pairs = draw(some_pairs(action, "text", ctx))
        ctype = draw(st.sampled_from(["application/json", FORM_TYPES[0], "multipart/form-data; boundary=" + BOUNDARY,
                                      "text/xml", None]))
        size = MAX_BODY + draw(st.integers(1, 64 * 1024))
        if ctype == "application/json":
            body = json_object([(k, v.data.decode("latin-1") if isinstance(v, BadBytes) else v) for k, v in pairs])
        elif ctype == FORM_TYPES[0]:
            body = form_body(pairs, raw_bad=False) + b"&pad="
        else:
            body = multipart([(k, v) for k, v in pairs if not isinstance(v, BadBytes)])
        case.body = body + b" " * max(0, size - len(body))   # whitespace: valid but for its size
        case.ctype, case.status, case.prefix = ctype, 413, "Request Entity Too Large"
        case.chunk = draw(st.sampled_from([1024, 4096, 65536])) if kind == "oversize-chunked" else 0
    elif kind == "broken-framing":
        body = json_object(draw(some_pairs(action, "json", ctx)))
        how = draw(st.sampled_from(["chunk size", "chunk terminator", "no last chunk", "short body"]))
        case.ctype = "application/json"
        if how == "short body":    # Content-Length promises more than arrives (then EOF)
            case.extra_headers = (b"Content-Length: %d" % (len(body) + draw(st.integers(1, 1000))),)
            case.wire_body = body
        else:
            case.extra_headers = (b"Transfer-Encoding: chunked",)
            size = draw(st.sampled_from([b"zz", b"-1", b"1x", b"0x10", b" 5", b"", b"\xff"]))
            case.wire_body = {
                "chunk size": size + b"\r\n" + body + b"\r\n0\r\n\r\n",
                "chunk terminator": b"%x\r\n" % len(body) + body + b"XX0\r\n\r\n",
                "no last chunk": b"%x\r\n" % len(body) + body + b"\r\n",
            }[how]
        case.family, case.prefix = f"broken-framing/{how}", None
    elif kind == "method":
        case.method = draw(st.sampled_from(["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND"]
                                           + (["GET"] if action.mutating else [])))
        pairs = draw(some_pairs(action, "text", ctx))
        case.target = target(action, urlencoded(pairs))
        assume(len(case.target) < 4000)
        case.status = 405
    elif kind == "raw-request-line":
        raw = draw(st.sampled_from(INVALID_UTF8 + ("４０".encode(), "٤٠".encode(), "node1\u00e9".encode())))
        name = draw(st.sampled_from(declared or ["x"])).encode()
        case.target = draw(st.sampled_from([target(action) + b"?" + name + b"=" + raw,
                                            target(action) + raw, b"/xmlrpc?" + raw]))
        case.server_level = True
    elif kind == "long-request-line":
        name = draw(st.sampled_from(declared or ["x"]))
        case.target = target(action, f"{name}=" + "9" * draw(st.integers(4100, 9000)))
        case.status, case.server_level = 414, True
    return case


@st.composite
def duplicate(draw, action: Action, carrier: str, ctx):
    """A name given twice: an invalid and a (perhaps valid) value, in either order, so that
    neither "first wins" nor "last wins" may pass."""
    declared = [spec.name for spec in action.inputs]
    if declared:
        spec = action.input(draw(st.sampled_from(declared)))
        bad = draw(invalid_values(spec, carrier, ctx).filter(lambda v: not isinstance(v, BadBytes)))
        other = draw(valid_values(spec, carrier, ctx) | invalid_values(spec, carrier, ctx).filter(
            lambda v: not isinstance(v, BadBytes)))
        name = spec.name
    else:
        name = draw(junk_names(carrier))
        bad, other = draw(junk_values(carrier)), draw(junk_values(carrier))
    return (name, bad, other) if draw(st.booleans()) else (name, other, bad)


def http_cases(action: Action, ctx):
    if action.inputs:
        return st.one_of(http_input_case(action, ctx), http_hostile_case(action, ctx))
    return http_hostile_case(action, ctx)


# -- XML-RPC

XXE_PROLOGS = (
    '<!DOCTYPE methodCall [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
    '<!DOCTYPE methodCall [<!ENTITY e SYSTEM "file:///dev/zero">]>',
    '<!DOCTYPE methodCall [<!ENTITY e SYSTEM "file:///dev/urandom">]>',
    '<!DOCTYPE methodCall [<!ENTITY e SYSTEM "/proc/self/environ">]>',
    '<!DOCTYPE methodCall [<!ENTITY e SYSTEM "http://198.18.0.1:9/x">]>',
    '<!DOCTYPE methodCall [<!ENTITY e PUBLIC "-//imapd-ctl//x" "file:///etc/passwd">]>',
    '<!DOCTYPE methodCall [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p; <!ENTITY e "x">]>',
    '<!DOCTYPE methodCall [<!ENTITY % p "<!ENTITY e SYSTEM \'file:///etc/passwd\'>"> %p;]>',
    '<!DOCTYPE methodCall SYSTEM "file:///etc/passwd" [<!ENTITY e "x">]>',
    '<!DOCTYPE methodCall PUBLIC "-//imapd-ctl//x" "http://198.18.0.1:9/x.dtd" [<!ENTITY e "x">]>',
    '<!DOCTYPE methodCall [<!ENTITY e SYSTEM "file:///etc/passwd" NDATA x>]>',
    '<?xml-stylesheet href="file:///etc/passwd"?><!DOCTYPE methodCall [<!ENTITY e "x">]>',
)
BAD_SCALARS = (
    "<value><int>abc</int></value>", "<value><int>1.5</int></value>", "<value><int></int></value>",
    "<value><i4>0x10</i4></value>", "<value><int>\u0664\u0660</int></value>", "<value><int>\uff14\uff10</int></value>",
    "<value><boolean>2</boolean></value>", "<value><boolean>true</boolean></value>",
    "<value><double>x</double></value>", "<value><double></double></value>", "<value><base64>====</base64></value>",
    "<value><dateTime.iso8601>yesterday</dateTime.iso8601></value>", "<value><i8>" + "9" * 5000 + "</i8></value>",
    "<value><biginteger>" + "9" * 4000 + "</biginteger></value>", "<value><bigdecimal>1e999999999</bigdecimal></value>",
    "<value><nil>x</nil></value>", "<value><struct><member><value><int>1</int></value></member></struct></value>",
    "<value><struct><member><name>a</name></member></struct></value>",
    "<value><struct><member><value><array><data/></array></value><value><int>1</int></value></member></struct></value>",
    "<value><unknown>1</unknown></value>", "<value><array><value>1</value></array></value>",
    "<value><string><b>x</b></string></value>", "<value><string>&#0;</string></value>",
    "<value><string>&#xD800;</string></value>", "<value><string>&#x110000;</string></value>",
    "<value><string>&undefined;</string></value>", "<value><string>&#;</string></value>",
    "<value><string>a & b</string></value>", "<value><string>\x00</string></value>",
    "<value><string>\x01\x0b\x1f</string></value>", "<value><string>\ufffe</string></value>",
    "<value><string><![CDATA[40]]></string></value>", "<value><string>4<!-- c -->0</string></value>",
)
OTHER_METHODS = ("system.listMethods", "system.multicall", "system.methodHelp", "iworx.route ", " iworx.route",
                 "IWORX.ROUTE", "iworx", "route", "iworx.route.__call__", "__import__", "")
XML_KINDS = ("inputs", "not-a-struct", "arity", "key-shape", "duplicate-member", "controller", "action-name",
             "deep-nesting", "billion-laughs", "quadratic-blowup", "external-entity", "bad-scalar",
             "malformed", "encoding", "method-name", "oversize")


def local_call(body: bytes):
    """How the standard library (same Python, same expat as the daemon) reads this body:
    (params, method) or None if it cannot."""
    try:
        return xmlrpc.client.loads(body, use_builtin_types=True)
    except Exception:       # ExpatError, ValueError, TypeError, Fault, ResponseError...
        return None


def valid_auth(ctx) -> list:
    """The key as XML-RPC and SOAP clients send it: a string, {apikey}, with the whitespace
    around it that a key file read whole or a panel's stored block brings (the same key)."""
    return [ctx.key, {"apikey": ctx.key}, ctx.key + "\n", "\r\n " + ctx.key + "\t\n", {"apikey": ctx.key + "\r\n"}]


def would_act(action: Action, params, ctx) -> bool:
    """Would these parsed params pass authentication and validation (per the contract: a key
    with surrounding whitespace is the key; nil, [] and "" are no input)?"""
    key = params[0].get("apikey") if len(params) and isinstance(params[0], dict) else params[0] if params else None
    if len(params) not in (3, 4) or not isinstance(key, str) or key.strip(" \t\r\n") != ctx.key:
        return False
    if params[1] != CONTROLLER or params[2] != action.name:
        return False
    raw = params[3] if len(params) == 4 else None
    if raw is None or raw == [] or raw == "":
        return True
    if not isinstance(raw, dict):
        return False
    return all(is_valid(spec, raw[spec.name], rpc=True) for spec in action.inputs if spec.name in raw)


@st.composite
def xmlrpc_case(draw, action: Action, ctx):
    declared = [spec.name for spec in action.inputs]
    # Bad values for declared inputs are the main course: weighted up.
    kind = draw(st.sampled_from([k for k in XML_KINDS + ("inputs",) * 4 + ("deep-nesting",)
                                 if declared or k != "inputs"]))
    auth = draw(st.sampled_from(valid_auth(ctx)))

    def invalid_input():
        """The input param: a struct with at least one invalid declared input, or (for an
        action without inputs) something that is not a struct."""
        if declared:
            return Members(tuple(draw(hostile_inputs(action, "xmlrpc", ctx))[0]))
        # ([] and "" are no input: an action without inputs would run)
        return draw(st.lists(junk_values("xmlrpc"), min_size=1, max_size=3) | st.integers()
                    | texts("xmlrpc", min_size=1))

    def hostile_at(fragment: str):
        """The input param with `fragment` (raw XML) as the first declared input's value, every
        other declared input invalid; for an action without inputs, inside an array."""
        if not declared:
            return XmlRaw(f"<value><array><data>{fragment}</data></array></value>")
        pairs = [(declared[0], XmlRaw(fragment))]
        for spec in action.inputs[1:]:
            pairs.append((spec.name, draw(invalid_values(spec, "xmlrpc", ctx))))
        return Members(tuple(pairs))

    case = XmlCase(kind, b"")
    if kind == "inputs":
        pairs, first_bad = draw(hostile_inputs(action, "xmlrpc", ctx))
        case.body, case.prefix = method_call([auth, CONTROLLER, action.name, Members(tuple(pairs))]), f"{first_bad}: "
    elif kind == "not-a-struct":
        if declared:   # the invalid inputs, but not as a struct
            pairs = draw(hostile_inputs(action, "xmlrpc", ctx))[0]
            value = draw(st.sampled_from([[Members(tuple(pairs))], [[k, v] for k, v in pairs], [v for _, v in pairs]]))
        else:
            value = draw(st.one_of(st.lists(junk_values("xmlrpc"), min_size=1, max_size=3), st.integers(),
                                   texts("xmlrpc", min_size=1),
                                   st.booleans(), st.floats(), st.binary(max_size=8),
                                   st.datetimes(dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31))))
        case.body, case.prefix = method_call([auth, CONTROLLER, action.name, value]), "input: must be a struct"
    elif kind == "arity":
        n = draw(st.sampled_from([0, 1, 2, 5, 6, 9]))
        params = [auth, CONTROLLER, action.name, invalid_input()]
        params += draw(st.lists(junk_values("xmlrpc"), min_size=max(0, n - 4), max_size=max(0, n - 4)))
        case.body, case.prefix = method_call(params[:n]), "iworx.route takes"
    elif kind == "key-shape":
        key = draw(st.one_of(
            st.integers(), st.lists(junk_values("xmlrpc"), max_size=2), st.just({}), st.none(),
            st.dictionaries(texts("xmlrpc", max_size=8).filter(lambda k: k != "apikey"), junk_values("xmlrpc"),
                            min_size=1, max_size=2),
            st.builds(lambda v: {"apikey": v}, st.integers() | st.none() | st.lists(st.just(ctx.key), max_size=1)),
            texts("xmlrpc", max_size=40), st.sampled_from([ctx.key[:5] + "\n" + ctx.key[5:], ctx.key.upper(), ctx.key[:-1],
                                                           ctx.key + "\x85", ctx.key.encode()]),
        ))
        case.body, case.status = method_call([key, CONTROLLER, action.name, invalid_input()]), 401
    elif kind == "duplicate-member":
        name, first, second = draw(duplicate(action, "xmlrpc", ctx))
        rest = [p for p in (draw(hostile_inputs(action, "xmlrpc", ctx))[0] if declared else []) if p[0] != name]
        pairs = draw(st.permutations(rest + [(name, first)]))
        at = draw(st.integers(0, len(pairs)))
        members = Members(tuple(pairs[:at] + [(name, second)] + pairs[at:]))
        case.body, case.prefix = method_call([auth, CONTROLLER, action.name, members]), f"{name}: given more than once"
    elif kind == "controller":
        ctrl = draw(st.one_of(
            texts("xmlrpc", max_size=30), st.integers(), st.none(), st.lists(texts("xmlrpc", max_size=5), max_size=2),
            st.just(deep_array(draw(st.integers(900, 1300)))),
            st.sampled_from([CONTROLLER + "/", CONTROLLER.upper(), CONTROLLER + " ", CONTROLLER[1:], CONTROLLER + "\n",
                             "/nodeworx/mail/smtp", "/siteworx/mail/imap", CONTROLLER + "/" + action.name]),
        ).filter(lambda c: c != CONTROLLER))
        case.body, case.status = method_call([auth, ctrl, action.name, invalid_input()]), 404
    elif kind == "action-name":
        name = draw(st.one_of(
            texts("xmlrpc", max_size=30), st.integers(), st.none(), st.lists(st.just(action.name), max_size=2),
            st.just(deep_array(draw(st.integers(900, 1300)))), st.binary(max_size=8),
            st.sampled_from([action.name.lower(), action.name.upper(), action.name + " ", "\n" + action.name,
                             action.name + "\ufeff", action.name + "OnNode", action.name[:-1], "__init__",
                             "handler", "run", "../" + action.name]),
        ).filter(lambda a: not (isinstance(a, str) and a in ACTIONS)))
        case.body, case.status = method_call([auth, CONTROLLER, name, invalid_input()]), 404
    elif kind == "deep-nesting":    # arrays nested past Python's recursion limit, in each param
        deep = deep_array(draw(st.integers(950, 1200) | st.integers(10, 1200)))
        where = draw(st.sampled_from(["input", "controller", "action", "key"]))
        params, case.status, case.prefix = {
            "input": ([auth, CONTROLLER, action.name, hostile_at(deep.xml) if declared else deep], 400,
                      f"{declared[0]}: must be" if declared else "input: must be a struct"),
            "controller": ([auth, deep, action.name, invalid_input()], 404, "unknown controller"),
            "action": ([auth, CONTROLLER, deep, invalid_input()], 404, "unknown action"),
            "key": ([deep, CONTROLLER, action.name, invalid_input()], 401, None),
        }[where]
        case.body, case.family = method_call(params), f"deep-nesting/{where}"
    elif kind == "billion-laughs":
        depth, fanout = draw(st.integers(1, 12)), draw(st.integers(2, 16))
        entities = '<!ENTITY l0 "lol">' + "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * fanout}">'
                                                  for i in range(1, depth + 1))
        prolog = f"<!DOCTYPE methodCall [{entities}]>"
        case.body = method_call([auth, CONTROLLER, action.name, hostile_at(f"<value><string>&l{depth};</string></value>")],
                                prolog=prolog)
    elif kind == "quadratic-blowup":
        size = draw(st.integers(10, 30000))
        refs = draw(st.integers(1, (MAX_BODY - size - 8000) // 3))
        prolog = f'<!DOCTYPE methodCall [<!ENTITY a "{"a" * size}">]>'
        case.body = method_call([auth, CONTROLLER, action.name, hostile_at(f"<value><string>{'&a;' * refs}</string></value>")],
                                prolog=prolog)
    elif kind == "external-entity":
        prolog = draw(st.sampled_from(XXE_PROLOGS))
        text = draw(st.sampled_from(["&e;", "x&e;", "&e;&e;", "node1&e;"]))
        where = draw(st.sampled_from(["input", "key", "action"]))
        ref = XmlRaw(f"<value><string>{text}</string></value>")
        params = {"input": [auth, CONTROLLER, action.name, hostile_at(ref.xml)],
                  "key": [ref, CONTROLLER, action.name, invalid_input()],
                  "action": [auth, CONTROLLER, ref, invalid_input()]}[where]
        case.body = method_call(params, prolog=prolog)
        case.family = f"external-entity/{where}"
    elif kind == "bad-scalar":
        case.body = method_call([auth, CONTROLLER, action.name, hostile_at(draw(st.sampled_from(BAD_SCALARS)))])
    elif kind == "malformed":
        good = method_call([auth, CONTROLLER, action.name, invalid_input()])
        # Cut only after the (invalid) input param when there are inputs: a lenient parser
        # must not find a valid call in what is left.
        tail = len(b"</params></methodCall>") if declared else len(good)
        case.body = draw(st.one_of(
            st.integers(len(good) - tail, len(good) - 1).map(lambda cut: good[:cut]),
            st.builds(lambda pos, junk: good[:pos] + junk + good[pos:], st.integers(0, len(good)),
                      st.sampled_from([b"<", b"&", b"\x00", b"\xff", b"</x>", b"<x>", b"]]>", b"<?", b"<!--"])),
            st.binary(max_size=300),
            st.sampled_from([b"", b"<methodCall/>", b"<methodCall></methodCall>", good + good,
                             b"<methodResponse><params><param><value>1</value></param></params></methodResponse>",
                             b"<methodResponse><fault><value><struct></struct></value></fault></methodResponse>",
                             good.replace(b"<params>", b"<params><param></param>"),
                             good.replace(b"</methodName>", b""), b'<?xml version="2.0"?>' + good]),
        ))
    elif kind == "encoding":
        good = method_call([auth, CONTROLLER, action.name, invalid_input()]).decode()
        how = draw(st.sampled_from(["utf-16 declared", "unknown", "latin-1", "utf-16 body", "utf-8 bom", "ebcdic"]))
        head, _, rest = good.partition("?>")
        case.body = {
            "utf-16 declared": ('<?xml version="1.0" encoding="UTF-16"?>' + rest).encode(),
            "unknown": ('<?xml version="1.0" encoding="x-imapd-ctl"?>' + rest).encode(),
            "latin-1": ('<?xml version="1.0" encoding="ISO-8859-1"?>' + rest).encode("utf-8"),
            "utf-16 body": ('<?xml version="1.0" encoding="UTF-16"?>' + rest).encode("utf-16"),
            "utf-8 bom": b"\xef\xbb\xbf" + good.encode(),
            "ebcdic": ('<?xml version="1.0" encoding="cp500"?>' + rest).encode("cp500", "replace"),
        }[how]
        case.family = f"encoding/{how}"
    elif kind == "method-name":
        method = draw(st.sampled_from(OTHER_METHODS))
        case.body = method_call([auth, CONTROLLER, action.name, invalid_input()], method=xml_escape(method))
    elif kind == "oversize":
        pad = "x" * (MAX_BODY + draw(st.integers(1, 64 * 1024)))
        case.body = method_call([auth, CONTROLLER, action.name, invalid_input(), pad])
        case.expect, case.status, case.prefix = "envelope", 413, "Request Entity Too Large"
        case.chunk = draw(st.sampled_from([0, 4096, 65536]))
    if kind in ("billion-laughs", "quadratic-blowup", "external-entity"):
        # Any DTD is refused before anything expands or is fetched (defusedxml's guard, as SOAP's).
        case.expect, case.status, case.prefix = "fault", None, "no DTD, no entities"
    elif case.expect != "envelope" and kind not in ("inputs", "not-a-struct", "arity", "key-shape",
                                                    "duplicate-member", "controller", "action-name", "deep-nesting"):
        # Entity tricks, bad values and broken XML: the standard library decides what they
        # are. Parsed as a call of iworx.route -> a 4xx struct; otherwise -> a fault.
        parsed = local_call(case.body)
        case.status, case.prefix = None, None
        if parsed is None or parsed[1] != "iworx.route":
            case.expect = "fault"
        else:
            assume(not would_act(action, parsed[0], ctx))    # never send a request that could act
    elif case.expect == "struct" and kind != "duplicate-member":
        parsed = local_call(case.body)
        assert parsed is not None and parsed[1] == "iworx.route", case    # the generator's own XML
        assume(not would_act(action, parsed[0], ctx))
    if case.chunk == 0 and case.expect != "envelope":
        case.chunk = draw(st.sampled_from([0, 0, 0, 512]))
    return case


# ------------------------------------------------------------------ talking to the daemon

@dataclass
class Reply:
    status: int
    ctype: str
    body: bytes
    seconds: float = 0.0


def exchange(sock_path: str, request: bytes) -> Reply:
    """Send one raw HTTP request over the unix socket (then half-close: a body that promises
    more than it has must not keep the worker waiting) and read the reply."""
    started = time.monotonic()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(sock_path)
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass    # answered (413) and closed before reading it all: read that answer
        resp = http.client.HTTPResponse(sock, method=request.split(b" ", 1)[0].decode("latin-1"))
        try:
            resp.begin()
            body = resp.read()
        except TimeoutError:
            pytest.fail(f"no reply within {TIMEOUT} s: the request hangs the worker")
        return Reply(resp.status, resp.getheader("Content-Type", ""), body, time.monotonic() - started)
    finally:
        sock.close()


def envelope_payload(reply: Reply) -> str:
    assert reply.ctype.startswith("application/json"), reply
    doc = json.loads(reply.body)
    assert isinstance(doc, dict) and set(doc) == {"status", "payload"}, doc
    assert doc["status"] == reply.status, (reply.status, doc)
    assert isinstance(doc["payload"], str) and doc["payload"], doc
    return doc["payload"]


def check_http(case: HttpCase, reply: Reply) -> None:
    assert 400 <= reply.status < 500, f"HTTP {reply.status}: {reply.body[:500]!r}"
    if case.server_level:
        # the framer refuses the request line before the app runs: its 400/414.
        if reply.ctype.startswith("application/json"):
            envelope_payload(reply)
        return
    payload = envelope_payload(reply)
    assert reply.status == case.status, f"expected {case.status}, got {reply.status}: {payload!r}"
    if case.prefix is not None:
        assert payload.startswith(case.prefix), f"expected {case.prefix!r}..., got {payload!r}"


def check_xmlrpc(case: XmlCase, reply: Reply) -> None:
    assert reply.status < 500, f"HTTP {reply.status}: {reply.body[:500]!r}"
    for secret in (b"root:", b"/bin/", b"PATH="):     # an external entity was read
        assert secret not in reply.body, reply.body[:1000]
    if case.expect == "envelope":
        payload = envelope_payload(reply)
        assert reply.status == case.status and payload.startswith(case.prefix), payload
        return
    assert reply.status == 200 and reply.ctype.startswith("text/xml"), reply
    try:
        (result,), _ = xmlrpc.client.loads(reply.body, use_builtin_types=True)
    except xmlrpc.client.Fault as fault:
        assert case.expect == "fault", f"fault for a call the standard library parses: {fault}"
        assert isinstance(fault.faultCode, int) and isinstance(fault.faultString, str) and fault.faultString
        assert case.prefix is None or case.prefix in fault.faultString, fault
        assert len(reply.body) < 2000, reply.body[:300]          # nothing of the input echoed at length
        return
    assert case.expect == "struct", f"expected a fault, got {result!r}"
    assert isinstance(result, dict) and set(result) == {"status", "payload"}, result
    assert isinstance(result["status"], int) and 400 <= result["status"] < 500, result
    assert isinstance(result["payload"], str) and result["payload"], result
    if case.status is not None:
        assert result["status"] == case.status, result
    if case.prefix is not None:    # (an XML parser reads a CR the marshaller left raw as LF)
        prefix = case.prefix.replace("\r\n", "\n").replace("\r", "\n")
        assert result["payload"].startswith(prefix), f"expected {prefix!r}..., got {result['payload']!r}"


# ------------------------------------------------------------------ what must not change

def snapshot(host) -> dict:
    """Bytes and times of the files, Dovecot's unit file state and main PID, the workers."""
    state = {}
    for path in (DROPIN, KEYS):
        state[path] = (host.run(["stat", "-c", "%.9Y %.9Z %i %s %a", path]).stdout.strip(), host.read_file(path))
    shown = host.run(["systemctl", "show", "-p", "UnitFileState", "-p", "MainPID", "-p", "ActiveState", IMAP_UNIT])
    state[IMAP_UNIT] = dict(line.split("=", 1) for line in shown.stdout.split())
    master = host.run(["systemctl", "show", "-p", "MainPID", "--value", DAEMON_UNIT]).stdout.strip()
    workers = sorted(int(pid) for pid in host.run(["pgrep", "-P", master], check=False).stdout.split())
    state["gunicorn"] = {"master": master, "workers": workers}
    return state


def summary() -> str:
    per = collections.Counter()
    for (transport, _), n in COUNTS.items():
        per[transport] += n
    families = ", ".join(f"{t}:{f}={n}" for (t, f), n in sorted(COUNTS.items()))
    took = time.monotonic() - TIMING["start"] if "start" in TIMING else 0.0
    return (f"hostile input: {sum(per.values())} generated requests through gunicorn "
            f"(http {per['http']}, xmlrpc {per['xmlrpc']}, soap {per['soap']}) over {len(ACTIONS)} actions in {took:.1f} s; "
            f"by family: {families}")


class _Summary:
    def pytest_terminal_summary(self, terminalreporter):
        if COUNTS:
            terminalreporter.write_sep("-", "hostile input")
            terminalreporter.write_line(summary())


@pytest.fixture(scope="module")
def baseline(daemon, mailhost, request):
    """The drop-in written once with a valid update, then the state nothing may change."""
    status, payload = daemon.call("update", {"imap_mem_limit": 256000000, "imap_max_connections": 40,
                                             "imap_secure_mem_limit": 256000000,
                                             "imap_secure_max_connections": 40})
    assert status == 0, payload
    state = snapshot(mailhost)
    assert state[IMAP_UNIT]["ActiveState"] == "active" and state[IMAP_UNIT]["MainPID"] != "0", state
    assert len(state["gunicorn"]["workers"]) == WORKERS, state["gunicorn"]
    if not request.config.pluginmanager.has_plugin("imapd-ctl-hostile-summary"):
        request.config.pluginmanager.register(_Summary(), "imapd-ctl-hostile-summary")
    TIMING["start"] = time.monotonic()
    yield state
    print("\n" + summary())


def changes(before: dict, after: dict) -> dict:
    return {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}


@pytest.mark.parametrize("transport", ["http", "xmlrpc", "soap"])
@pytest.mark.parametrize("name", list(ACTIONS))
def test_hostile_requests_are_refused_and_change_nothing(name, transport, daemon, mailhost, baseline):
    from hostile_soap import check_soap, soap_case     # (it builds on this module's strategies)
    action = ACTIONS[name]
    ctx = Ctx(daemon.key, daemon.node_id)
    cases = {"http": http_cases, "xmlrpc": xmlrpc_case, "soap": soap_case}[transport](action, ctx)

    def check(case, reply: Reply) -> None:
        if transport == "soap":
            check_soap(case, reply.status, reply.ctype, reply.body)
        else:
            (check_http if transport == "http" else check_xmlrpc)(case, reply)

    @HYPOTHESIS
    @given(cases)
    def one(case):
        http_case = case if transport == "http" else case.http()
        reply = exchange(daemon.socket, http_case.wire(daemon.key))
        COUNTS[(transport, case.family.split("/")[0])] += 1
        note(f"reply: HTTP {reply.status} {reply.body[:600]!r}")
        check(case, reply)

    one()
    assert changes(baseline, snapshot(mailhost)) == {}


def test_daemon_survived_and_nothing_changed(daemon, mailhost, baseline):
    import soapwire
    assert daemon.call("isRunning") == (0, True)
    assert daemon.route("isRunning") == (0, True)
    status, body = daemon.http("POST", "/soap", body=soapwire.envelope([daemon.key, CONTROLLER, "isRunning", []]),
                               headers={"Content-Type": soapwire.CTYPE["1.1"]})
    assert status == 200 and soapwire.read(body).result == {"status": 0, "payload": True}
    assert changes(baseline, snapshot(mailhost)) == {}
    journal = mailhost.run(["journalctl", "--no-pager", "-o", "cat", "-u", DAEMON_UNIT]).stdout
    for sign in ("Traceback", "WORKER TIMEOUT", "exited with code", "SIGKILL", "unhandled error"):
        assert sign not in journal, journal[-5000:]
    assert journal.count("Booting worker") == WORKERS, journal[-5000:]    # none was replaced
