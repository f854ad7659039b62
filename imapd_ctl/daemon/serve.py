"""`imapd-ctl serve`: the Flask app under gunicorn (with this package's worker, server.worker),
on a unix socket and loopback TCP.

The app is built in each worker after fork (no --preload): the D-Bus connection must never
exist in the master.

Started by systemd socket activation (imapd-ctl.socket; LISTEN_PID is this process), the
sockets systemd passes are served as they are (server.listeners): gunicorn takes them from
LISTEN_FDS itself, and does not unlink them at exit, so a restart loses no connection. The
packaged units pass the unix socket only; TCP comes from the settings.

Ready notification: gunicorn's arbiter sends READY=1 to $NOTIFY_SOCKET once its listeners
exist (gunicorn 20.1 as in Debian 12 and current releases alike), so the unit is Type=notify.
"""
from __future__ import annotations

import errno
import logging
import os
import sys
from typing import Any, Callable

from flask import Flask
from gunicorn.app.base import BaseApplication

from imapd_ctl.adapters import metrics, secrets
from imapd_ctl.adapters.flavours import validation
from imapd_ctl.core.settings import Settings
from imapd_ctl.daemon.recovery import recover_in_child
from imapd_ctl.server import tls, worker
from imapd_ctl.server.listeners import activation_binds, check_binds, inherited_sockets

log = logging.getLogger(__name__)

EX_CONFIG = 78          # sysexits.h; the unit has RestartPreventExitStatus=78


# ----------------------------------------------------------------- gunicorn

class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, binds: list[str], unfinished_recovery: str | None = None):
        self.settings = settings
        self.binds = binds
        self.unfinished_recovery = unfinished_recovery
        # The worker asks this before it reads a body over its keyless limit (server.worker);
        # set in each worker once the graph is built.
        self.gate: Callable[[str | None], Any] | None = None
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options = {
            "bind": self.binds,
            "workers": s.workers,
            # One event loop reading requests, a pool of threads running them (docs/design.md,
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
            # Always set: gunicorn's own default has differed between releases ("TLSv1" once).
            options.update(certfile=s.tls_cert, keyfile=s.tls_key, ciphers=s.tls_ciphers or tls.POLICY)
        for key, value in options.items():
            if key in self.cfg.settings:  # older gunicorn (e.g. Debian's) lacks some settings
                self.cfg.set(key, value)

    def load(self) -> Flask:  # type: ignore[override]  # Flask is a WSGI app; its __call__ is typed differently
        # In each worker, after fork: the graph is built here and opens D-Bus on first use.
        from imapd_ctl.daemon import wiring
        from imapd_ctl.transports.app import create_app
        from imapd_ctl.transports.http import key_gate
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="[%(process)d] %(levelname)s %(name)s: %(message)s")
        services = wiring.build(self.settings, unfinished_recovery=self.unfinished_recovery)
        services.warm()
        self.gate = key_gate(services.keys)
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
