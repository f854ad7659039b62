"""Is a process of the unit listening on the port? Asked of the unit's own processes only.

psutil.net_connections() walks every process's file descriptors on the host, which grows with
the host; asking the unit's main process (and, failing that, its descendants) costs a few ms.
The IMAP servers here keep their listening sockets in the main process (Dovecot's master,
Courier's couriertcpd), so the first check normally answers.
"""
from __future__ import annotations

import psutil

_LISTEN = psutil.CONN_LISTEN


def _listens(proc: psutil.Process, port: int) -> bool:
    try:
        conns = proc.net_connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return any(c.status == _LISTEN and c.laddr and c.laddr.port == port for c in conns)


def unit_listens(main_pid: int, port: int) -> bool:
    """True if main_pid or one of its descendants has a TCP socket listening on port."""
    if main_pid <= 0:
        return False
    try:
        main = psutil.Process(main_pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    if _listens(main, port):
        return True
    try:
        children = main.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return any(_listens(child, port) for child in children)
