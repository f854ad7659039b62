"""Courier-IMAP: limits are the MAXDAEMONS and IMAP_ULIMITD lines of Courier's own shell
configuration files, edited in place (every other line and comment stays byte-identical).

What Debian 12's courier-imap ships (and RHEL-style packages mirror under /etc/courier-imap):
  courier-imap.service      Type=forking, ExecStart=/usr/sbin/imapd start, port 143
  courier-imap-ssl.service  Type=forking, ExecStart=/usr/sbin/imapd-ssl start, port 993
The start scripts source the config files (143: imapd-ssl then imapd; 993: imapd then
imapd-ssl -- the file read last wins), run `ulimit -v $IMAP_ULIMITD`, then start
`courierlogger` (the unit's MainPID) -> `couriertcpd -maxprocs=$MAXDAEMONS` -> imaplogin/imapd
(couriertls in front for 993). So each port has its own limits only if its file sets them:
imapd-ssl as shipped has no MAXDAEMONS/IMAP_ULIMITD lines and silently inherits imapd's.
Every update therefore makes sure BOTH files carry both lines. Courier has no reload: a change
of imapd restarts both running units, a change of imapd-ssl only the SSL unit.

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

import logging
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from imapd_ctl.adapters import ports
from imapd_ctl.core.actions import CONN_MAX, CONN_MIN, MEM_MAX, MEM_MIN
from imapd_ctl.core.errors import ActionFailed, ConfigInvalid, ConfigWriteError

log = logging.getLogger(__name__)

CONFIG_DIRS = ("/etc/courier", "/etc/courier-imap")   # Debian, RHEL-style
PLAIN, SSL = "imapd", "imapd-ssl"
DEFAULT_MAXDAEMONS = 40
DEFAULT_SSL_PORT = 993
SH = "/bin/sh"

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


def _split(data: bytes) -> list[bytes]:
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
    for line in _split(data):
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
    for line in _split(data or b""):
        m = managed_line(line)
        if m is not None and m.group("var") == b"IMAP_ULIMITD":
            mark = _MARK.search(m.group("rest"))
            found = int(mark.group("bytes")) if mark else None
    return found


def textual(data: bytes | None) -> dict[str, str]:
    """{variable: value} of the last assignment line of each managed variable in a file,
    unquoted (only lines whose value is a plain number, as plan() writes them)."""
    found = {}
    for line in _split(data or b""):
        m = managed_line(line)
        if m is not None:
            raw = m.group("val")
            if raw[:1] in (b'"', b"'") and raw[-1:] == raw[:1] and len(raw) >= 2:
                raw = raw[1:-1]
            found[m.group("var").decode()] = raw.decode(errors="replace")
    return found


def find_config_dir(configured: str = "") -> str | None:
    """The configured directory, or the first of CONFIG_DIRS, if it holds `imapd`."""
    if configured:
        return configured if os.path.isfile(os.path.join(configured, PLAIN)) else None
    for candidate in CONFIG_DIRS:
        if os.path.isfile(os.path.join(candidate, PLAIN)):
            return candidate
    return None


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if re.fullmatch(r"[0-9]{1,19}", text, re.ASCII) else None


class Courier:
    name = "courier"

    def __init__(self, settings, systemd=None):
        self.s = settings.courier
        self.port = settings.port
        self.listen_timeout = settings.listen_timeout
        self.state_dir = Path(settings.state_dir)
        self.config_dir = find_config_dir(self.s.config_dir) or self.s.config_dir or CONFIG_DIRS[0]
        self.paths = {PLAIN: os.path.join(self.config_dir, PLAIN),
                      SSL: os.path.join(self.config_dir, SSL)}
        units = [self.s.unit]
        # The SSL unit is optional (a host may serve 143 only): keep it if systemd knows it.
        if self.s.ssl_unit and (systemd is None or systemd.unit(self.s.ssl_unit).load_state == "loaded"):
            units.append(self.s.ssl_unit)
        self.units = tuple(units)
        self.primary_unit = self.s.unit
        self._restarted: list[str] = []   # what the last apply restarted (verify waits for them)
        self._down: set[str] = set()      # served before a change that failed after restarting them

    # -- reading -------------------------------------------------------------------------
    def _read(self) -> dict[str, bytes | None]:
        files = {}
        for name, path in self.paths.items():
            try:
                files[name] = Path(path).read_bytes()
            except FileNotFoundError:
                files[name] = None
            except OSError as exc:
                raise ActionFailed(f"cannot read {path}: {exc.strerror or exc}") from None
        if files[PLAIN] is None:
            raise ActionFailed(f"Courier's configuration {self.paths[PLAIN]} does not exist "
                               f"(looked in {self.config_dir}; set [courier] config_dir)")
        return files

    def _source(self, paths: dict[str, str], shown: dict[str, str]) -> dict[str, dict[str, str]]:
        """What each daemon's start script gets from the files: {daemon: {MAXDAEMONS, IMAP_ULIMITD,
        PORT}} from `env -i /bin/sh` sourcing them in that script's order. `shown` maps the
        paths to the names used in messages. Raises ConfigInvalid with the shell's words."""
        script = (
            'prefix=/usr; exec_prefix=/usr; sbindir=/usr/sbin; bindir=/usr/bin; sysconfdir="$1"\n'
            'exec 3>&1 >/dev/null\n'
            '( . "$2"; . "$3"; printf "%s\\0%s\\0%s\\0" "$MAXDAEMONS" "$IMAP_ULIMITD" "$PORT" >&3 ) || exit\n'
            '( . "$3"; . "$2"; printf "%s\\0%s\\0%s\\0" "$MAXDAEMONS" "$IMAP_ULIMITD" "$SSLPORT" >&3 ) || exit\n'
        )
        argv = ["/usr/bin/env", "-i", SH, "-c", script, "sh", self.config_dir, paths[SSL], paths[PLAIN]]
        proc = self._run(argv, "source Courier's configuration")
        out = proc.stdout.split(b"\0")
        if proc.returncode != 0 or len(out) != 7:
            raise ConfigInvalid(f"Courier's start scripts could not source {shown[PLAIN]} and "
                                f"{shown[SSL]}: {self._words(proc, paths, shown)}")
        text = [v.decode(errors="replace") for v in out[:6]]
        keys = ("MAXDAEMONS", "IMAP_ULIMITD", "PORT")
        return {PLAIN: dict(zip(keys, text[:3])), SSL: dict(zip(keys, text[3:]))}

    def _run(self, argv: list[str], what: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
                                  cwd="/")
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ActionFailed(f"cannot {what}: {exc}") from None

    @staticmethod
    def _words(proc, paths: dict[str, str], shown: dict[str, str]) -> str:
        text = proc.stderr.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        for name, path in paths.items():
            text = text.replace(path, shown[name])
        return text

    def _live(self, files: dict[str, bytes | None]) -> dict[str, dict[str, str]]:
        paths = dict(self.paths)
        if files[SSL] is None:  # the start scripts need it; treat a missing one as empty
            paths[SSL] = "/dev/null"
        return self._source(paths, self.paths)

    # -- Flavour interface -----------------------------------------------------------------
    def current_values(self) -> dict[str, int]:
        files = self._read()
        effective = self._live(files)
        values = {}
        for name, fields in FIELDS.items():
            got = effective[name]
            conns = _int(got["MAXDAEMONS"])
            if conns is None:
                log.warning("MAXDAEMONS for %s is %r, not a number; reporting %d",
                            name, got["MAXDAEMONS"], DEFAULT_MAXDAEMONS)
                conns = DEFAULT_MAXDAEMONS
            values[fields["MAXDAEMONS"]] = min(max(conns, CONN_MIN), CONN_MAX)
            limit = _int(got["IMAP_ULIMITD"])
            if limit is None:   # unset, empty, "unlimited": no limit
                if got["IMAP_ULIMITD"].strip() not in ("", "unlimited"):
                    log.warning("IMAP_ULIMITD for %s is %r, not a number; reporting no limit",
                                name, got["IMAP_ULIMITD"])
                values[fields["IMAP_ULIMITD"]] = MEM_MAX
                continue
            # The file whose line is in force for this daemon: the last one sourced that sets it.
            nbytes = None
            for source in reversed(ORDER[name]):
                if any((m := managed_line(l)) and m.group("var") == b"IMAP_ULIMITD"
                       for l in _split(files[source] or b"")):
                    nbytes = requested_bytes(files[source])
                    break
            if nbytes is None or kib(nbytes) != limit:
                nbytes = limit * 1024
            values[fields["IMAP_ULIMITD"]] = min(max(nbytes, MEM_MIN), MEM_MAX)
        return values

    def plan(self, values: dict[str, int]) -> dict[str, bytes | None]:
        files = self._read()
        return {self.paths[name]: edit(files[name], name, values) for name in (PLAIN, SSL)}

    def validate(self, files: dict[str, bytes | None]) -> None:
        """`sh -n` on each candidate, then source both as each start script does (clean
        environment) and check the values come out as intended. The live files are not touched."""
        by_name = {name: files.get(path) for name, path in self.paths.items()}
        if None in by_name.values():       # not planned: validate with the live file
            live = self._read()
            by_name = {name: (live[name] or b"") if data is None else data for name, data in by_name.items()}
        tmp_dir = None
        try:
            try:
                self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                tmp_dir = tempfile.TemporaryDirectory(prefix="validate-", dir=self.state_dir,
                                                      ignore_cleanup_errors=True)
                paths = {name: os.path.join(tmp_dir.name, name) for name in self.paths}
                for name, path in paths.items():
                    Path(path).write_bytes(by_name[name])
            except OSError as exc:
                # Typically ENOSPC in the state dir: nothing live was touched.
                raise ConfigWriteError(f"cannot prepare the candidate configuration for validation in "
                                       f"{self.state_dir}: {exc.strerror or exc}; nothing was changed") from None
            for name, path in paths.items():
                proc = self._run(["/usr/bin/env", "-i", SH, "-n", path], "run sh -n")
                if proc.returncode != 0:
                    raise ConfigInvalid(f"{self.paths[name]} would not be valid shell for Courier's start "
                                        f"scripts: {self._words(proc, paths, self.paths)}")
            got = self._source(paths, self.paths)
        finally:
            if tmp_dir is not None:
                tmp_dir.cleanup()
        problems = []
        for name in (PLAIN, SSL):
            # After plan() each file sets both variables, and each daemon sources its own
            # file last: the shell must come out with exactly the values on those lines.
            for var, value in textual(by_name[name]).items():
                if got[name][var] != value:
                    hint = " (CRLF line endings? /bin/sh keeps the CR)" if "\r" in got[name][var] else ""
                    problems.append(f"{var} would be {got[name][var]!r} instead of {value} for "
                                    f"{'port 143' if name == PLAIN else 'port 993'} "
                                    f"({self.paths[name]}){hint}")
        if problems:
            raise ConfigInvalid("with the change in place Courier's start scripts would not get the requested "
                                "limits: " + "; ".join(problems)
                                + " (does a later line of the file set them another way?)")

    def apply(self, systemd, changed: list[str]) -> str:
        """Courier has no reload: restart the running units that read a changed file."""
        affected = []
        if self.paths[PLAIN] in changed:
            affected = list(self.units)          # both daemons source imapd
        elif self.paths[SSL] in changed:
            affected = [u for u in self.units if u == self.s.ssl_unit]
        # Units that served before a change whose restart or verify just failed: the apply that
        # follows is the transaction's undo, which brings them back too (not only the active ones).
        down, self._down = self._down, set()
        running = [u for u in affected if u in down or systemd.active_state(u) == "active"]
        self._restarted = running
        try:
            for unit in running:
                systemd.restart(unit)
        except Exception:
            self._down = set(running)
            raise
        idle = [u for u in affected if u not in running]
        parts = []
        if running:
            parts.append(f"restarted {', '.join(running)}")
        if idle:
            parts.append(f"{', '.join(idle)} {'is' if len(idle) == 1 else 'are'} not running; the new "
                         f"limits apply when {'it starts' if len(idle) == 1 else 'they start'}")
        return "; ".join(parts) or "no Courier unit reads the changed files"

    def unit_ports(self, effective: dict[str, dict[str, str]] | None = None) -> dict[str, int]:
        """{unit: the port it must listen on}: settings.port for the 143 unit, SSLPORT for SSL."""
        result = {self.s.unit: self.port}
        if self.s.ssl_unit in self.units:
            ssl_port = DEFAULT_SSL_PORT
            if effective is not None:
                # SSLPORT may be "993" or "ip.port,..." lists; the first entry's port.
                m = re.fullmatch(r"(?:[^,]*\.)?([0-9]{1,5})(?:,.*)?", effective[SSL]["PORT"].strip())
                if m:
                    ssl_port = int(m.group(1))
            result[self.s.ssl_unit] = ssl_port
        return result

    def verify(self, systemd, values: dict[str, int]) -> None:
        try:
            self._verify(systemd, values)
        except Exception:
            self._down = set(self._restarted)
            raise
        self._restarted = []

    def _verify(self, systemd, values: dict[str, int]) -> None:
        got = self.current_values()
        if got != values:
            raise ActionFailed(f"Courier's configuration reads back as {got}, expected {values}")
        effective = self._live(self._read())
        pending = {unit: port for unit, port in self.unit_ports(effective).items()
                   if unit in self._restarted or systemd.active_state(unit) == "active"}
        deadline = time.monotonic() + self.listen_timeout
        while pending:
            for unit, port in list(pending.items()):
                state = systemd.active_state(unit)
                if state in ("failed", "inactive", "deactivating"):
                    # The restart took it down: no point in waiting for the port.
                    raise ActionFailed(f"after the change {unit} is {state}, no longer serving; last journal "
                                       f"lines:\n{systemd.journal_tail(unit)}")
                if state == "active" and ports.unit_listens(systemd.main_pid(unit), port):
                    del pending[unit]
            if not pending:
                break
            if time.monotonic() > deadline:
                unit, port = next(iter(pending.items()))
                raise ActionFailed(
                    f"after the change {unit} is {systemd.active_state(unit)} and does not listen on port "
                    f"{port} within {self.listen_timeout:.0f} s; last journal lines:\n{systemd.journal_tail(unit)}")
            time.sleep(0.05)
