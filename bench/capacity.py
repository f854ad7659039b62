"""What queryCapacity and a /metrics scrape cost, through the real gunicorn server on a
throw-away Dovecot host.

Prints, from one run, side by side (median latency, one client, unix socket):
  1. queryCapacity ÷ isRunning, and a /metrics scrape ÷ isRunning (scrapes 20 ms apart);
  2. queryCapacity ÷ the shell approach (`doveadm service status imap imap-login` +
     `ss -Htn state established '( sport = :143 or sport = :993 )'`, run inside the host);
  3. queryCapacity with --connections open IMAP connections ÷ with none (and the count it saw).

Run as root after scripts/setup:  .venv/bin/python bench/capacity.py [--seconds 5]
Every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import socket
import sys

from common import dovecot_daemon, latency, shell_latency

from imapd_ctl.cli import client

SHELL = ("doveadm service status imap imap-login >/dev/null && "
         "ss -Htn state established '( sport = :143 or sport = :993 )' | wc -l")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="time bound of each measurement")
    ap.add_argument("--connections", type=int, default=50, help="open IMAP connections for (3), at most 90")
    ap.add_argument("--index", type=int, default=None, help="mail host index (default: the first free)")
    args = ap.parse_args()
    n_conn = max(1, min(args.connections, 90))     # below imap-login's default process_limit (100)

    conns: list[socket.socket] = []
    with dovecot_daemon(args.index) as (host, d, _):
        seen = [0]

        def is_running():
            assert client.call(d.socket, d.key, "isRunning") == (0, True)

        def capacity():
            status, payload = client.call(d.socket, d.key, "queryCapacity")
            assert status == 0, payload
            seen[0] = next(p["in_use"] for p in payload["ports"] if p["port"] == 143)

        def scrape():
            status, body = client.request(d.socket, "GET", "/metrics")
            assert status == 200 and b"imapd_ctl_imap_up" in body

        for fn in (is_running, capacity, scrape):   # warm every worker
            for _ in range(10):
                fn()
        run_lat, run_n = latency(is_running, 500, args.seconds)
        cap_lat, cap_n = latency(capacity, 500, args.seconds)
        # A scrape at a time, 20 ms apart, as Prometheus scrapes: back to back, each would wait
        # for the server's scrape lane (server/lanes.py) and this would time the lane's spacing.
        scrape_lat, scrape_n = latency(scrape, 500, args.seconds, gap=0.02)
        shell_lat, shell_n = shell_latency(host, SHELL, 200, args.seconds)
        for _ in range(n_conn):
            c = socket.create_connection((host.address, 143), timeout=10)
            assert c.recv(100).startswith(b"* OK")
            conns.append(c)
        busy_lat, busy_n = latency(capacity, 500, args.seconds)

        print("Dovecot, the daemon as launched by the tests, unix socket, 1 client, median latency, one run")
        print(f"  isRunning                 {run_lat * 1e3:7.2f} ms  ({run_n} samples)")
        print(f"  queryCapacity             {cap_lat * 1e3:7.2f} ms  ({cap_n} samples)")
        print(f"  GET /metrics              {scrape_lat * 1e3:7.2f} ms  ({scrape_n} samples)")
        print(f"  shell approach            {shell_lat * 1e3:7.2f} ms  ({shell_n} samples: doveadm service status + ss)")
        print(f"  queryCapacity, {n_conn} open  {busy_lat * 1e3:7.2f} ms  ({busy_n} samples; it saw {seen[0]} in use)")
        print(f"  ratio queryCapacity/isRunning:         {cap_lat / run_lat:.2f}")
        print(f"  ratio /metrics/isRunning:              {scrape_lat / run_lat:.2f}")
        print(f"  ratio queryCapacity/shell:             {cap_lat / shell_lat:.2f}")
        print(f"  ratio queryCapacity {n_conn} open/none:     {busy_lat / cap_lat:.2f}")
        for c in conns:
            c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
