"""Is a process of the unit listening on the port? Asked of the kernel, never of other processes'
/proc (the daemon may not read them: packaging/README.md, "Privileges").

A TCP socket belongs to the cgroup of the process that made it, and sock_diag (what `ss`
uses; no privilege needed) says which cgroup that is (Linux 5.9 and later: Debian 12's 6.1 and
13's 6.12 do; an older kernel says nothing, and no socket is then the unit's). So:
  1. the listening sockets on the port: a sock_diag dump of LISTEN sockets only (the kernel
     walks its listening hash, not every connection), each with its cgroup id, its address
     and its cookie (a number the kernel never gives another socket);
  2. one made in the unit's cgroup (systemd's ControlGroup; the cgroup id is the inode of
     its directory in the cgroup2 file system) or below it is the unit's.
Once found, the next checks ask the kernel for that one socket by address, port and cookie
(an exact lookup, one hash probe): it is found only while it still listens, and a closed
socket's cookie is never reused. A restarted unit has another MainPID and is looked up anew.
The exact lookup goes through a netlink socket of each thread and calls that keep the GIL
(adapters.quickcalls): the kernel answers within the call, so nothing waits.

A socket systemd itself holds for the unit (socket activation) was made in PID 1's cgroup
and does not count: the IMAP servers this daemon drives open their own listeners.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from typing import Callable, Iterator, NamedTuple

from imapd_ctl.adapters import quickcalls

_TCP_LISTEN = 10
_TCP_ESTABLISHED, _TCP_CLOSE_WAIT = 1, 8
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_INET_DIAG_CGROUP_ID = 21
_HEADER = struct.Struct("=IHHII")          # nlmsghdr: length, type, flags, seq, pid
_REQUEST = struct.Struct("=BBBxI")         # inet_diag_req_v2 up to the sockid
# inet_diag_msg: family, state, timer, retrans; then the sockid: sport, dport (big-endian),
# src[16], dst[16], if, cookie[8]; expires, rqueue, wqueue, uid, inode; then attributes.
_SPORT, _SRC, _COOKIE, _INODE, _ATTRS = 4, 8, 44, 68, 72


class Listener(NamedTuple):
    family: int
    address: bytes       # 16 bytes as sock_diag gives them (IPv4: the first 4)
    cookie: bytes        # 8 bytes
    inode: int
    cgroup: int | None   # None: the kernel did not say (built without socket cgroups)


def _sockid(port: int, address: bytes = bytes(16), cookie: bytes = b"\xff" * 8) -> bytes:
    return struct.pack("!HH", port, 0) + address + bytes(16) + struct.pack("=I", 0) + cookie


def _messages(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(type, body offset, end) of each netlink message in `data`."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < _HEADER.size:
            return
        yield kind, offset + _HEADER.size, offset + length
        offset += (length + 3) & ~3


def _cgroup_of(data: bytes, start: int, end: int) -> int | None:
    offset = start + _ATTRS
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        if kind == _INET_DIAG_CGROUP_ID and length >= 12:
            return int(struct.unpack_from("=Q", data, offset + 4)[0])
        offset += (length + 3) & ~3
    return None


def _dump(port: int, states: int) -> list[Listener]:
    """The TCP sockets in `states` (a bit mask of TCP states) whose local port is `port`."""
    found = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(2)
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            req = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, states) + _sockid(0)
            nl.send(_HEADER.pack(_HEADER.size + len(req), _SOCK_DIAG_BY_FAMILY,
                                 _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + req)
            done = False
            while not done:
                data = nl.recv(65536)
                for kind, body, end in _messages(data):
                    if kind == _NLMSG_DONE:
                        done = True
                        break
                    if kind == _NLMSG_ERROR:
                        raise OSError("sock_diag request refused by the kernel")
                    if struct.unpack_from("!H", data, body + _SPORT)[0] == port:
                        found.append(Listener(family, data[body + _SRC:body + _SRC + 16],
                                              data[body + _COOKIE:body + _COOKIE + 8],
                                              struct.unpack_from("=I", data, body + _INODE)[0],
                                              _cgroup_of(data, body, end)))
    return found


def listening(port: int) -> list[Listener]:
    """The TCP sockets listening on `port` (in our network namespace, which is the IMAP
    server's: the daemon runs on the mail host)."""
    return _dump(port, 1 << _TCP_LISTEN)


def connections(port: int) -> tuple[int, int]:
    """(accepted, queued): the connections to local `port` that a process holds, and those the
    kernel completed that nobody has accepted yet (a server at its limit stops accepting).
    Established or closed by the peer but still held (CLOSE_WAIT); in this network namespace."""
    inodes = [s.inode for s in _dump(port, (1 << _TCP_ESTABLISHED) | (1 << _TCP_CLOSE_WAIT))]
    queued = inodes.count(0)
    return len(inodes) - queued, queued



def _cgroup2_root() -> str:
    """Where the cgroup2 hierarchy is mounted here (our own mountinfo)."""
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            if right.split()[:1] == ["cgroup2"]:
                return left.split()[4].replace("\\040", " ")
    return "/sys/fs/cgroup"


_root: list[str] = []


def cgroup_ids(path: str) -> set[int]:
    """The ids of cgroup `path` (as systemd names it: /system.slice/x.service) and of every
    cgroup below it; empty if there is no such cgroup, or none is named (a unit that has no
    cgroup: it runs no process)."""
    if not path:
        return set()
    if not _root:
        _root.append(_cgroup2_root())
    top = os.path.join(_root[0], path.lstrip("/"))
    ids = set()
    for directory, _, _ in os.walk(top):
        try:
            ids.add(os.stat(directory).st_ino)
        except OSError:
            continue
    return ids


class _Link(threading.local):
    """This thread's netlink socket for exact lookups."""
    sock: socket.socket | None = None
    fd = -1
    seq = 0
    pid = 0


_link = _Link()


def _fd() -> int:
    if _link.sock is None or _link.pid != quickcalls.pid():   # never one inherited across fork()
        _link.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                                   _NETLINK_SOCK_DIAG)
        _link.fd, _link.pid = _link.sock.fileno(), quickcalls.pid()
    return _link.fd


