"""Faults during configuration changes and service control, on a real mail host (issue 3,
items 3-8). After every fault the old configuration is intact byte for byte, the server still
serves (an IMAP greeting from outside on host.address:143), no journal is left behind and the
reply is a clear error.

Faults injected, and where:
  3. validator   an admin file with an unknown setting; an admin file that makes Dovecot reject
                 OUR values (process_min_avail above the new process_limit)
  4. reload      a reload that fails once (systemd drop-in ExecReload=, job result 'failed'); a
                 reload that always fails (ExecReload=/bin/false); a reload that SIGKILLs Dovecot
  5. disk full   a full tmpfs over /etc/dovecot/conf.d; a full tmpfs over the state dir
                 /var/lib/imapd-ctl (where validation copies and the journal live)
  6. crash       the worker SIGKILLed right after the journal records each step ("begun",
                 "written", "applied", "verified"; hook IMAPD_CTL_CRASH_AT in transaction.py),
                 recovered by the next start of the daemon or by the next mutating call
  7. D-Bus       dbus.socket + dbus.service stopped in the host, then started again
  8. no server   Dovecot purged from a second host before the daemon starts

The daemon here is started by this module (not tests/daemon.py's launch()) so that it can be
restarted with IMAPD_CTL_CRASH_AT in its environment; it runs as the same transient unit.
"""
from __future__ import annotations

import base64
import contextlib
import http.client
import imaplib
import json
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from daemon import IMAPD_CTL, REPO, UNIT, Daemon, write_config
from mailhost import MailHost
from imapd_ctl.entry import client
from imapd_ctl.core.actions import ACTIONS
from imapd_ctl.adapters.configfile import Journal
from imapd_ctl.adapters.flavours.dovecot import Dovecot, mapped, parse_size
from imapd_ctl.core.settings import Settings

pytestmark = pytest.mark.mailhost

DROPIN = "/etc/dovecot/conf.d/99-imapd-ctl.conf"
CONF_D = "/etc/dovecot/conf.d"
STATE = "/var/lib/imapd-ctl"
JOURNAL = f"{STATE}/{Journal.FILENAME}"
SAVE = "/run/imapd-ctl-faults"          # scratch space inside the host
RELOADED = "SIGHUP received - reloading configuration"

OLD = {"imap_mem_limit": 300_000_000, "imap_max_connections": 25,
       "imap_secure_mem_limit": 200_000_000, "imap_secure_max_connections": 15}
NEW = {"imap_mem_limit": 400_000_000, "imap_max_connections": 31,
       "imap_secure_mem_limit": 100_000_000, "imap_secure_max_connections": 12}
WORKERS = 2
RENDER = Dovecot(Settings()).render        # the bytes imapd-ctl writes for a set of values


# -- the daemon, restartable with an environment ----------------------------------------------

def serve(d: Daemon, env: dict | None = None, timeout: float = 30) -> None:
    """(Re)start the daemon as the transient unit, with extra environment variables."""
    d.host.systemctl("stop", UNIT, check=False)
    d.host.run(["systemd-run", f"--unit={UNIT}", "--collect", "-p", "KillMode=mixed",
                "--setenv=PYTHONUNBUFFERED=1", *[f"--setenv={k}={v}" for k, v in (env or {}).items()],
                IMAPD_CTL, "--config", d.config, "serve"])
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.request(d.socket, "GET", "/healthz")[0] == 200 and len(daemon_pids(d.host)[1]) == WORKERS:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"imapd-ctl did not come up:\n{log(d.host)}")
        time.sleep(0.05)


def start_daemon(host: MailHost, share: Path) -> Daemon:
    share.mkdir(parents=True, exist_ok=True)
    config = write_config(share, "node1", workers=WORKERS)
    with open(config, "a") as f:
        f.write("listen_timeout = 8.0\n")
    key = host.run([IMAPD_CTL, "--config", config, "key", "create", "faults"]).stdout.strip()
    d = Daemon(host, share, config, key, "", "node1")
    serve(d)
    return d


