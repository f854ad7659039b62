"""Changes the daemon cannot make safely are refused before anything is touched, with a 503
that says why, while read-only calls go on (issue 12, items 5 and 8), on a real Dovecot host:

- the audit log cannot be written: its disk is full (a small tmpfs mounted at
  /var/log/imapd-ctl inside the host, filled), or its directory is read-only: no audit line,
  no change;
- the recovery of an interrupted change hangs at serve start (dovecot.service's reload never
  ends): serve stops it at recovery_timeout and listens; changes are refused until
  `imapd-ctl recover` has finished it, then work again without a restart.

The daemon is probes.start_daemon's (restartable with IMAPD_CTL_CRASH_AT), as in the fault
tests; the fixtures come from probes.py.
"""
from __future__ import annotations

import contextlib
import http.client
import json

import pytest

from probes import (JOURNAL, OLD, ApplyFault, base, cat, ctl, dovecot_ctl, injected, probe,  # noqa: F401
                    serve, tmpfs_over, wait_log)

pytestmark = pytest.mark.mailhost

AUDIT_DIR = "/var/log/imapd-ctl"
AUDIT_LOG = f"{AUDIT_DIR}/audit.log"
RECOVERY_TIMEOUT = 3
CRASHED = (http.client.RemoteDisconnected, ConnectionError)


@pytest.fixture
def flavour():
    return "dovecot"


def changes(probe) -> list[tuple[str, dict]]:
    return [("update", probe.NEW), ("update", {**probe.NEW, "dry_run": 1}), ("stop", {}),
            ("startOnBoot", {"mda_imap_startonboot": 0}), ("restartOnNode", {"node_id": "node1"})]


def assert_changes_refused(ctl, probe, base, *reasons: str) -> None:
    """Every kind of change, over both transports, is a 503 naming `reasons`; nothing on the
    host moved; the read-only actions answer."""
    host = ctl.host
    before, activity = probe.stamps(host), probe.activity(host)
    boot = ctl.call("queryStartOnBoot")
    for action, inputs in changes(probe):
        for call in (ctl.call, ctl.route):
            status, payload = call(action, inputs)
            assert status == 503 and " refused: " in payload, (action, payload)
            for reason in reasons:
                assert reason in payload, (action, payload)
    assert probe.stamps(host) == before and probe.files(host) == base
    assert probe.activity(host) == activity
    assert ctl.call("isRunning")[0] == 0 and ctl.route("isRunning")[0] == 0
    assert ctl.call("queryUpdate")[0] == 0 and ctl.call("queryStartOnBoot") == boot
    probe.assert_serving(host)


@contextlib.contextmanager
def audit_disk_full(host):
    """A small tmpfs at the audit directory, full."""
    with tmpfs_over(host, AUDIT_DIR, "256k"):
        # the copied log goes (its last page may have room for a line): the disk stays full
        host.run(["sh", "-ec", f'rm -f {AUDIT_LOG}; set -- $(stat -f -c "%a %S" {AUDIT_DIR}); '
                               f'[ "$1" = 0 ] || fallocate -l $(($1 * $2)) {AUDIT_DIR}/.filler2; '
                               f'test "$(stat -f -c %a {AUDIT_DIR})" = 0'])
        yield


@contextlib.contextmanager
def audit_dir_read_only(host):
    """The audit directory bind-mounted read-only over itself (root cannot write it either)."""
    host.run(["mount", "--bind", AUDIT_DIR, AUDIT_DIR])
    try:
        host.run(["mount", "-o", "remount,bind,ro", AUDIT_DIR])
        yield
    finally:
        host.run(["umount", AUDIT_DIR])


@pytest.mark.parametrize("fault, reason", [(audit_disk_full, "No space left on device"),
                                           (audit_dir_read_only, "Read-only file system")])
def test_an_unwritable_audit_log_refuses_changes_and_reads_go_on(probe, ctl, base, fault, reason):
    host = ctl.host
    with fault(host):
        assert_changes_refused(ctl, probe, base, f"the audit log {AUDIT_LOG} cannot be written "
                               f"({reason}); nothing was changed")
        assert ctl.call("isRunning") == (0, True)
    before = len(ctl.audit_lines())
    status, payload = ctl.call("update", probe.NEW)       # the log can be written again
    assert status == 0, payload
    begin, end = ctl.audit_lines("begin")[-1], ctl.audit_lines()[before:]
    assert begin["action"] == "update" and begin["inputs"]["imap_max_connections"] == probe.NEW["imap_max_connections"]
    assert [(line["action"], line["status"]) for line in end] == [("update", 0)]


def test_a_recovery_that_hangs_at_start_is_bounded(probe, ctl, base):
    host = ctl.host
    with open(ctl.config) as f:
        if "recovery_timeout" not in f.read():
            with open(ctl.config, "a") as out:
                out.write(f"recovery_timeout = {RECOVERY_TIMEOUT}\n")
    serve(ctl, env={"IMAPD_CTL_CRASH_AT": "applied"})
    with pytest.raises(CRASHED):
        ctl.call("update", probe.NEW)                 # killed after Dovecot took up NEW
    entry = json.loads(cat(host, JOURNAL))
    stuck = ApplyFault("dovecot.service", "ExecReload=\nExecReload={script}\n", "exec sleep 600\n", [], once=False)
    with injected(host, stuck):
        serve(ctl)          # its recovery restores the files, then waits on a reload that hangs
        said = (f"imapd-ctl: recover: FAILED: an interrupted change could not be finished or undone at "
                f"start: it did not finish within recovery_timeout = {RECOVERY_TIMEOUT} s and was stopped")
        assert said in wait_log(host, said)
        assert json.loads(cat(host, JOURNAL))["txn_id"] == entry["txn_id"]
        assert_changes_refused(ctl, probe, probe.files(host), "it did not finish within recovery_timeout",
                               f"(change {entry['txn_id']}, update, interrupted at step 'applied')",
                               "Changes are refused until `imapd-ctl recover` has finished it")
        reload = host.systemctl("show", "-p", "ControlPID", "--value", "dovecot.service").stdout.strip()
        assert reload != "0"
        host.run(["kill", reload])                    # end the stuck reload
    out = ctl.ctl("recover")                          # with a reload that works again
    assert f"change {entry['txn_id']} (update) was interrupted at step 'applied'" in out.stdout + out.stderr
    probe.assert_config(ctl, base, OLD)
    status, payload = ctl.call("update", probe.NEW)   # changes work again, no restart needed
    assert status == 0, payload
