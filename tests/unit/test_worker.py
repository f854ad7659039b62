"""The gunicorn worker (imapd_ctl.entry.worker), driven without a running arbiter: the JSON
envelope for requests gunicorn rejects itself, and plain HTTP on the unix socket when TLS is
configured for TCP."""
import json
import socket

import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http.errors import InvalidHeaderName, InvalidRequestLine, LimitRequestLine
from gunicorn.workers.sync import SyncWorker

from imapd_ctl.entry.worker import Worker


class _Log:
    """gunicorn's logger interface, quiet."""

    def __getattr__(self, name):
        return lambda *args, **kw: None


@pytest.fixture
def worker(tmp_path):
    cfg = Config()
    w = Worker(age=1, ppid=1, sockets=[], app=None, timeout=30, cfg=cfg, log=_Log())
    return w


def reply_to(worker, exc):
    ours, theirs = socket.socketpair()
    with ours, theirs:
        worker.handle_error(None, ours, None, exc)
        ours.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := theirs.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1").split("\r\n"), body


@pytest.mark.parametrize("exc, status, start", [
    (InvalidRequestLine("GARBAGE"), 400, "Bad Request: Invalid Request Line '"),
    (InvalidHeaderName("bad name"), 400, "Bad Request: "),
    (LimitRequestLine(9000, 4094), 414, "URI Too Long: "),
])
def test_a_request_gunicorn_rejects_gets_the_envelope(worker, exc, status, start):
    head, body = reply_to(worker, exc)
    assert head[0].startswith(f"HTTP/1.1 {status} ")
    assert "Content-Type: application/json" in head and "Connection: close" in head
    assert f"Content-Length: {len(body)}" in head
    doc = json.loads(body)
    assert list(doc) == ["status", "payload"] and doc["status"] == status
    assert doc["payload"].startswith(start)


def test_the_envelope_is_only_swapped_in_for_the_call(worker):
    original = util.write_error
    reply_to(worker, InvalidRequestLine("x"))
    assert util.write_error is original


@pytest.mark.parametrize("family, tls, expect_tls", [
    (socket.AF_UNIX, True, False),     # local operators need no certificate
    (socket.AF_INET, True, True),
    (socket.AF_UNIX, False, False),
    (socket.AF_INET, False, False),
])
def test_tls_only_on_tcp_listeners(worker, monkeypatch, family, tls, expect_tls):
    if tls:
        monkeypatch.setattr(Config, "is_ssl", property(lambda self: True))
    seen = []
    monkeypatch.setattr(SyncWorker, "handle", lambda self, listener, client, addr: seen.append(bool(self.cfg.is_ssl)))

    class Listener:
        pass
    listener = Listener()
    listener.family = family
    worker.handle(listener, None, None)
    assert seen == [expect_tls]
    assert bool(worker.cfg.is_ssl) == tls          # the worker's own config is back as it was
    assert worker.cfg.workers == Config().workers   # the stand-in passes other settings through
