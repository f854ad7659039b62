"""Courier's connection pools: each unit's couriertcpd, whose children are its connections.

couriertcpd has no query interface. Under systemd the unit's MainPID is courierlogger, whose
child couriertcpd runs with `-maxprocs=N` (MAXDAEMONS as the running daemon has it) and forks
one child per accepted connection (imaplogin on 143, couriertls on 993).
"""
from __future__ import annotations

import re

import psutil

_MAXPROCS = re.compile(r"-maxprocs=([0-9]+)")


def maxprocs(cmdline: list[str]) -> int | None:
    """N of `-maxprocs=N` in couriertcpd's command line (None: not given)."""
    for arg in cmdline:
        m = _MAXPROCS.fullmatch(arg)
        if m:
            return int(m.group(1))
    return None


def couriertcpd(main_pid: int) -> psutil.Process | None:
    """The unit's couriertcpd: MainPID itself or its first descendant of that name."""
    if main_pid <= 0:
        return None
    try:
        main = psutil.Process(main_pid)
        for proc in [main, *main.children(recursive=True)]:
            if proc.name() == "couriertcpd":
                return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return None


def load(main_pid: int) -> tuple[int, int | None] | None:
    """(connections = couriertcpd's children, its -maxprocs) or None if it does not run."""
    proc = couriertcpd(main_pid)
    if proc is None:
        return None
    try:
        return len(proc.children()), maxprocs(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
