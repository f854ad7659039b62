"""The sockets the server listens on: those systemd passes (socket activation), served as they
are and never bound again, and those the settings ask for beyond them, bound here and handed to
gunicorn as fd://N (gunicorn serves either inherited sockets or addresses it binds, never
both, so everything goes to it as descriptors). A TCP listener on a non-loopback address is
refused without TLS, inherited or configured: keys would cross the network in clear."""
from __future__ import annotations

import ipaddress
import os
import socket
import stat
import struct
import sys
from typing import Any

from imapd_ctl.core.settings import Settings
from imapd_ctl.server.framing import PeerCred

SD_LISTEN_FDS_START = 3
BACKLOG = 2048          # gunicorn's default


def _host_of(bind: str) -> str:
    host = bind.rsplit(":", 1)[0] if ":" in bind else bind
    return host.strip("[]")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse_message(bind: str, where: str = "") -> str:
    return (f"imapd-ctl: refusing to listen on {bind}{where}: it is not a loopback address and "
            "TLS is not configured (set tls_cert and tls_key, or listen on 127.0.0.1)")


def check_binds(settings: Settings) -> None:
    """Refuse a non-loopback TCP listener without TLS: keys would cross the network in clear."""
    tls = bool(settings.tls_cert and settings.tls_key)
    for bind in settings.listen:
        if not tls and not _is_loopback(_host_of(bind)):
            raise SystemExit(_refuse_message(bind))


# ----------------------------------------------------------------- socket activation

def _describe(family: int, name: Any) -> str:
    if family == socket.AF_UNIX:
        return f"unix:{name if isinstance(name, str) else name.decode(errors='replace')}"
    if family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


class Inherited:
    """One socket passed by systemd: its fd, family and address (the fd stays open)."""

    def __init__(self, fd: int):
        self.fd = fd
        dup = socket.socket(fileno=os.dup(fd))   # family/type detected from the fd
        try:
            self.family, self.type, self.name = dup.family, dup.type, dup.getsockname()
        finally:
            dup.close()

    @property
    def address(self) -> str:
        return _describe(self.family, self.name)

    def matches_tcp(self, bind: str) -> bool:
        if self.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        host, port = _split_tcp(bind)
        if port != self.name[1]:
            return False
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            return False
        return any(ipaddress.ip_address(info[4][0]) == ipaddress.ip_address(self.name[0])
                   for info in infos)

    def matches_unix(self, path: str) -> bool:
        return self.family == socket.AF_UNIX and isinstance(self.name, str) and \
            os.path.abspath(self.name) == os.path.abspath(path)


def inherited_sockets() -> list[Inherited]:
    """The sockets of systemd socket activation, if they are meant for this process. The
    environment is left for gunicorn, which reads (and clears) LISTEN_FDS itself."""
    try:
        if int(os.environ.get("LISTEN_PID", "0")) != os.getpid():
            return []
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    return [Inherited(fd) for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)]


def _split_tcp(bind: str) -> tuple[str, int]:
    if bind.startswith("["):
        host, _, port = bind[1:].partition("]:")
    else:
        host, _, port = bind.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"imapd-ctl: listen entry {bind!r} is not host:port or [v6]:port")
    return host, int(port)


def _bind_tcp(bind: str) -> int:
    host, port = _split_tcp(bind)
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if info[0] == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(info[4])
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock.detach()   # gunicorn owns (and closes) the fd from now on


def _bind_unix(path: str) -> int:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)     # a stale socket of an earlier run
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)       # 0660, as gunicorn would make it
    try:
        sock.bind(path)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    sock.set_inheritable(True)
    return sock.detach()


def activation_binds(settings: Settings, inherited: list[Inherited]) -> list[str]:
    """For a socket-activated start: check the inherited sockets, bind what the settings ask
    for beyond them, and return gunicorn's extra binds (fd://N)."""
    tls = bool(settings.tls_cert and settings.tls_key)
    for s in inherited:
        if s.family in (socket.AF_INET, socket.AF_INET6) and not tls and not _is_loopback(s.name[0]):
            raise SystemExit(_refuse_message(s.address, " (a socket passed by systemd: see the "
                                             "ListenStream= lines of imapd-ctl.socket)"))
    extra, notes = [], []
    if any(s.matches_unix(settings.socket) for s in inherited):
        notes.append(f"unix:{settings.socket} (from systemd)")
    else:
        extra.append(f"fd://{_bind_unix(settings.socket)}")
        notes.append(f"unix:{settings.socket} (bound here: the socket unit does not pass it)")
    for bind in settings.listen:
        if any(s.matches_tcp(bind) for s in inherited):
            notes.append(f"{bind} (from systemd)")
        else:
            extra.append(f"fd://{_bind_tcp(bind)}")
            notes.append(f"{bind} (from the settings)")
    for s in inherited:
        if not (s.matches_unix(settings.socket) or any(s.matches_tcp(b) for b in settings.listen)):
            notes.append(f"{s.address} (from systemd; not in the settings)")
    print(f"imapd-ctl: socket activation: serving {', '.join(notes)}", file=sys.stderr)
    return extra


_CRED = struct.Struct("3i")      # struct ucred: pid, uid, gid


def peer_cred(sock: socket.socket) -> PeerCred | None:
    """Who connected to a unix socket, as the kernel says."""
    try:
        _, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    except OSError:
        return None
    return PeerCred(uid, gid)
