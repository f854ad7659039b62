"""The `imapd-ctl` command: serve, call, status, key, node, check, recover. Exit codes: entry.access."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Callable

from imapd_ctl.core import settings as settings_mod
from imapd_ctl.core.actions import ACTIONS, PERMISSION, lookup
from imapd_ctl.core.errors import ApiError
from imapd_ctl.core.protocols import Check
from imapd_ctl.entry import access

if TYPE_CHECKING:
    from imapd_ctl.adapters.cluster import Cluster


def _settings(args: argparse.Namespace) -> settings_mod.Settings:
    try:
        return settings_mod.load(args.config)
    except ValueError as exc:
        print(f"imapd-ctl: {exc}", file=sys.stderr)
        # 78 (EX_CONFIG): the unit's RestartPreventExitStatus, so systemd does not retry a bad file.
        raise SystemExit(78)


def cmd_serve(args: argparse.Namespace) -> int:
    from imapd_ctl.entry import serve
    serve.run(_settings(args))
    return 0


def _parse_pairs(pairs: list[str]) -> dict[str, str]:
    inputs = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"imapd-ctl: inputs are name=value, got {pair!r}")
        inputs[name] = value
    return inputs


def _session(args: argparse.Namespace) -> tuple[settings_mod.Settings, str, Cluster]:
    """The settings, the daemon's socket and the cluster registry for call/status."""
    from imapd_ctl.entry import wiring
    s = _settings(args)
    return s, args.socket or s.socket, wiring.build(s).cluster


def cmd_call(args: argparse.Namespace) -> int:
    from imapd_ctl.entry import calls, show
    paths = calls.controllers()
    controller = paths[args.controller]
    inputs = _parse_pairs(args.inputs)
    try:
        # A quick local check of names and values (every controller serves the one table).
        lookup(args.action).validate(inputs, strict=True)
    except ApiError as exc:
        raise access.Refusal(access.USAGE, exc.message) from None
    s, sock, cluster = _session(args)
    key = access.read_key(args)
    caller = calls.target(s, cluster, args.node, sock=sock, key=key, controller=controller)
    answer = caller(args.action, inputs)
    if not answer.reached:
        raise access.Refusal(access.UNREACHABLE, str(answer.payload))
    remote = args.node if args.node not in (None, s.node_id) else None
    refused = access.refused_key(answer.status, answer.payload, remote)
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
    from imapd_ctl.entry import calls, show, status, statusview, wiring
    s, sock, cluster = _session(args)
    if args.key is not None:
        access.read_key(args)        # refuses --key before anything is asked
    style = show.Style.for_stream(sys.stdout)
    if args.all:
        key = access.read_key(args)
        callers = {s.node_id: calls.local(sock, key, timeout=s.node_timeout)}
        callers.update({node_id: calls.remote(cluster, node_id) for node_id in sorted(cluster.nodes)})
        result = status.cluster_status(s.node_id, callers)
        print(json.dumps(result, indent=2) if args.json else statusview.cluster_table(result, style))
        return int(result["exit"])
    report = status.node_status(
        s, sock, key_of=lambda: access.read_key(args),
        caller_of=lambda key: calls.local(sock, key, timeout=s.node_timeout),
        flavour_of=lambda: wiring.build(s).flavour)
    print(json.dumps(report, indent=2) if args.json else statusview.node_screen(report, style))
    return int(report["exit"])


def cmd_key(args: argparse.Namespace) -> int:
    from imapd_ctl.entry import wiring
    store = wiring.build(_settings(args)).keys
    try:
        if args.key_cmd == "create":
            secret = store.create(args.name, args.perm or [PERMISSION])
            print(secret)
            print(f"key {args.name!r} created; it is shown only this once", file=sys.stderr)
        elif args.key_cmd == "import":
            secret = args.value if args.value is not None else sys.stdin.readline()
            store.import_key(args.name, secret, args.perm or [PERMISSION])
            print(f"key {args.name!r} imported", file=sys.stderr)
        elif args.key_cmd == "list":
            for e in store.entries():
                print(f"{e['name']}\t{','.join(e['perms'])}\t{e['created']}")
        elif args.key_cmd == "revoke":
            if not store.revoke(args.name):
                print(f"imapd-ctl: no key named {args.name!r}", file=sys.stderr)
                return 1
            print(f"key {args.name!r} revoked", file=sys.stderr)
    except ApiError as exc:
        print(f"imapd-ctl: {exc.message}", file=sys.stderr)
        return 2
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from imapd_ctl.entry import wiring
    s = _settings(args)
    ok = True

    def report(check: Check) -> None:
        nonlocal ok
        ok &= check.ok
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.what}: {check.detail}")

    report(Check("settings", True, s.source))
    services = wiring.build(s)
    try:
        report(Check("systemd over D-Bus", True, f"systemd {services.systemd.ping()}"))
        flavour = services.flavour
        report(Check("IMAP server", True, f"{flavour.name} ({', '.join(flavour.units)})"))
        for check in flavour.checks():
            report(check)
    except ApiError as exc:
        report(Check("systemd / IMAP server", False, exc.message))
        return 1
    report(Check("state dir writable", os.access(s.state_dir, os.W_OK) or not os.path.exists(s.state_dir),
                 s.state_dir))
    pending = services.journal.pending()
    report(Check("no interrupted change", pending is None,
                 "none" if pending is None else f"{pending.txn_id} at step {pending.step} (run `imapd-ctl recover`)"))
    return 0 if ok else 1


