"""What Dovecot 2.3 and 2.4 print, read the same way (no I/O here; the flavour runs the commands,
always with stdout on a pipe: doveconf 2.4.0-2.4.4 fails with "Multiple settings matched" when
stdout is a file that already has content).

`doveconf -h` differs between the versions:
  size      2.3 normalises (`256 M`, `300 M`); 2.4 prints it as written (`300M`, `268435456B`,
            `unlimited`) except built-in defaults (`256 M`)
  unset     service vsz_limit: 2.3 `18446744073709551615 B`, 2.4 an empty line; service
            process_limit: 2.3 `0`, 2.4 an empty line (both mean: the default_* setting applies)
  protocols 2.3 ` imap pop3` (names); 2.4 one `NAME = yes|no` line per protocol
(`doveadm -f json service status`, the same on both, is read by .status.)
"""
from __future__ import annotations

import re

UNLIMITED = (1 << 64) - 1
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([bkmgt]?)\s*$", re.I)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_VERSION_RE = re.compile(r"^#\s*(\d+)\.(\d+)(?:\.(\d+))?")


def parse_size(text: str) -> int:
    """'250000 k' -> 256000000, '300M' -> 314572800 (base 2, as Dovecot counts); raises
    ValueError for anything else, including an empty line and `unlimited`."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a Dovecot size: {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def read_size(text: str) -> int | None:
    """A size line of `doveconf -h`: bytes, UNLIMITED for `unlimited` (2.4) or 0 (2.3's way of
    writing it), or None when unset (2.4's empty line, 2.3's 2**64-1)."""
    text = text.strip()
    if text == "":
        return None
    if text.lower() == "unlimited":
        return UNLIMITED
    size = parse_size(text)
    if size == UNLIMITED:
        return None
    return UNLIMITED if size == 0 else size


def read_count(text: str) -> int | None:
    """A count line of `doveconf -h` (process_limit): the number, or None when unset (2.4's empty
    line, 2.3's 0)."""
    text = text.strip()
    if text == "":
        return None
    if not text.isdigit():
        raise ValueError(f"not a Dovecot count: {text!r}")
    return int(text) or None


def protocols(text: str) -> set[str]:
    """The protocols `doveconf -h protocols` says are served: 2.3's ` imap pop3`, or 2.4's
    `imap = yes` / `pop3 = no` lines (a protocol set to no is not served)."""
    served: set[str] = set()
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            if value.strip().lower() in ("yes", "y", "true", "1"):
                served.add(name.strip())
        else:
            served.update(line.split())
    return served


def full_version(text: str) -> str:
    """The version as the first line of `doveconf -n` states it ("2.4.1-4"); "" if absent."""
    m = re.match(r"^#\s*(\d+\.\d+[^\s(:]*)", text)
    return m.group(1) if m else ""


def version(text: str) -> tuple[int, int] | None:
    """(major, minor) from the first line of `doveconf -n` (`# 2.4.1-4 (7d8c0e5759): ...`)."""
    m = _VERSION_RE.match(text)
    return (int(m.group(1)), int(m.group(2))) if m else None
