"""Benchmark: a cascade to a fleet costs about one node's time.

    .venv/bin/python bench/fleet.py real [--nodes 30] [--rounds 3]
    .venv/bin/python bench/fleet.py sim [--sizes 100,300,1000] [--latency 1.0] [--timeout 3]

`real` boots N throw-away mail hosts on one bridge (tests/e2e/cluster_fixture.py; real systemd,
Dovecot and imapd-ctl with one worker each; node1 holds the registry of the others) and prints,
measured side by side (interleaved rounds, medians): a cascaded restart / a single restart; the
floor, N `systemctl restart dovecot` run at once across the hosts / one; a cascaded update /
a single update; `status --all` from node1; and the daemons' PSS in total and per node.

`sim` runs stand-ins of N peers (bench/simpeers.py: TLS listeners on 127.0.0.1 answering the
daemon's API after `--latency` seconds) and a caller process using the real fan-out
(imapd_ctl.adapters.cluster, cli.status.cluster_status) against them: at each size, a cascade's
wall time against one peer's, the caller's peak memory growth per node, `status --all` wall
time (its plan over a kept-alive connection per node, and over a connection per call, to see
what the reuse buys), and a cascade with a tenth of the peers dead, slow past the timeout or
refusing the key. Run as root after scripts/setup; nothing here is a test.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import REPO  # noqa: F401  (puts tests/e2e on sys.path)

from cluster_fixture import HostCluster  # noqa: E402
from daemon import IMAPD_CTL, UNIT  # noqa: E402

PSS = ("total=0; for p in $(cat /sys/fs/cgroup$(systemctl show -p ControlGroup --value {unit})/cgroup.procs); "
       "do total=$((total + $(awk '/^Pss:/ {{print $2}}' /proc/$p/smaps_rollup))); done; echo $total")


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


INOTIFY = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_PER_HOST = 8      # a booted host's systemd and journald hold 4, the daemon's workers one each


def inotify_room(hosts: int) -> None:
    """Every host runs as root, and root's inotify instances are counted together: Debian's 128
    stop the 28th host's systemd at boot. Raise the limit (never lower it) so N hosts fit."""
    need = hosts * INOTIFY_PER_HOST + 128
    have = int(INOTIFY.read_text())
    if have < need:
        INOTIFY.write_text(f"{need}\n")
        print(f"fs.inotify.max_user_instances raised from {have} to {need} for {hosts} hosts", flush=True)


def real(args: argparse.Namespace) -> None:
    rounds = max(1, min(args.rounds, 10))
    inotify_room(args.nodes)
    cluster = HostCluster(size=args.nodes, workers=1, mesh=False, setup_parallel=args.setup_parallel)
    try:
        began = time.monotonic()
        cluster.start()
        print(f"{args.nodes} hosts up in {time.monotonic() - began:.0f} s; {load()}", flush=True)
        first = cluster.nodes[0]
        ids = [n.id for n in cluster.nodes]

        def ok(action: str, inputs: dict, cascaded: bool) -> None:
            status, payload = first.daemon.call(action, {**inputs, "cascade_to_nodes": int(cascaded)})
            assert status == 0, payload
            if cascaded:
                assert sorted(o["id"] for o in payload) == sorted(ids), payload

        def each_own(action: str, inputs: dict) -> None:
            """The action asked of every node's own daemon at once, no cascade: what the machine
            can do, the floor of a cascade."""
            with ThreadPoolExecutor(len(cluster.nodes)) as pool:
                answers = list(pool.map(lambda n: n.daemon.call(action, inputs), cluster.nodes))
            assert all(status == 0 for status, _ in answers), answers

        def raw_restarts(nodes) -> None:
            with ThreadPoolExecutor(len(nodes)) as pool:
                list(pool.map(lambda n: n.host.systemctl("restart", "dovecot"), nodes))

        def status_all() -> None:
            r = first.host.run([IMAPD_CTL, "--config", first.daemon.config, "status", "--all", "--json",
                                "--key-stdin"], input=first.daemon.key, check=False, timeout=60)
            assert r.returncode == 0 and r.stdout.count('"reached": true') == args.nodes, r.stdout[-2000:]

        times: dict[str, list[float]] = {k: [] for k in ("single restart", "cascaded restart", "raw: one",
                                                          f"raw: {args.nodes} at once", "single update",
                                                          "cascaded update", "each node's own restart at once",
                                                          "each node's own update at once", "status --all")}
        for i in range(rounds):      # interleaved, so a drift of the shared machine weighs on all alike
            times["single restart"].append(timed(lambda: ok("restart", {}, False)))
            times["cascaded restart"].append(timed(lambda: ok("restart", {}, True)))
            times["raw: one"].append(timed(lambda: raw_restarts(cluster.nodes[:1])))
            times[f"raw: {args.nodes} at once"].append(timed(lambda: raw_restarts(cluster.nodes)))
            value = {"imap_max_connections": 40 + i % 2}
            times["single update"].append(timed(lambda: ok("update", value, False)))
            times["cascaded update"].append(timed(lambda: ok("update", {"imap_max_connections": 50 + i % 2}, True)))
            times["each node's own restart at once"].append(timed(lambda: each_own("restart", {})))
            times["each node's own update at once"].append(timed(
                lambda: each_own("update", {"imap_max_connections": 60 + i % 2})))
            times["status --all"].append(timed(status_all))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"medians of {rounds} rounds ({load()}):")
        for name, value in med.items():
            print(f"  {name:<32} {value:6.3f} s   ({', '.join(f'{v:.2f}' for v in times[name])})")
        print(f"cascaded/single restart: {med['cascaded restart'] / med['single restart']:.2f}")
        print(f"floor, raw restarts {args.nodes} at once/one: "
              f"{med[f'raw: {args.nodes} at once'] / med['raw: one']:.2f}")
        own_update, own_restart = med["each node's own update at once"], med["each node's own restart at once"]
        print(f"cascaded/single update: {med['cascaded update'] / med['single update']:.2f}; cascaded update / "
              f"each node's own at once: {med['cascaded update'] / own_update:.2f}")
        print(f"cascaded restart / each node's own at once: {med['cascaded restart'] / own_restart:.2f}")
        pss = [int(n.host.run(["sh", "-c", PSS.format(unit=UNIT)]).stdout) / 1024 for n in cluster.nodes]
        print(f"daemons' PSS: {sum(pss):.0f} MiB over {len(pss)} nodes, {statistics.mean(pss):.1f} MiB each "
              f"(min {min(pss):.1f}, max {max(pss):.1f}; node1, the caller: {pss[0]:.1f})")
    finally:
        cluster.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("real", help="N real mail hosts")
    r.add_argument("--nodes", type=int, default=30)
    r.add_argument("--rounds", type=int, default=3, help="rounds of each measure (at most 10)")
    r.add_argument("--setup-parallel", type=int, default=4, help="hosts booted and set up at once")
    s = sub.add_parser("sim", help="simulated peers")
    s.add_argument("--sizes", default="100,300,1000")
    s.add_argument("--latency", type=float, default=1.0, help="seconds a peer takes to answer an action")
    s.add_argument("--timeout", type=float, default=3.0, help="node_timeout of the caller")
    s.add_argument("--servers", type=int, default=2, help="processes serving the peers")
    args = ap.parse_args()
    if args.mode == "real":
        real(args)
    else:
        from simpeers import simulate
        simulate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
