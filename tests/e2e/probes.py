"""One probe per flavour for the fault and race tests (tests/e2e/test_e2e_faults.py,
test_e2e_races.py and the small per-flavour fault modules): which host to boot, which files
imapd-ctl owns there and what it writes into them for a set of values, what the running server
shows, how to inject an apply fault, and the assertions that the host holds a configuration.
Also the daemon those tests run (restartable with an environment, e.g. IMAPD_CTL_CRASH_AT), and
the fixtures built on it (import them into a test module; it defines or parametrizes `flavour`).
"""
from __future__ import annotations

import base64
import contextlib
import imaplib
import json
import ssl
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from courierhost import CONFIG_DIR, UNITS, main_pid, unit_processes
from daemon import IMAPD_CTL, UNIT, Daemon, stop_unit, write_config
from imapd_ctl.adapters.journal import Journal
from imapd_ctl.adapters.flavours.courier import PLAIN, SSL, edit, kib, textual
from imapd_ctl.adapters.flavours.dovecot import Dovecot, mapped, parse_size
from imapd_ctl.core.settings import Settings
from imapd_ctl.cli import client

STATE = "/var/lib/imapd-ctl"
JOURNAL = f"{STATE}/{Journal.FILENAME}"
SAVE = "/run/imapd-ctl-faults"          # scratch space inside the host
WORKERS = 2

OLD = {"imap_mem_limit": 300_000_000, "imap_max_connections": 25,
       "imap_secure_mem_limit": 200_000_000, "imap_secure_max_connections": 15}

FAULT_SCRIPT = "/usr/local/sbin/imapd-ctl-fault"
ONCE = "/run/imapd-ctl-fault-once"
ONCE_THEN = f"if [ -e {ONCE} ]; then rm -f {ONCE}; "


# -- the daemon, restartable with an environment ----------------------------------------------

def serve(d: Daemon, env: dict | None = None, timeout: float = 30) -> None:
    """(Re)start the daemon as the transient unit, with extra environment variables; return
    when /healthz answers and both workers are up."""
    stop_unit(d.host, UNIT)
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


def start_daemon(host, share: Path, listen_timeout: float) -> Daemon:
    """The daemon with WORKERS workers and `listen_timeout` (how long verify waits for a port)."""
    share.mkdir(parents=True, exist_ok=True)
    config = write_config(share, "node1", workers=WORKERS)
    with open(config, "a") as f:
        f.write(f"listen_timeout = {listen_timeout}\n")
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
    """Call `action` once on each worker, in pid order: the others are stopped (SIGSTOP) for
    the call, so only that one can accept it, and continued right after (long before gunicorn's
    heartbeat timeout). Any worker accepts on the shared socket otherwise, and an event-loop
    worker is never pinned by a half-sent request."""
    workers = sorted(daemon_pids(d.host)[1])
    assert len(workers) >= 2, workers
    replies = []
    for target in workers:
        others = [str(w) for w in workers if w != target]
        d.host.run(["kill", "-STOP", *others])
        try:
            deadline = time.monotonic() + 10
            # ps shows a stopped process as T (Tl: with threads)
            while [s[:1] for s in d.host.run(["ps", "-o", "stat=", "-p", ",".join(others)]).stdout.split()] \
                    != ["T"] * len(others):
                assert time.monotonic() < deadline, "a worker did not stop"
                time.sleep(0.02)
            replies.append(d.call(action))
        finally:
            d.host.run(["kill", "-CONT", *others])
    return replies


def log(host) -> str:
    return host.journal("-o", "cat", "-u", UNIT)