def cmd_node(args: argparse.Namespace) -> int:
    from imapd_ctl.entry import wiring
    s = _settings(args)
    cluster = wiring.build(s).cluster
    if args.node_cmd == "list":
        print(f"{s.node_id}\t(this node)")
        for node in cluster.nodes.values():
            print(f"{node.id}\t{node.url}\tca={node.ca}")
        return 0
    failed = 0
    for node in cluster.nodes.values():   # check: does each node answer, with our key and CA?
        status, payload = cluster.call(node, "isRunning", {})
        if status == 0:
            print(f"ok   {node.id}: answers; IMAP server {'running' if payload else 'NOT running'}")
        else:
            failed += 1
            print(f"FAIL {node.id}: status {status}: {payload}")
    if not cluster.nodes:
        print("no other nodes are configured ([[nodes]] in the settings)")
    return 1 if failed else 0


def cmd_recover(args: argparse.Namespace) -> int:
    from imapd_ctl.entry.recovery import recover
    outcome = recover(_settings(args))
    print(outcome.message, file=sys.stdout if outcome.ok else sys.stderr)
    return 0 if outcome.ok else 1


def _controllers() -> dict[str, str]:
    from imapd_ctl.entry.calls import controllers
    return controllers()


def _call_options(p: argparse.ArgumentParser) -> None:
    access.add_key_options(p)
    p.add_argument("--socket", metavar="PATH", help="the daemon's unix socket (default: from the settings)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imapd-ctl", description="Control this host's IMAP server "
                                "(InterWorx /nodeworx/mail/imap compatible).")
    p.add_argument("--config", help=f"settings file (default: $IMAPD_CTL_CONFIG or {settings_mod.DEFAULT_PATH})")
    sub = p.add_subparsers(dest="cmd", required=True)

    sub.add_parser("serve", help="run the daemon (gunicorn; unix socket + loopback)").set_defaults(fn=cmd_serve)

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
    c.add_argument("--controller", choices=tuple(_controllers()), default="imap",
                   help="the controller to call (default: imap)")
    _call_options(c)
    c.set_defaults(fn=cmd_call)

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

    k = sub.add_parser("key", help="manage API keys")
    ksub = k.add_subparsers(dest="key_cmd", required=True)
    for name, helptext in (("create", "create a key and print it once"),
                           ("import", "store an existing key (e.g. from InterWorx), read from stdin")):
        kp = ksub.add_parser(name, help=helptext)
        kp.add_argument("name")
        kp.add_argument("--perm", action="append", help=f"permission (repeatable; default {PERMISSION})")
        if name == "import":
            kp.add_argument("--value", help="the key (default: first line of stdin)")
    ksub.add_parser("list", help="list key names and permissions")
    kr = ksub.add_parser("revoke", help="revoke a key by name")
    kr.add_argument("name")
    k.set_defaults(fn=cmd_key)

    n = sub.add_parser("node", help="the cluster's nodes")
    nsub = n.add_subparsers(dest="node_cmd", required=True)
    nsub.add_parser("list", help="show the node registry")
    nsub.add_parser("check", help="call every node (HTTPS, verified) and show which answer")
    n.set_defaults(fn=cmd_node)

    sub.add_parser("check", help="check D-Bus, the IMAP server, config and validator").set_defaults(fn=cmd_check)
    sub.add_parser("recover", help="finish or undo a change a crash interrupted").set_defaults(fn=cmd_recover)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.fn
    try:
        return command(args)
    except access.Refusal as exc:
        print(f"imapd-ctl: {exc.message}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
