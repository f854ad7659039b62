"""Faults only Dovecot has (issue 3, items 3 and 8; the ones both flavours share are in
tests/e2e/test_e2e_faults.py). After the fault the old configuration is intact byte for byte,
Dovecot still serves, no journal is left behind and the reply is a clear error.

Faults injected, and where:
  3. validator   an admin file with an unknown setting; an admin file that makes Dovecot reject
                 OUR values (process_min_avail above the new process_limit)
  8. no server   Dovecot purged from a second host before the daemon starts
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from daemon import REPO
from imapd_ctl.core.actions import ACTIONS
from mailhost import MailHost
from probes import (DOVECOT, DOVECOT_CONF_D, OLD, base, cat, ctl, daemon_pids, dovecot_ctl,  # noqa: F401
                    log, probe, start_daemon)

pytestmark = pytest.mark.mailhost


@pytest.fixture
def flavour():
    return DOVECOT.name


# -- 3. the validator rejects the candidate ------------------------------------------------------

@pytest.mark.parametrize("admin_file, content, expect", [
    ("10-mail.conf", "mail_locaton = maildir:~/Maildir\n", "Unknown setting: mail_locaton"),
    ("50-prefork.conf", "service imap {\n  process_min_avail = 30\n}\n",
     "process_min_avail is higher than process_limit"),
], ids=["broken-admin-file", "admin-file-conflicts-with-the-new-values"])
def test_rejected_candidate_changes_nothing(probe, ctl, base, admin_file, content, expect):
    host = ctl.host
    path = f"{DOVECOT_CONF_D}/{admin_file}"
    saved = cat(host, path)
    host.write_file(path, (saved or b"") + content.encode())
    try:
        stamp, count = probe.stamps(host), probe.activity(host)
        # 10+5 = process_limit 15: below the admin's process_min_avail of 30
        status, payload = ctl.call("update", {"imap_max_connections": 10, "imap_secure_max_connections": 5})
        assert status == 500, payload
        assert payload.startswith("Dovecot rejects the configuration") and expect in payload, payload
        assert path in payload or "dovecot.conf" in payload, payload
        assert "/var/lib" not in payload                  # the paths the operator knows, not our copy
        assert probe.stamps(host) == stamp and probe.activity(host) == count
    finally:
        if saved is None:
            host.run(["rm", "-f", path])
        else:
            host.write_file(path, saved)
    probe.assert_config(ctl, base, OLD)


# -- 8. no supported IMAP server installed -----------------------------------------------------------

# Constants of the controller, not facts about the server: they still answer. Everything that
# asks about or acts on the server (isRunning and listServiceInfo included: "false" would read
# as "installed but stopped, press Start") is an error naming the missing server.
CONSTANTS = {"listGeneralName", "listPortNumbers", "listPortNumbersArray", "listRequiredPermissions",
             "listServiceName", "listServicePage"}


@pytest.fixture(scope="module")
def bare():
    share = Path(tempfile.mkdtemp(prefix="imapd-ctl-share-", dir="/var/tmp"))
    host = MailHost(binds=[str(REPO), str(share)])
    try:
        host.boot()
        host.run(["dpkg", "--purge", "dovecot-imapd", "dovecot-core"], timeout=120)
        yield start_daemon(host, share, DOVECOT.listen_timeout)
    finally:
        host.shutdown()
        shutil.rmtree(share, ignore_errors=True)


def test_no_imap_server_installed(bare):
    pids = daemon_pids(bare.host)
    assert len(ACTIONS) == 20
    for name in ACTIONS:
        for transport, call in (("http", bare.call), ("xmlrpc", bare.route)):
            status, payload = call(name, {})
            if name in CONSTANTS:
                assert status == 0, (name, payload)
            else:
                assert status == 500, (name, transport, status, payload)
                assert "no supported IMAP server" in payload and "Dovecot" in payload, (name, payload)
    assert bare.http("GET", "/healthz")[0] == 200
    # /metrics still answers: the counts, and that the server's state cannot be read.
    status, body = bare.http("GET", "/metrics")
    assert status == 200 and b"\nimapd_ctl_state_readable 0.0\n" in body and b"imapd_ctl_imap_up" not in body
    assert daemon_pids(bare.host) == pids
    assert "Traceback" not in log(bare.host)
