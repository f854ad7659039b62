"""Faults and races during configuration changes on a Courier host (issue 3, items 4-7 and 9,
as tests/test_e2e_faults.py and tests/test_e2e_races.py prove them for Dovecot). After every
fault /etc/courier/imapd and imapd-ssl hold exactly the old bytes (or, where the change
legitimately completed, exactly the new ones: never torn, never one old and one new), no
journal or temporary file is left, queryUpdate agrees with the files and with what the running
couriertcpd processes were started with, both units serve (an IMAP greeting from outside on
host.address:143, and over TLS on 993), and the reply is a clear error.

Faults injected, and where:
  4. restart     courier-imap-ssl.service's ExecStart fails once (systemd drop-in); courier-imap
                 .service starts once as a process that never listens on 143; courier-imap-ssl
                 .service's main process is SIGKILLed by ExecStartPost once
  5. disk full   a full tmpfs over /etc/courier; one with room for the new imapd but not for the
                 new imapd-ssl (the first file is already replaced when the second write fails);
                 a full tmpfs over the state dir /var/lib/imapd-ctl (validation copies, journal)
  6. crash       the worker SIGKILLed right after the journal records each step ("begun",
                 "written", "applied", "verified"), recovered by the next start of the daemon
                 or by the next mutating call
  7. D-Bus       dbus.socket + dbus.service stopped in the host, then started again; also while
                 a crashed change waits to be undone (the journal must stay until the bus is back)
  9. races       50 concurrent updates with different values, status polls and a restart
                 through the real gunicorn server with 4 workers

The daemon for 4-7 is started like tests/test_e2e_faults.py's (restartable with
IMAPD_CTL_CRASH_AT in its environment); 9 replaces it by a 4-worker one (same transient unit).
"""
from __future__ import annotations

import base64
import contextlib
import http.client
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from courierhost import CONFIG_DIR, UNITS, unit_processes
from daemon import IMAPD_CTL, UNIT, Daemon, launch, write_config
from imapd_ctl.adapters.configfile import Journal
from imapd_ctl.adapters.flavours.courier import PLAIN, SSL, edit, kib, textual
from test_e2e_courier import greeting
from test_e2e_faults import (SAVE, STATE, WORKERS, bus_up, cat, daemon_pids, on_each_worker,
                             serve, wait_log)

pytestmark = pytest.mark.mailhost

IMAPD, IMAPD_SSL = f"{CONFIG_DIR}/imapd", f"{CONFIG_DIR}/imapd-ssl"
PATHS = {PLAIN: IMAPD, SSL: IMAPD_SSL}
PLAIN_UNIT, SSL_UNIT = UNITS
JOURNAL = f"{STATE}/{Journal.FILENAME}"
LISTEN_TIMEOUT = 3.0            # how long verify waits for a restarted unit's port (plain-never-listens)
BOTH = f"{PLAIN_UNIT}, {SSL_UNIT}"
ROLLED_BACK = (f"the change was rolled back: the previous configuration was restored ({IMAPD}, {IMAPD_SSL}) "
               f"and re-applied (restarted {BOTH})")

OLD = {"imap_mem_limit": 300_000_000, "imap_max_connections": 25,
       "imap_secure_mem_limit": 200_000_000, "imap_secure_max_connections": 15}
NEW = {"imap_mem_limit": 400_000_000, "imap_max_connections": 31,
       "imap_secure_mem_limit": 250_000_000, "imap_secure_max_connections": 12}


# -- what the host looks like -----------------------------------------------------------------

def files(host) -> dict[str, bytes | None]:
    return {path: cat(host, path) for path in PATHS.values()}


def expected(old: dict[str, bytes], values: dict) -> dict[str, bytes]:
    """The bytes imapd-ctl writes for `values`, starting from the files `old`."""
    return {path: edit(old[path], name, values) for name, path in PATHS.items()}


def stamps(host) -> str:
    return host.run(["stat", "-c", "%i %Y", IMAPD, IMAPD_SSL]).stdout


