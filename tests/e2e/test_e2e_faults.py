"""Faults during configuration changes and service control, on a real mail host of each flavour
(issue 3, items 4-7; tests/e2e/probes.py says what differs between Dovecot and Courier). After
every fault the old configuration is intact byte for byte (or, where the change legitimately
completed, exactly the new one: never torn, never one file old and one new), no journal or
temporary file is left, queryUpdate agrees with the files and with what the running server took
up, the server still serves (an IMAP greeting from outside on host.address:143, and for Courier
over TLS on 993), and the reply is a clear error.

Faults injected, and where:
  4. apply       Dovecot: a reload that fails once (systemd drop-in ExecReload=, job result
                 'failed'); a reload that always fails (ExecReload=/bin/false); a reload that
                 SIGKILLs Dovecot. Courier: courier-imap-ssl.service's ExecStart fails once;
                 courier-imap.service starts once as a process that never listens on 143;
                 courier-imap-ssl.service's main process is SIGKILLed by ExecStartPost once
  5. disk full   a full tmpfs over the config directory; a full tmpfs over the state dir
                 /var/lib/imapd-ctl (where validation copies and the journal live)
  6. crash       the worker SIGKILLed right after the journal records each step ("begun",
                 "written", "applied", "verified"; hook IMAPD_CTL_CRASH_AT in transaction.py),
                 recovered by the next start of the daemon or by the next mutating call
  7. D-Bus       dbus.socket + dbus.service stopped in the host, then started again; also while
                 a crashed change waits to be undone (the journal must stay until the bus is back)

Faults only one flavour has are in test_e2e_dovecot_faults.py (the validator rejects the
candidate; no IMAP server installed) and test_e2e_courier_faults.py (disk full after the first
of the two files is replaced). Races: test_e2e_races.py.

The daemon here is started by probes.start_daemon (not tests/e2e/daemon.py's launch()) so that
it can be restarted with IMAPD_CTL_CRASH_AT in its environment; it runs as the same transient
unit.
"""
from __future__ import annotations

import http.client
import json
import time

import pytest

from imapd_ctl.adapters.journal import Journal
from probes import (JOURNAL, ONCE, OLD, PROBES, STATE, ApplyFault, base, bus_down, cat, courier_ctl,  # noqa: F401
                    ctl, daemon_pids, decoded, dovecot_ctl, flavours, injected, log, on_each_worker,
                    probe, serve, tmpfs_over, wait_log)

pytestmark = pytest.mark.mailhost

CRASHED = (http.client.RemoteDisconnected, ConnectionError)


# -- 4. applying the change fails, or the server does not come back ---------------------------------

@pytest.mark.parametrize("flavour, fault", [pytest.param(f, name, id=f"{f}-{name}")
                                            for f, p in PROBES.items() for name in p.apply_faults])
def test_failed_apply_is_rolled_back(probe, ctl, base, fault):
    host = ctl.host
    fault = probe.apply_faults[fault]
    with injected(host, fault):
        status, payload = ctl.call("update", probe.NEW)
        assert status == 500, payload
        for text in fault.expect:
            assert text in payload, payload
        if fault.once:
            assert host.run(["test", "-e", ONCE], check=False).returncode == 1      # the fault did fire
        assert probe.files(host) == base
        assert cat(host, JOURNAL) is None
        probe.assert_serving(host)
    probe.assert_config(ctl, base, OLD)


# -- 4b. a broken administrator's file: start and restart refuse, the server keeps serving ------------

@flavours
def test_restart_with_a_broken_admin_file_is_refused_and_the_server_keeps_serving(probe, ctl, base):
    host = ctl.host
    path, broken = probe.broken
    before = cat(host, path)

    def main_pids():
        return {unit: host.systemctl("show", "-p", "MainPID", "--value", unit).stdout.strip() for unit in probe.units}

    pids = main_pids()
    host.write_file(path, (before or b"") + broken)
    try:
        for action in ("restart", "start", "restartOnNode"):
            status, payload = ctl.call(action)
            verb = action.removesuffix("OnNode")
            assert status == 500, payload
            assert payload.startswith(f"{verb} refused: the IMAP server would not start with its configuration"), payload
            assert path in payload and "keep" in payload and "serving" in payload, payload
        assert main_pids() == pids                    # never stopped
        probe.assert_serving(host)
        assert ctl.call("isRunning") == (0, True)
        if probe.name == "dovecot":     # root's status (no key) names the cause, not "not installed"
            shown = ctl.ctl("status", check=False)
            assert "configuration does not load" in shown.stdout and path in shown.stdout, shown.stdout
            assert "no supported IMAP server" not in shown.stdout
    finally:
        if before is None:
            host.run(["rm", "-f", path])
        else:
            host.write_file(path, before)
    status, payload = ctl.call("restart")
    assert status == 0, payload
    probe.assert_config(ctl, base, OLD)


