"""The gunicorn worker (imapd_ctl.entry.worker), its loop run in a thread without an arbiter:
idle and slow clients cost no thread and are cut, the JSON envelope for requests gunicorn
rejects itself, keep-alive, and how the loop sizes a request (imapd_ctl.entry.conn)."""
import json
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest
from gunicorn.config import Config
from gunicorn.http.errors import InvalidHeaderName, InvalidRequestLine, LimitRequestLine

from imapd_ctl.entry.conn import BODY_PREREAD_MAX, GATHER_BYTES, HEAD_MAX, Gathered, request_length
from imapd_ctl.entry.worker import Worker


class _Log:
    """gunicorn's logger interface, quiet."""

    def __getattr__(self, name):
        return lambda *args, **kw: None


def app(environ, start_response):
    """A WSGI app: /slow waits until released; everything else echoes the body's length."""
    if environ["PATH_INFO"] == "/slow":
        app.release.wait(10)
    body = environ["wsgi.input"].read()
    reply = f"{environ['PATH_INFO']} {len(body)}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(reply)))])
    return [reply]


def start_worker(listener, cfg):
    """A Worker serving `app` on `listener`, its loop in a thread."""
    w = Worker(age=1, ppid=os.getppid(), sockets=[listener], app=None, timeout=30, cfg=cfg, log=_Log())
    w.client_timeout = 0.5
    w.notify = lambda: None
    w.wsgi = app
    app.release = threading.Event()
    w.prepare()
    w.alive = True
    loop = threading.Thread(target=w.run, daemon=True)
    loop.start()
    return w, loop


def stop_worker(w, loop, listener):
    app.release.set()
    w.alive = False
    loop.join(5)
    listener.close()


@pytest.fixture
def serving(tmp_path):
    """A Worker serving `app` on a unix socket, its loop in a thread; yields (worker, path)."""
    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(64)
    cfg = Config()
    cfg.set("threads", 2)
    cfg.set("worker_connections", 50)
    w, loop = start_worker(listener, cfg)
    yield w, path
    stop_worker(w, loop, listener)