def maxprocs(host, unit: str) -> int | None:
    """-maxprocs of the unit's running couriertcpd (what MAXDAEMONS was when it started)."""
    for pid, comm in unit_processes(host, unit).items():
        if comm == "couriertcpd":
            args = cat(host, f"/proc/{pid}/cmdline") or b""
            for arg in args.split(b"\0"):
                if arg.startswith(b"-maxprocs="):
                    return int(arg.split(b"=")[1])
    return None


def active(host, unit: str) -> str:
    return host.systemctl("show", "-p", "ActiveState", "--value", unit).stdout.strip()


def serving(host) -> None:
    """Both ports greet from outside (143 plain, 993 TLS without verification)."""
    for port in (143, 993):
        assert greeting(host, port).startswith(b"* OK"), port


def assert_lines(data: dict[str, bytes], values: dict) -> None:
    """The files' managed lines hold `values` (MAXDAEMONS; IMAP_ULIMITD in KiB, rounded down)."""
    for name, path in PATHS.items():
        got = textual(data[path])
        conns, mem = (("imap_max_connections", "imap_mem_limit") if name == PLAIN
                      else ("imap_secure_max_connections", "imap_secure_mem_limit"))
        assert got == {"MAXDAEMONS": str(values[conns]), "IMAP_ULIMITD": str(kib(values[mem]))}, (path, got)


def assert_courier(d: Daemon, data: dict[str, bytes], values: dict, *, timeout: float = 5) -> None:
    """The files are exactly `data` and hold `values`; queryUpdate and the running daemons
    agree; no journal, no temporary files; both units active and serving both ports."""
    host = d.host
    assert files(host) == data
    assert_lines(data, values)
    assert cat(host, JOURNAL) is None
    litter = host.run(["sh", "-c", f"ls -A {CONFIG_DIR} {STATE} | grep -F .imapd-ctl. || true"]).stdout
    assert litter == ""
    host.run(["sh", "-n", IMAPD])
    host.run(["sh", "-n", IMAPD_SSL])
    assert d.call("queryUpdate") == (0, values)
    want = {PLAIN_UNIT: values["imap_max_connections"], SSL_UNIT: values["imap_secure_max_connections"]}
    deadline = time.monotonic() + timeout
    while ({u: maxprocs(host, u) for u in UNITS} != want or any(active(host, u) != "active" for u in UNITS)) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {u: maxprocs(host, u) for u in UNITS} == want
    assert {u: active(host, u) for u in UNITS} == {u: "active" for u in UNITS}
    serving(host)
    assert d.call("isRunning") == (0, True)


# -- the daemon -------------------------------------------------------------------------------------

def start_daemon(host, share: Path) -> Daemon:
    """As test_e2e_faults.start_daemon, with a short listen_timeout (a unit that does not
    listen after a restart fails the change within LISTEN_TIMEOUT s)."""
    share.mkdir(parents=True, exist_ok=True)
    config = write_config(share, "node1", workers=WORKERS)
    with open(config, "a") as f:
        f.write(f"listen_timeout = {LISTEN_TIMEOUT}\n")
    key = host.run([IMAPD_CTL, "--config", config, "key", "create", "faults"]).stdout.strip()
    d = Daemon(host, share, config, key, "", "node1")
    serve(d)
    return d


@pytest.fixture(scope="module")
def ctl(courierhost):
    d = start_daemon(courierhost, courierhost.share / "faults")
    yield d
    d.stop()


@pytest.fixture
def base(ctl):
    """The daemon runs normally (2 workers, no crash hook) and the files hold OLD; returns
    their bytes."""
    host = ctl.host
    if host.systemctl("is-active", UNIT, check=False).stdout.strip() != "active":
        serve(ctl)
    status, payload = ctl.call("update", OLD)
    assert status == 0, payload
    data = files(host)
    assert_courier(ctl, data, OLD)
    host.run(["mkdir", "-p", SAVE])
    return data


# -- 4. the restart fails, or the server does not come back -----------------------------------------

