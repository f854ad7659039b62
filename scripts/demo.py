"""The embedded default behind `scripts/run`: boot a throw-away mail host (real systemd +
Dovecot), start imapd-ctl inside it, print a key and a curl line, wait for Ctrl-C."""
from __future__ import annotations

import argparse
import faulthandler
import shutil
import signal
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from daemon import launch  # noqa: E402
from mailhost import MailHost, MailHostError, machine_ready  # noqa: E402


def _interrupt(*_):
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", type=int, default=None,
                        help="test-host number 1-250: its address is 198.18.INDEX.2 "
                             "(default: the first one no other run holds)")
    args = parser.parse_args()
    ok, reason = machine_ready()
    if not ok:
        print(f"imapd-ctl demo: cannot boot a mail host here: {reason}", file=sys.stderr)
        return 1
    # Both signals stop it, in the foreground and in the background: a shell starts background
    # jobs with SIGINT ignored, and Python then leaves it ignored unless told otherwise.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    faulthandler.register(signal.SIGUSR1, all_threads=True)    # where it is, should it ever hang
    share = Path(tempfile.mkdtemp(prefix="imapd-ctl-demo-", dir="/run"))
    host = None
    try:
        share.chmod(0o755)
        host = MailHost(args.index, binds=[str(REPO), str(share)], name="imapd-ctl-demo")
        host.boot()
        host.start_dovecot()
        daemon = launch(host, share, node_id="demo")
        print(f"""
imapd-ctl is serving inside a throw-away mail host (index {host.index}, systemd pid {host.pid}, Dovecot on {host.address}:143).
API key (EMAIL permission): {daemon.key}
Socket: {daemon.socket}

Try:
curl -s --unix-socket {daemon.socket} -H 'Authorization: Bearer {daemon.key}' http://localhost/nodeworx/mail/imap/isRunning
IMAPD_CTL_KEY={daemon.key} {REPO}/.venv/bin/imapd-ctl --config {daemon.config} call isRunning

More: the CLI's `call restart`, `call update imap_max_connections=20 dry_run=1`; curl's POST .../stop,
.../start, .../update -d imap_max_connections=20; GET /openapi.json; the reference at /docs.
Ctrl-C (or SIGTERM) stops the daemon and throws the host away.""", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    except MailHostError as exc:
        print(f"imapd-ctl demo: {exc}", file=sys.stderr)
        return 1
    finally:
        # Shutting down must not be cut short by a second Ctrl-C.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if host is not None:
            print("imapd-ctl demo: shutting the mail host down", file=sys.stderr, flush=True)
            host.shutdown()
        shutil.rmtree(share, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