def test_tls_on_tcp_a_stalled_handshake_is_cut_and_a_real_client_served(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                    "-keyout", key, "-out", cert, "-days", "1"], check=True, capture_output=True)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    cfg = Config()
    cfg.set("threads", 1)
    cfg.set("certfile", str(cert))
    cfg.set("keyfile", str(key))
    w, loop = start_worker(listener, cfg)
    try:
        stalled = socket.create_connection(listener.getsockname(), timeout=5)
        stalled.sendall(b"\x16\x03\x01")                # the start of a ClientHello, no more
        ctx = ssl.create_default_context(cafile=str(cert))
        with ctx.wrap_socket(socket.create_connection(listener.getsockname(), timeout=5),
                             server_hostname="localhost") as s:
            s.sendall(b"GET /tls HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_all(s).endswith(b"/tls 0")
        assert stalled.recv(10) == b""                  # cut by the server
        stalled.close()
    finally:
        stop_worker(w, loop, listener)


def connect(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(path)
    return s


def get(path, url="/x", body=b""):
    with connect(path) as s:
        s.sendall(f"POST {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        return read_all(s)


def read_all(s):
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def test_idle_and_slow_clients_hold_no_thread_and_are_cut(serving):
    worker, path = serving
    idle = [connect(path) for _ in range(10)]
    slow = [connect(path) for _ in range(10)]
    for s in slow:
        s.sendall(b"GET / HTTP/1.1\r\nHo")            # a head that never ends
    # 20 clients hold connections and only 2 threads exist: requests are still answered.
    assert get(path).endswith(b"/x 0")
    for s in idle + slow:                             # cut by the server after client_timeout
        assert s.recv(10) == b""
        s.close()


def test_a_long_request_does_not_hold_up_the_others(serving):
    worker, path = serving
    with connect(path) as long:
        long.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert get(path).endswith(b"/x 0")            # the other thread answers
        app.release.set()
        assert read_all(long).endswith(b"/slow 0")    # and the long one answers too


def test_a_body_sent_in_pieces_is_read_whole(serving):
    worker, path = serving
    body = b"a" * 60_000
    with connect(path) as s:
        s.sendall(f"POST /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        for i in range(0, len(body), 20_000):
            s.sendall(body[i:i + 20_000])
            time.sleep(0.01)
        assert read_all(s).endswith(b"/b 60000")


def test_keep_alive_serves_pipelined_requests_in_order(serving):
    worker, path = serving
    with connect(path) as s:
        s.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_all(s)
    assert data.index(b"/one 0") < data.index(b"/two 0")


@pytest.mark.parametrize("raw, reply", [
    (b"GET /half HTTP/1.1\r\nHost: x\r\n\r\n", b"/half 0"),
    (b"POST /short HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", b"HTTP/1.1 "),
])
def test_a_client_that_half_closes_after_its_request_gets_the_answer(serving, raw, reply):
    worker, path = serving
    with connect(path) as s:
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)   # request and FIN may reach the loop together
        data = read_all(s)
    assert data.startswith(b"HTTP/1.1 ") and reply in data


def test_a_request_not_read_whole_in_the_loop_closes_its_connection(serving):
    worker, path = serving
    with connect(path) as s:     # chunked: the thread reads the body; nothing is drained after
        s.sendall(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                  b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_all(s)       # EOF: the server closed it after the first reply
    assert b"/c 3" in data and b"Connection: close" in data and b"/next" not in data


def test_a_stopping_worker_still_answers_a_connection_it_accepted(serving):
    worker, path = serving
    with connect(path) as s:
        s.sendall(b"GET /late HTTP/1.1\r\nHost: x")
        time.sleep(0.1)          # accepted, head not complete
        worker.alive = False     # SIGTERM
        time.sleep(0.1)
        s.sendall(b"\r\nConnection: close\r\n\r\n")
        assert read_all(s).endswith(b"/late 0")


@pytest.mark.parametrize("raw, status, start", [
    (b"GARBAGE\r\n\r\n", 400, "Bad Request: Invalid Request Line '"),
    (b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n", 400, "Bad Request: "),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "URI Too Long: "),
])
def test_a_request_gunicorn_rejects_gets_the_envelope(serving, raw, status, start):
    worker, path = serving
    with connect(path) as s:
        s.sendall(raw)
        data = read_all(s)
    head, _, body = data.partition(b"\r\n\r\n")
    head = head.decode("latin-1").split("\r\n")
    assert head[0].startswith(f"HTTP/1.1 {status} ")
    assert "Content-Type: application/json" in head and "Connection: close" in head
    assert f"Content-Length: {len(body)}" in head
    doc = json.loads(body)
    assert list(doc) == ["status", "payload"] and doc["status"] == status
    assert doc["payload"].startswith(start)


@pytest.mark.parametrize("buf, length", [
    (b"GET / HTTP/1.1\r\nHost: x", None),                                  # head not complete
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET", 27),                         # no body
    (b"POST / HTTP/1.1\r\ncontent-LENGTH: 3\r\n\r\nab", None),             # body not complete
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET", 41),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3", 48),       # the parser reads on
    (b"POST / HTTP/1.1\r\nContent-Length: x1\r\n\r\n", 39),                # the parser says 400
    (f"POST / HTTP/1.1\r\nContent-Length: {BODY_PREREAD_MAX + 1}\r\n\r\n".encode(), "all"),
    (b"G" * (HEAD_MAX + 1), HEAD_MAX + 1),                                 # the parser says 431
])
def test_request_length(buf, length):
    assert request_length(buf) == (len(buf) if length == "all" else length)


def test_a_reply_is_gathered_into_one_send():
    a, b = socket.socketpair()
    with a, b:
        b.setblocking(False)
        out = Gathered(a)
        out.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
        out.sendall(memoryview(b"body"))
        with pytest.raises(BlockingIOError):
            b.recv(100)                                   # nothing sent yet
        out.flush()
        assert b.recv(100) == b"HTTP/1.1 200 OK\r\n\r\nbody"
        out.sendall(b"x" * GATHER_BYTES)                  # a large body goes at once
        assert len(b.recv(2 * GATHER_BYTES)) > 0
        out.sendall(b"tail")
        assert out.fileno() == a.fileno()                 # anything else sends what waits first
        assert b.recv(2 * GATHER_BYTES).endswith(b"tail")