@flavours
def test_a_restart_that_fails_with_the_last_update_goes_back_to_the_configuration_before_it(probe, ctl, base):
    """Something the validator cannot see makes the server refuse to start with the update's
    files (a drop-in's ExecStartPre that starts it only with the files as they were): the
    restart puts the files from before the update back, the server serves with them, and the
    reply says so."""
    host = ctl.host
    path, kept = probe.paths[0], "/run/imapd-ctl-fault-base"
    host.write_file(kept, base[path])
    status, payload = ctl.call("update", probe.NEW)
    assert status == 0, payload
    refuse = ApplyFault(probe.units[0], "ExecStartPre={script}\n", f"exec cmp -s {kept} {path}\n", [], once=False)
    with injected(host, refuse):
        status, payload = ctl.call("restart")
        assert status == 500, payload
        assert payload.startswith("restart failed; the last update (") and "was undone to get mail served again" in payload, payload
        assert "What failed: restart " in payload, payload
        assert probe.files(host) == base
        probe.assert_config(ctl, base, OLD)
        assert ctl.call("restart") == (0, f"restarted {', '.join(probe.units)}")
    host.run(["rm", "-f", kept])


# -- 5. disk full --------------------------------------------------------------------------------

@flavours
def test_disk_full_in_the_config_directory(probe, ctl, base):
    host = ctl.host
    before, activity = probe.stamps(host), probe.activity(host)
    with tmpfs_over(host, probe.conf_dir, "1m"):
        status, payload = ctl.call("update", probe.NEW)
        assert status == 500, payload
        assert f"cannot write {probe.paths[0]}: No space left on device" in payload, payload
        assert "the change was rolled back: the live configuration had not been modified" in payload, payload
        assert probe.files(host) == base
        assert cat(host, JOURNAL) is None
        assert host.run(["sh", "-c", f"ls -A {probe.conf_dir} | grep -F .imapd-ctl. || true"]).stdout == ""
        assert ctl.call("queryUpdate") == (0, OLD)
        assert probe.activity(host) == activity
        probe.assert_serving(host)
    assert probe.stamps(host) == before
    probe.assert_config(ctl, base, OLD)


@flavours
def test_disk_full_in_the_state_directory_refuses_the_change(probe, ctl, base):
    host = ctl.host
    before, activity = probe.stamps(host), probe.activity(host)
    with tmpfs_over(host, STATE, "256k"):
        status, payload = ctl.call("update", probe.NEW)
        assert status == 500, payload
        assert "No space left on device" in payload and STATE in payload, payload
        assert "nothing was changed" in payload, payload
        assert probe.stamps(host) == before and probe.files(host) == base
        assert cat(host, JOURNAL) is None
        assert probe.activity(host) == activity
        assert ctl.call("queryUpdate") == (0, OLD)
        probe.assert_serving(host)
    probe.assert_config(ctl, base, OLD)


# -- 6. the worker dies at each step of the transaction ---------------------------------------------

@flavours
@pytest.mark.parametrize("recovery", ["restart", "next-call"])
@pytest.mark.parametrize("step", Journal.STEPS)
def test_worker_killed_mid_change_is_recovered(probe, ctl, base, step, recovery):
    host = ctl.host
    new = probe.expected(base, probe.NEW)
    serve(ctl, env={"IMAPD_CTL_CRASH_AT": step})
    master, _ = daemon_pids(host)
    with pytest.raises(CRASHED):
        ctl.call("update", probe.NEW)                 # the worker SIGKILLs itself at `step`

    journal = json.loads(cat(host, JOURNAL))
    assert journal["step"] == step
    assert decoded(journal["old"]) == base
    assert decoded(journal["new"]) == new
    assert probe.files(host) == (base if step == "begun" else new)    # all old or all new, never torn
    restarted = step in ("applied", "verified")
    probe.assert_running(host, probe.NEW if restarted else OLD, timeout=probe.settle)
    txn = journal["txn_id"]

    if recovery == "restart":
        serve(ctl)                                    # `imapd-ctl serve` recovers before gunicorn starts
    else:
        # gunicorn respawned the worker (still with the crash hook set); the next mutating
        # call, whichever worker takes it, recovers first
        status, payload = ctl.call("start")
        assert status == 0, payload
        assert daemon_pids(host)[0] == master
    text = wait_log(host, f"recovery: change {txn}")
    if step == "verified":
        assert f"recovery: change {txn} (update) had been verified before the crash; completed it" in text, text
        probe.assert_config(ctl, new, probe.NEW)
    else:
        interrupted = f"recovery: change {txn} (update) was interrupted at step '{step}'; the change was rolled back"
        assert interrupted in text, text
        if step != "begun":
            assert f"{interrupted}: {probe.restored}" in text, text
        probe.assert_config(ctl, base, OLD)
    if recovery == "next-call":
        serve(ctl)                                    # without the hook again


