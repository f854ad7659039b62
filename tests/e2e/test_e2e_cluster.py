"""The cluster across real hosts: three mail hosts (each its own systemd, Dovecot and
imapd-ctl) on one bridge, talking HTTPS with certificates from a CA made here; one cluster per
distribution (conftest's `dist`), shared by every test of the module."""
from __future__ import annotations

import json
import time

import pytest

from cluster_fixture import HostCluster
from daemon import IMAPD_CTL

pytestmark = pytest.mark.mailhost


@pytest.fixture(scope="module")
def cluster(dist):
    c = HostCluster(dist=dist)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def main_pid(node) -> int:
    return int(node.host.systemctl("show", "-p", "MainPID", "--value", "dovecot").stdout)


def test_restart_on_node_restarts_only_that_node(cluster):
    n1, n2, n3 = cluster.nodes
    before = [main_pid(n) for n in cluster.nodes]
    status, payload = n1.daemon.call("restartOnNode", {"node_id": "node2"})
    assert status == 0, payload
    after = [main_pid(n) for n in cluster.nodes]
    assert after[0] == before[0] and after[2] == before[2]
    assert after[1] != before[1] and after[1] > 0
    # Over XML-RPC too, from another node.
    status, payload = n3.daemon.route("restartOnNode", {"node_id": "node1"})
    assert status == 0, payload
    assert main_pid(n1) != after[0] and main_pid(n2) == after[1]


def test_is_running_on_node_reflects_each_node(cluster):
    n1, n2, n3 = cluster.nodes
    n3.host.systemctl("stop", "dovecot")
    try:
        assert n1.daemon.call("isRunningOnNode", {"node_id": "node2"}) == (0, True)
        assert n1.daemon.call("isRunningOnNode", {"node_id": "node3"}) == (0, False)
        assert n2.daemon.route("isRunningOnNode", {"node_id": "node3"}) == (0, False)
        assert n3.daemon.call("isRunningOnNode") == (0, False)          # default: this node
        assert n3.daemon.call("isRunningOnNode", {"node_id": "node1"}) == (0, True)
    finally:
        n3.host.start_dovecot()
    assert n1.daemon.call("isRunningOnNode", {"node_id": "node3"}) == (0, True)


def test_unknown_node_lists_the_known_ones(cluster):
    status, payload = cluster.nodes[0].daemon.call("stopOnNode", {"node_id": "node7"})
    assert status == 404
    for known in ("node1", "node2", "node3", "node7"):
        assert known in payload


def test_cascaded_update_changes_every_host(cluster):
    n1 = cluster.nodes[0]
    values = {"imap_mem_limit": 280_000_000, "imap_max_connections": 31,
              "imap_secure_mem_limit": 270_000_000, "imap_secure_max_connections": 29}
    status, payload = n1.daemon.call("update", {**values, "cascade_to_nodes": 1})
    assert status == 0, payload
    assert [o["id"] for o in payload] == ["node1", "node2", "node3"]
    assert all(o["status"] == 0 for o in payload), payload
    for node in cluster.nodes:
        assert node.daemon.call("queryUpdate") == (0, values), node.id
        assert node.host.run(["doveconf", "-h", "service/imap/process_limit"]).stdout.strip() == "60"
    # The replay did not cascade again: node2 saw cascade_to_nodes=0 once, from node1's key.
    replayed = [l for l in cluster.nodes[1].daemon.audit_lines() if l["action"] == "update"]
    assert replayed[-1]["inputs"]["cascade_to_nodes"] == 0
    assert replayed[-1]["key"] == "from-node1"


def test_cascade_with_a_node_down_still_changes_the_others(cluster):
    n1, n2, n3 = cluster.nodes
    n3.daemon.stop()
    try:
        status, payload = n1.daemon.call("update", {"imap_max_connections": 44, "cascade_to_nodes": 1})
        assert status == 502
        by_id = {o["id"]: o for o in payload}
        assert by_id["node1"]["status"] == 0 and by_id["node2"]["status"] == 0
        assert by_id["node3"]["status"] == 502
        assert "node3" in by_id["node3"]["payload"] and "cannot reach" in by_id["node3"]["payload"]
        for node in (n1, n2):
            assert node.daemon.call("queryUpdate")[1]["imap_max_connections"] == 44
        # A cascaded restart reports the same way.
        status, payload = n2.daemon.route("restart", {"cascade_to_nodes": 1})
        assert status == 502 and [o["status"] for o in payload] == [0, 0, 502]
    finally:
        n3.daemon.start()
    assert n3.daemon.call("queryUpdate")[1]["imap_max_connections"] != 44


def test_a_certificate_from_another_ca_is_refused(cluster):
    n1, n2, n3 = cluster.nodes
    cluster.reissue_cert(n3, rogue=True)
    try:
        status, payload = n1.daemon.call("isRunningOnNode", {"node_id": "node3"})
        assert status == 502
        assert "node3" in payload and "certificate" in payload, payload
        out = n1.daemon.ctl("node", "check", check=False)
        assert out.returncode == 1
        assert "ok   node2" in out.stdout and "FAIL node3" in out.stdout
    finally:
        cluster.reissue_cert(n3, rogue=False)
    assert n1.daemon.call("isRunningOnNode", {"node_id": "node3"}) == (0, True)


