"""Dovecot 2.3 and 2.4: limits live in a drop-in we own (conf.d/99-imapd-ctl.conf); the admin's
files are never edited.

One drop-in for both versions: `process_limit` and `vsz_limit` inside `service imap { }` (2.4
accepts the short names inside the block), never 0 (2.4 rejects 0; the smallest values imapd-ctl
accepts are 1 connection and 1 MiB) nor `unlimited` (2.3 rejects it), sizes in bytes with a `B`
suffix, and no dovecot_config_version line (2.4 wants it only first in the main config).
What the versions print differently is read by .readings; where the drop-in is read and which
later files override it by .layout (refused before anything is written); the running pools by
.status.

Mapping (Dovecot has ONE post-login `service imap` serving both 143 and 993):
  process_limit = imap_max_connections + imap_secure_max_connections
  vsz_limit     = max(imap_mem_limit, imap_secure_mem_limit), written in bytes
The four requested values are kept in a comment line of the drop-in so queryUpdate reads back
exactly what was sent.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from imapd_ctl.core.actions import MEM_MAX, UPDATE_FIELDS
from imapd_ctl.core.errors import ActionFailed, ConfigInvalid, ConfigWriteError
from imapd_ctl.adapters import ports
from imapd_ctl.adapters.flavours import validation
from imapd_ctl.adapters.flavours.base import config_checks
from imapd_ctl.adapters.flavours.dovecot import layout, readings
from imapd_ctl.adapters.flavours.dovecot import status as dovecot_status
from imapd_ctl.adapters.flavours.dovecot.readings import UNLIMITED, parse_size
from imapd_ctl.core.capacity import Pool
from imapd_ctl.core.protocols import Applied, Check, Files, Listening, Systemd, Values
from imapd_ctl.core.settings import Settings

VALUES_RE = re.compile(r"^# imapd-ctl-values: (.*)$", re.M)
VERIFY_INTERVAL = 0.1   # between looks at the running Dovecot after a reload
# Read through a pipe (readings' docstring says why); unset values fall back to the defaults.
_LIMITS = ("service/imap/process_limit", "service/imap/vsz_limit", "default_process_limit",
           "default_vsz_limit")


def parse_values(text: str) -> dict[str, int] | None:
    """The requested values recorded in a drop-in we wrote, or None."""
    m = VALUES_RE.search(text)
    if not m:
        return None
    try:
        found = dict(pair.split("=", 1) for pair in m.group(1).split())
        return {k: int(found[k]) for k in UPDATE_FIELDS}
    except (KeyError, ValueError):
        return None


def _os_reason(exc: OSError) -> str:
    """The OS reason (e.g. No space left on device) of an OSError, or of the first of the errors
    that shutil.copytree collects into one shutil.Error ("[Errno 28] No space left on device: ...")."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        text = str(exc.args[0][0][-1])
        m = re.match(r"\[Errno \d+\] ([^:]+)", text)
        return m.group(1) if m else text
    return exc.strerror or str(exc)


def mapped(values: dict[str, int]) -> tuple[int, int]:
    """(process_limit, vsz_limit in bytes) for the four requested values."""
    return (values["imap_max_connections"] + values["imap_secure_max_connections"],
            max(values["imap_mem_limit"], values["imap_secure_mem_limit"]))


