"""Courier's connection pools: each unit's couriertcpd, whose children are its connections.

couriertcpd has no query interface. Under systemd the unit's MainPID is courierlogger, whose
child couriertcpd runs with `-maxprocs=N` (MAXDAEMONS as the running daemon has it) and forks
one child per accepted connection (imaplogin on 143, couriertls on 993). Both are read without
looking into other processes' /proc (hidden from the daemon: ProtectProc=invisible): the
command line from systemd (the unit's processes, GetUnitProcesses), the connections from the
kernel (the sockets accepted on the unit's port, adapters.ports).
"""
from __future__ import annotations

import re
from typing import Sequence

from imapd_ctl.adapters import ports

_MAXPROCS = re.compile(r"-maxprocs=([0-9]+)")


def maxprocs(cmdline: Sequence[str]) -> int | None:
    """N of `-maxprocs=N` in couriertcpd's command line (None: not given)."""
    for arg in cmdline:
        m = _MAXPROCS.fullmatch(arg)
        if m:
            return int(m.group(1))
    return None


def couriertcpd(processes: Sequence[tuple[int, str]]) -> list[str] | None:
    """The command line of the unit's couriertcpd, from its processes as systemd lists them."""
    for _pid, cmdline in processes:
        argv = cmdline.split()
        if argv and argv[0].rsplit("/", 1)[-1] == "couriertcpd":
            return argv
    return None


def load(processes: Sequence[tuple[int, str]], port: int) -> tuple[int, int | None] | None:
    """(connections accepted on `port`, couriertcpd's -maxprocs) or None if it does not run."""
    argv = couriertcpd(processes)
    if argv is None:
        return None
    return ports.connections(port)[0], maxprocs(argv)
