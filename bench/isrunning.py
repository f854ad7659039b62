"""Benchmark isRunning through the real gunicorn server on a throw-away mail host.

Prints, from one run, side by side (issue 9's targets in brackets):
  1. isRunning req/s / /healthz (no-op endpoint) req/s, same clients, both GET  [>= 0.8]
     on the unix socket, a connection per request (as the panels' curl makes them; also
     isRunning POSTed with a JSON body, for reference), and on loopback TCP inside the host
     with keep-alive connections (wrk, the load a panel behind a proxy makes)
  2. isRunning p50 / the shell approach's p50                              [<= 0.1]
     (`systemctl is-active dovecot && ss -Hltn 'sport = :143'`, run inside the host)
  3. isRunning p50 with 5000 established TCP connections on the host / without  [<= 1.2]
  4. the daemon's PSS, master plus workers                                 [<= 80 MiB]

Run as root after scripts/setup:  .venv/bin/python bench/isrunning.py [--seconds 5] [--workers 2]
Every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time

from common import dovecot_daemon, latency, shell_latency
from daemon import UNIT

from imapd_ctl.cli import client

SHELL = "systemctl is-active dovecot >/dev/null && ss -Hltn 'sport = :143'"

# Holds N established TCP connections inside the host (a listener and N clients to it) until
# the file `stop` appears or 300 s pass; writes `ready` once they are all up.
CONNECTIONS = r"""
import os, resource, socket, sys, time
n, ready, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3]
resource.setrlimit(resource.RLIMIT_NOFILE, (3 * n + 100, 3 * n + 100))
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 9143)); srv.listen(n)
held = []
for _ in range(n):
    held.append(socket.create_connection(("127.0.0.1", 9143)))
    held.append(srv.accept()[0])
open(ready, "w").close()
end = time.monotonic() + 300
while not os.path.exists(stop) and time.monotonic() < end:
    time.sleep(0.1)
