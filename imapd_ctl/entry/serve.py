"""`imapd-ctl serve`: the Flask app under gunicorn, on a unix socket and loopback TCP.

The app is built in each worker after fork (no --preload): the D-Bus connection must never
exist in the master.

Started by systemd socket activation (imapd-ctl.socket; LISTEN_PID is this process), the
sockets systemd passes are served as they are, never bound again: gunicorn takes them from
LISTEN_FDS itself, and does not unlink them at exit, so a restart loses no connection. The
settings still say what to listen on: a `socket` or `listen` entry that no inherited socket
covers is bound here and handed to gunicorn as fd://N (gunicorn serves either inherited
sockets or addresses it binds, never both, so everything goes to it as descriptors). The
packaged units pass the unix socket only; TCP comes from the settings. An inherited TCP
socket on a non-loopback address is refused without TLS, like a configured one.

Ready notification: gunicorn's arbiter sends READY=1 to $NOTIFY_SOCKET once its listeners
exist (gunicorn 20.1 as in Debian 12 and current releases alike), so the unit is Type=notify.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import stat
import sys
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from imapd_ctl.adapters import metrics, secrets
from imapd_ctl.adapters.flavours import validation
from imapd_ctl.core.settings import Settings
from imapd_ctl.entry import worker
from imapd_ctl.entry.recovery import recover_in_child

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
EX_CONFIG = 78          # sysexits.h; the unit has RestartPreventExitStatus=78
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


# ----------------------------------------------------------------- gunicorn

class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, binds: list[str], unfinished_recovery: str | None = None):
        self.settings = settings
        self.binds = binds
        self.unfinished_recovery = unfinished_recovery
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options = {
            "bind": self.binds,
            "workers": s.workers,
            # One event loop reading requests, a pool of threads running them (README
            # "Serving model"); the timeouts derived from the action timeouts.
            **worker.options(s),
            "umask": 0o117,          # the unix socket is rw for root and the socket's group only
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "imapd-ctl",
            # gunicorn's own control socket would land in $HOME; we have no use for it.
            "control_socket_disable": True,
        }
        if s.tls_cert and s.tls_key:
            options.update(certfile=s.tls_cert, keyfile=s.tls_key)
        for key, value in options.items():
            if key in self.cfg.settings:  # older gunicorn (e.g. Debian's) lacks some settings
                self.cfg.set(key, value)

    def load(self) -> Flask:  # type: ignore[override]  # Flask is a WSGI app; its __call__ is typed differently
        # In each worker, after fork: the graph is built here and opens D-Bus on first use.
        from imapd_ctl.entry import wiring
        from imapd_ctl.transports.app import create_app
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="[%(process)d] %(levelname)s %(name)s: %(message)s")
        services = wiring.build(self.settings, unfinished_recovery=self.unfinished_recovery)
        services.warm()
        return create_app(services.context(), scrape=services.scrape,
                          metrics_access=self.settings.metrics_access)


def check_secrets(settings: Settings) -> None:
    """Refuse to start while a file holding secrets is open to group or others (or belongs to
    someone else): each problem names the file and the mode to set."""
    found = secrets.problems(settings.secret_files())
    if found:
        raise SystemExit("\n".join(f"imapd-ctl: refusing to start: {p}" for p in found))


def run(settings: Settings) -> None:
    try:
        check_secrets(settings)
        check_binds(settings)
    except SystemExit as exc:
        # A configuration error: say why, and exit with EX_CONFIG so systemd does not retry.
        print(exc, file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
    sock_dir = os.path.dirname(settings.socket)
    try:
        os.makedirs(sock_dir, mode=0o755, exist_ok=True)
        os.makedirs(settings.state_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        print(f"imapd-ctl: cannot create {exc.filename}: {os.strerror(exc.errno or errno.EIO)}"
              " (under the packaged unit only /run/imapd-ctl, /var/lib/imapd-ctl and "
              "/var/log/imapd-ctl are writable: see ReadWritePaths=)", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
    # Validation scratch trees a killed worker left behind (and older versions' copies).
    for path in validation.remove_stale(settings.state_dir):
        print(f"imapd-ctl: removed a validation tree left behind: {path}", file=sys.stderr)
    # Every process (the recovery child, each worker) counts in the private metrics directory,
    # emptied here: a scrape adds up the counts since this start (adapters.metrics).
    try:
        metrics.prepare_directory(settings.metrics_dir)
    except OSError as exc:
        print(f"imapd-ctl: cannot prepare metrics_dir {settings.metrics_dir}: "
              f"{os.strerror(exc.errno or errno.EIO)}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
    metrics.use_multiprocess(settings.metrics_dir)
    inherited = inherited_sockets()
    if inherited:
        try:
            binds = activation_binds(settings, inherited)
        except SystemExit as exc:
            print(exc, file=sys.stderr)
            raise SystemExit(EX_CONFIG) from None
        except OSError as exc:
            print(f"imapd-ctl: cannot listen as the settings ask: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
    else:
        binds = [f"unix:{settings.socket}"] + list(settings.listen)
    # Finish or undo a change that a crash interrupted, in a child process so that the
    # master never opens D-Bus (children forked from it would hang on that connection), for
    # at most recovery_timeout. A failure is reported and the daemon serves anyway: the next
    # change retries it. One that overran is not retried by a change (it would hang again):
    # changes are refused until `imapd-ctl recover` has finished it.
    outcome = recover_in_child(settings)
    print(f"imapd-ctl: recover: {'' if outcome.ok else 'FAILED: '}{outcome.message}", file=sys.stderr)
    _Gunicorn(settings, binds, None if outcome.finished else outcome.message).run()
