"""The caller side of bench/fleet.py sim, in a process of its own: the real fan-out
(adapters.cluster.Cluster.replay as a cascade makes it, cli.status.cluster_status as `status
--all` makes it) against the peers of a registry. argv: "-" (the registry, JSON, on stdin),
node_timeout, rounds. Prints one JSON object: median seconds of one peer's restart ("single") and of the
cascade, the peak resident memory the cascade added (KiB), `status --all` kept-alive and with a
connection per call, and the rows counted by reason."""
from __future__ import annotations

import collections
import json
import os
import resource
import statistics
import sys
import time

from imapd_ctl.adapters.cluster import Cluster, Node
from imapd_ctl.cli import calls, status


def _kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reason(row: dict) -> str:
    if row["status"] == 0:
        return "ok"
    text = str(row["payload"])
    for words in ("unknown API key", "no answer", "cannot reach", "certificate"):
        if words in text:
            return f"{row['status']} {words}"
    return f"{row['status']} other"


def main() -> int:
    registry, timeout, rounds = json.load(sys.stdin), float(sys.argv[2]), int(sys.argv[3])
    nodes = [Node(e["id"], e["url"], "", e["ca"], key_file=e["key_file"]) for e in registry]
    cluster = Cluster("sim0", nodes, timeout)
    first = nodes[0]

    def single() -> float:
        t = time.perf_counter()
        cluster.call(first, "restart", {"cascade_to_nodes": 0})
        return time.perf_counter() - t

    single_t = statistics.median(single() for _ in range(rounds))
    # Warm the code paths (imports, the TLS context) before the baseline.
    status.cluster_status("sim0", {first.id: calls.remote(cluster, first.id)})
    with open("/proc/self/clear_refs", "w") as f:   # resets the peak (VmHWM) to what is resident now
        f.write("5")
    base = _kib("VmRSS")
    cascade_t, rows = [], []
    cpu = _cpu()
    for _ in range(rounds):
        t = time.perf_counter()
        rows = cluster.replay("restart", {})
        cascade_t.append(time.perf_counter() - t)
    cpu = (_cpu() - cpu) / rounds
    grow = _kib("VmHWM") - base

    def timed_status(callers: dict) -> tuple[float, dict]:
        t = time.perf_counter()
        result = status.cluster_status("sim0", callers)
        return time.perf_counter() - t, result

    kept, result = timed_status({n.id: calls.remote(cluster, n.id) for n in nodes})

    def fresh(node: Node) -> calls.Caller:
        return lambda action, inputs: calls.Answer(*cluster.call(node, action, inputs))
    fresh_t, _ = timed_status({n.id: fresh(n) for n in nodes})
    print(json.dumps({"single": single_t, "cascade": statistics.median(cascade_t), "grow_kib": grow, "cascade_cpu": cpu,
                      "status": kept, "status_fresh": fresh_t,
                      "rows_ok": sum(1 for r in result["nodes"] if not r["problems"]),
                      "reasons": dict(collections.Counter(_reason(r) for r in rows)),
                      "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