"""

PSS = r"""
import sys
total = 0
for pid in open(f"/sys/fs/cgroup{sys.argv[1]}/cgroup.procs").read().split():
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            total += int(line.split()[1])
print(total)
"""


def throughput(fn, seconds: float, threads: int, max_requests: int) -> tuple[float, int]:
    """Requests per second of fn() from `threads` clients, bounded by time and count."""
    count = [0] * threads
    end = time.monotonic() + seconds
    per_thread = max_requests // threads

    def worker(i):
        while count[i] < per_thread and time.monotonic() < end:
            fn()
            count[i] += 1

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(count) / (time.perf_counter() - started), sum(count)


def wrk_rates(host, key: str, seconds: float, connections: int, rounds: int) -> dict:
    """{name: (req/s, requests)} of keyed GETs of /healthz and isRunning over keep-alive TCP
    connections to 127.0.0.1:8143, by wrk inside the host, in alternating slices."""
    urls = {"noop": "/healthz", "get": "/nodeworx/mail/imap/isRunning"}
    done = {name: [0, 0.0] for name in urls}
    for _ in range(rounds):
        for name, url in urls.items():
            out = host.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds / rounds))}s",
                            "-H", f"Authorization: Bearer {key}", f"http://127.0.0.1:8143{url}"],
                           timeout=seconds + 60).stdout
            m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
            if m is None or "Non-2xx" in out or "Socket errors" in out:
                raise SystemExit(f"wrk: {out}")
            elapsed = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
            done[name][0] += int(m.group(1))
            done[name][1] += elapsed
    return {name: (n / elapsed, n) for name, (n, elapsed) in done.items()}


def interleaved(fns: dict, seconds: float, threads: int, max_requests: int, rounds: int) -> dict:
    """{name: (req/s, requests)} of each fn, measured in `rounds` alternating slices of
    seconds/rounds each: a drift of the machine during the run weighs on all of them alike."""
    done = {name: [0, 0.0] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            rps, n = throughput(fn, seconds / rounds, threads, max_requests // rounds)
            done[name][0] += n
            done[name][1] += n / rps
    return {name: (n / elapsed, n) for name, (n, elapsed) in done.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="time bound of each measurement")
    ap.add_argument("--threads", type=int, default=4, help="concurrent clients for req/s")
    ap.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    ap.add_argument("--connections", type=int, default=5000, help="established connections for 3.")
    ap.add_argument("--rounds", type=int, default=5, help="alternating slices of the req/s measurements")
    ap.add_argument("--keepalive", type=int, default=8, help="wrk's keep-alive TCP connections")
    args = ap.parse_args()

    with dovecot_daemon(workers=args.workers) as (host, d, share):

        # The same client work for both (GET, the key in the header, the envelope parsed), so
        # the ratio compares the server's work.
        def get(url):
            status, body = client.request(d.socket, "GET", url, key=d.key)
            return status, json.loads(body)

        def is_running():       # a panel's poll
            assert get("/nodeworx/mail/imap/isRunning") == (200, {"status": 0, "payload": True})

        def noop():
            assert get("/healthz") == (200, {"status": 0, "payload": "ok"})

        def is_running_post():  # with a JSON body ({}): Flask reads and parses it too
            status, payload = client.call(d.socket, d.key, "isRunning")
            assert (status, payload) == (0, True), (status, payload)

        for fn in (noop, is_running, is_running_post):   # warm every worker (lazy D-Bus connection)
            for _ in range(50):
                fn()

        rates = interleaved({"noop": noop, "get": is_running, "post": is_running_post}, args.seconds,
                            args.threads, 50_000, args.rounds)
        (noop_rps, noop_n), (run_rps, run_n), (post_rps, post_n) = rates["noop"], rates["get"], rates["post"]
        tcp = wrk_rates(host, d.key, args.seconds, args.keepalive, args.rounds)
        run_lat, run_lat_n = latency(is_running, 2_000, args.seconds)
        shell_lat, shell_n = shell_latency(host, SHELL, 500, args.seconds)

        quiet_lat, quiet_n = latency(is_running, 2_000, args.seconds)
        ready, stop = share / "ready", share / "stop"
        holder = threading.Thread(target=host.run, args=(
            [sys.executable, "-c", CONNECTIONS, str(args.connections), str(ready), str(stop)],),
            kwargs={"timeout": 400})
        holder.start()
        deadline = time.monotonic() + 120
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not ready.exists():
            raise SystemExit("could not open the established connections")
        established = len(host.run(["ss", "-Htn", "state", "established"]).stdout.splitlines())
        loaded_lat, loaded_n = latency(is_running, 2_000, args.seconds)
        stop.touch()
        holder.join(60)

        cgroup = host.run(["systemctl", "show", "-P", "ControlGroup", UNIT]).stdout.strip()
        pss_kib = int(host.run([sys.executable, "-c", PSS, cgroup]).stdout)
        procs = len(host.run(["cat", f"/sys/fs/cgroup{cgroup}/cgroup.procs"]).stdout.split())

        print(f"gunicorn worker processes={args.workers}, clients={args.threads}, unix socket, one run "
              f"(req/s: {args.rounds} alternating slices each)")
        print(f"  /healthz (no-op)   {noop_rps:8.0f} req/s  ({noop_n} requests)")
        print(f"  isRunning (GET)    {run_rps:8.0f} req/s  ({run_n} requests)")
        print(f"  isRunning (POST {{}}) {post_rps:7.0f} req/s  ({post_n} requests; "
              f"ratio {post_rps / noop_rps:.2f}: the body's reading and parsing)")
        print(f"  1. ratio isRunning/no-op req/s (both GET):    {run_rps / noop_rps:.2f}   (target >= 0.8)")
        (tnoop_rps, tnoop_n), (trun_rps, trun_n) = tcp["noop"], tcp["get"]
        print(f"  TCP 127.0.0.1:8143, {args.keepalive} keep-alive connections (wrk in the host):")
        print(f"  /healthz (no-op)   {tnoop_rps:8.0f} req/s  ({tnoop_n} requests)")
        print(f"  isRunning (GET)    {trun_rps:8.0f} req/s  ({trun_n} requests)")
        print(f"  1. ratio isRunning/no-op req/s, TCP keep-alive: {trun_rps / tnoop_rps:.2f}   (target >= 0.8)")
        print(f"  isRunning p50      {run_lat * 1e3:7.2f} ms  ({run_lat_n} samples, 1 client)")
        print(f"  shell p50          {shell_lat * 1e3:7.2f} ms  ({shell_n} samples: "
              "systemctl is-active dovecot && ss -Hltn 'sport = :143')")
        print(f"  2. ratio isRunning/shell p50:                 {run_lat / shell_lat:.3f}  (target <= 0.1)")
        print(f"  isRunning p50 with {established} established connections on the host "
              f"{loaded_lat * 1e3:7.2f} ms ({loaded_n}); just before, without them {quiet_lat * 1e3:7.2f} ms ({quiet_n})")
        print(f"  3. ratio p50 loaded/quiet:                    {loaded_lat / quiet_lat:.2f}   (target <= 1.2)")
        print(f"  4. daemon PSS, {procs} processes (master + workers): {pss_kib / 1024:.1f} MiB  "
              "(target <= 80 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
