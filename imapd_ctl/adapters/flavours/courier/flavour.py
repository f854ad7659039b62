"""Courier-IMAP as a Flavour: the service side (files in, units restarted, ports checked).

What Debian 12's courier-imap ships (and RHEL-style packages mirror under /etc/courier-imap):
  courier-imap.service      Type=forking, ExecStart=/usr/sbin/imapd start, port 143
  courier-imap-ssl.service  Type=forking, ExecStart=/usr/sbin/imapd-ssl start, port 993
The start scripts source the config files (143: imapd-ssl then imapd; 993: imapd then
imapd-ssl -- the file read last wins), run `ulimit -v $IMAP_ULIMITD`, then start
`courierlogger` (the unit's MainPID) -> `couriertcpd -maxprocs=$MAXDAEMONS` -> imaplogin/imapd
(couriertls in front for 993). Courier has no reload: a change of imapd restarts both running
units, a change of imapd-ssl only the SSL unit. The file format: courier.shellfile.

Stateless: the units are discovered by detection (flavours.detect) and passed in; apply()
returns what it restarted and verify() gets that back, nothing is kept in between.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Sequence

from imapd_ctl.adapters.flavours import validation
from imapd_ctl.adapters.flavours.base import config_checks
from imapd_ctl.adapters.flavours.courier import sourcing, tcpd
from imapd_ctl.adapters.flavours.courier.shellfile import (
    DEFAULT_MAXDAEMONS, FIELDS, ORDER, PLAIN, SSL, edit, int_value, kib, managed_line, requested_bytes, split,
    textual)
from imapd_ctl.core.actions import CONN_MAX, CONN_MIN, MEM_MAX, MEM_MIN
from imapd_ctl.core.capacity import Pool
from imapd_ctl.core.errors import ActionFailed, ConfigInvalid, ConfigWriteError
from imapd_ctl.core.protocols import Applied, Check, Files, Listening, Systemd, Values
from imapd_ctl.core.settings import Settings

log = logging.getLogger(__name__)

DPKG_STATUS = "/var/lib/dpkg/status"

CONFIG_DIRS = ("/etc/courier", "/etc/courier-imap")   # Debian, RHEL-style
VERIFY_INTERVAL = 0.05


def find_config_dir(configured: str = "") -> str | None:
    """The configured directory, or the first of CONFIG_DIRS, if it holds `imapd`."""
    if configured:
        return configured if os.path.isfile(os.path.join(configured, PLAIN)) else None
    for candidate in CONFIG_DIRS:
        if os.path.isfile(os.path.join(candidate, PLAIN)):
            return candidate
    return None


class Courier:
    name = "courier"

    def __init__(self, settings: Settings, units: Sequence[str] | None = None) -> None:
        """`units`: the units that serve IMAP, as detection found them (the SSL unit is left
        out when systemd does not know it); None: the configured ones."""
        self.s = settings.courier
        self.port: int = settings.port
        self.ssl_port: int = settings.ssl_port
        self.listen_timeout: float = settings.listen_timeout
        self.state_dir = Path(settings.state_dir)
        self.config_dir: str = find_config_dir(self.s.config_dir) or self.s.config_dir or CONFIG_DIRS[0]
        self.paths = {PLAIN: os.path.join(self.config_dir, PLAIN),
                      SSL: os.path.join(self.config_dir, SSL)}
        if units is None:
            units = [u for u in (self.s.unit, self.s.ssl_unit) if u]
        self.units: tuple[str, ...] = tuple(units)
        self.primary_unit: str = self.s.unit
        # The SSL daemon has its own unit: the secure-IMAP controller acts on it alone.
        self.secure_unit: str | None = self.s.ssl_unit if self.s.ssl_unit in self.units else None
        self.owned: tuple[str, ...] = tuple(self.paths.values())

    # -- reading -------------------------------------------------------------------------
    def _read(self) -> Files:
        files: Files = {}
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

    def _live(self, files: Files) -> sourcing.Effective:
        paths = dict(self.paths)
        if files[SSL] is None:  # the start scripts need it; treat a missing one as empty
            paths[SSL] = "/dev/null"
        return sourcing.source(self.config_dir, paths, self.paths)

    # -- Flavour interface -----------------------------------------------------------------
    def current_values(self) -> Values:
        files = self._read()
        effective = self._live(files)
        values = {}
        for name, fields in FIELDS.items():
            got = effective[name]
            conns = int_value(got["MAXDAEMONS"])
            if conns is None:
                log.warning("MAXDAEMONS for %s is %r, not a number; reporting %d",
                            name, got["MAXDAEMONS"], DEFAULT_MAXDAEMONS)
                conns = DEFAULT_MAXDAEMONS
            values[fields["MAXDAEMONS"]] = min(max(conns, CONN_MIN), CONN_MAX)
            limit = int_value(got["IMAP_ULIMITD"])
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
                       for l in split(files[source] or b"")):
                    nbytes = requested_bytes(files[source])
                    break
            if nbytes is None or kib(nbytes) != limit:
                nbytes = limit * 1024
            values[fields["IMAP_ULIMITD"]] = min(max(nbytes, MEM_MIN), MEM_MAX)
        return values

    def plan(self, values: Values) -> Files:
        files = self._read()
        return {self.paths[name]: edit(files[name], name, values) for name in (PLAIN, SSL)}

    def preflight(self) -> None:
        """Each live file parses as shell, and both source as the start scripts source them."""
        for path in self.paths.values():
            problem = sourcing.syntax_error(path, self.paths, self.paths) if os.path.exists(path) else None
            if problem is not None:
                raise ConfigInvalid(f"{path} is not valid shell for Courier's start scripts: {problem}")
        if all(os.path.exists(path) for path in self.paths.values()):
            sourcing.source(self.config_dir, self.paths, self.paths)

    def validate(self, files: Files) -> None:
        """`sh -n` on each candidate, then source both as each start script does (clean
        environment) and check the values come out as intended. The live files are not touched."""
        planned = {name: files.get(path) for name, path in self.paths.items()}
        live = self._read() if None in planned.values() else {}   # not planned: the live file
        by_name = {name: (live[name] or b"") if data is None else data for name, data in planned.items()}
        with contextlib.ExitStack() as scratch:
            try:
                # A private (0700) scratch directory, removed however validation ends.
                tmp_dir = scratch.enter_context(validation.scratch(self.state_dir))
                paths = {name: os.path.join(tmp_dir, name) for name in self.paths}
                for name, path in paths.items():
                    Path(path).write_bytes(by_name[name])
            except OSError as exc:
                # Typically ENOSPC in the state dir: nothing live was touched.
                raise ConfigWriteError(f"cannot prepare the candidate configuration for validation in "
                                       f"{self.state_dir}: {exc.strerror or exc}; nothing was changed") from None
            for name, path in paths.items():
                problem = sourcing.syntax_error(path, paths, self.paths)
                if problem is not None:
                    raise ConfigInvalid(f"{self.paths[name]} would not be valid shell for Courier's start "
                                        f"scripts: {problem}")
            got = sourcing.source(self.config_dir, paths, self.paths)
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

    def apply(self, systemd: Systemd, changed: Sequence[str], serving: Sequence[str]) -> Applied:
        """Courier has no reload: restart the units that read a changed file and are running,
        or served before the change (`serving`: an undo brings back what a failed change took
        down; a unit the operator stopped stays stopped)."""
        affected: list[str] = []
        if self.paths[PLAIN] in changed:
            affected = list(self.units)          # both daemons source imapd
        elif self.paths[SSL] in changed:
            affected = [u for u in self.units if u == self.s.ssl_unit]
        running = [u for u in affected if u in serving or systemd.active_state(u) == "active"]
        for unit in running:
            systemd.restart(unit)
        return Applied(restarted=tuple(running), idle=tuple(u for u in affected if u not in running))

    def unit_ports(self, effective: sourcing.Effective | None = None) -> dict[str, int]:
        """{unit: the port it must listen on}: settings.port for the 143 unit, SSLPORT for SSL
        (settings.ssl_port when not read from the files)."""
        result = {self.s.unit: self.port}
        if self.s.ssl_unit in self.units:
            ssl_port = self.ssl_port
            if effective is not None:
                # SSLPORT may be "993" or "ip.port,..." lists; the first entry's port.
                m = re.fullmatch(r"(?:[^,]*\.)?([0-9]{1,5})(?:,.*)?", effective[SSL]["PORT"].strip())
                if m:
                    ssl_port = int(m.group(1))
            result[self.s.ssl_unit] = ssl_port
        return result

    def verify(self, listening: Listening, values: Values, applied: Applied) -> None:
        got = self.current_values()
        if got != values:
            raise ActionFailed(f"Courier's configuration reads back as {got}, expected {values}")
        systemd = listening.systemd
        effective = self._live(self._read())
        pending = {unit: port for unit, port in self.unit_ports(effective).items()
                   if unit in applied.restarted or systemd.active_state(unit) == "active"}

        def gone(unit: str, state: str) -> None:    # the restart took it down: no point in waiting
            raise ActionFailed(f"after the change {unit} is {state}, no longer serving; last journal "
                               f"lines:\n{systemd.journal_tail(unit)}")

        left = listening.wait_serving(pending, self.listen_timeout, interval=VERIFY_INTERVAL, gone=gone)
        if left:
            unit, port = next(iter(left.items()))
            raise ActionFailed(
                f"after the change {unit} is {systemd.active_state(unit)} and does not listen on port "
                f"{port} within {self.listen_timeout:.0f} s; last journal lines:\n{systemd.journal_tail(unit)}")

    def pools(self, systemd: Systemd) -> tuple[Pool, ...]:
        """Each unit's couriertcpd: its children against its -maxprocs (MAXDAEMONS as the running
        daemon has it; the configured MAXDAEMONS while the unit does not run)."""
        configured = self.current_values()
        field = {self.s.unit: "imap_max_connections", self.s.ssl_unit: "imap_secure_max_connections"}
        found = []
        for unit, port in self.unit_ports(self._live(self._read())).items():
            running = tcpd.load(systemd.processes(unit), port) if systemd.active_state(unit) == "active" else None
            processes, limit = running if running is not None else (0, None)
            found.append(Pool(name=unit, unit=unit, ports=(port,), processes=processes,
                              process_limit=limit if limit is not None else configured[field[unit]]))
        return tuple(found)

    def server_version(self) -> str:
        """Courier's imapd states no version: the package's."""
        return package_version("courier-imap")

    def checks(self) -> list[Check]:
        """Courier's shell files are validated by sourcing them in /bin/sh."""
        return config_checks(self.config_dir, sourcing.SH)


def package_version(name: str) -> str:
    """The version of Debian package `name` from dpkg's database (read, not run: the daemon
    may execute nothing but what its job needs); "" when dpkg does not know it."""
    try:
        with open(DPKG_STATUS, encoding="utf-8", errors="replace") as fh:
            stanza = False
            for line in fh:
                if line.startswith("Package: "):
                    stanza = line.strip() == f"Package: {name}"
                elif stanza and line.startswith("Version: "):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""
