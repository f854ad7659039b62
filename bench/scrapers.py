"""What /metrics scrapers in a loop cost the panels' isRunning, through the real gunicorn server
(2 workers) on a throw-away Dovecot host.

Prints, from one run, side by side for the server's state read at most every 10 s (the default
`metrics_state_interval`) and at every scrape (`metrics_state_interval = 0`, how every scrape
read it before):
  1. isRunning p50 while --scrapers clients scrape /metrics in a loop / isRunning p50 alone  [<= 2]
  2. processes started in the host per scrape (its PID namespace's count over the run)   [0]
  3. scrapes per second and a scrape's p50 in the loop (scrapes wait their turn in the server's
     scrape lane, server/lanes.py), and a lone scrape's p50 (one every 50 ms, as a Prometheus
     server would scrape: it never waits)

The scrapers run in processes of their own (no GIL shared with the isRunning client), on the
daemon's unix socket, as do the isRunning calls.

Run as root after scripts/setup:  .venv/bin/python bench/scrapers.py [--seconds 8] [--scrapers 64]
Every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import REPO, dovecot_daemon, latency
from daemon import write_config

from imapd_ctl.cli import client

# argv: socket, threads, seconds; scrapes /metrics in a loop from each thread until the time is
# up (or 100,000 scrapes), then prints {"scrapes": n, "p50": seconds}.
SCRAPER = r"""
import json, statistics, sys, threading, time
from imapd_ctl.cli import client
sock, threads, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end, lat, lock = time.monotonic() + seconds, [], threading.Lock()
def loop():
    mine = []
    while time.monotonic() < end and len(mine) < 100000 // threads:
        t = time.perf_counter()
        status, body = client.request(sock, "GET", "/metrics")
        assert status == 200 and b"imapd_ctl_imap_up" in body, status
        mine.append(time.perf_counter() - t)
    with lock:
        lat.extend(mine)
ts = [threading.Thread(target=loop) for _ in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps({"scrapes": len(lat), "p50": statistics.median(lat) if lat else 0}))
"""


def measure(host, d, scrapers: int, seconds: float) -> dict:
    def is_running():
        assert client.call(d.socket, d.key, "isRunning") == (0, True)

    def lone_scrape():
        assert client.request(d.socket, "GET", "/metrics")[0] == 200

    for _ in range(50):        # warm both workers
        is_running()
        client.request(d.socket, "GET", "/metrics")
    alone, _ = latency(is_running, 2000, seconds)
    lone, _ = latency(lone_scrape, 40, seconds, gap=0.05)
    procs = 4
    began = host.last_pid()
    running = [subprocess.Popen([sys.executable, "-c", SCRAPER, str(d.socket), str(scrapers // procs),
                                 str(seconds + 1)], stdout=subprocess.PIPE, text=True,
                                env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}) for _ in range(procs)]
    time.sleep(0.5)
    loaded, calls = latency(is_running, 2000, seconds)
    results = [json.loads(p.communicate(timeout=seconds + 60)[0]) for p in running]
    started = host.last_pid() - began - 1        # not the reading itself
    scrapes = sum(r["scrapes"] for r in results)
    return {"alone": alone, "loaded": loaded, "calls": calls, "scrapes": scrapes,
            "rate": scrapes / (seconds + 1), "lone": lone, "scrape_p50": sorted(r["p50"] for r in results)[procs // 2],
            "forks_per_scrape": max(0, started) / max(1, scrapes)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0, help="time bound of each measurement")
    ap.add_argument("--scrapers", type=int, default=64, help="concurrent scrapers (a multiple of 4, at most 256)")
    ap.add_argument("--index", type=int, default=None, help="mail host index (default: the first free)")
    args = ap.parse_args()
    scrapers = max(4, min(256, args.scrapers // 4 * 4))
    figures = {}
    with dovecot_daemon(args.index, workers=2) as (host, d, share):
        figures["every 10 s"] = measure(host, d, scrapers, args.seconds)
        write_config(share, d.node_id, 2, "metrics_state_interval = 0\n")
        d.stop()
        d.start()
        figures["every scrape"] = measure(host, d, scrapers, args.seconds)
    print(f"Dovecot, 2 workers, unix socket, {scrapers} scrapers in a loop, one run; the state read:")
    for name, f in figures.items():
        print(f"  {name:12}  isRunning p50 {f['alone'] * 1e3:6.2f} ms alone, {f['loaded'] * 1e3:6.2f} ms with the "
              f"scrapers ({f['calls']} calls): ratio {f['loaded'] / f['alone']:.2f}; "
              f"{f['rate']:.0f} scrapes/s, p50 {f['scrape_p50'] * 1e3:.1f} ms (a lone scrape {f['lone'] * 1e3:.2f} ms); "
              f"{f['forks_per_scrape']:.3f} processes started per scrape")
    return 0


if __name__ == "__main__":
    sys.exit(main())