class Probe(NamedTuple):
    """A listener found, and the exact lookup that asks for it again (split around the
    message's sequence number)."""
    listener: Listener
    head: bytes
    tail: bytes


def probe(found: Listener, port: int) -> Probe:
    req = _REQUEST.pack(found.family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF) + _sockid(port, found.address, found.cookie)
    message = _HEADER.pack(_HEADER.size + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 0, 0) + req
    return Probe(found, message[:8], message[12:])


_SEQ = struct.Struct("=I")
_REPLY = struct.Struct("=IHHI")     # the reply's length, type, flags and sequence number


def still_listening(asked: Probe) -> bool | None:
    """Does this socket still listen? None: no answer came at once (ask otherwise)."""
    fd = _fd()
    _link.seq = seq = (_link.seq + 1) & 0xFFFFFFFF
    try:
        quickcalls.write(fd, asked.head + _SEQ.pack(seq) + asked.tail)
        while (data := quickcalls.read_nonblocking(fd, 512)) is not None:
            if len(data) < _REPLY.size + 4:
                continue
            _, kind, _, got = _REPLY.unpack_from(data)
            if got != seq:
                continue          # the answer to an earlier question that was given up on
            if kind == _NLMSG_ERROR:
                return False if -struct.unpack_from("=i", data, _HEADER.size)[0] == errno.ENOENT else None
            cookie = _HEADER.size + _COOKIE
            return data[cookie:cookie + 8] == asked.listener.cookie
    except OSError:
        pass
    return None


# (main pid, port) -> the listener of the unit found there last time
_known: dict[tuple[int, int], Probe] = {}


def unit_listens(main_pid: int, port: int, unit: str, control_group: Callable[[str], str]) -> bool:
    """True if a process of `unit` (main process `main_pid`) has a TCP socket listening on
    `port`. `control_group(unit)`: the unit's cgroup, asked only when no socket is known."""
    if main_pid <= 0:
        return False
    known = _known.get((main_pid, port))
    if known is not None:
        if still_listening(known):
            return True
        _known.pop((main_pid, port), None)     # gone, replaced, or no answer: look again
    candidates = listening(port)
    if not candidates:
        return False
    ids = cgroup_ids(control_group(unit))
    for found in candidates:
        if found.cgroup in ids:
            if len(_known) > 64:
                _known.clear()
            _known[(main_pid, port)] = probe(found, port)
            return True
    return False