def daemon_pids(host) -> tuple[int, set[int]]:
    """(gunicorn master, its workers) inside the host."""
    main = int(host.systemctl("show", "-p", "MainPID", "--value", UNIT).stdout.strip())
    kids = host.run(["pgrep", "-P", str(main)], check=False).stdout.split()
    return main, {int(k) for k in kids}


def on_each_worker(d: Daemon, action: str) -> list[tuple[int, object]]:
    """Call `action` once on each of the two workers: a request whose headers are only half
    sent pins one worker (it waits for the rest) while the other serves the second call."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(120)
        s.connect(d.socket)
        s.sendall(f"POST /nodeworx/mail/imap/{action} HTTP/1.1\r\nHost: localhost\r\n".encode())
        time.sleep(0.3)
        other = d.call(action)
        s.sendall(f"Authorization: Bearer {d.key}\r\nContent-Type: application/json\r\n"
                  "Content-Length: 2\r\nConnection: close\r\n\r\n{}".encode())
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    reply = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    return [other, (reply["status"], reply["payload"])]


def log(host) -> str:
    return host.journal("-o", "cat", "-u", UNIT)


def wait_log(host, needle: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = log(host)
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


# -- what the host looks like -------------------------------------------------------------------

def serving(host) -> bool:
    conn = imaplib.IMAP4(host.address, 143, timeout=10)
    try:
        return conn.welcome.startswith(b"* OK")
    finally:
        conn.logout()


def cat(host, path: str) -> bytes | None:
    r = host._nsenter(["cat", path], check=False, timeout=30)
    return r.stdout if r.returncode == 0 else None


def inode(host, path: str) -> str:
    return host.run(["stat", "-c", "%i %Y", path]).stdout.strip()


def reloads(host) -> int:
    return host.journal("-o", "cat", "-u", "dovecot").count(RELOADED)


def running_limit(host) -> int | None:
    out = host.run(["doveadm", "service", "status", "imap"], check=False).stdout
    return next((int(l.split(":")[1]) for l in out.splitlines() if l.startswith("process_limit:")), None)


def assert_config(d: Daemon, values: dict, *, timeout: float = 5) -> None:
    """Files, doveconf, the running Dovecot and queryUpdate all show `values`; no journal, no
    temporary files, and the server serves."""
    host = d.host
    assert cat(host, DROPIN) == RENDER(values)
    assert cat(host, JOURNAL) is None
    litter = host.run(["sh", "-c", f"ls -A {CONF_D} {STATE} | grep -F .imapd-ctl. || true"]).stdout
    assert litter == ""
    assert d.call("queryUpdate") == (0, values)
    process_limit, vsz = mapped(values)
    assert host.run(["doveconf", "-h", "service/imap/process_limit"]).stdout.strip() == str(process_limit)
    assert parse_size(host.run(["doveconf", "-h", "service/imap/vsz_limit"]).stdout) == vsz
    deadline = time.monotonic() + timeout   # the master re-reads its config after the reload job
    while running_limit(host) != process_limit and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running_limit(host) == process_limit
    assert serving(host)
    assert d.call("isRunning") == (0, True)


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ctl(mailhost):
    d = start_daemon(mailhost, mailhost.share / "faults")
    yield d
    d.stop()


@pytest.fixture
def base(ctl):
    """The daemon runs normally and the drop-in holds OLD; returns the drop-in's bytes."""
    host = ctl.host
    if host.systemctl("is-active", UNIT, check=False).stdout.strip() != "active":
        serve(ctl)
    status, payload = ctl.call("update", OLD)
    assert status == 0, payload
    assert_config(ctl, OLD)
    host.run(["mkdir", "-p", SAVE])
    return cat(host, DROPIN)


# -- 3. the validator rejects the candidate ------------------------------------------------------

