"""Benchmark isRunning through the real gunicorn server on a throw-away mail host.

Prints, from one run, side by side:
  1. isRunning req/s ÷ /healthz (no-op endpoint) req/s, same client, same concurrency;
  2. isRunning latency ÷ the shell approach's latency
     (`systemctl is-active dovecot` + `ss -ltn 'sport = :143'`, run inside the host).

Run as root after scripts/setup:  .venv/bin/python bench/isrunning.py [--seconds 5]
Every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from daemon import launch  # noqa: E402
from mailhost import MailHost  # noqa: E402

from imapd_ctl.entry import client  # noqa: E402

SHELL_TIMER = r"""
import statistics, subprocess, sys, time
n, limit = int(sys.argv[1]), float(sys.argv[2])
samples, end = [], time.monotonic() + limit
while len(samples) < n and time.monotonic() < end:
    t = time.perf_counter()
    active = subprocess.run(["systemctl", "is-active", "dovecot"], capture_output=True, text=True).stdout.strip() == "active"
    listening = bool(subprocess.run(["ss", "-ltnH", "sport = :143"], capture_output=True, text=True).stdout.strip())
    samples.append(time.perf_counter() - t)
    assert active and listening
print(statistics.median(samples), len(samples))
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


def latency(fn, n: int, seconds: float) -> tuple[float, int]:
    samples, end = [], time.monotonic() + seconds
    while len(samples) < n and time.monotonic() < end:
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples), len(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="time bound of each measurement")
    ap.add_argument("--threads", type=int, default=4, help="concurrent clients for req/s")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    ap.add_argument("--index", type=int, default=230)
    args = ap.parse_args()

    share = Path(tempfile.mkdtemp(prefix="imapd-ctl-bench-", dir="/var/tmp"))
    host = MailHost(args.index, binds=[str(REPO), str(share)])
    try:
        host.boot()
        host.start_dovecot()
        d = launch(host, share, workers=args.workers)

        def is_running():
            status, payload = client.call(d.socket, d.key, "isRunning")
            assert (status, payload) == (0, True), (status, payload)

        def noop():
            status, _ = client.request(d.socket, "GET", "/healthz")
            assert status == 200

        for fn in (noop, is_running):   # warm every worker (lazy D-Bus connection)
            for _ in range(20):
                fn()

        noop_rps, noop_n = throughput(noop, args.seconds, args.threads, 50_000)
        run_rps, run_n = throughput(is_running, args.seconds, args.threads, 50_000)
        run_lat, run_lat_n = latency(is_running, 2_000, args.seconds)
        out = host.run([sys.executable, "-c", SHELL_TIMER, "500", str(args.seconds)],
                       timeout=args.seconds + 60).stdout.split()
        shell_lat, shell_n = float(out[0]), int(out[1])

        print(f"gunicorn workers={args.workers}, clients={args.threads}, unix socket, one run")
        print(f"  /healthz (no-op)   {noop_rps:8.0f} req/s  ({noop_n} requests)")
        print(f"  isRunning          {run_rps:8.0f} req/s  ({run_n} requests)")
        print(f"  ratio isRunning/no-op req/s:           {run_rps / noop_rps:.2f}")
        print(f"  isRunning median latency   {run_lat * 1e3:7.2f} ms  ({run_lat_n} samples, 1 client)")
        print(f"  shell approach median      {shell_lat * 1e3:7.2f} ms  ({shell_n} samples: "
              "systemctl is-active + ss -ltn)")
        print(f"  ratio isRunning/shell latency:         {run_lat / shell_lat:.2f}")
    finally:
        host.shutdown()
        shutil.rmtree(share, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