class Dovecot:
    name = "dovecot"

    def __init__(self, settings: Settings) -> None:
        self.s = settings.dovecot
        self.port = settings.port
        self.listen_timeout = settings.listen_timeout
        self.state_dir = Path(settings.state_dir)
        self.units: tuple[str, ...] = (self.s.unit,)
        self.primary_unit = self.s.unit
        # One unit serves 143 and 993 (one master, one `service imap`): the secure-IMAP
        # controller acts on it too, and so on both ports (docs/interworx.md, "Two controllers").
        self.secure_unit: str | None = self.s.unit
        self.owned: tuple[str, ...] = (os.fspath(self.s.dropin),)

    # -- helpers -----------------------------------------------------------------
    def _run(self, argv: list[str], what: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                  env={**os.environ, "LC_ALL": "C"})
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ActionFailed(f"cannot {what}: {exc}") from None

    def effective(self, config: str | None = None) -> tuple[int, int]:
        """(process_limit, vsz_limit bytes; UNLIMITED if unlimited) that doveconf reports for a
        config file, in either version's form; an unset service value is the default_* one."""
        proc = self._run([self.s.doveconf, "-c", config or self.s.config, "-h", *_LIMITS],
                         "read Dovecot's settings")
        lines = proc.stdout.split("\n")
        if proc.returncode != 0 or len(lines) < len(_LIMITS):
            raise ConfigInvalid(f"doveconf cannot read the configuration: {proc.stderr.strip()}")
        try:
            count, vsz, default_count, default_vsz = (lines[0], lines[1], lines[2], lines[3])
            process_limit = readings.read_count(count) or readings.read_count(default_count)
            size = readings.read_size(vsz) or readings.read_size(default_vsz)
        except ValueError as exc:
            raise ConfigInvalid(f"doveconf printed limits imapd-ctl cannot read: {exc}") from None
        return process_limit or 0, UNLIMITED if size is None else size

    def server_version(self) -> str:
        proc = self._run([self.s.doveconf, "-n", "-c", self.s.config], "run doveconf")
        return readings.full_version(proc.stdout)

    def version(self) -> tuple[int, int] | None:
        """(major, minor) of the installed Dovecot, from `doveconf -n`'s first line."""
        proc = self._run([self.s.doveconf, "-n", "-c", self.s.config], "run doveconf")
        return readings.version(proc.stdout)

    # -- Flavour interface ---------------------------------------------------------
    def current_values(self) -> Values:
        try:
            text = Path(self.s.dropin).read_text()
        except FileNotFoundError:
            text = ""
        values = parse_values(text)
        if values is not None:
            return values
        # Nothing of ours (or hand-edited beyond recognition): split the effective limits
        # evenly between the two ports.
        process_limit, vsz = self.effective()
        vsz = min(vsz, MEM_MAX)
        plain = max(1, process_limit // 2)
        return {"imap_mem_limit": vsz, "imap_max_connections": plain,
                "imap_secure_mem_limit": vsz,
                "imap_secure_max_connections": max(1, process_limit - plain)}

    def render(self, values: dict[str, int]) -> bytes:
        process_limit, vsz = mapped(values)
        pairs = " ".join(f"{k}={values[k]}" for k in UPDATE_FIELDS)
        return (
            "# Managed by imapd-ctl (the update action of /nodeworx/mail/imap).\n"
            "# Edits made here are replaced by the next update; put your own settings elsewhere.\n"
            "# The values requested last (queryUpdate reads them back):\n"
            f"# imapd-ctl-values: {pairs}\n"
            "service imap {\n"
            "  # imap_max_connections + imap_secure_max_connections: one service serves 143 and 993\n"
            f"  process_limit = {process_limit}\n"
            "  # the larger of imap_mem_limit and imap_secure_mem_limit, in bytes\n"
            f"  vsz_limit = {vsz}B\n"
            "}\n"
        ).encode()

    def plan(self, values: Values) -> Files:
        return {self.s.dropin: self.render(values)}

    def preflight(self) -> None:
        proc = self._run([self.s.doveconf, "-n", "-c", self.s.config], "run doveconf")
        if proc.returncode != 0:
            raise ConfigInvalid(f"Dovecot rejects its configuration: {proc.stderr.strip()}")

    def validate(self, files: Files) -> None:
        """doveconf -n on a copy of the config tree with the candidate files in place.
        (`doveadm reload` exits 0 even for a broken config, so this must happen first.)"""
        try:
            self._validate(files)
        except OSError as exc:
            # Making the candidate tree in the state dir failed (typically ENOSPC): nothing live was touched.
            raise ConfigWriteError(f"cannot prepare the candidate configuration for validation in "
                                   f"{self.state_dir}: {_os_reason(exc)}; nothing was changed") from None

    def _validate(self, files: Files) -> None:
        conf_dir = Path(self.s.config).parent
        # Symlinks to the live files plus the candidate drop-in: nothing (no key) is copied.
        with validation.candidate_tree(self.state_dir, conf_dir, files) as tree:
            candidate = str(tree / Path(self.s.config).name)
            self._check_layout(tree, conf_dir)
            proc = self._run([self.s.doveconf, "-n", "-c", candidate], "run doveconf")
            if proc.returncode != 0:
                reason = proc.stderr.strip().replace(str(tree), str(conf_dir))
                raise ConfigInvalid(f"Dovecot rejects the configuration: {reason}")
            data = files.get(self.s.dropin)
            values = parse_values(data.decode()) if data else None
            if values is not None:
                try:
                    got = self.effective(candidate)
                except ConfigInvalid as exc:
                    raise ConfigInvalid(exc.message.replace(str(tree), str(conf_dir))) from None
                want = mapped(values)
                if got != want:
                    self._refuse_override(tree, conf_dir, candidate, got, want)

    def unit_ports(self) -> dict[str, int]:
        return {self.s.unit: self.port}

    def apply(self, systemd: Systemd, changed: Sequence[str], serving: Sequence[str]) -> Applied:
        """Reload Dovecot if it runs (one unit, which reads every file: `changed` and `serving`
        make no difference)."""
        if systemd.active_state(self.s.unit) != "active":
            return Applied(idle=(self.s.unit,))
        systemd.reload(self.s.unit)
        return Applied(reloaded=(self.s.unit,))

    def verify(self, listening: Listening, values: Values, applied: Applied) -> None:
        want = mapped(values)
        got = self.effective()
        if got != want:
            raise ActionFailed(f"Dovecot's configuration shows process_limit={got[0]} vsz_limit={got[1]}B, "
                               f"expected process_limit={want[0]} vsz_limit={want[1]}B")
        if listening.systemd.active_state(self.s.unit) != "active":
            return
        # The reload job ends when `doveadm reload` returns; the master re-reads its config
        # afterwards, so poll (bounded) until the running server shows the new limit.
        running: list[int | None] = [None]

        def shows_new_limit() -> bool:
            running[0] = self.running_process_limit()
            return running[0] == want[0]

        def gone(unit: str, state: str) -> None:   # the reload took the server down
            raise ActionFailed(f"after the reload {unit} is {state}, no longer serving")

        left = listening.wait_serving({self.s.unit: self.port}, self.listen_timeout, interval=VERIFY_INTERVAL,
                                      also=shows_new_limit, gone=gone)
        if left or running[0] != want[0]:
            raise ActionFailed(f"after the reload the running Dovecot shows process_limit={running[0]} "
                               f"(expected {want[0]}) or does not listen on port {self.port}")

    def checks(self) -> list[Check]:
        """The drop-in's directory must be writable, doveconf (the validator) executable, and
        the installed Dovecot a 2.3 or 2.4 (the versions whose output this flavour reads)."""
        checks = config_checks(os.path.dirname(self.s.dropin), self.s.doveconf)
        found = self.version() if checks[-1].ok else None
        shown = f"Dovecot {found[0]}.{found[1]}" if found else "unknown (doveconf -n gave no version)"
        return [*checks, Check("version", found in ((2, 3), (2, 4)), shown)]

    def capacity_ports(self) -> tuple[int, ...]:
        """The ports of imap-login's `imap` and `imaps` listeners (settings.port if doveconf
        cannot say)."""
        proc = self._run([self.s.doveconf, "-h", "service/imap-login/inet_listener/imap/port",
                          "service/imap-login/inet_listener/imaps/port"], "read Dovecot's listeners")
        found = [int(p) for p in proc.stdout.split() if p.isdigit() and int(p)] if proc.returncode == 0 else []
        return tuple(dict.fromkeys(found)) or (self.port,)

    def pools(self, systemd: Systemd) -> tuple[Pool, ...]:
        """imap and imap-login as the running Dovecot reports them; while it is stopped, imap
        with the configured process_limit."""
        if systemd.active_state(self.s.unit) != "active":
            return self._configured_pools()
        proc = self._run([self.s.doveadm, "-f", "json", "service", "status", "imap", "imap-login"],
                         "ask the running Dovecot")
        if proc.returncode != 0:
            # Restarting (systemd calls it active before its master socket answers) or just
            # stopped: no process can be serving, so the configured pool is the truth.
            if "net_connect_unix" in proc.stderr or systemd.active_state(self.s.unit) != "active":
                return self._configured_pools()
            raise ActionFailed(f"doveadm service status failed: {proc.stderr.strip() or proc.returncode}")
        try:
            return dovecot_status.pools(proc.stdout, self.s.unit, self.capacity_ports())
        except dovecot_status.StatusError as exc:
            raise ActionFailed(str(exc)) from None

    def _configured_pools(self) -> tuple[Pool, ...]:
        limit = self.effective()[0]
        return (Pool(name="imap", unit=self.s.unit, ports=self.capacity_ports(), processes=0,
                     process_limit=limit or None),)

    def running_process_limit(self) -> int | None:
        proc = self._run([self.s.doveadm, "-f", "json", "service", "status", "imap"],
                         "ask the running Dovecot")
        if proc.returncode != 0:
            return None
        try:
            limit = dovecot_status.parse(proc.stdout).get("imap", {}).get("process_limit")
        except dovecot_status.StatusError:
            return None
        return limit if isinstance(limit, int) else None

    # -- where the drop-in is read, and what overrides it (.layout) ------------------------------
    def _check_layout(self, tree: Path, conf_dir: Path) -> None:
        """Refuse (nothing written) when the main config does not include the drop-in's dir."""
        live = Path(self.s.config)
        hint = layout.include_hint(tree / live.name, tree / Path(self.s.dropin).relative_to(conf_dir),
                                   (str(conf_dir), str(tree)))
        if hint is not None:
            raise ConfigInvalid(hint.replace(str(tree), str(conf_dir)))

    def _refuse_override(self, tree: Path, conf_dir: Path, candidate: str,
                         got: tuple[int, int], want: tuple[int, int]) -> None:
        files = layout.overriding(Path(candidate), tree / Path(self.s.dropin).relative_to(conf_dir),
                                  lambda: self.effective(candidate), (str(conf_dir), str(tree)))
        names = ", ".join(str(conf_dir / p.relative_to(tree)) for p in files) or "a file read after it"
        shown = lambda v: "unlimited" if v == UNLIMITED else f"{v}B"  # noqa: E731
        raise ConfigInvalid(
            f"another file overrides imapd-ctl's settings in {self.s.dropin}: {names} (read after "
            f"it) sets 'service imap' limits, so Dovecot would use process_limit={got[0]} "
            f"vsz_limit={shown(got[1])} instead of process_limit={want[0]} vsz_limit={want[1]}B; "
            f"remove process_limit/vsz_limit from 'service imap' there; nothing was changed")
