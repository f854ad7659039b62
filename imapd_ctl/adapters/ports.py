"""Is a process of the unit listening on the port? Asked of the unit's own processes only.

psutil.net_connections() walks every process's file descriptors on the host. Even
psutil.Process(pid).net_connections() for Dovecot's master (about 210 fds) took 2.6 ms
here, most of isRunning's cost: it resolves every fd and reads /proc/PID/net/tcp{,6}, which
alone costs ~2 ms because the kernel walks its whole connection hash to print it. We ask a
narrower question instead:
  1. which sockets LISTEN on the port: a sock_diag netlink dump of listening sockets only
     (what `ss -ltn` does), falling back to /proc/PID/net/tcp{,6};
  2. does the process hold one of them (its fd that held it last time is tried first, then
     a scan of /proc/PID/fd).
Once found, the next checks ask only whether the same fd of the same process still names
that socket (one readlink, microseconds, made without releasing the GIL: adapters.quickcalls):
a listening socket listens until it is closed, and closing it frees the fd. A stopped or
restarted unit has another main PID anyway.
psutil still finds the unit's processes (main process, then its descendants).
"""
from __future__ import annotations

import os
import socket
import struct

import psutil

from imapd_ctl.adapters.quickcalls import readlink

_LISTEN = "0A"                       # TCP_LISTEN in /proc/net/tcp's st column
_TCP_LISTEN = 10
_TCP_ESTABLISHED, _TCP_CLOSE_WAIT = 1, 8
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_last_fd: dict[tuple[int, int], str] = {}   # (pid, inode) -> fd name that held it last time
# (main pid, port) -> (the pid holding the socket, its /proc/PID/fd/N, what that names)
_held: dict[tuple[int, int], tuple[int, bytes, bytes]] = {}


def listening_inodes(pid: int, port: int) -> set[int]:
    """Inodes of the TCP sockets listening on port (in our network namespace, which is the
    IMAP server's: the daemon runs on the mail host)."""
    try:
        return _diag_listening(port)
    except OSError:
        return _proc_listening(pid, port)


def _diag_listening(port: int) -> set[int]:
    """Ask the kernel (NETLINK_SOCK_DIAG, as `ss` does) for LISTEN sockets only; it walks
    just the listening hash, not every connection."""
    return set(_diag_inodes(port, 1 << _TCP_LISTEN))


def _diag_inodes(port: int, states: int) -> list[int]:
    """The inodes of the TCP sockets in `states` (a bit mask of TCP states) whose local port
    is `port`; 0 for a socket no process has accepted yet."""
    inodes = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(2)
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            # inet_diag_req_v2: family, protocol, ext, pad, states; then a zeroed sockid (48 bytes)
            req = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 0, states) + bytes(48)
            nl.send(struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY,
                                _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + req)
            done = False
            while not done:
                data = nl.recv(65536)
                offset = 0
                while offset + 16 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, offset)
                    if kind == _NLMSG_DONE:
                        done = True
                        break
                    if kind == _NLMSG_ERROR:
                        raise OSError("sock_diag request refused by the kernel")
                    body = offset + 16
                    # inet_diag_msg: 4 bytes, sockid (sport big-endian first), ..., inode at +68
                    sport = struct.unpack_from("!H", data, body + 4)[0]
                    if sport == port:
                        inodes.append(struct.unpack_from("=I", data, body + 68)[0])
                    offset += (length + 3) & ~3
    return inodes


def connections(port: int) -> tuple[int, int]:
    """(accepted, queued): the connections to local `port` that a process holds, and those the
    kernel completed that nobody has accepted yet (a server at its limit stops accepting).
    Established or closed by the peer but still held (CLOSE_WAIT); in this network namespace."""
    inodes = _diag_inodes(port, (1 << _TCP_ESTABLISHED) | (1 << _TCP_CLOSE_WAIT))
    queued = inodes.count(0)
    return len(inodes) - queued, queued


def _proc_listening(pid: int, port: int) -> set[int]:
    """Fallback: the LISTEN lines of /proc/PID/net/tcp{,6} (slower: the kernel walks its
    whole connection hash to produce them)."""
    suffix = f":{port:04X}"
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as fh:
                next(fh, None)  # header
                for line in fh:
                    fields = line.split()
                    if fields[3] == _LISTEN and fields[1].endswith(suffix):
                        inodes.add(int(fields[9]))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return inodes


def holds_socket(pid: int, inodes: set[int]) -> bool:
    """True if one of pid's file descriptors is one of these socket inodes."""
    wanted = {f"socket:[{i}]": i for i in inodes}
    fd_dir = f"/proc/{pid}/fd"
    for inode in inodes:  # fast path: the same fd as last time
        fd = _last_fd.get((pid, inode))
        if fd is not None:
            try:
                if os.readlink(f"{fd_dir}/{fd}") == f"socket:[{inode}]":
                    return True
            except OSError:
                pass
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target in wanted:
            if len(_last_fd) > 64:
                _last_fd.clear()
            _last_fd[(pid, wanted[target])] = fd
            return True
    return False


def _still_held(main_pid: int, port: int) -> bool:
    """The fast path: the socket found listening last time is still held by the same fd of
    the same process. A listening socket stays listening until it is closed, and closing it
    frees the fd (a reused fd names another inode), so one readlink answers."""
    known = _held.get((main_pid, port))
    if known is None:
        return False
    pid, link, target = known
    try:
        if readlink(link) == target and (pid == main_pid or _descends(pid, main_pid)):
            return True
    except OSError:
        pass
    _held.pop((main_pid, port), None)
    return False


def _descends(pid: int, ancestor: int) -> bool:
    try:
        return any(p.pid == ancestor for p in psutil.Process(pid).parents())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _remember(main_pid: int, port: int, pid: int, inodes: set[int]) -> None:
    for (holder, inode), fd in list(_last_fd.items()):
        if holder == pid and inode in inodes:
            if len(_held) > 64:
                _held.clear()
            _held[(main_pid, port)] = (pid, f"/proc/{pid}/fd/{fd}".encode(), f"socket:[{inode}]".encode())
            return


def unit_listens(main_pid: int, port: int) -> bool:
    """True if main_pid or one of its descendants has a TCP socket listening on port."""
    if main_pid <= 0:
        return False
    if _still_held(main_pid, port):
        return True
    inodes = listening_inodes(main_pid, port)
    if not inodes:
        return False
    if holds_socket(main_pid, inodes):
        _remember(main_pid, port, main_pid, inodes)
        return True
    try:
        children = psutil.Process(main_pid).children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    for child in children:
        if holds_socket(child.pid, inodes):
            _remember(main_pid, port, child.pid, inodes)
            return True
    return False
