"""`imapd-ctl serve`: the Flask app under gunicorn, on a unix socket and loopback TCP.

The app is built in each worker after fork (no --preload): the D-Bus connection must never
exist in the master.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import sys

from gunicorn.app.base import BaseApplication

log = logging.getLogger(__name__)


def _host_of(bind: str) -> str:
    host = bind.rsplit(":", 1)[0] if ":" in bind else bind
    return host.strip("[]")


def check_binds(settings) -> None:
    """Refuse a non-loopback TCP listener without TLS: keys would cross the network in clear."""
    tls = bool(settings.tls_cert and settings.tls_key)
    for bind in settings.listen:
        host = _host_of(bind)
        loopback = host == "localhost"
        if not loopback:
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
        if not loopback and not tls:
            raise SystemExit(f"imapd-ctl: refusing to listen on {bind}: it is not a loopback address and "
                             "TLS is not configured (set tls_cert and tls_key, or listen on 127.0.0.1)")


class _Gunicorn(BaseApplication):
    def __init__(self, settings):
        self.settings = settings
        super().__init__()

    def load_config(self):
        s = self.settings
        options = {
            "bind": [f"unix:{s.socket}"] + list(s.listen),
            "workers": s.workers,
            "worker_class": "sync",
            # A start/restart may wait job_timeout for systemd plus listen_timeout for the port.
            "timeout": int(s.job_timeout + s.listen_timeout + 30),
            "graceful_timeout": 30,
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

    def load(self):
        from .api import create_app
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="[%(process)d] %(levelname)s %(name)s: %(message)s")
        return create_app(self.settings)


def run(settings, config_path: str | None) -> None:
    check_binds(settings)
    os.makedirs(os.path.dirname(settings.socket), mode=0o750, exist_ok=True)
    os.makedirs(settings.state_dir, mode=0o700, exist_ok=True)
    # Finish or undo a change that a crash interrupted, in a child process so that the
    # master never opens D-Bus (children forked from it would hang on that connection).
    argv = [sys.executable, "-m", "imapd_ctl.cli"] + (["--config", config_path] if config_path else []) + ["recover"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).strip().splitlines():
        print(f"imapd-ctl: recover: {line}", file=sys.stderr)
    _Gunicorn(settings).run()
