"""HTTP/1.1 request framing (RFC 9112): the one place where bytes become a request head and a
body. Pure functions and a chunked decoder over a buffer, no sockets, so the event loop
(server.channel) can feed them whatever has arrived and ask again later.

Strict where leniency is an attack surface: a header section either parses exactly or is
refused; obsolete line folding, bare LF, both Content-Length and Transfer-Encoding, any
transfer coding but `chunked`, differing Content-Length values and header names with an
underscore (which would alias another header once turned into a WSGI key) are refused, so no
proxy in front of the daemon can read a request differently from the daemon.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")            # visible ASCII: no space, no control, no 8-bit
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")   # no controls but HTAB (no NUL, CR, LF)
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")

CHUNK_LINE_MAX = 1024      # a chunk-size line with its extensions (which are ignored)


class Refused(Exception):
    """The request cannot be framed: the status to answer and why (words for the client)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """gunicorn's request limits (limit_request_line, _fields, _field_size), as configured."""
    line: int = 4094
    fields: int = 100
    field_size: int = 8190

    @property
    def head(self) -> int:
        """The most a whole head may take before its end is seen."""
        return self.line + 2 + self.fields * (self.field_size + 2) + 2


@dataclass
class Head:
    method: str
    target: str               # as sent (ASCII)
    version: tuple[int, int]
    headers: list[tuple[str, str]] = field(default_factory=list)   # names upper-cased, in order
    length: int | None = None     # Content-Length, if the body is framed by it
    chunked: bool = False
    expect_continue: bool = False

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def get(self, name: str) -> str | None:
        """The first value of header `name` (upper-case)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def keep_alive(self) -> bool:
        """Does the client let the connection live after this request (RFC 9112 9.3)?"""
        tokens = {t.strip().lower() for k, v in self.headers if k == "CONNECTION" for t in v.split(",")}
        if "close" in tokens:
            return False
        return self.version >= (1, 1) or "keep-alive" in tokens

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)


class PeerCred(NamedTuple):
    """Who is at the other end of a unix-socket connection, as the kernel says (SO_PEERCRED)."""
    uid: int
    gid: int


@dataclass
class Framed:
    """A whole request as a thread gets it: the head, the body (one copy, the only one), or
    why the body was refused unread (the app words the refusal: a SOAP Fault or the envelope)."""
    head: Head
    body: bytes
    refused: tuple[int, str] | None
    client: Any
    server: Any
    tls: bool
    key: Any = None     # what the app's gate said of the Authorization header (opaque here)


def head_end(buf: bytes | bytearray, limits: Limits) -> int | None:
    """Where the head in `buf` ends (the index after its blank line), None while more must
    arrive; Refused once it cannot be a head within the limits."""
    end = buf.find(b"\r\n\r\n")
    if end >= 0:
        return end + 4
    line_end = buf.find(b"\r\n")
    if (line_end < 0 and len(buf) > limits.line + 2) or line_end > limits.line:
        raise Refused(414, f"the request line is over the limit of {limits.line} bytes")
    if len(buf) > limits.head:
        raise Refused(431, f"the request head is over the limit of {limits.head} bytes")
    return None


def parse_head(raw: bytes, limits: Limits) -> Head:
    """The head (`raw`: the bytes up to and including its blank line)."""
    lines = raw[:-4].split(b"\r\n")
    line = lines[0]
    if len(line) > limits.line:
        raise Refused(414, f"the request line is over the limit of {limits.line} bytes")
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise Refused(400, f"invalid request line {_shown(line)}")
    method, target, version = parts
    if not _TARGET.fullmatch(target):
        raise Refused(400, "the request target must be ASCII without spaces or controls "
                           "(percent-encode other bytes)")
    if not (target.startswith(b"/") or target == b"*" or target.startswith((b"http://", b"https://"))):
        raise Refused(400, f"invalid request target {_shown(target)}")
    v = _VERSION.fullmatch(version)
    if v is None:
        raise Refused(400, f"invalid HTTP version {_shown(version)}")
    ver = (int(v.group(1)), int(v.group(2)))
    if ver[0] != 1:
        raise Refused(505, f"HTTP/{ver[0]}.{ver[1]} is not supported (HTTP/1.0 and 1.1 are)")
    if len(lines) - 1 > limits.fields:
        raise Refused(431, f"more than {limits.fields} header fields")
    head = Head(method.decode("ascii"), target.decode("ascii"), ver)
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    for fl in lines[1:]:
        if len(fl) > limits.field_size:
            raise Refused(431, f"a header field is over the limit of {limits.field_size} bytes")
        if fl[:1] in (b" ", b"\t"):
            raise Refused(400, "obsolete line folding in the header section")
        name, sep, value = fl.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise Refused(400, f"invalid header field {_shown(fl)}")
        if b"_" in name:
            raise Refused(400, f"header name {_shown(name)} contains '_' (use '-')")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise Refused(400, f"invalid characters in header {_shown(name)}")
        key = name.decode("ascii").upper()
        if key == "CONTENT-LENGTH":
            lengths.update(v.strip(b" \t") for v in value.split(b","))
        elif key == "TRANSFER-ENCODING":
            codings.extend(c.strip(b" \t").lower() for c in value.split(b","))
        elif key == "EXPECT":
            if value.lower() != b"100-continue":
                raise Refused(417, f"Expect: {_shown(value)} is not supported (only 100-continue)")
            head.expect_continue = ver >= (1, 1)
        head.headers.append((key, value.decode("latin-1")))
    if codings:
        if lengths:
            raise Refused(400, "both Content-Length and Transfer-Encoding are given")
        if ver < (1, 1):
            raise Refused(400, "Transfer-Encoding in an HTTP/1.0 request")
        if codings != [b"chunked"]:
            raise Refused(501, "only the chunked transfer coding is supported, alone")
        head.chunked = True
    elif lengths:
        if len(lengths) != 1:
            raise Refused(400, "differing Content-Length values")
        (text,) = lengths
        if not text.isdigit() or len(text) > 18:
            raise Refused(400, f"Content-Length {_shown(text)} is not a number")
        head.length = int(text)
    return head


def _shown(data: bytes) -> str:
    text = data[:60].decode("latin-1")
    return repr(text + ("..." if len(data) > 60 else ""))


class Chunked:
    """A chunked body decoded as it arrives: feed() takes raw bytes from a buffer and returns
    how many it used; `body` grows; `done` once the last chunk and the trailers are read.
    Decoded bytes beyond `limit` raise Refused(413) before they are kept."""

    def __init__(self, limit: int, limits: Limits):
        self.limit = limit
        self.limits = limits
        self.body = bytearray()
        self.done = False
        self._left = 0          # bytes of the current chunk still to come
        self._crlf = False      # the CRLF after a chunk's data is next
        self._trailers = False
        self._trailer_count = 0

    def feed(self, buf: bytes | bytearray, at: int = 0) -> int:
        """Decode from buf[at:]; return the index after what was used."""
        while not self.done and at < len(buf):
            if self._left:
                take = min(self._left, len(buf) - at)
                if len(self.body) + take > self.limit:
                    raise Refused(413, f"the request body is over the limit of {self.limit} bytes")
                self.body += buf[at:at + take]
                at += take
                self._left -= take
                self._crlf = self._left == 0
                continue
            end = buf.find(b"\r\n", at, at + CHUNK_LINE_MAX + 2)
            if end < 0:
                if len(buf) - at > CHUNK_LINE_MAX:
                    raise Refused(400, "a chunk-size line is over the limit of "
                                       f"{CHUNK_LINE_MAX} bytes")
                return at
            line = bytes(buf[at:end])
            at = end + 2
            if self._crlf:
                if line:
                    raise Refused(400, "a chunk's data is not followed by CRLF")
                self._crlf = False
            elif self._trailers:
                if not line:
                    self.done = True
                elif len(line) > self.limits.field_size or self._trailer_count >= self.limits.fields:
                    raise Refused(431, "the trailer section is over its limits")
                else:
                    self._trailer_count += 1     # trailers are read and dropped
            else:
                size = line.split(b";", 1)[0].rstrip(b" \t")
                if not _CHUNK_SIZE.fullmatch(size):
                    raise Refused(400, f"invalid chunk size {_shown(size)}")
                self._left = int(size, 16)
                if self._left == 0:
                    self._trailers = True
                elif len(self.body) + self._left > self.limit:
                    raise Refused(413, f"the request body is over the limit of {self.limit} bytes")
        return at


def too_large(limit: int, max_body: int) -> str:
    if limit < max_body:
        return (f"the request body is over the limit of {limit} bytes for a request without a "
                f"valid API key in its Authorization header ({max_body} with one)")
    return f"the request body is over the limit of {limit} bytes"


def error_reply(status: int, message: str, reason: str | None = None) -> bytes:
    """A refusal the loop answers itself (no request could be framed): the InterWorx envelope."""
    reason = reason or REASONS.get(status, "Error")
    body = (json.dumps({"status": status, "payload": f"{reason}: {message}"}) + "\n").encode()
    return (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body


REASONS = {400: "Bad Request", 401: "Unauthorized", 408: "Request Timeout",
           413: "Request Entity Too Large", 414: "URI Too Long", 417: "Expectation Failed",
           431: "Request Header Fields Too Large", 501: "Not Implemented",
           503: "Service Unavailable", 505: "HTTP Version Not Supported"}
