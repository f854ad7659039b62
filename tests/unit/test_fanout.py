"""The fan-out to many nodes (adapters.cluster.Session and Cluster.replay, cli.calls.fan_out)
against real TLS listeners on loopback: every node called at once, one connection per node for
a plan of calls, and nodes that are dead, silent past their timeout or refusing the key each
named once with the reason, never called twice."""
import json
import socket
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_cluster import KEY, pki  # noqa: F401  (the module's CA and certificate for 127.0.0.1)

from imapd_ctl.adapters.cluster import Cluster, Node, at_once
from imapd_ctl.cli import calls, status
from imapd_ctl.core.settings import load


class _Peer(BaseHTTPRequestHandler):
    """A node over HTTP/1.1 (kept alive); counts connections; `server.barrier`, when set, holds
    each request until that many are in; `server.closing` ends each connection after one reply
    without saying so (a node's idle timeout, as the client sees it)."""
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.server.barrier is not None:
            self.server.barrier.wait()
        if self.headers["Authorization"] != f"Bearer {self.server.key}":
            reply, code = {"status": 401, "payload": "unknown API key"}, 401
        else:
            reply, code = {"status": 0, "payload": {"action": self.path.rsplit("/", 1)[-1], "inputs": body}}, 200
        data = json.dumps(reply).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        if self.server.closing:
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def peer(pki):  # noqa: F811
    servers = []

    def start(key=KEY, barrier=None, closing=False):
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Peer)
        httpd.daemon_threads, httpd.lock, httpd.connections = True, threading.Lock(), 0
        httpd.key, httpd.barrier, httpd.closing = key, barrier, closing
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki["cert"], pki["key"])
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"https://127.0.0.1:{httpd.server_address[1]}", httpd
    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def silent():
    """A port that accepts TCP and never says a word (a node hung past its timeout); counts the
    connections it got."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    held, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}", held
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def _dead_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"https://127.0.0.1:{s.getsockname()[1]}"


def test_a_session_makes_one_connection_for_its_calls(peer, pki):  # noqa: F811
    url, httpd = peer()
    cluster = Cluster("mail1", [Node("mail2", url, KEY, pki["ca"])], timeout=5)
    with cluster.session(cluster.node("mail2")) as s:
        answers = [s.call(action, {"n": i}) for i, action in enumerate(("isRunning", "queryUpdate", "restart"))]
    assert [a[1]["action"] for a in answers] == ["isRunning", "queryUpdate", "restart"]
    assert httpd.connections == 1


def test_a_connection_the_node_closed_while_idle_is_made_again(peer, pki):  # noqa: F811
    url, httpd = peer(closing=True)
    with Cluster("mail1", [], timeout=5).session(Node("mail2", url, KEY, pki["ca"])) as s:
        assert s.call("isRunning", {})[0] == 0
        assert s.call("queryUpdate", {})[1]["action"] == "queryUpdate"
    assert httpd.connections == 2


def test_every_node_is_called_at_once(peer, pki):  # noqa: F811
    """Each request is held until all 60 are in: a fan-out in waves would never get there (the
    barrier breaks and the peers fail)."""
    count = 60
    url, _ = peer(barrier=threading.Barrier(count, timeout=30))
    nodes = [Node(f"n{i:02d}", url, KEY, pki["ca"]) for i in range(count)]
    rows = Cluster("mail1", nodes, timeout=60).replay("restart", {})
    assert [r["status"] for r in rows] == [0] * count, rows


def test_dead_silent_and_refused_nodes_each_get_one_row_and_one_call(peer, silent, pki):  # noqa: F811
    ok_url, ok = peer()
    refusing_url, refusing = peer(key="ictl_" + "o" * 43)
    silent_url, held = silent
    dead_url = _dead_url()
    kinds = {"ok": ok_url, "refused": refusing_url, "silent": silent_url, "dead": dead_url}
    nodes = [Node(f"{kind}{i}", url, KEY, pki["ca"]) for kind, url in kinds.items() for i in range(8)]
    cluster = Cluster("mail1", nodes, timeout=2)
    rows = cluster.replay("update", {"imap_max_connections": 40})
    assert [r["id"] for r in rows] == sorted(n.id for n in nodes)
    by_kind: dict[str, set] = {}
    for r in rows:
        reason = r["payload"] if isinstance(r["payload"], str) else "ok"
        by_kind.setdefault(r["id"].rstrip("0123456789"), set()).add(
            (r["status"], reason.replace(r["id"], "ID")))
    assert by_kind["ok"] == {(0, "ok")}
    assert by_kind["refused"] == {(401, "unknown API key")}
    assert by_kind["silent"] == {(502, f"node ID: no answer from {silent_url} within 2 s")}
    (code, reason), = by_kind["dead"]
    assert code == 502 and reason.startswith(f"node ID: cannot reach {dead_url}: ") and "refused" in reason
    assert len(held) == 8 and ok.connections == 8 and refusing.connections == 8

    # status --all's plan of four calls: one connection per node, and a node that could not be
    # reached is not called again for the rest of the plan.
    callers = {n.id: calls.remote(cluster, n.id) for n in nodes}
    rows = status.cluster_status("mail1", callers)["nodes"]
    reached = {r["node"] for r in rows if r["reached"]}
    assert reached == {n.id for n in nodes if n.id.startswith(("ok", "refused"))}
    for r in rows:
        if not r["reached"]:
            assert r["problems"] == [r["problems"][0]] and r["node"] in r["problems"][0]
    assert len(held) == 16 and ok.connections == 16 and refusing.connections == 16


def test_the_open_file_limit_is_raised_for_a_fan_out_that_needs_it():
    """In a process of its own (the limit is the process's): soft limit 256, a fan-out of 2,000."""
    probe = ("import resource\n"
             "from imapd_ctl.adapters.cluster import room_for\n"
             "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
             "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
             "print(room_for(2000), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n")
    room, soft, hard = map(int, subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                               check=True).stdout.split())
    if hard < 4000:
        pytest.fail(f"this machine's hard limit on open files ({hard}) is too low for the test")
    assert room == 2000 and 2000 < soft < 4000


