"""The server (imapd_ctl.server): the gunicorn worker's loop run in a thread without an arbiter.
Idle, slow and hostile clients cost no thread and are cut; the loop frames every request
(chunked, Expect: 100-continue) and writes every reply; the budget; gunicorn's hooks."""
import contextlib
import dataclasses
import json
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest
from gunicorn.config import Config

from imapd_ctl.server.lanes import Lanes
from imapd_ctl.server.worker import KEYLESS_BODY, MAX_BODY, Worker
from imapd_ctl.transports.body import GATE_KEY, PEER_KEY, bounded


class _Log:
    """gunicorn's logger interface, quiet."""

    def __getattr__(self, name):
        return lambda *args, **kw: None


def echo(environ, start_response):
    """A WSGI app: /slow waits until released; /big answers BIG bytes; everything else echoes
    the body's length."""
    if environ["PATH_INFO"] == "/slow":
        app.release.wait(10)
    if environ["PATH_INFO"] == "/metrics":      # a scrape: how many ran at once, and when it ended
        with app.lock:
            app.scraping += 1
            app.most_scraping = max(app.most_scraping, app.scraping)
        time.sleep(0.005)
        with app.lock:
            app.scraping -= 1
    app.ended.append(environ["PATH_INFO"])
    if environ["PATH_INFO"] == "/big":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"b" * BIG]
    if environ["PATH_INFO"] == "/peer":      # who the kernel says connected, and the gate's word
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [repr((environ.get(PEER_KEY), environ.get(GATE_KEY))).encode()]
    body = environ["wsgi.input"].read()
    reply = f"{environ['PATH_INFO']} {len(body)}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(reply)))])
    return [reply]


BIG = 4 << 20
app = bounded(echo, MAX_BODY)      # the app's refusals, worded as in the daemon (transports.body)
KEY = "k" * 20


def gate(authorization):
    return authorization == f"Bearer {KEY}"


def start_worker(listener, cfg):
    """A Worker serving `app` on `listener`, its loop in a thread."""
    w = Worker(age=1, ppid=os.getppid(), sockets=[listener], app=None, timeout=30, cfg=cfg, log=_Log())
    w.client_timeout = 0.5
    w.notify = lambda: None
    w.wsgi = app
    w.app = type("App", (), {"gate": staticmethod(gate)})()
    app.release = threading.Event()
    app.lock, app.scraping, app.most_scraping, app.ended = threading.Lock(), 0, 0, []
    w.prepare()
    w.alive = True
    loop = threading.Thread(target=w.run, daemon=True)
    loop.start()
    # run() takes the app's gate first: a test that swaps the rules must not race it.
    deadline = time.monotonic() + 5
    while w.rules.gate is not gate and time.monotonic() < deadline:
        time.sleep(0.001)
    return w, loop


def stop_worker(w, loop, listener):
    app.release.set()
    w.alive = False
    loop.join(5)
    listener.close()


@contextlib.contextmanager
def worker_on(tmp_path, **settings):
    """A Worker serving `app` on a unix socket with gunicorn `settings`, its loop in a thread;
    yields (worker, loop thread, socket path)."""
    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(64)
    cfg = Config()
    for name, value in settings.items():
        cfg.set(name, value)
    w, loop = start_worker(listener, cfg)
    try:
        yield w, loop, path
    finally:
        stop_worker(w, loop, listener)