FAULT_SCRIPT = "/usr/local/sbin/imapd-ctl-fault"
ONCE = "/run/imapd-ctl-fault-once"


def dropin(unit: str) -> str:
    return f"/etc/systemd/system/{unit}.d/50-imapd-ctl-fault.conf"


ONCE_THEN = f"if [ -e {ONCE} ]; then rm -f {ONCE}; "
RESTART_FAULTS = {
    # ExecStart of the SSL daemon fails this once: the restart job fails; the rollback's works
    "ssl-start-fails": (SSL_UNIT, "ExecStart=\nExecStart={script}\n",
                        ONCE_THEN + "echo 'injected: start refused' >&2; exit 1; fi\n"
                        "exec /usr/sbin/imapd-ssl start\n",
                        [f"restart {SSL_UNIT} failed", "injected: start refused", ROLLED_BACK]),
    # The 143 daemon "starts" once as a process that never listens (the PID file names it)
    "plain-never-listens": (PLAIN_UNIT, "ExecStart=\nExecStart={script}\n",
                            ONCE_THEN + "sleep 600 >/dev/null 2>&1 & echo $! > /run/courier/imapd.pid; "
                            "exit 0; fi\nexec /usr/sbin/imapd start\n",
                            [f"after the change {PLAIN_UNIT} is active and does not listen on port 143 "
                             f"within {LISTEN_TIMEOUT:.0f} s", ROLLED_BACK]),
    # The SSL daemon's main process is killed while the unit is still starting (ExecStartPost
    # outlives it, so systemd sees the death in "activating (start-post)"): systemd then waits
    # until TimeoutStartSec (90 s by default; 2 s here) and fails the job
    "ssl-killed-while-starting": (SSL_UNIT, "ExecStartPost={script}\nTimeoutStartSec=2\n",
                                  ONCE_THEN + 'kill -KILL "$MAINPID"; sleep 0.5; fi\nexit 0\n',
                                  [f"restart {SSL_UNIT} failed: systemd job result 'failed'",
                                   "Main process exited, code=killed, status=9/KILL", ROLLED_BACK]),
}


@pytest.mark.parametrize("fault", list(RESTART_FAULTS))
def test_failed_restart_is_rolled_back(ctl, base, fault):
    host = ctl.host
    unit, service, script, expect = RESTART_FAULTS[fault]
    path = dropin(unit)
    host.write_file(FAULT_SCRIPT, "#!/bin/sh\n" + script, mode=0o755)
    host.write_file(path, "[Service]\n" + service.format(script=FAULT_SCRIPT))
    host.systemctl("daemon-reload")
    try:
        host.run(["touch", ONCE])
        status, payload = ctl.call("update", NEW)
        assert status == 500, payload
        for text in expect:
            assert text in payload, payload
        assert host.run(["test", "-e", ONCE], check=False).returncode == 1      # the fault did fire
        assert files(host) == base
        assert cat(host, JOURNAL) is None
        serving(host)
    finally:
        host.run(["rm", "-f", path, FAULT_SCRIPT, ONCE])
        host.systemctl("daemon-reload")
    assert_courier(ctl, base, OLD)


# -- 5. disk full --------------------------------------------------------------------------------

@contextlib.contextmanager
def tmpfs_over(host, directory: str, size: str, free_pages: int = 0):
    """A tmpfs over `directory` for the block, holding copies of its files and a hidden filler
    that leaves exactly `free_pages` pages free (0: full)."""
    saved = f"{SAVE}/{directory.strip('/').replace('/', '_')}"
    try:
        host.run(["sh", "-ec", f'mkdir -p {saved} && cp -a {directory}/. {saved}/ && '
                               f'mount -t tmpfs -o size={size},mode=0755 tmpfs {directory} && '
                               f'cp -a {saved}/. {directory}/ && '
                               f'set -- $(stat -f -c "%a %S" {directory}) && '
                               f'fallocate -l $(( ($1 - {free_pages}) * $2 )) {directory}/.filler && '
                               f'test "$(stat -f -c %a {directory})" = {free_pages}'])
        yield
    finally:
        host.run(["sh", "-c", f"! mountpoint -q {directory} || umount {directory} || umount -l {directory}"])


