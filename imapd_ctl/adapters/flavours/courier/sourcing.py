"""Running /bin/sh on Courier's configuration files as its start scripts do: `sh -n` syntax
checks, and sourcing both files in each start script's order in a clean `env -i` shell."""
from __future__ import annotations

import subprocess

from imapd_ctl.adapters.flavours.courier.shellfile import PLAIN, SSL
from imapd_ctl.core.errors import ActionFailed, ConfigInvalid

SH = "/bin/sh"
Effective = dict[str, dict[str, str]]   # {daemon: {MAXDAEMONS, IMAP_ULIMITD, PORT}}


def run(argv: list[str], what: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ActionFailed(f"cannot {what}: {exc}") from None


def words(proc: subprocess.CompletedProcess[bytes], paths: dict[str, str], shown: dict[str, str]) -> str:
    """The shell's complaint, with the paths it ran on replaced by the names shown to people."""
    text = proc.stderr.decode(errors="replace").strip() or f"exit status {proc.returncode}"
    for name, path in paths.items():
        text = text.replace(path, shown[name])
    return text


def syntax_error(path: str, paths: dict[str, str], shown: dict[str, str]) -> str | None:
    """What `sh -n` says about the file at path, or None if it parses."""
    proc = run(["/usr/bin/env", "-i", SH, "-n", path], "run sh -n")
    return None if proc.returncode == 0 else words(proc, paths, shown)


def source(config_dir: str, paths: dict[str, str], shown: dict[str, str]) -> Effective:
    """What each daemon's start script gets from the files: {daemon: {MAXDAEMONS, IMAP_ULIMITD,
    PORT}} from `env -i /bin/sh` sourcing them in that script's order. `shown` maps the
    paths to the names used in messages. Raises ConfigInvalid with the shell's words."""
    script = (
        'prefix=/usr; exec_prefix=/usr; sbindir=/usr/sbin; bindir=/usr/bin; sysconfdir="$1"\n'
        'exec 3>&1 >/dev/null\n'
        '( . "$2"; . "$3"; printf "%s\\0%s\\0%s\\0" "$MAXDAEMONS" "$IMAP_ULIMITD" "$PORT" >&3 ) || exit\n'
        '( . "$3"; . "$2"; printf "%s\\0%s\\0%s\\0" "$MAXDAEMONS" "$IMAP_ULIMITD" "$SSLPORT" >&3 ) || exit\n'
    )
    argv = ["/usr/bin/env", "-i", SH, "-c", script, "sh", config_dir, paths[SSL], paths[PLAIN]]
    proc = run(argv, "source Courier's configuration")
    out = proc.stdout.split(b"\0")
    if proc.returncode != 0 or len(out) != 7:
        raise ConfigInvalid(f"Courier's start scripts could not source {shown[PLAIN]} and "
                            f"{shown[SSL]}: {words(proc, paths, shown)}")
    text = [v.decode(errors="replace") for v in out[:6]]
    keys = ("MAXDAEMONS", "IMAP_ULIMITD", "PORT")
    return {PLAIN: dict(zip(keys, text[:3])), SSL: dict(zip(keys, text[3:]))}