@pytest.mark.parametrize("admin_file, content, expect", [
    ("10-mail.conf", "mail_locaton = maildir:~/Maildir\n", "Unknown setting: mail_locaton"),
    ("50-prefork.conf", "service imap {\n  process_min_avail = 30\n}\n",
     "process_min_avail is higher than process_limit"),
], ids=["broken-admin-file", "admin-file-conflicts-with-the-new-values"])
def test_rejected_candidate_changes_nothing(ctl, base, admin_file, content, expect):
    host = ctl.host
    path = f"{CONF_D}/{admin_file}"
    saved = cat(host, path)
    host.write_file(path, (saved or b"") + content.encode())
    try:
        stamp, count = inode(host, DROPIN), reloads(host)
        # 10+5 = process_limit 15: below the admin's process_min_avail of 30
        status, payload = ctl.call("update", {"imap_max_connections": 10, "imap_secure_max_connections": 5})
        assert status == 500, payload
        assert payload.startswith("Dovecot rejects the configuration") and expect in payload, payload
        assert path in payload or "dovecot.conf" in payload, payload
        assert "/var/lib" not in payload                  # the paths the operator knows, not our copy
        assert inode(host, DROPIN) == stamp and reloads(host) == count
    finally:
        if saved is None:
            host.run(["rm", "-f", path])
        else:
            host.write_file(path, saved)
    assert_config(ctl, OLD)


# -- 4. the reload fails, or the server does not come back -----------------------------------------

FAULT_SCRIPT = "/usr/local/sbin/imapd-ctl-fault-reload"
FAULT_DROPIN = "/etc/systemd/system/dovecot.service.d/50-imapd-ctl-fault.conf"
ONCE = "/run/imapd-ctl-fault-once"


def inject_reload(host, script: str) -> None:
    host.write_file(FAULT_SCRIPT, "#!/bin/sh\n" + script, mode=0o755)
    host.write_file(FAULT_DROPIN, f"[Service]\nExecReload=\nExecReload={FAULT_SCRIPT}\n")
    host.systemctl("daemon-reload")


def remove_reload_fault(host) -> None:
    host.run(["rm", "-f", FAULT_DROPIN, FAULT_SCRIPT, ONCE])
    host.systemctl("daemon-reload")


RELOAD_FAULTS = {
    # ExecReload fails this once: the rollback's reload works
    "fails-once": (f"if [ -e {ONCE} ]; then rm -f {ONCE}; echo 'injected: reload refused' >&2; exit 1; fi\n"
                   "exec /usr/bin/doveadm reload\n",
                   ["reload dovecot.service failed", "injected: reload refused",
                    f"the change was rolled back: the previous configuration was restored ({DROPIN}) "
                    "and re-applied (reloaded dovecot.service)"]),
    # ExecReload=/bin/false: the rollback cannot reload either; Dovecot never left the old config
    "always-fails": ("exit 1\n",
                     ["reload dovecot.service failed", "the change was rolled back",
                      f"restored ({DROPIN}) but applying it failed too: reload dovecot.service failed"]),
    # the reload kills Dovecot: no longer serving -> rolled back and started again
    "kills-dovecot": (f"if [ -e {ONCE} ]; then rm -f {ONCE}; kill -KILL \"$MAINPID\"; exit 0; fi\n"
                      "exec /usr/bin/doveadm reload\n",
                      ["the change was rolled back", f"restored ({DROPIN})",
                       "dovecot.service had stopped and was started again"]),
}


@pytest.mark.parametrize("fault", list(RELOAD_FAULTS))
def test_failed_reload_is_rolled_back(ctl, base, fault):
    host = ctl.host
    script, expect = RELOAD_FAULTS[fault]
    inject_reload(host, script)
    try:
        host.run(["touch", ONCE])
        status, payload = ctl.call("update", NEW)
        assert status == 500, payload
        for text in expect:
            assert text in payload, payload
        assert cat(host, DROPIN) == base
        assert serving(host)
    finally:
        remove_reload_fault(host)
    assert_config(ctl, OLD)


# -- 5. disk full --------------------------------------------------------------------------------