# -- 7. D-Bus / systemd unreachable ---------------------------------------------------------------

@flavours
def test_dbus_outage_is_503_and_the_daemon_recovers_when_the_bus_returns(probe, ctl, base):
    host = ctl.host
    assert on_each_worker(ctl, "isRunning") == [(0, True)] * 2     # both workers know their flavour
    pids = daemon_pids(host)
    before, running = probe.stamps(host), probe.running(host)
    with bus_down(host):
        for status, payload in on_each_worker(ctl, "isRunning") * 2:
            assert status == 503, payload
            assert payload.startswith("systemd is unreachable over D-Bus"), payload
        for action in ("update", "restart", "stop", "start", "startOnBoot"):
            status, payload = ctl.call(action, probe.NEW if action == "update" else None)
            assert status == 503 and "unreachable over D-Bus" in payload, (action, payload)
            assert "rolled back" not in payload       # refused before anything was touched
        assert probe.stamps(host) == before and probe.files(host) == base
        assert cat(host, JOURNAL) is None
        assert ctl.call("queryUpdate") == (0, OLD)    # read from the files: no D-Bus needed
        assert ctl.call("listServiceName") == (0, "imap4")
        assert probe.running(host) == running         # nothing was reloaded or restarted
        probe.assert_serving(host)
    # Each worker reconnects on its own, without a restart of the daemon...
    assert on_each_worker(ctl, "isRunning") == [(0, True)] * 2
    # ...and jobs work (they run the GLib main loop, where a dead bus used to SIGTERM the worker)
    assert [status for status, _ in on_each_worker(ctl, "restart")] == [0, 0]
    # ...and changes work again
    status, payload = ctl.call("update", probe.NEW)
    assert status == 0 and payload.endswith(probe.applied), payload
    probe.assert_config(ctl, probe.expected(base, probe.NEW), probe.NEW)
    time.sleep(0.5)
    assert daemon_pids(host) == pids                  # no worker died or was replaced


@flavours
def test_recovery_during_a_dbus_outage_keeps_the_journal_until_the_bus_returns(probe, ctl, base):
    host = ctl.host
    serve(ctl, env={"IMAPD_CTL_CRASH_AT": "applied"})
    assert on_each_worker(ctl, "isRunning") == [(0, True)] * 2     # both know their flavour
    workers = daemon_pids(host)[1]
    with pytest.raises(CRASHED):
        ctl.call("update", probe.NEW)                 # killed after the server took up NEW
    txn = json.loads(cat(host, JOURNAL))["txn_id"]
    probe.assert_running(host, probe.NEW)
    # gunicorn's replacement worker connects and learns its flavour as it starts: let it, or
    # it would meet the outage knowing nothing (any worker may take the calls below).
    deadline = time.monotonic() + 30
    while not (new := daemon_pids(host)[1] - workers):
        assert time.monotonic() < deadline, "no replacement worker"
        time.sleep(0.1)
    ready = f"[{new.pop()}] INFO imapd_ctl.daemon.wiring: worker ready"
    assert ready in wait_log(host, ready, timeout=30)
    with bus_down(host):
        # The surviving worker restores the files but cannot reload or restart the server: the
        # journal must stay, or the server would keep running NEW under OLD files with nothing
        # left to say so.
        for status, payload in on_each_worker(ctl, "start"):
            assert status == 503 and "unreachable over D-Bus" in payload, payload
        assert cat(host, JOURNAL) is not None
        assert probe.files(host) == base
        assert "but could not be re-applied yet" in wait_log(host, "could not be re-applied yet")
        probe.assert_running(host, probe.NEW)
        probe.assert_serving(host)
    assert ctl.call("start")[0] == 0                  # recovers first, now with a reload/restarts
    text = wait_log(host, f"re-applied ({probe.applied})")
    # (the files were already restored by the attempt during the outage)
    assert (f"recovery: change {txn} (update) was interrupted at step 'applied'; the change was rolled back: "
            f"the live configuration already held the previous contents ({', '.join(probe.paths)}) "
            f"and re-applied ({probe.applied})") in text, text
    assert f"recovery: change {txn} (update) was interrupted at step 'applied'" in log(host)
    probe.assert_config(ctl, base, OLD)
    serve(ctl)