def pages(data: bytes) -> int:
    return -(-len(data) // 4096)


def test_disk_full_in_the_config_directory(ctl, base):
    host = ctl.host
    before = stamps(host)
    with tmpfs_over(host, CONFIG_DIR, "1m"):
        status, payload = ctl.call("update", NEW)
        assert status == 500, payload
        assert f"cannot write {IMAPD}: No space left on device" in payload, payload
        assert "the change was rolled back: the live configuration had not been modified" in payload, payload
        assert files(host) == base
        assert cat(host, JOURNAL) is None
        assert host.run(["sh", "-c", f"ls -A {CONFIG_DIR} | grep -F .imapd-ctl. || true"]).stdout == ""
        assert ctl.call("queryUpdate") == (0, OLD)
        serving(host)
    assert stamps(host) == before
    assert_courier(ctl, base, OLD)


def test_disk_full_after_the_first_file_is_replaced(ctl, base):
    """Room for the new imapd but not for the new imapd-ssl (an admin comment makes it the
    bigger file): imapd is already replaced when the second write fails; the rollback puts
    the old imapd back and restarts the daemons that had read nothing new anyway."""
    host = ctl.host
    padded = base[IMAPD_SSL] + b"".join(b"# padding %04d %s\n" % (i, b"x" * 60) for i in range(80))
    host.write_file(IMAPD_SSL, padded)
    old = {IMAPD: base[IMAPD], IMAPD_SSL: padded}
    try:
        new = expected(old, NEW)
        room = pages(new[IMAPD])
        assert pages(new[IMAPD_SSL]) > room >= pages(old[IMAPD])
        with tmpfs_over(host, CONFIG_DIR, "1m", free_pages=room):
            status, payload = ctl.call("update", NEW)
            assert status == 500, payload
            assert f"cannot write {IMAPD_SSL}: No space left on device" in payload, payload
            assert (f"the change was rolled back: the previous configuration was restored ({IMAPD}) "
                    f"and re-applied (restarted {BOTH})") in payload, payload
            assert files(host) == old
            assert cat(host, JOURNAL) is None
            assert ctl.call("queryUpdate") == (0, OLD)
            serving(host)
        assert_courier(ctl, old, OLD)
    finally:
        host.write_file(IMAPD_SSL, base[IMAPD_SSL])


def test_disk_full_in_the_state_directory_refuses_the_change(ctl, base):
    host = ctl.host
    before = stamps(host)
    with tmpfs_over(host, STATE, "256k"):
        status, payload = ctl.call("update", NEW)
        assert status == 500, payload
        assert "No space left on device" in payload and STATE in payload, payload
        assert "nothing was changed" in payload, payload
        assert stamps(host) == before and files(host) == base
        assert cat(host, JOURNAL) is None
        assert ctl.call("queryUpdate") == (0, OLD)
        serving(host)
    assert_courier(ctl, base, OLD)


# -- 6. the worker dies at each step of the transaction ---------------------------------------------

@pytest.mark.parametrize("recovery", ["restart", "next-call"])
@pytest.mark.parametrize("step", Journal.STEPS)
def test_worker_killed_mid_change_is_recovered(ctl, base, step, recovery):
    host = ctl.host
    new = expected(base, NEW)
    serve(ctl, env={"IMAPD_CTL_CRASH_AT": step})
    master, _ = daemon_pids(host)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        ctl.call("update", NEW)                       # the worker SIGKILLs itself at `step`

    journal = json.loads(cat(host, JOURNAL))
    assert journal["step"] == step
    assert {p: base64.b64decode(v) for p, v in journal["old"].items()} == base
    assert {p: base64.b64decode(v) for p, v in journal["new"].items()} == new
    assert files(host) == (base if step == "begun" else new)    # all old or all new, never mixed
    running = {u: maxprocs(host, u) for u in UNITS}
    restarted = step in ("applied", "verified")
    values = NEW if restarted else OLD
    assert running == {PLAIN_UNIT: values["imap_max_connections"],
                       SSL_UNIT: values["imap_secure_max_connections"]}
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
        assert_courier(ctl, new, NEW)
    else:
        interrupted = f"recovery: change {txn} (update) was interrupted at step '{step}'; the change was rolled back"
        assert interrupted in text, text
        if step != "begun":
            assert f"{interrupted}: the previous configuration was restored ({IMAPD}, {IMAPD_SSL}) " \
                   f"and re-applied (restarted {BOTH})" in text, text
        assert_courier(ctl, base, OLD)
    if recovery == "next-call":
        serve(ctl)                                    # without the hook again


# -- 7. D-Bus / systemd unreachable ---------------------------------------------------------------

def bus_back(host) -> None:
    host.systemctl("start", "dbus.socket", "dbus.service")
    deadline = time.monotonic() + 10
    while not bus_up(host):                           # systemd re-attaches to the new bus
        assert time.monotonic() < deadline, "systemd did not come back on the bus"
        time.sleep(0.05)


def test_dbus_outage_is_503_and_the_daemon_recovers_when_the_bus_returns(ctl, base):
    host = ctl.host
    assert on_each_worker(ctl, "isRunning") == [(0, True)] * 2     # both workers know Courier
    pids = daemon_pids(host)
    before, running = stamps(host), {u: maxprocs(host, u) for u in UNITS}
    host.systemctl("stop", "dbus.socket", "dbus.service")
    try:
        for status, payload in on_each_worker(ctl, "isRunning") * 2:
            assert status == 503, payload
            assert payload.startswith("systemd is unreachable over D-Bus"), payload
        for action in ("update", "restart", "stop", "start", "startOnBoot"):
            status, payload = ctl.call(action, NEW if action == "update" else None)
            assert status == 503 and "unreachable over D-Bus" in payload, (action, payload)
            assert "rolled back" not in payload       # refused before anything was touched
        assert stamps(host) == before and files(host) == base
        assert cat(host, JOURNAL) is None
        assert ctl.call("queryUpdate") == (0, OLD)    # read from the files: no D-Bus needed
        assert ctl.call("listServiceName") == (0, "imap4")
        assert {u: maxprocs(host, u) for u in UNITS} == running     # nothing was restarted
        serving(host)
    finally:
        bus_back(host)
    # Each worker reconnects on its own, without a restart of the daemon...
    assert on_each_worker(ctl, "isRunning") == [(0, True)] * 2
    assert [status for status, _ in on_each_worker(ctl, "restart")] == [0, 0]
    # ...and changes work again
    status, payload = ctl.call("update", NEW)
    assert status == 0 and payload.endswith(f"restarted {BOTH}"), payload
    assert_courier(ctl, expected(base, NEW), NEW)
    time.sleep(0.5)
    assert daemon_pids(host) == pids                  # no worker died or was replaced


def test_recovery_during_a_dbus_outage_keeps_the_journal_until_the_bus_returns(ctl, base):
    host = ctl.host
    serve(ctl, env={"IMAPD_CTL_CRASH_AT": "applied"})
    assert on_each_worker(ctl, "isRunning") == [(0, True)] * 2     # both know their flavour
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        ctl.call("update", NEW)                       # killed after both daemons restarted with NEW
    txn = json.loads(cat(host, JOURNAL))["txn_id"]
    assert maxprocs(host, PLAIN_UNIT) == NEW["imap_max_connections"]
    host.systemctl("stop", "dbus.socket", "dbus.service")
    try:
        # The surviving worker restores the files but cannot restart Courier: the journal must
        # stay, or the daemons would keep running NEW under OLD files with nothing to say so.
        for status, payload in on_each_worker(ctl, "start"):
            assert status == 503 and "unreachable over D-Bus" in payload, payload
        assert cat(host, JOURNAL) is not None
        assert files(host) == base
        assert "but could not be re-applied yet" in wait_log(host, "could not be re-applied yet")
        assert maxprocs(host, PLAIN_UNIT) == NEW["imap_max_connections"]
        serving(host)
    finally:
        bus_back(host)
    assert ctl.call("start")[0] == 0                  # recovers first, now with the restarts
    text = wait_log(host, f"re-applied (restarted {BOTH})")
    # (the files were already restored by the attempt during the outage)
    assert (f"recovery: change {txn} (update) was interrupted at step 'applied'; the change was rolled back: "
            f"the live configuration already held the previous contents ({IMAPD}, {IMAPD_SSL}) "
            f"and re-applied (restarted {BOTH})") in text, text
    assert_courier(ctl, base, OLD)
    serve(ctl)


# -- 9. races: concurrent updates, polls and a restart through 4 workers ------------------------------

UPDATES = 50


def values_for(i: int) -> dict[str, int]:
    """Distinct in all four values, so every update rewrites both files and restarts both units."""
    return {"imap_mem_limit": 250_000_000 + i * 1_000_000, "imap_max_connections": 10 + i,
            "imap_secure_mem_limit": 200_000_000 + i * 2_000_000, "imap_secure_max_connections": 100 + i}


@pytest.fixture(scope="module")
def racer(ctl):
    """ctl's transient unit replaced by a daemon with 4 workers (the race tests come last)."""
    ctl.stop()
    d = launch(ctl.host, ctl.host.share / "races", workers=4)
    yield d
    d.stop()


def storm(racer) -> tuple[int, int]:
    """Fire the mix; check every reply and the end state; return (applied, busy)."""
    host = racer.host
    replies: list[tuple[str, int, object, dict | None]] = []
    lock = threading.Lock()

    def job(kind: str, i: int):
        inputs = None
        if kind == "update":
            inputs = values_for(i)
            status, payload = (racer.call if i % 2 else racer.route)("update", inputs)   # both transports
        elif kind == "restart":
            status, payload = racer.call("restart")
        else:
            status, payload = racer.call(("isRunning", "queryUpdate", "listServiceInfo")[i % 3], method="GET")
        with lock:
            replies.append((kind, status, payload, inputs))

    jobs = [("update", i) for i in range(UPDATES)] + [("poll", i) for i in range(40)]
    jobs.insert(UPDATES // 2, ("restart", 0))
    random.Random(7).shuffle(jobs)   # interleave the kinds, the same way every run
    before = files(host)
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(lambda j: job(*j), jobs))
    elapsed = time.monotonic() - t0

    assert len(replies) == len(jobs)
    bad = [r for r in replies if r[1] not in (0, 409)]
    assert not bad, bad[:5]
    busy = [r for r in replies if r[1] == 409]
    assert all("in progress" in r[2] for r in busy), busy[:3]
    succeeded = [r[3] for r in replies if r[0] == "update" and r[1] == 0]
    assert succeeded, "no update went through"

    # The final files are valid and are exactly one successful request's values: byte for
    # byte that request's edit of the files as they were before the storm (nothing torn or
    # mixed from two requests)...
    final = racer.call("queryUpdate")
    assert final[0] == 0 and final[1] in succeeded, final
    data = files(host)
    assert data == expected(before, final[1])
    assert_lines(data, final[1])
    # ...no journal, and the running daemons were started with them and serve both ports.
    assert_courier(racer, data, final[1])
    print(f"\nraces: {len(replies)} replies in {elapsed:.1f} s, {len(succeeded)} updates applied, "
          f"{len(busy)} answered 409")
    return len(succeeded), len(busy)


def test_concurrent_updates_polls_and_a_restart(racer):
    storm(racer)


def test_with_a_short_lock_timeout_the_losers_get_409(racer):
    with open(racer.config, "a") as fh:
        fh.write("lock_timeout = 0.05\n")
    racer.stop()
    racer.start()
    applied, busy = storm(racer)
    assert busy > 0 and applied > 0