@pytest.fixture
def serving(tmp_path):
    """A Worker serving `app` on a unix socket, its loop in a thread; yields (worker, path)."""
    with worker_on(tmp_path, threads=2, worker_connections=50) as (w, _, path):
        yield w, path


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
        s.sendall(f"POST {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {KEY}\r\n"
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


def test_scrapes_run_one_at_a_time_after_the_other_requests(tmp_path):
    with worker_on(tmp_path, threads=8, worker_connections=100) as (w, _, path):
        scrapers = [connect(path) for _ in range(20)]
        for s in scrapers:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert get(path).endswith(b"/x 0")     # answered while scrapes still wait their turn
        for s in scrapers:
            assert read_all(s).endswith(b"/metrics 0")
            s.close()
    assert app.most_scraping == 1
    assert app.ended.index("/x") < len(app.ended) - 1 and app.ended.count("/metrics") == 20


def test_a_body_sent_in_pieces_is_read_whole(serving):
    worker, path = serving
    body = b"a" * 60_000
    with connect(path) as s:
        s.sendall(f"POST /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {KEY}\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode())
        for i in range(0, len(body), 20_000):
            s.sendall(body[i:i + 20_000])
            time.sleep(0.01)
        assert read_all(s).endswith(b"/b 60000")


def test_keep_alive_serves_pipelined_requests_in_order(serving):
    worker, path = serving
    with connect(path) as s:      # an empty line before a request is ignored (old clients send one after a body)
        s.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
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


def test_a_chunked_body_is_decoded_in_the_loop_and_the_connection_kept(serving):
    worker, path = serving
    with connect(path) as s:
        s.sendall(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n"
                  b"2\r\nde\r\n0\r\nTrailer: x\r\n\r\n"
                  b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_all(s)
    assert b"/c 5" in data and data.endswith(b"/next 0")


def test_a_stopping_worker_still_answers_a_connection_it_accepted(serving):
    worker, path = serving
    with connect(path) as s:
        s.sendall(b"GET /late HTTP/1.1\r\nHost: x")
        time.sleep(0.1)          # accepted, head not complete
        worker.alive = False     # SIGTERM
        time.sleep(0.1)
        s.sendall(b"\r\nConnection: close\r\n\r\n")
        assert read_all(s).endswith(b"/late 0")




def reply_of(data):
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return int(lines[0].split()[1]), lines[1:], body


@pytest.mark.parametrize("raw, status, start", [
    (b"GARBAGE\r\n\r\n", 400, "Bad Request: invalid request line 'GARBAGE'"),
    (b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n", 400, "Bad Request: invalid header field"),
    (b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400, "Bad Request: obsolete line folding"),
    (b"GET / HTTP/1.1\r\nX_Y: a\r\n\r\n", 400, "Bad Request: header name 'X_Y' contains '_'"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "URI Too Long: "),
    (b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n", 400, "Bad Request: the request target must be ASCII"),
    (b"GET / HTTP/2.0\r\n\r\n", 505, "HTTP Version Not Supported: "),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
     "Bad Request: both Content-Length and Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400,
     "Bad Request: differing Content-Length"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, "Not Implemented: "),
    (b"POST / HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\n", 417, "Expectation Failed: "),
    (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431, "Request Header Fields Too Large: "),
    (b"GET / HTTP/1.1\r\nHost: x", 400, "Bad Request: the request head ended"),   # then FIN
])
def test_a_request_that_cannot_be_framed_gets_the_envelope(serving, raw, status, start):
    worker, path = serving
    with connect(path) as s:
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        data = read_all(s)
    code, head, body = reply_of(data)
    assert code == status, data
    assert "Content-Type: application/json" in head and "Connection: close" in head
    assert f"Content-Length: {len(body)}" in head
    doc = json.loads(body)
    assert list(doc) == ["status", "payload"] and doc["status"] == status
    assert doc["payload"].startswith(start), doc


@pytest.mark.parametrize("body, start", [
    (b"zz\r\nabc\r\n0\r\n\r\n", "Bad Request: the request body could not be read (invalid chunk size 'zz')"),
    (b"3\r\nabcXX0\r\n\r\n", "Bad Request: the request body could not be read (a chunk's data is not followed"),
    (b"3\r\nabc\r\n", "Bad Request: the request body could not be read (the chunked body ended"),
    (b"%x\r\n" % (MAX_BODY + 1), "Request Entity Too Large: the request body is over the limit of 65536"),
])
def test_a_broken_or_oversized_chunked_body_is_refused_by_the_app(serving, body, start):
    worker, path = serving
    with connect(path) as s:
        s.sendall(b"POST /c HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        s.shutdown(socket.SHUT_WR)
        code, head, reply = reply_of(read_all(s))
    assert json.loads(reply)["payload"].startswith(start)
    assert code == json.loads(reply)["status"] and "Connection: close" in head


def test_expect_100_continue_is_answered_before_the_body_is_sent(serving):
    worker, path = serving
    with connect(path) as s:
        s.sendall(b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"abcd")
        code, _, body = reply_of(s.recv(1000))
    assert (code, body) == (200, b"/e 4")


@pytest.mark.parametrize("authorization, status", [(None, 413), ("Bearer nope", 413), (f"Bearer {KEY}", 200)])
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_body_over_the_keyless_limit_needs_a_valid_key_before_it_is_read(serving, authorization, status, framing):
    worker, path = serving
    body = b"a" * (KEYLESS_BODY + 1)
    head = [b"POST /k HTTP/1.1", b"Host: x", b"Connection: close", b"Expect: 100-continue"]
    if authorization:
        head.append(b"Authorization: " + authorization.encode())
    head.append(b"Content-Length: %d" % len(body) if framing == "length" else b"Transfer-Encoding: chunked")
    with connect(path) as s:
        s.sendall(b"\r\n".join(head) + b"\r\n\r\n")
        first = s.recv(1000)
        if status == 200:
            assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
            s.sendall(body if framing == "length" else b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            code, _, reply = reply_of(read_all(s))
            assert (code, reply) == (200, b"/k %d" % len(body))
        elif framing == "length":          # refused from the head alone: no 100, no body read
            code, _, reply = reply_of(first + read_all(s))
            assert code == 413 and "without a valid API key" in json.loads(reply)["payload"]
        else:                              # chunked: refused once the keyless limit is passed
            assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
            s.sendall(b"%x\r\n%s\r\n" % (len(body), body))
            code, _, reply = reply_of(read_all(s))
            assert code == 413 and "without a valid API key" in json.loads(reply)["payload"]


def test_body_keyed_paths_take_bodies_up_to_the_limit_without_a_header_key(serving):
    worker, path = serving
    with connect(path) as s:
        s.sendall(b"POST /xmlrpc HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % MAX_BODY + b"x" * MAX_BODY)
        assert s.recv(1000).endswith(b"/xmlrpc %d" % MAX_BODY)


def test_clients_that_do_not_read_their_replies_hold_no_thread_and_are_cut(tmp_path):
    with worker_on(tmp_path, threads=1) as (w, loop, path):
        w.rules = dataclasses.replace(w.rules, reply_timeout=0.5)
        stalled = []
        for _ in range(8):     # each asks for a 4 MiB reply three times and reads nothing
            s = connect(path)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
            stalled.append(s)
        assert get(path).endswith(b"/x 0")        # the only thread is free
        time.sleep(1.0)
        for s in stalled:                          # cut when their reply deadline passed
            got = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := s.recv(1 << 20):
                    got += len(chunk)
            assert got < 3 * BIG
            s.close()


def test_past_the_connection_budget_the_oldest_keyless_connection_goes_first(tmp_path):
    with worker_on(tmp_path, threads=2, worker_connections=10) as (w, loop, path):
        keyed = connect(path)     # the oldest, but it showed a valid key
        keyed.sendall(f"GET /a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode())
        assert keyed.recv(1000).endswith(b"/a 0")
        keyless = [connect(path) for _ in range(9)]
        for s in keyless:
            s.sendall(b"GET / HTTP/1.1\r\nHo")
        time.sleep(0.1)
        extra = [connect(path) for _ in range(3)]
        time.sleep(0.1)
        for s in keyless[:3]:                      # the three oldest keyless ones made room
            assert s.recv(10) == b""
        keyed.sendall(b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_all(keyed).endswith(b"/b 0")   # the keyed one lives on
        for s in keyless + extra:
            s.close()


def test_past_the_byte_budget_the_oldest_keyless_connection_goes_first(tmp_path):
    with worker_on(tmp_path, threads=1) as (w, loop, path):
        w.budget_bytes = 3 * KEYLESS_BODY
        partial = []
        for _ in range(4):      # each holds ~KEYLESS_BODY - 1 bytes of an unfinished body
            s = connect(path)
            s.sendall(b"POST /xmlrpc HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n"
                      + b"x" * (KEYLESS_BODY - 1))
            partial.append(s)
            time.sleep(0.05)
        assert partial[0].recv(10) == b""         # the oldest was cut to stay in the budget
        assert w.held <= w.budget_bytes
        assert get(path).endswith(b"/x 0")
        for s in partial:
            s.close()


def test_gunicorn_hooks_and_max_requests_are_honoured(tmp_path):
    seen = []
    hooks = {"pre_request": lambda worker, req: seen.append(("pre", req.method, req.path)),
             "post_request": lambda worker, req, environ, resp: seen.append(("post", req.path, resp.status))}
    with worker_on(tmp_path, threads=1, max_requests=2, **hooks) as (w, loop, path):
        w.max_requests = 2       # gunicorn's Worker reads it (with its jitter) when built
        assert get(path, "/one").endswith(b"/one 0")
        assert get(path, "/two").endswith(b"/two 0")
        loop.join(5)
        assert not loop.is_alive()                 # restarted by the arbiter after max_requests
        assert seen == [("pre", "POST", "/one"), ("post", "/one", "200 OK"),
                        ("pre", "POST", "/two"), ("post", "/two", "200 OK")]


def test_a_bug_on_one_connection_costs_that_connection_not_the_loop(serving):
    worker, path = serving
    rules = worker.rules

    def broken_gate(authorization):
        raise KeyError("a bug")

    worker.rules = dataclasses.replace(rules, gate=broken_gate)    # for connections accepted now
    with connect(path) as s:
        s.sendall(b"POST /c HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\nContent-Length: 0\r\n\r\n")
        try:
            assert s.recv(100) == b""                      # that connection is closed (FIN)
        except ConnectionResetError:
            pass                                           # or reset: closed all the same
    worker.rules = rules
    assert get(path).endswith(b"/x 0")                     # and the loop still serves


def test_a_unix_socket_request_carries_who_connected_and_what_the_gate_said(serving):
    _, path = serving
    assert get(path, "/peer").endswith(repr(((os.getuid(), os.getgid()), True)).encode())


def test_the_scrape_lane_waits_its_spacing_after_each_scrape_and_yields_to_requests():
    lanes = Lanes(spacing=0.01)
    lanes.add("s1", scrape=True)
    lanes.add("s2", scrape=True)
    lanes.add("r1", scrape=False)
    assert lanes.take(1.0) == "r1" and lanes.take(1.0) == "s1"
    assert lanes.take(1.0) is None and lanes.wait(1.0) is None    # one scrape at a time
    lanes.done("s1", 1.5)
    assert lanes.take(1.505) is None and lanes.wait(1.505) == pytest.approx(0.005)
    lanes.add("r2", scrape=False)
    assert lanes.wait(1.505) is None and lanes.take(1.505) == "r2"
    assert lanes.take(1.51) == "s2"
    lanes.taken_back("s2")           # cut while it waited: the lane is free again at once
    lanes.add("s3", scrape=True)
    assert lanes.take(1.51) == "s3"
