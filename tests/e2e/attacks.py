"""What an outsider with no key can do to the server, and what a panel's keyed isRunning sees
meanwhile: shared by test_e2e_serving.py (the venv's modules) and test_package.py (Debian's,
from the .deb). The attacker runs inside the host (Debian's /usr/bin/python3, standard library
only) against the daemon's unix socket or a TCP address, so every byte crosses a real socket.

Each attack holds N connections open for the whole measurement: bodies announced and never
sent (chunked, `Expect: 100-continue`, half a chunk, a chunk-size line without its end),
unfinished heads, unfinished keyless bodies, replies that are never read or read a byte a
second, and a flood of idle connections past the worker's connection limit. Keyed isRunning
polls (a new connection each, as the panels make them) are timed before and during."""
from __future__ import annotations

import json

RATIO_MAX = 3.0      # the bar: isRunning's median under attack <= 3 x its median before

ATTACKER = r"""
import json, resource, socket, statistics, sys, threading, time
target, key, n, flood, polls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

def connect(rcvbuf=None):
    if target.startswith("/"):
        s = socket.socket(socket.AF_UNIX)
    else:
        s = socket.socket(socket.AF_INET6 if target.startswith("[") else socket.AF_INET)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    if target.startswith("/"):
        s.connect(target)
    else:
        host, port = target.rsplit(":", 1)
        s.connect((host.strip("[]"), int(port)))
    return s

POLL = ("GET /nodeworx/mail/imap/isRunning HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + key + "\r\nConnection: close\r\n\r\n").encode()
WANT = b'{"status": 0, "payload": true}\n'

def poll():
    started = time.perf_counter()
    s = connect()
    s.sendall(POLL)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    if not (data.startswith(b"HTTP/1.1 200") and data.endswith(WANT)):
        raise SystemExit("isRunning answered " + repr(data[:300]))
    return time.perf_counter() - started

def sample():
    return [poll() for _ in range(polls)]

for _ in range(20):      # warm both sides
    poll()
before = sample()

ISR = b"POST /nodeworx/mail/imap/isRunning HTTP/1.1\r\nHost: x\r\n"
ATTACKS = {
    "chunked body never sent": (ISR + b"Transfer-Encoding: chunked\r\n\r\n", None),
    "100-continue body never sent": (ISR + b"Expect: 100-continue\r\nContent-Length: 60000\r\n\r\n", None),
    "half a chunk": (ISR + b"Transfer-Encoding: chunked\r\n\r\n1000\r\nabc", None),
    "chunk-size line without end": (ISR + b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 7, None),
    "unfinished head": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: ", None),
    "unfinished keyless body": (b"POST /xmlrpc HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n"
                                + b"<" * 60000, None),
    "replies never read": (b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 3, 4096),
    "replies read a byte a second": (b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 3, 4096),
}
held, opened = {}, {}
for name, (raw, rcvbuf) in ATTACKS.items():
    held[name] = []
    for _ in range(n):
        try:
            s = connect(rcvbuf)
            s.sendall(raw)
            held[name].append(s)
        except OSError:
            pass          # refused or cut at once: the server's choice
    opened[name] = len(held[name])
idle = []
give_up = time.monotonic() + 20
while len(idle) < flood and time.monotonic() < give_up:
    try:
        idle.append(connect())
    except BlockingIOError:
        time.sleep(0.005)     # the listen backlog is full: the server is accepting (or cutting)
    except OSError:
        pass
opened["idle flood"] = len(idle)
stop = threading.Event()

def trickle():        # one byte a second from each slow reader, for as long as the polls run
    while not stop.wait(1.0):
        for s in held["replies read a byte a second"]:
            try:
                s.setblocking(False)
                s.recv(1)
            except OSError:
                pass

reader = threading.Thread(target=trickle, daemon=True)
reader.start()
time.sleep(0.5)
during = sample()
stop.set()
for s in [s for group in held.values() for s in group] + idle:
    s.close()
print(json.dumps({"before_ms": statistics.median(before) * 1e3, "during_ms": statistics.median(during) * 1e3,
                  "worst_during_ms": max(during) * 1e3,
                  "worst_at": during.index(max(during)), "p90_during_ms": sorted(during)[int(len(during) * 0.9)] * 1e3, "polls": len(during), "opened": opened}))
"""


def assert_isrunning_holds(host, target: str, key: str, *, per_attack: int = 64, flood: int = 0,
                           polls: int = 100) -> dict:
    """Run every attack at once against `target` (a unix socket path or host:port inside
    `host`), `per_attack` connections each plus `flood` idle ones; each keyed poll must be
    answered, and their median during the attacks be within RATIO_MAX of it before."""
    out = host.run(["/usr/bin/python3", "-c", ATTACKER, target, key, str(per_attack), str(flood), str(polls)],
                   timeout=300).stdout
    figures = json.loads(out)
    figures["ratio"] = round(figures["during_ms"] / figures["before_ms"], 2)
    assert figures["polls"] == polls, figures
    assert figures["ratio"] <= RATIO_MAX, figures
    return figures
