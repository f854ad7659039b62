"""Benchmark: wall time of a cascaded restart to N nodes ÷ a single-node restart.

Fan-out is parallel, so the ratio should stay near 1 (a serial fan-out would be about N).
Boots N throw-away mail hosts on a bridge (see tests/e2e/cluster_fixture.py; bench/fleet.py for a fleet), each with Dovecot
and imapd-ctl talking HTTPS to the others. Run as root after scripts/setup:
    .venv/bin/python bench/cascade.py [--nodes 3] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from cluster_fixture import HostCluster  # noqa: E402


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="restarts of each kind (bounded: at most 10)")
    args = ap.parse_args()
    rounds = max(1, min(args.rounds, 10))
    cluster = HostCluster(size=args.nodes)
    try:
        cluster.start()
        first = cluster.nodes[0].daemon

        def single():
            status, payload = first.call("restart")
            assert status == 0, payload

        def cascaded():
            status, payload = first.call("restart", {"cascade_to_nodes": 1})
            assert status == 0 and len(payload) == args.nodes, payload

        single_t, cascade_t = [], []
        for _ in range(rounds):   # interleaved, so drift affects both alike
            single_t.append(timed(single))
            cascade_t.append(timed(cascaded))
        s, c = statistics.median(single_t), statistics.median(cascade_t)
        print(f"restart, median of {rounds}: single node {s:.3f} s; cascaded to {args.nodes} nodes {c:.3f} s")
        print(f"ratio cascaded/single: {c / s:.2f}  (serial fan-out would be about {args.nodes})")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
