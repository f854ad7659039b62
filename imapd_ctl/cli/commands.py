"""`imapd-ctl call` and `imapd-ctl status`: their arguments and what they do. Where a call goes
is cli.calls, what status gathers cli.status, the words cli.show and cli.statusview;
the exit codes and errors cli.access. Every answer stays data until it is printed here."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from imapd_ctl.adapters.cluster import Cluster
from imapd_ctl.core import settings as settings_mod
from imapd_ctl.core.actions import ACTIONS, lookup
from imapd_ctl.core.errors import ApiError
from imapd_ctl.cli import access, calls


def _parse_pairs(pairs: list[str]) -> dict[str, str]:
    """NAME=VALUE arguments; anything else is a usage error (exit 2), as for argparse's own."""
    inputs = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise access.Refusal(access.USAGE, f"inputs are given as NAME=VALUE (for example "
                                               f"imap_max_connections=60), not {pair!r}")
        inputs[name] = value
    return inputs


def _session(args: argparse.Namespace) -> tuple[settings_mod.Settings, str, Cluster]:
    """The settings, the daemon's socket and the cluster registry for call/status."""
    from imapd_ctl.daemon import wiring
    s = access.load_settings(args.config)
    return s, args.socket or s.socket, wiring.build(s).cluster


def cmd_call(args: argparse.Namespace) -> int:
    from imapd_ctl.cli import show
    paths = calls.controllers()
    controller = paths[args.controller]
    inputs = _parse_pairs(args.inputs)
    try:
        # A quick local check of names and values (every controller serves the one table).
        lookup(args.action).validate(inputs, strict=True)
    except ApiError as exc:
        raise access.Refusal(access.USAGE, exc.message) from None
    s, sock, cluster = _session(args)
    key = access.key_or_operator(args, s)
    caller = calls.target(s, cluster, args.node, sock=sock, key=key, controller=controller)
    answer = caller(args.action, inputs)
    if not answer.reached:
        raise access.Refusal(access.UNREACHABLE, str(answer.payload))
    remote = args.node if args.node not in (None, s.node_id) else None
    refused = access.refused_key(answer.status, answer.payload, remote, keyless=key is None and remote is None)
    if args.json:
        print(json.dumps({"status": answer.status, "payload": answer.payload}))
    elif answer.status == 0:
        print(show.payload_text(answer.payload, show.Style.for_stream(sys.stdout)))
    elif refused is None:
        print(show.failure_text(args.action, answer.status, answer.payload, show.Style.for_stream(sys.stderr)),
              file=sys.stderr)
    if refused is not None:
        raise refused
    return access.OK if answer.status == 0 else access.FAILED


def cmd_status(args: argparse.Namespace) -> int:
    from imapd_ctl.cli import show, status, statusview
    from imapd_ctl.daemon import wiring
    s, sock, cluster = _session(args)
    if args.key is not None:
        access.read_key(args)        # refuses --key before anything is asked
    style = show.Style.for_stream(sys.stdout)
    if args.all:
        key = access.key_or_operator(args, s)
        callers = {s.node_id: calls.local(sock, key, timeout=s.node_timeout)}
        callers.update({node_id: calls.remote(cluster, node_id) for node_id in sorted(cluster.nodes)})
        result = status.cluster_status(s.node_id, callers, s.cascade_parallel)
        print(json.dumps(result, indent=2) if args.json else statusview.cluster_table(result, style))
        return int(result["exit"])
    report = status.node_status(
        s, sock, key_of=lambda: access.key_or_operator(args, s),
        caller_of=lambda key: calls.local(sock, key, timeout=s.node_timeout),
        flavour_of=lambda: wiring.build(s).flavour)
    print(json.dumps(report, indent=2) if args.json else statusview.node_screen(report, style))
    return int(report["exit"])


def _call_options(p: argparse.ArgumentParser) -> None:
    access.add_key_options(p)
    p.add_argument("--socket", metavar="PATH", help="the daemon's unix socket (default: from the settings)")


def add_call(sub: Any) -> None:
    c = sub.add_parser("call", help="call an action on the running daemon (this node or --node ID)",
                       description="Call one action of the action table and print its answer: a "
                                   "sentence, a record, a list, or for a cascade (cascade_to_nodes=1) "
                                   "a table of every node's result.",
                       epilog="actions: " + ", ".join(ACTIONS))
    c.add_argument("action", metavar="ACTION", help="an action of the controller (see ACTIONS below)")
    c.add_argument("inputs", nargs="*", metavar="name=value", help="the action's inputs")
    c.add_argument("--json", action="store_true", help="print the raw envelope {status, payload}")
    c.add_argument("--node", metavar="ID", help="run it on that node of the cluster registry "
                   "(forwarded over HTTPS with this host's key for it, like the *OnNode actions)")
    c.add_argument("--controller", choices=tuple(calls.controllers()), default="imap",
                   help="the controller to call (default: imap)")
    _call_options(c)
    c.set_defaults(fn=cmd_call)


def add_status(sub: Any) -> None:
    st = sub.add_parser("status", help="the IMAP server, its ports, limits and the daemon at a glance",
                        description="One screen for this node: the IMAP server and its version, each "
                                    "port (unit state, listening, enabled at boot, restarts), "
                                    "connections in use/limit, the limits in force, an interrupted "
                                    "change, and the daemon's health. Colour only on a terminal "
                                    "(NO_COLOR turns it off).")
    st.add_argument("--all", action="store_true", help="one row per node of the cluster registry, "
                    "every node asked at once (each within node_timeout)")
    st.add_argument("--json", action="store_true", help="the same data as JSON")
    _call_options(st)
    st.set_defaults(fn=cmd_status)
