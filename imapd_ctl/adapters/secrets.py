"""Files holding secrets (core.settings.Settings.secret_files): each must be a regular file
that only its owner can read or write (0600 or 0400), owned by root or by the user the daemon
runs as. `imapd-ctl serve` refuses to start otherwise (exit 78, EX_CONFIG), naming the file
and the mode to set; `imapd-ctl check` reports the same. Peer keys are read from their files
when a call needs them, so a rotated key file takes effect without a restart."""
from __future__ import annotations

import os
import pwd
import stat
from typing import Sequence

from imapd_ctl.core.settings import SecretFile

PRIVATE_MODE = 0o600


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _who(mode: int) -> str:
    """'readable by group and others', 'writable by others', ... for the group/other bits."""
    parts = []
    for verb, bits in (("readable", (stat.S_IRGRP, stat.S_IROTH)), ("writable", (stat.S_IWGRP, stat.S_IWOTH)),
                       ("executable", (stat.S_IXGRP, stat.S_IXOTH))):
        who = [name for name, bit in zip(("group", "others"), bits) if mode & bit]
        if who:
            parts.append(f"{verb} by {' and '.join(who)}")
    return ", ".join(parts)


def daemon_uid(state_dir: str) -> int:
    """The daemon's user as seen by a command run by root: the owner of its state directory
    (systemd gives StateDirectory= to the unit's User=); our own uid if there is none."""
    try:
        return os.stat(state_dir).st_uid
    except OSError:
        return os.geteuid()


def problem(secret: SecretFile, euid: int | None = None) -> str | None:
    """What is wrong with one secret file (a sentence naming it and the fix), or None.
    `euid`: the user the daemon runs as (default: this process's)."""
    euid = os.geteuid() if euid is None else euid
    path = secret.path
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{path} holds {secret.holds} but cannot be examined: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} holds {secret.holds} but is not a regular file"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return (f"{path} holds {secret.holds} but is {_who(mode)} (mode {mode:04o}): "
                f"set mode {PRIVATE_MODE:04o} (chmod {PRIVATE_MODE:04o} {path})")
    if st.st_uid not in (0, euid):
        owner = "root" if euid == 0 else f"root or {_user(euid)}"
        return (f"{path} holds {secret.holds} but belongs to {_user(st.st_uid)}, who is not the "
                f"daemon's user: give it to {owner} (chown root {path}), mode {PRIVATE_MODE:04o}")
    if euid == os.geteuid():
        # Opening, not os.access(): access() ignores capabilities (CAP_DAC_OVERRIDE) of a
        # non-root user, which is how the packaged daemon reads root's 0600 files.
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            return f"{path} holds {secret.holds} but the daemon ({_user(euid)}) cannot read it: {exc.strerror}"
    return None


def problems(secrets: Sequence[SecretFile], euid: int | None = None) -> list[str]:
    return [p for p in (problem(s, euid) for s in secrets) if p is not None]


def read_key(path: str) -> str:
    """A key from its file (surrounding whitespace, e.g. the final newline, stripped).
    Raises OSError, or ValueError for an empty file."""
    with open(path, encoding="utf-8") as fh:
        key = fh.read(4096).strip()
    if not key:
        raise ValueError(f"{path} is empty")
    return key
