"""The cluster adapter (imapd_ctl.adapters.cluster) against real HTTPS servers on loopback,
with a throw-away CA made by the openssl command: verified TLS, and each way a node can fail
becoming a 502 with the reason."""
import json
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imapd_ctl.adapters.cluster import Cluster, Node
from imapd_ctl.core.errors import NotFound

KEY = "ictl_node-key-0000000000000000000000000000"


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(where, name):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "2", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=where)
    return where / f"{name}.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a certificate it signed for 127.0.0.1, and an unrelated CA."""
    where = tmp_path_factory.mktemp("pki")
    ca = _make_ca(where, "ca")
    other = _make_ca(where, "other")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", "/CN=127.0.0.1", "-keyout", "node.key", "-out", "node.csr", cwd=where)
    (where / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "node.pem", cwd=where)
    return {"ca": str(ca), "other": str(other), "cert": str(where / "node.pem"), "key": str(where / "node.key")}


class _Handler(BaseHTTPRequestHandler):
    """Answers like imapd-ctl; /delay-N sleeps N ms first; paths ending in /html answer HTML."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append((self.path, self.headers["Authorization"], json.loads(body)))
        if "/delay-" in self.path:
            time.sleep(int(self.path.split("/delay-")[1].split("/")[0]) / 1000)
        if self.path.endswith("/html"):
            reply, ctype = b"<html>not here</html>", "text/html"
        else:
            reply, ctype = json.dumps({"status": 0, "payload": True}).encode(), "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(pki):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.seen = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["cert"], pki["key"])
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def node(server, pki, node_id="mail2", path="", ca="ca"):
    return Node(node_id, f"https://127.0.0.1:{server.server_address[1]}{path}", KEY, pki[ca])


def test_call_over_verified_tls(server, pki):
    server.seen.clear()
    cluster = Cluster("mail1", [node(server, pki)], timeout=5)
    assert cluster.call(cluster.node("mail2"), "isRunning", {"x": 1}) == (0, True)
    assert server.seen == [("/nodeworx/mail/imap/isRunning", f"Bearer {KEY}", {"x": 1})]


def test_certificate_of_another_ca_is_refused(server, pki):
    cluster = Cluster("mail1", [node(server, pki, ca="other")], timeout=5)
    status, payload = cluster.call(cluster.node("mail2"), "isRunning", {})
    assert status == 502 and payload.startswith("node mail2: refused its TLS certificate")


def test_no_answer_in_time_is_a_timeout(server, pki):
    cluster = Cluster("mail1", [node(server, pki, path="/delay-1500")], timeout=0.3)
    status, payload = cluster.call(cluster.node("mail2"), "isRunning", {})
    assert (status, payload) == (502, f"node mail2: no answer from {cluster.node('mail2').url} within 0.3 s")


def test_a_reply_that_is_not_an_envelope(server, pki):
    cluster = Cluster("mail1", [node(server, pki)], timeout=5)
    status, payload = cluster.call(cluster.node("mail2"), "html", {})
    assert (status, payload) == (502, "node mail2: not an imapd-ctl reply (HTTP 200)")


def test_a_node_that_refuses_the_connection(pki):
    import socket
    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = Cluster("mail1", [Node("mail2", f"https://127.0.0.1:{port}", KEY, pki["ca"])], timeout=5)
    status, payload = cluster.call(cluster.node("mail2"), "isRunning", {})
    assert status == 502 and payload.startswith(f"node mail2: cannot reach https://127.0.0.1:{port}: ")


def test_unknown_node_and_the_local_one(server, pki):
    cluster = Cluster("mail1", [node(server, pki), node(server, pki, node_id="mail1")], timeout=5)
    assert set(cluster.nodes) == {"mail2"}     # this node is never called over the network
    assert cluster.known() == "mail1 (this node), mail2"
    with pytest.raises(NotFound, match="unknown node 'mail9'"):
        cluster.node("mail9")


def test_replay_runs_on_every_node_in_parallel_without_cascading_again(server, pki):
    server.seen.clear()
    nodes = [node(server, pki, node_id=f"mail{i}", path="/delay-400") for i in (4, 2, 3)]
    cluster = Cluster("mail1", nodes, timeout=5)
    started = time.monotonic()
    outcomes = cluster.replay("update", {"imap_max_connections": 50, "imap_mem_limit": None,
                                         "cascade_to_nodes": 1})
    took = time.monotonic() - started
    assert outcomes == [{"id": f"mail{i}", "status": 0, "payload": True} for i in (2, 3, 4)]
    assert took < 1.0, f"{took:.2f} s: the nodes were called one after the other"
    assert [body for _, _, body in server.seen] == [{"imap_max_connections": 50, "cascade_to_nodes": 0}] * 3
    assert Cluster("mail1", [], timeout=5).replay("update", {}) == []


def test_the_key_is_read_from_its_key_file_at_each_call_and_only_if_private(server, pki, tmp_path):
    key_file = tmp_path / "mail2.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    server.seen.clear()
    remote = Node("mail2", f"https://127.0.0.1:{server.server_address[1]}", "", pki["ca"], key_file=str(key_file))
    cluster = Cluster("mail1", [remote], timeout=5)
    assert cluster.call(cluster.node("mail2"), "isRunning", {}) == (0, True)
    assert server.seen[-1][1] == f"Bearer {KEY}"
    calls = len(server.seen)
    key_file.chmod(0o644)
    status, payload = cluster.call(cluster.node("mail2"), "isRunning", {})
    assert status == 502 and payload.startswith("node mail2: not called: ") and f"chmod 0600 {key_file}" in payload
    assert len(server.seen) == calls                      # the key never left the host
    key_file.unlink()
    status, payload = cluster.call(cluster.node("mail2"), "isRunning", {})
    assert status == 502 and "No such file or directory" in payload, payload


def test_calls_and_replays_go_to_the_controller_named(server, pki):
    server.seen.clear()
    cluster = Cluster("mail1", [node(server, pki)], timeout=5)
    assert cluster.call(cluster.node("mail2"), "isRunning", {}, "/nodeworx/mail/simap") == (0, True)
    assert cluster.replay("stop", {}, "/nodeworx/mail/simap")[0]["status"] == 0
    assert [path for path, _, _ in server.seen] == ["/nodeworx/mail/simap/isRunning", "/nodeworx/mail/simap/stop"]