def test_node_list_and_check(cluster):
    out = cluster.nodes[1].daemon.ctl("node", "list").stdout
    assert "node2\t(this node)" in out and "node1\thttps://198.19.0.11:8443" in out
    out = cluster.nodes[1].daemon.ctl("node", "check").stdout
    assert "ok   node1" in out and "ok   node3" in out


def test_nodes_added_as_files_join_a_cascade_at_once_with_each_failure_named(cluster):
    """`node add` on node1 while its daemon runs: another name for node2 (node1's key for it), a
    node that refuses the key it is given, and an address nothing answers. The next cascade has
    one row per node with its reason; `node remove` takes them out again."""
    n1, n2, n3 = cluster.nodes
    ca, key_for_node2 = str(n1.share / "ca.pem"), str(n1.share / "node2.key")
    main = n1.host.systemctl("show", "-p", "MainPID", "--value", "imapd-ctl-test.service").stdout.strip()
    n1.daemon.ctl("node", "add", "alias2", f"https://{n2.address}:8443", "--ca", ca, "--key-file", key_for_node2)
    n1.daemon.ctl("node", "add", "badkey", f"https://{n3.address}:8443", "--ca", ca, input="ictl_" + "w" * 43 + "\n")
    n1.daemon.ctl("node", "add", "dead", "https://198.19.0.99:8443", "--ca", ca, "--key-file", key_for_node2)
    listed = {n["id"]: n["source"] for n in json.loads(n1.daemon.ctl("node", "list", "--json").stdout)}
    assert listed["node2"] == "settings" and listed["alias2"] == "/etc/imapd-ctl/nodes.d/alias2.toml"
    try:
        began = time.monotonic()
        status, payload = n1.daemon.call("startOnBoot", {"mda_imap_startonboot": 1, "cascade_to_nodes": 1})
        took = time.monotonic() - began
        assert status == 502, payload
        by_id = {o["id"]: (o["status"], o["payload"]) for o in payload}
        assert [o["id"] for o in payload] == ["node1", "alias2", "badkey", "dead", "node2", "node3"]
        assert all(by_id[n][0] == 0 for n in ("node1", "node2", "node3", "alias2")), by_id
        assert by_id["badkey"] == (401, "unknown API key")
        assert by_id["dead"][0] == 502 and by_id["dead"][1].startswith("node dead: "), by_id["dead"]
        print(f"\ncascade to 5 nodes, one unreachable: {took:.1f} s (node_timeout 20 s)")
    finally:
        for name in ("alias2", "badkey", "dead"):
            n1.daemon.ctl("node", "remove", name)
    assert n1.daemon.call("isRunningOnNode", {"node_id": "alias2"})[0] == 404
    assert n1.host.systemctl("show", "-p", "MainPID", "--value", "imapd-ctl-test.service").stdout.strip() == main


def test_status_all_is_a_row_per_node_and_names_a_stopped_daemon(cluster):
    n1, n2, n3 = cluster.nodes

    def status_all():
        # Bounded by the node timeout (20 s in the fixture): run() kills it and fails past that.
        t0 = time.monotonic()
        r = n1.host.run([IMAPD_CTL, "--config", n1.daemon.config, "status", "--all", "--json", "--key-stdin"],
                        input=n1.daemon.key, check=False, timeout=20)
        return r, time.monotonic() - t0

    r, _ = status_all()
    rows = json.loads(r.stdout)["nodes"]
    assert r.returncode == 0 and [(row["node"], row["reached"]) for row in rows] == \
        [("node1", True), ("node2", True), ("node3", True)], r.stdout
    assert rows[2]["api"]["queryUpdate"]["payload"] == n3.daemon.call("queryUpdate")[1]
    n3.daemon.stop()
    try:
        r, took = status_all()
        print(f"\nstatus --all with node3's daemon stopped: {took:.2f} s (node_timeout 20 s)")
        rows = json.loads(r.stdout)["nodes"]
        assert r.returncode == 1 and [row["reached"] for row in rows] == [True, True, False]
        assert rows[2]["problems"][0].startswith("node node3: cannot reach https://198.19.0.13:8443"), rows[2]
        table = n1.daemon.ctl("status", "--all", "--key-stdin", input=n1.daemon.key, check=False).stdout
        assert len(table.splitlines()) == 4 and "node3" in table.splitlines()[3]
        assert "UNREACHABLE" in table.splitlines()[3] and "cannot reach" in table.splitlines()[3]
    finally:
        n3.daemon.start()


def test_call_prints_a_cascade_as_a_table(cluster):
    n1 = cluster.nodes[0]
    r = n1.daemon.ctl("call", "startOnBoot", "mda_imap_startonboot=1", "cascade_to_nodes=1", "--key-stdin",
                      input=n1.daemon.key)
    assert r.stdout.splitlines() == ["NODE   STATUS  RESULT"] + [
        f"node{n}  ok      enabled dovecot.service at boot" for n in (1, 2, 3)], r.stdout
