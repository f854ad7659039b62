"""The `imapd-ctl` command: serve, call, key, check, recover."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from imapd_ctl.core import settings as settings_mod
from imapd_ctl.core.actions import PERMISSION
from imapd_ctl.core.errors import ApiError
from imapd_ctl.core.protocols import Check
from imapd_ctl.entry import access, commands


def _settings(args: argparse.Namespace) -> settings_mod.Settings:
    return access.load_settings(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    from imapd_ctl.entry import serve
    serve.run(_settings(args))
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imapd-ctl", description="Control this host's IMAP server "
                                "(InterWorx /nodeworx/mail/imap compatible).")
    p.add_argument("--config", help=f"settings file (default: $IMAPD_CTL_CONFIG or {settings_mod.DEFAULT_PATH})")
    sub = p.add_subparsers(dest="cmd", required=True)

    sub.add_parser("serve", help="run the daemon (gunicorn; unix socket + loopback)").set_defaults(fn=cmd_serve)

    commands.add_call(sub)
    commands.add_status(sub)

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