@contextlib.contextmanager
def full_tmpfs(host, directory: str, size: str):
    """A full tmpfs over `directory` for the block, holding copies of its files (and a hidden
    filler, not *.conf, so Dovecot does not read it)."""
    saved = f"{SAVE}/{directory.strip('/').replace('/', '_')}"
    try:
        host.run(["sh", "-ec", f'mkdir -p {saved} && cp -a {directory}/. {saved}/ && '
                               f'mount -t tmpfs -o size={size},mode=0755 tmpfs {directory} && '
                               f'cp -a {saved}/. {directory}/ && '
                               f'(dd if=/dev/zero of={directory}/.filler bs=1k 2>/dev/null || true) && '
                               f'! (echo x > {directory}/.probe) 2>/dev/null'])
        yield
    finally:
        host.run(["sh", "-c", f"! mountpoint -q {directory} || umount {directory} || umount -l {directory}"])


def test_disk_full_in_the_config_directory(ctl, base):
    host = ctl.host
    count = reloads(host)
    with full_tmpfs(host, CONF_D, "1m"):
        status, payload = ctl.call("update", NEW)
        assert status == 500, payload
        assert f"cannot write {DROPIN}: No space left on device" in payload, payload
        assert "the change was rolled back: the live configuration had not been modified" in payload
        assert cat(host, DROPIN) == base
        assert cat(host, JOURNAL) is None
        assert host.run(["sh", "-c", f"ls -A {CONF_D} | grep -F .imapd-ctl. || true"]).stdout == ""
        assert reloads(host) == count
        assert serving(host)
    assert_config(ctl, OLD)


def test_disk_full_in_the_state_directory_refuses_the_change(ctl, base):
    host = ctl.host
    stamp, count = inode(host, DROPIN), reloads(host)
    with full_tmpfs(host, STATE, "256k"):
        status, payload = ctl.call("update", NEW)
        assert status == 500, payload
        assert "No space left on device" in payload and STATE in payload, payload
        assert "nothing was changed" in payload
        assert inode(host, DROPIN) == stamp and cat(host, DROPIN) == base
        assert cat(host, JOURNAL) is None
        assert reloads(host) == count
        assert serving(host)
        assert ctl.call("queryUpdate") == (0, OLD)
    assert_config(ctl, OLD)


# -- 6. the worker dies at each step of the transaction ---------------------------------------------

@pytest.mark.parametrize("recovery", ["restart", "next-call"])
@pytest.mark.parametrize("step", Journal.STEPS)
def test_worker_killed_mid_change_is_recovered(ctl, base, step, recovery):
    host = ctl.host
    serve(ctl, env={"IMAPD_CTL_CRASH_AT": step})
    master, _ = daemon_pids(host)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        ctl.call("update", NEW)                       # the worker SIGKILLs itself at `step`

    journal = json.loads(cat(host, JOURNAL))
    assert journal["step"] == step
    old, new = (base64.b64decode(journal[k][DROPIN]) for k in ("old", "new"))
    assert (old, new) == (base, RENDER(NEW))
    assert cat(host, DROPIN) == (old if step == "begun" else new)   # one or the other, never torn
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
        assert_config(ctl, NEW)
    else:
        assert f"recovery: change {txn} (update) was interrupted at step '{step}'; the change was rolled back" in text, text
        assert_config(ctl, OLD)
    if recovery == "next-call":
        serve(ctl)                                    # without the hook again


# -- 7. D-Bus / systemd unreachable ---------------------------------------------------------------

def bus_up(host) -> bool:
    return host.run(["busctl", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                     "org.freedesktop.DBus.Peer", "Ping"], check=False).returncode == 0