def wait_log(host, needle: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = log(host)
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


# -- the host -----------------------------------------------------------------------------------

def cat(host, path: str) -> bytes | None:
    r = host._nsenter(["cat", path], check=False, timeout=30)
    return r.stdout if r.returncode == 0 else None


def decoded(journaled: dict[str, str]) -> dict[str, bytes]:
    """A journal's "old" or "new" map with the contents decoded."""
    return {path: base64.b64decode(data) for path, data in journaled.items()}


def greets(host, port: int) -> bool:
    """An IMAP greeting from outside on `port` (993: TLS, the self-signed certificate unchecked)."""
    if port == 993:
        tls = ssl.create_default_context()
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        conn = imaplib.IMAP4_SSL(host.address, port, ssl_context=tls, timeout=10)
    else:
        conn = imaplib.IMAP4(host.address, port, timeout=10)
    try:
        return conn.welcome.startswith(b"* OK")
    finally:
        conn.logout()


@contextlib.contextmanager
def tmpfs_over(host, directory: str, size: str, free_pages: int = 0):
    """A tmpfs over `directory` for the block, holding copies of its files and a hidden filler
    (not *.conf, so Dovecot does not read it) that leaves exactly `free_pages` pages free (0:
    full, and a new file cannot be written)."""
    saved = f"{SAVE}/{directory.strip('/').replace('/', '_')}"
    full = f' && ! (echo x > {directory}/.probe) 2>/dev/null' if free_pages == 0 else ""
    try:
        host.run(["sh", "-ec", f'mkdir -p {saved} && cp -a {directory}/. {saved}/ && '
                               f'mount -t tmpfs -o size={size},mode=0755 tmpfs {directory} && '
                               f'cp -a {saved}/. {directory}/ && '
                               f'set -- $(stat -f -c "%a %S" {directory}) && '
                               f'fallocate -l $(( ($1 - {free_pages}) * $2 )) {directory}/.filler && '
                               f'test "$(stat -f -c %a {directory})" = {free_pages}' + full])
        yield
    finally:
        host.run(["sh", "-c", f"! mountpoint -q {directory} || umount {directory} || umount -l {directory}"])


def bus_up(host) -> bool:
    return host.run(["busctl", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                     "org.freedesktop.DBus.Peer", "Ping"], check=False).returncode == 0


@contextlib.contextmanager
def bus_down(host):
    """dbus.socket + dbus.service stopped for the block; then started again, and back only
    once systemd answers on the new bus."""
    host.systemctl("stop", "dbus.socket", "dbus.service")
    try:
        yield
    finally:
        host.systemctl("start", "dbus.socket", "dbus.service")
    deadline = time.monotonic() + 10
    while not bus_up(host):                           # systemd re-attaches to the new bus
        assert time.monotonic() < deadline, "systemd did not come back on the bus"
        time.sleep(0.05)


# -- the flavours ---------------------------------------------------------------------------------

def restored(paths, applied: str) -> str:
    return f"the previous configuration was restored ({', '.join(paths)}) and re-applied ({applied})"


class ApplyFault(NamedTuple):
    """A systemd drop-in for `unit` (`service`: its [Service] lines, {script} = FAULT_SCRIPT)
    running `script`; `expect`: texts of the reply; `once`: the script removes ONCE when it
    fires."""
    unit: str
    service: str
    script: str
    expect: list[str]
    once: bool = True


def dropin(unit: str) -> str:
    return f"/etc/systemd/system/{unit}.d/50-imapd-ctl-fault.conf"


@contextlib.contextmanager
def injected(host, fault: ApplyFault):
    """The fault in place (armed: ONCE exists) for the block."""
    host.write_file(FAULT_SCRIPT, "#!/bin/sh\n" + fault.script, mode=0o755)
    host.write_file(dropin(fault.unit), "[Service]\n" + fault.service.format(script=FAULT_SCRIPT))
    host.systemctl("daemon-reload")
    try:
        host.run(["touch", ONCE])
        yield
    finally:
        host.run(["rm", "-f", dropin(fault.unit), FAULT_SCRIPT, ONCE])
        host.systemctl("daemon-reload")


class Probe:
    """What the fault tests need to know about one flavour (subclasses fill it in)."""
    name: str
    host_fixture: str           # the conftest fixture that boots its host
    conf_dir: str               # where its files live
    paths: tuple[str, ...]      # the files imapd-ctl writes, sorted
    applied: str                # what applying them says ("reloaded dovecot.service")
    listen_timeout: float
    settle: float               # how long the running server may lag after the apply step
    NEW: dict
    apply_faults: dict[str, ApplyFault]
    units: tuple[str, ...]      # the units the imap controller starts and restarts
    broken: tuple[str, bytes]   # an administrator's file, and bytes that make the server refuse to start

    @property
    def restored(self) -> str:
        """How a rollback that had to undo written files says so."""
        return restored(self.paths, self.applied)

    def files(self, host) -> dict[str, bytes | None]:
        return {path: cat(host, path) for path in self.paths}

    def stamps(self, host) -> str:
        """Inode and mtime of the files (a rewrite changes them)."""
        return host.run(["stat", "-c", "%i %Y", *self.paths]).stdout

    def expected(self, old: dict[str, bytes], values: dict) -> dict[str, bytes]:
        """The bytes imapd-ctl writes for `values`, starting from the files `old`."""
        raise NotImplementedError

    def assert_lines(self, data: dict[str, bytes], values: dict) -> None:
        """The files `data` hold `values`."""
        raise NotImplementedError

    def assert_parsed(self, host, values: dict) -> None:
        """The server's own parser accepts the live files (and reads `values` from them)."""
        raise NotImplementedError

    def running(self, host):
        """What the running server was started with, or took up at its last reload."""
        raise NotImplementedError

    def running_for(self, values: dict):
        """running() once the server runs `values`."""
        raise NotImplementedError

    def activity(self, host):
        """Changes whenever the server is made to re-read its configuration."""
        raise NotImplementedError

    def assert_serving(self, host) -> None:
        raise NotImplementedError

    def assert_running(self, host, values: dict, timeout: float = 0.0) -> None:
        deadline = time.monotonic() + timeout
        while self.running(host) != self.running_for(values) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.running(host) == self.running_for(values)

    def assert_config(self, d: Daemon, data: dict[str, bytes], values: dict, *, timeout: float = 5) -> None:
        """The files are exactly `data` and hold `values`; the server's parser, queryUpdate and
        the running server agree; no journal, no temporary files; the server serves."""
        host = d.host
        assert self.files(host) == data
        self.assert_lines(data, values)
        assert cat(host, JOURNAL) is None
        litter = host.run(["sh", "-c", f"ls -A {self.conf_dir} {STATE} | grep -F .imapd-ctl. || true"]).stdout
        assert litter == ""
        self.assert_parsed(host, values)
        assert d.call("queryUpdate") == (0, values)
        self.assert_running(host, values, timeout)
        self.assert_serving(host)
        assert d.call("isRunning") == (0, True)


DOVECOT_CONF_D = "/etc/dovecot/conf.d"
DROPIN = f"{DOVECOT_CONF_D}/99-imapd-ctl.conf"
RENDER = Dovecot(Settings()).render        # the bytes imapd-ctl writes for a set of values
RELOADED = "SIGHUP received - reloading configuration"
DOVEADM_RELOAD = "exec /usr/bin/doveadm reload\n"


def running_limit(host) -> int | None:
    out = host.run(["doveadm", "service", "status", "imap"], check=False).stdout
    return next((int(l.split(":")[1]) for l in out.splitlines() if l.startswith("process_limit:")), None)


class DovecotProbe(Probe):
    name = "dovecot"
    host_fixture = "mailhost"
    units = ("dovecot.service",)
    broken = (f"{DOVECOT_CONF_D}/50-admin.conf", b"protocol imap {{\n")
    conf_dir = DOVECOT_CONF_D
    paths = (DROPIN,)
    applied = "reloaded dovecot.service"
    listen_timeout = 8.0
    settle = 5.0                # the master re-reads its config after the reload job
    NEW = {"imap_mem_limit": 400_000_000, "imap_max_connections": 31,
           "imap_secure_mem_limit": 100_000_000, "imap_secure_max_connections": 12}
    apply_faults = {
        # ExecReload fails this once: the rollback's reload works
        "fails-once": ApplyFault("dovecot.service", "ExecReload=\nExecReload={script}\n",
                                 ONCE_THEN + "echo 'injected: reload refused' >&2; exit 1; fi\n" + DOVEADM_RELOAD,
                                 ["reload dovecot.service failed", "injected: reload refused",
                                  f"the change was rolled back: the previous configuration was restored ({DROPIN}) "
                                  "and re-applied (reloaded dovecot.service)"]),
        # ExecReload=/bin/false: the rollback cannot reload either; Dovecot never left the old config
        "always-fails": ApplyFault("dovecot.service", "ExecReload=\nExecReload={script}\n", "exit 1\n",
                                   ["reload dovecot.service failed", "the change was rolled back",
                                    f"restored ({DROPIN}) but applying it failed too: reload dovecot.service failed"],
                                   once=False),
        # the reload kills Dovecot: no longer serving -> rolled back and started again
        "kills-dovecot": ApplyFault("dovecot.service", "ExecReload=\nExecReload={script}\n",
                                    ONCE_THEN + 'kill -KILL "$MAINPID"; exit 0; fi\n' + DOVEADM_RELOAD,
                                    ["the change was rolled back", f"restored ({DROPIN})",
                                     "dovecot.service had stopped and was started again"]),
    }

    def expected(self, old, values):
        return {DROPIN: RENDER(values)}

    def assert_lines(self, data, values):
        assert data[DROPIN] == RENDER(values)

    def assert_parsed(self, host, values):
        host.run(["doveconf", "-n"])
        process_limit, vsz = mapped(values)
        assert host.run(["doveconf", "-h", "service/imap/process_limit"]).stdout.strip() == str(process_limit)
        assert parse_size(host.run(["doveconf", "-h", "service/imap/vsz_limit"]).stdout) == vsz

    def running(self, host):
        return running_limit(host)

    def running_for(self, values):
        return mapped(values)[0]

    def activity(self, host):
        return host.journal("-o", "cat", "-u", "dovecot").count(RELOADED)

    def assert_serving(self, host):
        assert greets(host, 143)


IMAPD, IMAPD_SSL = f"{CONFIG_DIR}/imapd", f"{CONFIG_DIR}/imapd-ssl"
COURIER_PATHS = {PLAIN: IMAPD, SSL: IMAPD_SSL}
PLAIN_UNIT, SSL_UNIT = UNITS
BOTH = f"{PLAIN_UNIT}, {SSL_UNIT}"
COURIER_LISTEN_TIMEOUT = 3.0    # how long verify waits for a restarted unit's port (plain-never-listens)


def exec_courier(daemon: str) -> str:
    """Shell lines that exec Courier's `daemon start` (Debian 12: /usr/sbin, Debian 13:
    /usr/lib/courier, as the packaged units' ExecStart say)."""
    return (f'for b in /usr/sbin/{daemon} /usr/lib/courier/{daemon}; do [ -x "$b" ] && exec "$b" start; done\n'
            "exit 127\n")


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


class CourierProbe(Probe):
    name = "courier"
    host_fixture = "courierhost"
    units = (PLAIN_UNIT, SSL_UNIT)
    broken = (IMAPD, b'\nADMIN_NOTE="an unterminated quote\n')
    conf_dir = CONFIG_DIR
    paths = (IMAPD, IMAPD_SSL)
    applied = f"restarted {BOTH}"
    listen_timeout = COURIER_LISTEN_TIMEOUT
    settle = 0.0                # the restart jobs are done when the apply step is
    NEW = {"imap_mem_limit": 400_000_000, "imap_max_connections": 31,
           "imap_secure_mem_limit": 250_000_000, "imap_secure_max_connections": 12}
    ROLLED_BACK = "the change was rolled back: " + restored((IMAPD, IMAPD_SSL), f"restarted {BOTH}")
    apply_faults = {
        # ExecStart of the SSL daemon fails this once: the restart job fails; the rollback's works
        "ssl-start-fails": ApplyFault(SSL_UNIT, "ExecStart=\nExecStart={script}\n",
                                      ONCE_THEN + "echo 'injected: start refused' >&2; exit 1; fi\n" +
                                      exec_courier("imapd-ssl"),
                                      [f"restart {SSL_UNIT} failed", "injected: start refused", ROLLED_BACK]),
        # The 143 daemon "starts" once as a process that never listens (the PID file names it)
        "plain-never-listens": ApplyFault(PLAIN_UNIT, "ExecStart=\nExecStart={script}\n",
                                          ONCE_THEN + "sleep 600 >/dev/null 2>&1 & echo $! > /run/courier/imapd.pid; "
                                          "exit 0; fi\n" + exec_courier("imapd"),
                                          [f"after the change {PLAIN_UNIT} is active and does not listen on port 143 "
                                           f"within {COURIER_LISTEN_TIMEOUT:.0f} s", ROLLED_BACK]),
        # The SSL daemon's main process is killed while the unit is still starting (ExecStartPost
        # outlives it, so systemd sees the death in "activating (start-post)"): systemd then waits
        # until TimeoutStartSec (90 s by default; 2 s here) and fails the job
        "ssl-killed-while-starting": ApplyFault(SSL_UNIT, "ExecStartPost={script}\nTimeoutStartSec=2\n",
                                                ONCE_THEN + 'kill -KILL "$MAINPID"; sleep 0.5; fi\nexit 0\n',
                                                [f"restart {SSL_UNIT} failed: systemd job result 'failed'",
                                                 "Main process exited, code=killed, status=9/KILL", ROLLED_BACK]),
    }

    def expected(self, old, values):
        return {path: edit(old[path], name, values) for name, path in COURIER_PATHS.items()}

    def assert_lines(self, data, values):
        """MAXDAEMONS; IMAP_ULIMITD in KiB, rounded down."""
        for name, path in COURIER_PATHS.items():
            got = textual(data[path])
            conns, mem = (("imap_max_connections", "imap_mem_limit") if name == PLAIN
                          else ("imap_secure_max_connections", "imap_secure_mem_limit"))
            assert got == {"MAXDAEMONS": str(values[conns]), "IMAP_ULIMITD": str(kib(values[mem]))}, (path, got)

    def assert_parsed(self, host, values):
        for path in self.paths:
            host.run(["sh", "-n", path])

    def running(self, host):
        return {u: (maxprocs(host, u), active(host, u)) for u in UNITS}

    def running_for(self, values):
        return {PLAIN_UNIT: (values["imap_max_connections"], "active"),
                SSL_UNIT: (values["imap_secure_max_connections"], "active")}

    def activity(self, host):
        return {u: main_pid(host, u) for u in UNITS}

    def assert_serving(self, host):
        """Both ports greet from outside (143 plain, 993 TLS without verification)."""
        for port in (143, 993):
            assert greets(host, port), port


DOVECOT, COURIER = DovecotProbe(), CourierProbe()
PROBES = {p.name: p for p in (DOVECOT, COURIER)}
flavours = pytest.mark.parametrize("flavour", list(PROBES))


# -- fixtures (import them into a test module that parametrizes or defines `flavour`) ---------------

def _faults_daemon(host, probe: Probe):
    d = start_daemon(host, host.share / "faults", probe.listen_timeout)
    yield d
    d.stop()


# The hosts are named as arguments (not looked up at run time), so that they are parametrized
# over the distributions and torn down after the daemons in them.
@pytest.fixture(scope="module")
def dovecot_ctl(mailhost):
    yield from _faults_daemon(mailhost, DOVECOT)


@pytest.fixture(scope="module")
def courier_ctl(courierhost):
    yield from _faults_daemon(courierhost, COURIER)


@pytest.fixture
def probe(flavour) -> Probe:
    return PROBES[flavour]


@pytest.fixture
def ctl(request, flavour, dist) -> Daemon:  # dist: the run-time lookup below is parametrized
    """The flavour's daemon (2 workers, restartable with an environment), one per module."""
    return request.getfixturevalue(f"{flavour}_ctl")


@pytest.fixture
def base(ctl, probe):
    """The daemon runs normally (no crash hook) and the files hold OLD; returns their bytes."""
    host = ctl.host
    if host.systemctl("is-active", UNIT, check=False).stdout.strip() != "active":
        serve(ctl)
    status, payload = ctl.call("update", OLD)
    assert status == 0, payload
    data = probe.files(host)
    probe.assert_config(ctl, data, OLD)
    host.run(["mkdir", "-p", SAVE])
    return data
