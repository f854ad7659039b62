"""How the command line reaches the daemon: the operator's key (never from the command line),
the exit codes, and failures turned into what to do next.

Every exit code of `imapd-ctl` is in EXIT_CODES; the man page's EXIT STATUS section is made
from it (tools.docgen), so the two cannot drift apart.
"""
from __future__ import annotations

import argparse
import errno
import grp
import os
import pwd
import stat
import sys
from typing import TextIO

from imapd_ctl.adapters import peers
from imapd_ctl.core import settings as settings_mod
from imapd_ctl.core.settings import Settings

OK, FAILED, USAGE, UNREACHABLE, DENIED, NO_KEY, CONFIG = 0, 1, 2, 3, 4, 5, 78

EXIT_CODES: dict[int, str] = {
    OK: "success; for status: the daemon answers and the IMAP server serves on every port "
        "(with --all: on every node)",
    FAILED: "the action answered with an error (its status and message are printed), a check "
            "failed, or status found something down (IMAP not serving, a node unreachable, an "
            "interrupted change)",
    USAGE: "bad command line or input; nothing was sent to the daemon",
    UNREACHABLE: "the daemon's socket cannot be reached (no socket, connection refused, no "
                 "answer): is imapd-ctl.socket active? systemctl status imapd-ctl.socket",
    DENIED: "permission denied on the daemon's socket: run as root or as a member of the "
            "socket's group (SocketGroup= in a drop-in of imapd-ctl.socket)",
    NO_KEY: "no API key was given, or the daemon refused it (unknown, revoked, or without "
            "the EMAIL permission): make one with `imapd-ctl key create NAME`",
    CONFIG: "the settings file is invalid (EX_CONFIG); the message names the setting",
}

KEY_ENV = "IMAPD_CTL_KEY"
HOW_TO_GIVE = (f"give it in ${KEY_ENV}, in a file (--key-file FILE, first line) or on stdin "
               f"(--key-stdin)")
HOW_TO_MAKE = "make one on this host with `imapd-ctl key create NAME` (as root; it prints the key once)"


def load_settings(path: str | None) -> Settings:
    """The settings; an invalid file ends the command with its reason and exit code 78."""
    try:
        return settings_mod.load(path)
    except ValueError as exc:
        print(f"imapd-ctl: {exc}", file=sys.stderr)
        # 78 (EX_CONFIG): the unit's RestartPreventExitStatus, so systemd does not retry a bad file.
        raise SystemExit(CONFIG)


class Refusal(Exception):
    """The command cannot go on: `message` says why and what to do; `code` is the exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def add_key_options(parser: argparse.ArgumentParser) -> None:
    """The ways to give a key; none of them puts it on the command line."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--key-file", metavar="FILE",
                       help=f"read the API key from the first line of FILE (default: ${KEY_ENV})")
    group.add_argument("--key-stdin", action="store_true",
                       help="read the API key from the first line of standard input")
    # Refused, never used: a key in argv is readable by every local user (ps, /proc/PID/cmdline).
    group.add_argument("--key", help=argparse.SUPPRESS)


def read_key(args: argparse.Namespace, stdin: TextIO | None = None) -> str | None:
    """The operator's API key from --key-file, --key-stdin or $IMAPD_CTL_KEY; None if none was
    given (see key_or_operator)."""
    if getattr(args, "key", None) is not None:
        raise Refusal(USAGE, "--key is refused: a key on the command line can be read by every "
                             f"local user (ps, /proc); {HOW_TO_GIVE}")
    if args.key_file:
        try:
            with open(args.key_file, encoding="utf-8") as fh:
                secret = fh.readline().strip()
        except OSError as exc:
            raise Refusal(NO_KEY, f"--key-file {args.key_file}: {exc.strerror}") from None
        where = f"--key-file {args.key_file}"
    elif args.key_stdin:
        secret = (stdin or sys.stdin).readline().strip()
        where = "standard input"
    else:
        secret = os.environ.get(KEY_ENV, "").strip()
        where = f"${KEY_ENV}"
        if not secret:
            return None
    if not secret:
        raise Refusal(NO_KEY, f"the key from {where} is empty; {HOW_TO_MAKE}")
    return secret


def operator_without_key(settings: Settings) -> bool:
    """Does the daemon let this user call over its unix socket without a key (root, or a member
    of operator_group)? The daemon decides, by the same rule (adapters.peers); this only words
    the refusal early."""
    return peers.operators(settings.operator_group)(os.geteuid(), os.getgid()) is not None


def key_or_operator(args: argparse.Namespace, settings: Settings) -> str | None:
    """The key given, or None for root and operator_group on this host; Refusal otherwise."""
    key = read_key(args)
    if key is None and not operator_without_key(settings):
        who = f"root and members of {settings.operator_group} need" if settings.operator_group else "root needs"
        raise Refusal(NO_KEY, f"an API key is needed ({who} none on this host): {HOW_TO_GIVE}; {HOW_TO_MAKE}")
    return key


def _owner(path: str) -> tuple[str, str, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return user, group, stat.S_IMODE(st.st_mode)


def unreachable(sock: str, exc: OSError) -> Refusal:
    """A failed connection to the daemon's socket, as what the operator does next."""
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        owner = _owner(sock)
        who = f" (owner {owner[0]}:{owner[1]}, mode {owner[2]:04o})" if owner else ""
        group = owner[1] if owner else "the socket's group"
        return Refusal(DENIED, f"permission denied on {sock}{who}: run as root or as a member of "
                               f"group {group!r} (to let another group in: SocketGroup= in a drop-in "
                               f"of imapd-ctl.socket, `systemctl edit imapd-ctl.socket`)")
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        what = "does not exist" if isinstance(exc, FileNotFoundError) else "refused the connection"
        return Refusal(UNREACHABLE, f"cannot reach the daemon: {sock} {what}; is imapd-ctl.socket "
                                    f"active? `systemctl status imapd-ctl.socket` (start it: "
                                    f"`systemctl enable --now imapd-ctl.socket`), or give the "
                                    f"socket of the settings' `socket` with --socket")
    return Refusal(UNREACHABLE, f"cannot reach the daemon at {sock}: {exc}; is imapd-ctl.service "
                                f"healthy? `systemctl status imapd-ctl.service imapd-ctl.socket`")


def refused_key(status: int, payload: object, node: str | None = None, keyless: bool = False) -> Refusal | None:
    """The daemon's 401/403 as a Refusal that says how to get a working key (`node`: another
    node refused the key this host holds for it in the registry; `keyless`: no key was sent)."""
    if node is not None and status in (401, 403):
        return Refusal(NO_KEY, f"node {node} refused the key this host holds for it (the [[nodes]] entry "
                               f"of the settings): {payload}; on {node}, store that key with "
                               f"`imapd-ctl key import NAME` (permission EMAIL)")
    if status == 401 and keyless:
        return Refusal(NO_KEY, f"the daemon wants a key from this user ({payload}): {HOW_TO_GIVE}; {HOW_TO_MAKE}")
    if status == 401:
        return Refusal(NO_KEY, f"the daemon refused the key ({payload}); {HOW_TO_MAKE}")
    if status == 403:
        return Refusal(NO_KEY, f"{payload}; {HOW_TO_MAKE} (default permission: EMAIL)")
    return None
