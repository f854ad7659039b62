"""The `imapd-ctl` command: serve, call, key, node, tls, check, recover."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

from imapd_ctl import __version__
from imapd_ctl.core import settings as settings_mod
from imapd_ctl.core.actions import PERMISSION, PERMISSIONS
from imapd_ctl.core.errors import ApiError
from imapd_ctl.operations import prose
from imapd_ctl.core.protocols import Check
from imapd_ctl.cli import access, auditview, commands, nodes


def _settings(args: argparse.Namespace) -> settings_mod.Settings:
    return access.load_settings(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    from imapd_ctl.daemon import serve
    serve.run(_settings(args))
    return 0


def cmd_key(args: argparse.Namespace) -> int:
    from imapd_ctl.daemon import wiring
    store = wiring.build(_settings(args)).keys
    try:
        if args.key_cmd == "create":
            secret = store.create(args.name, args.perm or [PERMISSION])
            print(secret)
            print(f"key {args.name!r} created; it is shown only this once", file=sys.stderr)
        elif args.key_cmd == "import":
            given = _key_to_import(args)
            if given is None:
                return 2
            store.import_key(args.name, given, args.perm or [PERMISSION])
            print(f"key {args.name!r} imported", file=sys.stderr)
        elif args.key_cmd == "list":
            entries = store.entries()
            if args.json:
                print(json.dumps(entries, indent=1))
            else:
                for e in entries:
                    print(f"{e['name']}\t{','.join(e['perms'])}\t{e['created']}")
        elif args.key_cmd == "revoke":
            if not store.revoke(args.name):
                print(f"imapd-ctl: no key named {args.name!r}", file=sys.stderr)
                return 1
            print(f"key {args.name!r} revoked", file=sys.stderr)
    except ApiError as exc:
        print(f"imapd-ctl: {prose.message(exc)}", file=sys.stderr)
        return 2
    return 0


def _key_to_import(args: argparse.Namespace) -> str | None:
    """The key (or InterWorx key block) from --file or stdin, read whole; never from argv,
    where every user sees it (ps, /proc) and the shell history keeps it."""
    if args.value is not None:
        print("imapd-ctl: --value is refused: a key on the command line is visible to every user "
              "of the host (ps) and kept in shell history; pipe the key or its InterWorx block "
              "on stdin, or give --file PATH", file=sys.stderr)
        return None
    if args.file is not None:
        try:
            with open(args.file, encoding="ascii", errors="surrogateescape") as f:
                return f.read(64 * 1024)
        except OSError as exc:
            print(f"imapd-ctl: --file: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return None
    if sys.stdin.isatty():
        print("paste the key or the InterWorx key block, then Ctrl-D:", file=sys.stderr)
    return sys.stdin.read(64 * 1024)


def cmd_check(args: argparse.Namespace) -> int:
    from imapd_ctl.daemon import wiring
    s = _settings(args)
    ok = True

    def report(check: Check) -> None:
        nonlocal ok
        ok &= check.ok
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.what}: {check.detail}")

    report(Check("settings", True, s.source))
    from imapd_ctl.cli.status import health
    daemon = health(s.socket, s.node_timeout)
    report(Check("daemon answers", daemon["ok"], f"{s.socket}: {daemon['detail']}"))
    from imapd_ctl.adapters import secrets
    for secret in s.secret_files():
        problem = secrets.problem(secret, secrets.daemon_uid(s.state_dir))
        report(Check(f"secret file private: {secret.holds}", problem is None, problem or f"{secret.path} (owner only)"))
    services = wiring.build(s)
    try:
        report(Check("systemd over D-Bus", True, f"systemd {services.systemd.ping()}"))
        flavour = services.flavour
        report(Check("IMAP server", True, f"{flavour.name} ({', '.join(flavour.units)})"))
        # A host may serve 143 only: not a failure, but /nodeworx/mail/simap then answers 500.
        report(Check("IMAP over TLS (simap)", True, f"{flavour.secure_unit} on port {s.ssl_port}"
                     if flavour.secure_unit else f"no unit serves port {s.ssl_port}"))
        for check in flavour.checks():
            report(check)
    except ApiError as exc:
        report(Check("systemd / IMAP server", False, prose.message(exc)))
        return 1
    report(Check("state dir writable", os.access(s.state_dir, os.W_OK) or not os.path.exists(s.state_dir),
                 s.state_dir))
    pending = services.journal.pending()
    report(Check("no interrupted change", pending is None,
                 "none" if pending is None else f"{pending.txn_id} at step {pending.step} (run `imapd-ctl recover`)"))
    return 0 if ok else 1


def cmd_node(args: argparse.Namespace) -> int:
    from imapd_ctl.daemon import wiring
    s = _settings(args)
    return nodes.run(args, s, wiring.build(s).cluster)


def cmd_tls(args: argparse.Namespace) -> int:
    """`tls selfsigned`: a self-signed pair for the HTTPS listeners (e.g. port 2443, where
    InterWorx clients call); `tls fingerprint`: a certificate's SHA-256, for panels that pin it.
    The fingerprint goes to stdout, everything else to stderr."""
    from imapd_ctl.adapters import tls
    s = _settings(args)
    cert = args.cert or s.tls_cert or tls.DEFAULT_CERT
    try:
        if args.tls_cmd == "fingerprint":
            with open(cert, "rb") as fh:
                print(f"SHA256 Fingerprint={tls.fingerprint(fh.read())}")
            return 0
        key = args.key or s.tls_key or tls.DEFAULT_KEY
        made = tls.make_selfsigned(cert, key, args.name or tls.default_names(), args.days, force=args.force)
    except OSError as exc:
        print(f"imapd-ctl: cannot read {cert}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"imapd-ctl: {prose.message(exc)}", file=sys.stderr)
        return 2
    print(f"SHA256 Fingerprint={made.fingerprint}")
    configured = (s.tls_cert, s.tls_key) == (made.cert, made.key)
    print(f"made {made.cert} (0644) and {made.key} (0600): self-signed for {', '.join(made.names)}, valid "
          f"{made.days} days.", file=sys.stderr)
    if not configured:
        print(f"To serve it where InterWorx clients call (https://HOST:2443), in {s.source}:\n"
              f'  listen = ["127.0.0.1:8143", "0.0.0.0:2443"]\n  tls_cert = "{made.cert}"\n  tls_key = "{made.key}"',
              file=sys.stderr)
    print("Then: systemctl restart imapd-ctl. Panels that pin the certificate take the fingerprint above.",
          file=sys.stderr)
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from imapd_ctl.daemon.recovery import recover
    outcome = recover(_settings(args))
    print(outcome.message, file=sys.stdout if outcome.ok else sys.stderr)
    return 0 if outcome.ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imapd-ctl", description="Control this host's IMAP server "
                                "(InterWorx /nodeworx/mail/imap compatible).")
    p.add_argument("--config", help=f"settings file (default: $IMAPD_CTL_CONFIG or {settings_mod.DEFAULT_PATH})")
    p.add_argument("--version", action="version", version=f"imapd-ctl {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    sub.add_parser("serve", help="run the daemon (gunicorn; unix socket + loopback)",
                   description="Run the daemon in the foreground: gunicorn with the settings' workers, "
                               "on the unix socket (systemd's, if socket-activated) and the TCP "
                               "listeners of `listen`; an interrupted change is recovered first "
                               "(within recovery_timeout). systemd's imapd-ctl.service runs this."
                   ).set_defaults(fn=cmd_serve)

    commands.add_call(sub)
    commands.add_status(sub)
    auditview.add_audit(sub)

    k = sub.add_parser("key", help="manage API keys")
    ksub = k.add_subparsers(dest="key_cmd", required=True)
    for name, helptext in (("create", "create a key and print it once"),
                           ("import", "store an existing key (e.g. an InterWorx key block) read "
                                      "from stdin or --file")):
        kp = ksub.add_parser(name, help=helptext)
        kp.add_argument("name")
        kp.add_argument("--perm", action="append", choices=list(PERMISSIONS), metavar="PERM",
                        help="a permission the key holds (repeatable; default " + PERMISSION + "): "
                             + "; ".join(f"{name}: {what}" for name, what in PERMISSIONS.items()))
        if name == "import":
            kp.add_argument("--file", help="read the key or InterWorx key block from this file "
                            "(default: stdin, read whole)")
            kp.add_argument("--value", help=argparse.SUPPRESS)   # refused, with what to use instead
    kl = ksub.add_parser("list", help="list key names and permissions",
                         description="One line per key: name, permissions, when it was made (tab-separated); "
                                     "the keys themselves are never stored, only their hashes.")
    kl.add_argument("--json", action="store_true", help="a JSON array of {name, perms, created}")
    kr = ksub.add_parser("revoke", help="revoke a key by name")
    kr.add_argument("name")
    k.set_defaults(fn=cmd_key)

    n = nodes.add_parser(sub)
    n.set_defaults(fn=cmd_node)

    t = sub.add_parser("tls", help="the HTTPS listeners' certificate")
    tsub = t.add_subparsers(dest="tls_cmd", required=True)
    ts = tsub.add_parser("selfsigned", help="make a self-signed key pair and print its SHA-256 fingerprint")
    ts.add_argument("--name", action="append", help="DNS name or IP address the panels call (repeatable; "
                    "default: this host's names)")
    ts.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    ts.add_argument("--force", action="store_true", help="replace existing files")
    ts.add_argument("--key", help="key file (default: tls_key of the settings, else /etc/imapd-ctl/tls/imapd-ctl.key)")
    for tp in (ts, tsub.add_parser("fingerprint", help="print a certificate's SHA-256 fingerprint")):
        tp.add_argument("--cert", help="certificate file (default: tls_cert of the settings, else "
                        "/etc/imapd-ctl/tls/imapd-ctl.pem)")
    t.set_defaults(fn=cmd_tls)

    sub.add_parser("check", help="check the daemon, D-Bus, the IMAP server, config and validator",
                   description="Check, one line each (ok/FAIL): the settings, secret files' modes, that the "
                               "daemon answers on its socket, systemd over D-Bus, the IMAP server and its "
                               "configuration, the validator, the state directory, and that no change is "
                               "interrupted. Exit 0 only if all are ok.").set_defaults(fn=cmd_check)
    sub.add_parser("recover", help="finish or undo a change a crash interrupted",
                   description="Finish (if it was verified) or undo the configuration change that a "
                               "crash interrupted, from its journal; reports what was done. The daemon "
                               "refuses changes while such a journal is pending.").set_defaults(fn=cmd_recover)
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
