"""`imapd-ctl node list|check|add|remove`: the cluster's registry (adapters.registry), the
settings' [[nodes]] and one file per node in nodes_dir."""
from __future__ import annotations

import argparse
import json
import os
import ssl
import sys

from imapd_ctl.adapters import registry
from imapd_ctl.adapters.cluster import Cluster
from imapd_ctl.core.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    n = sub.add_parser("node", help="the cluster's nodes")
    nsub = n.add_subparsers(dest="node_cmd", required=True)
    nl = nsub.add_parser("list", help="show the node registry",
                         description="This node, then each node of the registry: the settings' [[nodes]] and "
                                     "the files of nodes_dir (default /etc/imapd-ctl/nodes.d): id, URL, CA file.")
    nl.add_argument("--json", action="store_true", help="a JSON array of {id, url, ca, this, source}")
    nsub.add_parser("check", help="call every node at once (HTTPS, verified) and show which answer")
    na = nsub.add_parser("add", help="add a node: a file in nodes_dir and its key beside it (0600)",
                         description="Write nodes_dir/ID.toml (url, ca) and nodes_dir/ID.key, the key that node "
                                     "issued for this one (`imapd-ctl key create NAME` there), read from stdin "
                                     "or --key-file, never from the command line. The daemon reads it at its "
                                     "next call: no restart. Then: imapd-ctl node check.")
    na.add_argument("id", help="the node's id (its node_id setting)")
    na.add_argument("url", help="https://HOST:PORT of that node's imapd-ctl")
    na.add_argument("--ca", required=True, help="the CA file (PEM) that signed that node's certificate, or the "
                                                "certificate itself when it is self-signed")
    na.add_argument("--key-file", help="read the key from this file (default: stdin)")
    na.add_argument("--force", action="store_true", help="replace a node of that id in nodes_dir")
    nr = nsub.add_parser("remove", help="remove a node of nodes_dir (its file and its key)")
    nr.add_argument("id")
    return n


def run(args: argparse.Namespace, s: Settings, cluster: Cluster) -> int:
    reg = registry.Registry(s.nodes, s.nodes_dir)
    if args.node_cmd == "list":
        return _list(args, s, cluster, reg)
    if args.node_cmd == "check":
        return _check(cluster, s)
    if args.node_cmd == "add":
        return _add(args, s, reg)
    return _remove(args, s, reg)


def _list(args: argparse.Namespace, s: Settings, cluster: Cluster, reg: registry.Registry) -> int:
    nodes = sorted(cluster.nodes.values(), key=lambda n: n.id)
    if args.json:
        print(json.dumps([{"id": s.node_id, "url": None, "ca": None, "this": True, "source": "settings"}]
                         + [{"id": n.id, "url": n.url, "ca": n.ca, "this": False, "source": reg.source(n.id)}
                            for n in nodes], indent=1))
        return 0
    print(f"{s.node_id}\t(this node)")
    for node in nodes:
        print(f"{node.id}\t{node.url}\tca={node.ca}\t{reg.source(node.id)}")
    return 0


def _check(cluster: Cluster, s: Settings) -> int:
    answers = cluster.on_each("isRunning", {})
    if not answers:
        print(f"no other nodes are configured ([[nodes]] in the settings, or files in {s.nodes_dir})")
        return 0
    failed = 0
    for node, (status, payload) in answers:
        if status == 0:
            print(f"ok   {node.id}: answers; IMAP server {'running' if payload else 'NOT running'}")
        else:
            failed += 1
            print(f"FAIL {node.id}: status {status}: {payload}")
    return 1 if failed else 0


def _fail(text: str) -> int:
    print(f"imapd-ctl: {text}", file=sys.stderr)
    return 2


def _add(args: argparse.Namespace, s: Settings, reg: registry.Registry) -> int:
    if args.id == s.node_id:
        return _fail(f"node add: {args.id} is this node (node_id)")
    source = reg.source(args.id)
    if source == "settings":
        return _fail(f"node add: {args.id} is in the settings' [[nodes]] ({s.source}); edit or remove it there")
    if source and not args.force:
        return _fail(f"node add: {args.id} is already in {source}; --force replaces it")
    try:
        ssl.create_default_context(cafile=args.ca)
    except (OSError, ssl.SSLError) as exc:
        return _fail(f"node add: --ca: {args.ca} is not a readable PEM certificate file ({exc})")
    try:
        if args.key_file:
            with open(args.key_file, encoding="ascii", errors="surrogateescape") as fh:
                key = fh.read(4096).strip()
        else:
            if sys.stdin.isatty():
                print(f"paste the key {args.id} issued for this node, then Ctrl-D:", file=sys.stderr)
            key = sys.stdin.read(4096).strip()
    except OSError as exc:
        return _fail(f"node add: --key-file: cannot read {args.key_file}: {exc.strerror}")
    if not key or any(c.isspace() for c in key) or not key.isascii():
        return _fail("node add: the key must be one word of ASCII (as `imapd-ctl key create` printed it)")
    try:
        path, key_path = registry.add(s.nodes_dir, args.id, args.url, os.path.abspath(args.ca), key)
    except ValueError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"node add: cannot write in {s.nodes_dir}: {exc.strerror or exc}")
    print(f"added {args.id}: {path} (key in {key_path}, 0600); check it with: imapd-ctl node check")
    return 0


def _remove(args: argparse.Namespace, s: Settings, reg: registry.Registry) -> int:
    source = reg.source(args.id)
    if source == "settings":
        return _fail(f"node remove: {args.id} is in the settings' [[nodes]] ({s.source}); remove it there")
    gone = registry.remove(s.nodes_dir, args.id)
    if not gone:
        return _fail(f"node remove: no node {args.id} in {s.nodes_dir}")
    print(f"removed {args.id}: {', '.join(gone)}")
    return 0
