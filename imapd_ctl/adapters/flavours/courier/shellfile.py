"""Courier's shell configuration files (imapd, imapd-ssl): the MAXDAEMONS and IMAP_ULIMITD
lines, edited in place (every other line and comment stays byte-identical). Pure functions on
bytes; running /bin/sh on the files is courier.sourcing, the service courier.flavour.

Mapping (per port; Courier limits each daemon separately, unlike Dovecot):
  imap_max_connections        -> MAXDAEMONS   in imapd      (couriertcpd -maxprocs, port 143)
  imap_mem_limit              -> IMAP_ULIMITD in imapd      (`ulimit -v`, KiB, port 143)
  imap_secure_max_connections -> MAXDAEMONS   in imapd-ssl  (port 993)
  imap_secure_mem_limit       -> IMAP_ULIMITD in imapd-ssl  (port 993)
Bytes -> KiB rounds DOWN, KiB = bytes // 1024, so the limit in force never exceeds the
request (1 MiB..1 TiB requests give 1024..1073741824 KiB). The requested byte count is kept in
a trailing comment of the managed line, e.g.
  IMAP_ULIMITD=292968 # imapd-ctl: imap_mem_limit=300000000 bytes
so queryUpdate returns exactly the bytes sent. queryUpdate always starts from what the shell
makes of the files (sourced in the start scripts' order): the comment is used only while
bytes // 1024 equals the KiB in force; after a hand edit of the value it reports KiB * 1024.
An unset, empty or "unlimited" IMAP_ULIMITD reports 1 TiB (the largest value update
accepts); an unset or non-numeric MAXDAEMONS reports 40 (Courier's shipped default).

Editing: every top-level assignment line of a managed variable (`NAME=...`, with optional
indentation and `export `) gets the new value; its quoting, line ending and anything after the
value (`; export NAME`, a comment) are kept. A file lacking the line gets one appended at the
end. Candidates are validated before they reach the live path: `sh -n` on each file, then both
sourced by a clean `env -i /bin/sh` in each start script's order, which must print the
intended values; otherwise ConfigInvalid names the live file and quotes the shell.
"""
from __future__ import annotations

import re

PLAIN, SSL = "imapd", "imapd-ssl"
DEFAULT_MAXDAEMONS = 40

# Which update input each managed line of each file holds.
FIELDS = {
    PLAIN: {"MAXDAEMONS": "imap_max_connections", "IMAP_ULIMITD": "imap_mem_limit"},
    SSL: {"MAXDAEMONS": "imap_secure_max_connections", "IMAP_ULIMITD": "imap_secure_mem_limit"},
}
# The order in which each daemon's start script sources the files (the last one wins).
ORDER = {PLAIN: (SSL, PLAIN), SSL: (PLAIN, SSL)}

_LINE = re.compile(rb"[^\n]*\n|[^\n]+")
# A value word as sh reads it: unquoted characters, quoted strings, escapes, ${...}, $(...).
_WORD = rb"""(?:\$\(\([^()]*\)\)|\$\([^()]*\)|\$\{[^{}]*\}|'[^']*'|"(?:[^"\\]|\\.)*"|\\.|[^\s;&|<>()'"\\`])*"""
_ASSIGN = re.compile(
    rb"(?P<pre>[ \t]*(?:export[ \t]+)?)(?P<var>MAXDAEMONS|IMAP_ULIMITD)=(?P<val>" + _WORD
    + rb")(?P<rest>[^\r\n]*?)(?P<eol>\r?\n?)\Z", re.S)
_MARK = re.compile(rb"[ \t]*# imapd-ctl: (?P<field>imap_(?:secure_)?mem_limit)=(?P<bytes>[0-9]+) bytes")


def kib(nbytes: int) -> int:
    """IMAP_ULIMITD for a byte limit: rounded down, so the limit never exceeds the request."""
    return nbytes // 1024


def wanted(values: dict[str, int]) -> dict[str, dict[str, int]]:
    """{file: {variable: value in the file}} for the four update values."""
    return {name: {"MAXDAEMONS": values[fields["MAXDAEMONS"]],
                   "IMAP_ULIMITD": kib(values[fields["IMAP_ULIMITD"]])}
            for name, fields in FIELDS.items()}


def split(data: bytes) -> list[bytes]:
    """Lines as sh sees them (split at LF only), each with its own ending."""
    return _LINE.findall(data)


def managed_line(line: bytes) -> re.Match | None:
    """The match of an assignment line of MAXDAEMONS or IMAP_ULIMITD, else None."""
    return _ASSIGN.match(line)


def edit(data: bytes | None, name: str, values: dict[str, int]) -> bytes:
    """The file `name` (imapd or imapd-ssl) with its managed lines set for the four update
    values; every other byte unchanged, missing lines appended at the end."""
    data = data or b""
    fields = FIELDS[name]
    target = wanted(values)[name]
    seen = set()
    out = []
    for line in split(data):
        m = managed_line(line)
        if m is None:
            out.append(line)
            continue
        var = m.group("var").decode()
        seen.add(var)
        val = m.group("val")
        quote = val[:1] if len(val) >= 2 and val[:1] in (b'"', b"'") and val[-1:] == val[:1] else b""
        rest = m.group("rest")
        if var == "IMAP_ULIMITD":
            rest = _MARK.sub(b"", rest) + _marker(fields[var], values[fields[var]])
        out.append(m.group("pre") + var.encode() + b"=" + quote + str(target[var]).encode() + quote
                   + rest + m.group("eol"))
    missing = [var for var in ("MAXDAEMONS", "IMAP_ULIMITD") if var not in seen]
    if missing:
        if out and not out[-1].endswith(b"\n"):
            out[-1] += b"\n"
        for var in missing:
            note = (_marker(fields[var], values[fields[var]]) if var == "IMAP_ULIMITD"
                    else f" # imapd-ctl: {fields[var]}".encode())
            out.append(f"{var}={target[var]}".encode() + note + b"\n")
    return b"".join(out)


def _marker(field: str, nbytes: int) -> bytes:
    return f" # imapd-ctl: {field}={nbytes} bytes".encode()


def requested_bytes(data: bytes | None) -> int | None:
    """The byte count in the marker of the file's last IMAP_ULIMITD line, if it has one."""
    found = None
    for line in split(data or b""):
        m = managed_line(line)
        if m is not None and m.group("var") == b"IMAP_ULIMITD":
            mark = _MARK.search(m.group("rest"))
            found = int(mark.group("bytes")) if mark else None
    return found


def textual(data: bytes | None) -> dict[str, str]:
    """{variable: value} of the last assignment line of each managed variable in a file,
    unquoted (only lines whose value is a plain number, as plan() writes them)."""
    found = {}
    for line in split(data or b""):
        m = managed_line(line)
        if m is not None:
            raw = m.group("val")
            if raw[:1] in (b'"', b"'") and raw[-1:] == raw[:1] and len(raw) >= 2:
                raw = raw[1:-1]
            found[m.group("var").decode()] = raw.decode(errors="replace")
    return found


def int_value(text: str) -> int | None:
    text = text.strip()
    return int(text) if re.fullmatch(r"[0-9]{1,19}", text, re.ASCII) else None