def test_dbus_outage_is_503_and_the_daemon_recovers_when_the_bus_returns(ctl, base):
    host = ctl.host
    assert on_each_worker(ctl, "isRunning") == [(0, True)] * 2     # both workers are connected
    pids = daemon_pids(host)
    stamp = inode(host, DROPIN)
    host.systemctl("stop", "dbus.socket", "dbus.service")
    try:
        for status, payload in on_each_worker(ctl, "isRunning") * 2:
            assert status == 503, payload
            assert payload.startswith("systemd is unreachable over D-Bus"), payload
        for action in ("update", "restart", "stop", "startOnBoot"):
            status, payload = ctl.call(action, NEW if action == "update" else None)
            assert status == 503 and "unreachable over D-Bus" in payload, (action, payload)
            assert "rolled back" not in payload       # refused before anything was touched
        assert inode(host, DROPIN) == stamp and cat(host, DROPIN) == base
        assert cat(host, JOURNAL) is None
        assert ctl.call("listServiceName") == (0, "imap4")
        assert serving(host)
    finally:
        host.systemctl("start", "dbus.socket", "dbus.service")
    deadline = time.monotonic() + 10
    while not bus_up(host):                           # systemd re-attaches to the new bus
        assert time.monotonic() < deadline, "systemd did not come back on the bus"
        time.sleep(0.05)
    # Each worker reconnects on its own, without a restart of the daemon...
    assert on_each_worker(ctl, "isRunning") == [(0, True)] * 2
    # ...and jobs work (they run the GLib main loop, where a dead bus used to SIGTERM the worker)
    assert [status for status, _ in on_each_worker(ctl, "restart")] == [0, 0]
    assert ctl.call("update", NEW)[0] == 0
    assert_config(ctl, NEW)
    time.sleep(0.5)
    assert daemon_pids(host) == pids                  # no worker died or was replaced


def test_recovery_during_a_dbus_outage_keeps_the_journal_until_the_bus_returns(ctl, base):
    host = ctl.host
    serve(ctl, env={"IMAPD_CTL_CRASH_AT": "applied"})
    assert on_each_worker(ctl, "isRunning") == [(0, True)] * 2     # both know their flavour
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        ctl.call("update", NEW)                       # killed after Dovecot took up NEW
    txn = json.loads(cat(host, JOURNAL))["txn_id"]
    assert running_limit(host) == mapped(NEW)[0]
    host.systemctl("stop", "dbus.socket", "dbus.service")
    try:
        # the surviving worker restores the files but cannot reload: the journal must stay, or
        # Dovecot would keep running NEW under OLD files with nothing left to say so
        for status, payload in on_each_worker(ctl, "start"):
            assert status == 503 and "unreachable over D-Bus" in payload, payload
        assert cat(host, JOURNAL) is not None
        assert cat(host, DROPIN) == base
        assert "but could not be re-applied yet" in wait_log(host, "could not be re-applied yet")
        assert serving(host)
    finally:
        host.systemctl("start", "dbus.socket", "dbus.service")
    deadline = time.monotonic() + 10
    while not bus_up(host):
        assert time.monotonic() < deadline, "systemd did not come back on the bus"
        time.sleep(0.05)
    assert ctl.call("start")[0] == 0                  # recovers first, now with a reload
    assert "reloaded dovecot.service" in wait_log(host, "re-applied (reloaded dovecot.service)")
    assert f"recovery: change {txn} (update) was interrupted at step 'applied'" in log(host)
    assert_config(ctl, OLD)
    serve(ctl)


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
        yield start_daemon(host, share)
    finally:
        host.shutdown()
        shutil.rmtree(share, ignore_errors=True)


def test_no_imap_server_installed(bare):
    pids = daemon_pids(bare.host)
    assert len(ACTIONS) == 19
    for name in ACTIONS:
        for transport, call in (("http", bare.call), ("xmlrpc", bare.route)):
            status, payload = call(name, {})
            if name in CONSTANTS:
                assert status == 0, (name, payload)
            else:
                assert status == 500, (name, transport, status, payload)
                assert "no supported IMAP server" in payload and "Dovecot" in payload, (name, payload)
    assert bare.http("GET", "/healthz")[0] == 200
    assert daemon_pids(bare.host) == pids
    assert "Traceback" not in log(bare.host)
