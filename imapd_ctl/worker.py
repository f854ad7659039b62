"""gunicorn's sync worker, with TLS only where it belongs.

gunicorn wraps every accepted connection in TLS once a certificate is configured, the unix
socket's too. Local operators on the unix socket (already authorised by its file mode) should
not need a certificate to talk to their own daemon, so connections from a unix listener are
handled as plain HTTP and only TCP ones get TLS.
"""
from __future__ import annotations

import socket

from gunicorn.workers.sync import SyncWorker


class _PlainConfig:
    """The worker's config as seen for one unix-socket connection: no TLS."""
    is_ssl = False

    def __init__(self, cfg):
        self._cfg = cfg

    def __getattr__(self, name):
        return getattr(self._cfg, name)


class Worker(SyncWorker):
    def handle(self, listener, client, addr):
        if listener.family != socket.AF_UNIX or not self.cfg.is_ssl:
            return super().handle(listener, client, addr)
        cfg, self.cfg = self.cfg, _PlainConfig(self.cfg)
        try:
            return super().handle(listener, client, addr)
        finally:
            self.cfg = cfg