def test_threads_the_process_cannot_start_leave_the_work_to_those_running(monkeypatch):
    """Past the unit's TasksMax, Thread.start raises: the fan-out still does every item, with
    the threads it has (or in the calling thread when it has none)."""
    real_start, started = threading.Thread.start, []

    def start_three(thread):
        if thread.name == "fan-out" and len(started) >= 3:
            raise RuntimeError("can't start new thread")
        started.append(thread)
        real_start(thread)
    monkeypatch.setattr(threading.Thread, "start", start_three)
    items = list(range(50))
    assert at_once(items, lambda i: i * i, cap=4096) == [i * i for i in items]
    assert len(started) == 3
    started.extend([None] * 10)
    assert at_once(items, lambda i: -i, cap=4096) == [-i for i in items]


def test_a_failure_of_one_call_is_raised_after_every_call_ended():
    done = []

    def fn(i):
        if i == 3:
            raise ValueError("a bug")
        done.append(i)
    with pytest.raises(ValueError, match="a bug"):
        at_once(list(range(20)), fn, cap=8)
    assert sorted(done) == [i for i in range(20) if i != 3]


def test_the_cap_is_well_above_a_fleet_and_checked(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("")
    assert load(str(path)).cascade_parallel == 4096
    for bad in ("0", "65537"):
        path.write_text(f"cascade_parallel = {bad}\n")
        with pytest.raises(ValueError, match="cascade_parallel must be from 1 to 65536 calls at once"):
            load(str(path))
    path.write_text("cascade_parallel = 65536\n")
    assert load(str(path)).cascade_parallel == 65536
