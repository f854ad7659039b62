"""Huge request bodies against a running daemon, and the memory its workers used meanwhile:
shared by test_e2e_bodies.py (the venv's modules) and test_package.py (Debian's, from the
.deb). The sender runs inside the host (Debian's /usr/bin/python3, standard library only) and
talks to the daemon's unix socket; the workers' peak RSS (VmHWM, which only grows) is read
before and after, so what a body made them hold shows without timing anything."""
from __future__ import annotations

import json

HUGE = 512 << 20            # 512 MiB
PEAK_GROWTH_MAX = 16 << 20  # what a worker's peak RSS may grow by over all the sends
PATHS = ("/nodeworx/mail/imap/update", "/xmlrpc")

SENDER = r"""
import json, socket, sys
sock_path, path, framing, key, size = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
s = socket.socket(socket.AF_UNIX)
s.settimeout(120)
s.connect(sock_path)
head = [f"POST {path} HTTP/1.1", "Host: localhost",
        "Content-Type: " + ("text/xml" if path == "/xmlrpc" else "application/json")]
if key:
    head.append(f"Authorization: Bearer {key}")
head.append("Transfer-Encoding: chunked" if framing == "chunked" else f"Content-Length: {size}")
s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
block = b"x" * 65536
frame = b"%x\r\n" % len(block) + block + b"\r\n" if framing == "chunked" else block
sent = 0
try:
    while sent < size:
        s.sendall(frame)
        sent += len(block)
    if framing == "chunked":
        s.sendall(b"0\r\n\r\n")
except OSError:
    pass        # the server answered and closed without reading the rest: as it should
reply = b""
try:
    while part := s.recv(65536):
        reply += part
except OSError:
    pass
head, _, body = reply.partition(b"\r\n\r\n")
print(json.dumps({"status_line": head.split(b"\r\n")[0].decode(), "body": body.decode(), "sent": sent}))
"""


def peaks(host, pids) -> dict[int, int]:
    """VmHWM (peak resident set, bytes) of each process."""
    found = {}
    for pid in pids:
        status = host.read_file(f"/proc/{pid}/status").decode()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
        found[pid] = int(kib) * 1024
    return found


def assert_bounded(host, sock: str, key: str, workers) -> dict:
    """Send HUGE bytes to each transport, with Content-Length and chunked, with and without a
    key: each is a 413 envelope, and no worker's peak RSS grew by more than PEAK_GROWTH_MAX.
    Returns the figures (for the test's output)."""
    before = peaks(host, workers)
    sent = {}
    for path in PATHS:
        for framing in ("length", "chunked"):
            for with_key in (True, False):
                out = host.run(["/usr/bin/python3", "-c", SENDER, sock, path, framing,
                                key if with_key else "", str(HUGE)], timeout=300).stdout
                reply = json.loads(out)
                case = (path, framing, with_key)
                assert reply["status_line"].startswith("HTTP/1.1 413"), (case, reply)
                envelope = json.loads(reply["body"])
                assert envelope["status"] == 413 and "over the limit" in envelope["payload"], (case, reply)
                sent[case] = reply["sent"]
    after = peaks(host, workers)
    growth = {pid: after[pid] - before[pid] for pid in workers}
    assert max(growth.values()) <= PEAK_GROWTH_MAX, (before, after)
    return {"peak_rss_before_MiB": {p: round(v / 2**20, 1) for p, v in before.items()},
            "peak_rss_after_MiB": {p: round(v / 2**20, 1) for p, v in after.items()},
            "most_sent_before_the_server_closed_MiB": round(max(sent.values()) / 2**20, 1)}


ODD_PATHS = [("POST", "/nodeworx/mail/imap//restart", 404), ("POST", "//nodeworx/mail/imap/restart", 404),
             ("POST", "/nodeworx/mail/imap/restart/", 404), ("GET", "/healthz/", 404),
             ("GET", "//healthz", 404), ("POST", "/xmlrpc/", 404), ("POST", "/nodeworx//mail/imap/isRunning", 404),
             ("GET", "/xmlrpc", 405), ("DELETE", "/nodeworx/mail/imap/isRunning", 405)]


def assert_odd_paths_answer_the_envelope(host, sock: str, key: str) -> None:
    """Paths with doubled or trailing slashes: a JSON 404/405 envelope, never a redirect or
    an HTML page (curl inside the host, --path-as-is: the path goes out as written)."""
    for method, path, expect in ODD_PATHS:
        out = host.run(["curl", "-sS", "--path-as-is", "--max-time", "30", "--unix-socket", sock,
                        "-X", method, "-H", f"Authorization: Bearer {key}",
                        "-w", "\n%{http_code} %{content_type}", f"http://localhost{path}"]).stdout
        body, _, tail = out.rpartition("\n")
        assert tail == f"{expect} application/json", (method, path, out)
        assert json.loads(body)["status"] == expect, (method, path, out)
