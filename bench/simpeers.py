"""Stand-ins for imapd-ctl peers, and the caller that measures the fan-out against them
(bench/fleet.py sim).

A peer answers what a cascade and `status --all` ask (adapters.cluster.Session): POST
{controller}/{action}, a JSON body, `Authorization: Bearer KEY`; the reply is the envelope
{"status", "payload"} over HTTP/1.1, kept alive. Each is a TLS listener on 127.0.0.1 with a
certificate for 127.0.0.1; many are served by one asyncio process. Behaviours: "ok" (a change
takes `latency` s, a query answers at once), "slow" (answers nothing before the caller's
timeout has long passed), "badkey" (401 unknown API key). A "dead" peer is a port nothing
listens on (made by the caller, not served).
"""
from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO
from cluster_fixture import issue_cert, make_ca  # noqa: E402

KEY = "ictl_" + "s" * 43
QUERIES = {"isRunning": True, "queryStartOnBoot": {"mda_imap_startonboot": 1},
           "queryUpdate": {"imap_mem_limit": 268435456, "imap_max_connections": 30,
                           "imap_secure_mem_limit": 268435456, "imap_secure_max_connections": 30},
           "queryCapacity": {"saturated": False, "summary": "3 of 60 connections"}}
SERVE_LIMIT = 1800          # seconds a server process lives at most, whatever happens to its parent


def _nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def _reply(status: int, payload, http: int = 200) -> bytes:
    body = json.dumps({"status": status, "payload": payload}).encode()
    return (f"HTTP/1.1 {http} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


async def _peer(behaviour: str, latency: float, slow: float, reader, writer) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            action = lines[0].split()[1].rsplit("/", 1)[-1]
            json.loads(body or b"{}")
            if behaviour == "slow":
                await asyncio.sleep(slow)
            if behaviour == "badkey" or headers.get("authorization") != f"Bearer {KEY}":
                writer.write(_reply(401, "unknown API key", 401))
            elif action in QUERIES:
                writer.write(_reply(0, QUERIES[action]))
            else:
                await asyncio.sleep(latency)
                writer.write(_reply(0, f"{action} done"))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def _serve(behaviours: list[str], latency: float, slow: float, cert: str, key: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    servers = []
    for b in behaviours:
        servers.append(await asyncio.start_server(
            lambda r, w, b=b: _peer(b, latency, slow, r, w), "127.0.0.1", 0, ssl=ctx, backlog=64))
    print(json.dumps([s.sockets[0].getsockname()[1] for s in servers]), flush=True)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: done.done() or done.set_result(None))   # parent gone: EOF
    await asyncio.wait_for(done, SERVE_LIMIT)


def serve_main() -> None:
    behaviours, latency, slow = json.loads(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    _nofile(4 * len(behaviours) + 256)
    asyncio.run(_serve(behaviours, latency, slow, sys.argv[5], sys.argv[6]))


class Peers:
    """Server processes for `behaviours` (split among `servers`), and ports for dead peers."""

    def __init__(self, behaviours: list[str], latency: float, slow: float, pki: Path, servers: int):
        self.procs: list[subprocess.Popen] = []
        served = [(i, b) for i, b in enumerate(behaviours) if b != "dead"]
        self.ports = [0] * len(behaviours)
        for k in range(max(1, servers)):
            share = served[k::max(1, servers)]
            if not share:
                continue
            proc = subprocess.Popen([sys.executable, __file__, "serve", json.dumps([b for _, b in share]),
                                     str(latency), str(slow), str(pki / "server.pem"), str(pki / "server.key")],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.procs.append(proc)
            for (i, _), port in zip(share, json.loads(proc.stdout.readline())):
                self.ports[i] = port
        for i, b in enumerate(behaviours):
            if b == "dead":      # a port that was free a moment ago, and nothing listens on now
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    self.ports[i] = s.getsockname()[1]

    def cpu(self) -> float:
        """CPU seconds the server processes have used."""
        tick = os.sysconf("SC_CLK_TCK")
        return sum(sum(int(x) for x in open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()[11:13]) / tick
                   for p in self.procs)

    def __enter__(self) -> "Peers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for proc in self.procs:
            proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def probe(registry: list[dict], timeout: float, rounds: int) -> dict:
    """Run the caller (bench/fanprobe.py) in a process of its own, so its memory is its own."""
    r = subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(Path(__file__).with_name("fanprobe.py")),
                        "-", str(timeout), str(rounds)],
                       input=json.dumps(registry), capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout)


def simulate(args) -> None:
    pki = Path(tempfile.mkdtemp(prefix="imapd-ctl-sim-", dir="/var/tmp"))
    make_ca(pki, "ca")
    issue_cert(pki, "ca", "peer", "127.0.0.1", pki)
    key_file = pki / "peer.key.txt"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    slow = args.timeout * 4

    def registry(ports: list[int]) -> list[dict]:
        return [{"id": f"sim{i + 1:04d}", "url": f"https://127.0.0.1:{p}", "ca": str(pki / "ca.pem"),
                 "key_file": str(key_file)} for i, p in enumerate(ports)]

    print(f"latency {args.latency} s per change, node_timeout {args.timeout} s, {args.servers} server processes; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    try:
        for n in (int(x) for x in args.sizes.split(",")):
            with Peers(["ok"] * n, args.latency, slow, pki, args.servers) as peers:
                served = peers.cpu()
                got = probe(registry(peers.ports), args.timeout, 3)
                served = peers.cpu() - served
            print(f"{n:5d} peers: single {got['single']:.3f} s; cascade {got['cascade']:.3f} s "
                  f"(+{got['cascade'] - got['single']:.3f} s); peak memory +{got['grow_kib'] / 1024:.1f} MiB "
                  f"({got['grow_kib'] / n:.0f} KiB per node); status --all {got['status']:.3f} s kept-alive, "
                  f"{got['status_fresh']:.3f} s a connection per call; {got['rows_ok']}/{n} rows ok; CPU per "
                  f"cascade: caller {got['cascade_cpu']:.2f} s, all the probe's calls: peers {served:.2f} s; "
                  f"load {got['load']}", flush=True)
            mix = ["dead", "slow", "badkey"] + ["ok"] * 7
            behaviours = [mix[i % 10] for i in range(n)]
            with Peers(behaviours, args.latency, slow, pki, args.servers) as peers:
                began = time.monotonic()
                got = probe(registry(peers.ports), args.timeout, 1)
                took = time.monotonic() - began
            print(f"{n:5d} peers, a tenth each dead, slow past the timeout, refusing the key: cascade "
                  f"{got['cascade']:.3f} s (timeout {args.timeout} s); rows by reason: {got['reasons']} "
                  f"(probe process {took:.1f} s)", flush=True)
    finally:
        subprocess.run(["rm", "-rf", str(pki)])


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve_main()
