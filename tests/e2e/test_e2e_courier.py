"""The Courier flavour end to end: a mail host with Debian's courier-imap (installed inside it,
see tests/courierhost.py), the real daemon auto-detecting it, every action over HTTP JSON and
XML-RPC, real IMAP clients from outside on 143 and 993, in-place edits of /etc/courier/imapd
and imapd-ssl, and limits that really hold (MAXDAEMONS per port, ulimit -v per process)."""
from __future__ import annotations

import imaplib
import socket
import ssl

import pytest

from courierhost import CONFIG_DIR, PORTS, UNITS, address_space_limit, main_pid, unit_processes
from daemon import CONTROLLERS, assert_seed_payloads, caller, exercise_every_action, service_info
from imapd_ctl.adapters.flavours.courier import kib, managed_line

pytestmark = pytest.mark.mailhost

IMAPD, IMAPD_SSL = f"{CONFIG_DIR}/imapd", f"{CONFIG_DIR}/imapd-ssl"
PLAIN_UNIT, SSL_UNIT = UNITS
VALUES = {"imap_mem_limit": 300_000_000, "imap_max_connections": 25,
          "imap_secure_mem_limit": 200_000_000, "imap_secure_max_connections": 15}


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE          # Debian's self-signed imapd.pem
    return ctx


def greeting(host, port: int) -> bytes:
    if port == 993:
        conn = imaplib.IMAP4_SSL(host.address, 993, ssl_context=tls_context(), timeout=10)
    else:
        conn = imaplib.IMAP4(host.address, port, timeout=10)
    try:
        return conn.welcome
    finally:
        conn.logout()


def pids(host) -> dict[str, int]:
    return {unit: main_pid(host, unit) for unit in UNITS}


def files(host) -> dict[str, bytes]:
    return {path: host.read_file(path) for path in (IMAPD, IMAPD_SSL)}


def only_managed_lines_differ(old: bytes, new: bytes) -> list[bytes]:
    """Assert that every non-managed line is byte-identical and in place; return the new
    file's managed lines."""
    keep = lambda data: [l for l in data.splitlines(keepends=True) if not managed_line(l)]  # noqa: E731
    assert keep(new) == keep(old)
    return [l for l in new.splitlines(keepends=True) if managed_line(l)]


@pytest.fixture
def daemon(courier_daemon):
    return courier_daemon


@pytest.fixture
def host(courierhost):
    return courierhost


# --- detection and read-only actions -----------------------------------------------------

def test_detection_picks_courier(daemon, host):
    assert host.systemctl("show", "-p", "LoadState", "--value", "dovecot").stdout.strip() == "not-found"
    out = daemon.ctl("check").stdout
    assert f"IMAP server: courier ({PLAIN_UNIT}, {SSL_UNIT})" in out, out
    assert f"IMAP over TLS (simap): {SSL_UNIT} on port 993" in out, out
    assert "FAIL" not in out, out
    # Debian's package: forking units whose MainPID is courierlogger; couriertcpd listens.
    for unit, port in PORTS.items():
        procs = unit_processes(host, unit)
        assert procs[main_pid(host, unit)] == "courierlogger"
        assert "couriertcpd" in procs.values()
        assert f":{port} " in host.run(["ss", "-ltnpH", f"sport = :{port}"]).stdout
    # /metrics: Courier's package version, both units and ports.
    metrics = daemon.http("GET", "/metrics")[1].decode()
    version = host.run(["dpkg-query", "-W", "-f=${Version}", "courier-imap"]).stdout.strip()
    assert f'imapd_ctl_build_info{{flavour="courier",server_version="{version}",' in metrics, metrics
    for unit, port in PORTS.items():
        assert f'imapd_ctl_unit_active{{unit="{unit}"}} 1.0' in metrics
        assert f'imapd_ctl_imap_up{{port="{port}",unit="{unit}"}} 1.0' in metrics


@pytest.mark.parametrize("controller", CONTROLLERS)
@pytest.mark.parametrize("transport", ["http", "xmlrpc"])
def test_read_only_actions_return_the_seed_payloads(daemon, transport, controller):
    assert_seed_payloads(caller(daemon, transport, controller), daemon.node_id, controller)


# --- service control ---------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["http", "xmlrpc"])
def test_stop_start_restart(daemon, host, transport):
    call = daemon.call if transport == "http" else daemon.route
    assert call("stop") == (0, f"stopped {PLAIN_UNIT}, {SSL_UNIT}")
    assert call("isRunning") == (0, False)
    assert call("listServiceInfo") == (0, service_info(0))
    for unit, port in PORTS.items():
        assert host.systemctl("show", "-p", "ActiveState", "--value", unit).stdout.strip() == "inactive"
        assert not host.listening(port)
        with pytest.raises(OSError):
            socket.create_connection((host.address, port), timeout=3).close()

    assert call("start") == (0, f"started {PLAIN_UNIT}, {SSL_UNIT}")
    assert call("isRunning") == (0, True)
    assert greeting(host, 143).startswith(b"* OK")
    assert greeting(host, 993).startswith(b"* OK")

    before = pids(host)
    assert call("restart") == (0, f"restarted {PLAIN_UNIT}, {SSL_UNIT}")
    after = pids(host)
    assert all(after[u] != before[u] and after[u] > 0 for u in UNITS), (before, after)
    assert greeting(host, 143).startswith(b"* OK")
    assert greeting(host, 993).startswith(b"* OK")


def test_start_on_boot_acts_on_both_units(daemon, host):
    def enabled():
        return {u: host.systemctl("is-enabled", u, check=False).stdout.strip() for u in UNITS}
    assert daemon.route("startOnBoot", {"mda_imap_startonboot": 0})[0] == 0
    assert enabled() == {u: "disabled" for u in UNITS}
    assert daemon.call("queryStartOnBoot") == (0, {"mda_imap_startonboot": 0})
    assert daemon.call("startOnBoot", {})[0] == 0                      # default 1
    assert enabled() == {u: "enabled" for u in UNITS}
    assert daemon.route("queryStartOnBoot") == (0, {"mda_imap_startonboot": 1})


@pytest.mark.parametrize("controller", CONTROLLERS)
@pytest.mark.parametrize("transport", ["http", "xmlrpc"])
def test_every_action_runs(daemon, host, transport, controller):
    """All 19 actions of each controller, each with its usual inputs, succeed through the real stack."""
    exercise_every_action(caller(daemon, transport, controller), daemon.node_id)
    assert host.listening(143) and host.listening(993)


def test_stopping_only_the_ssl_unit_is_seen_by_simap_alone(daemon, host):
    """isRunning of each controller checks its own daemon and port: with courier-imap-ssl.service
    stopped behind the daemon's back, simap says not running while imap still says running;
    simap's start brings back that unit alone, its stop takes down only that one."""
    imap, simap = caller(daemon, "http"), caller(daemon, "xmlrpc", "/nodeworx/mail/simap")
    before = pids(host)
    host.systemctl("stop", SSL_UNIT)
    try:
        assert not host.listening(993) and host.listening(143)
        assert simap("isRunning") == (0, False)
        assert simap("listServiceInfo") == (0, service_info(0, "/nodeworx/mail/simap"))
        assert imap("isRunning") == (0, True)
        assert imap("listServiceInfo") == (0, service_info(1))
    finally:
        started = simap("start")
    assert started == (0, f"started {SSL_UNIT}")
    assert greeting(host, 993).startswith(b"* OK")
    assert simap("isRunning") == (0, True)
    assert main_pid(host, PLAIN_UNIT) == before[PLAIN_UNIT]      # 143's daemon was never touched
    assert simap("stop") == (0, f"stopped {SSL_UNIT}")
    try:
        assert (simap("isRunning"), imap("isRunning")) == ((0, False), (0, True))
        assert greeting(host, 143).startswith(b"* OK")
    finally:
        started = simap("start")
    assert started[0] == 0
    assert main_pid(host, PLAIN_UNIT) == before[PLAIN_UNIT]


# --- update ------------------------------------------------------------------------------

def test_update_edits_the_managed_lines_in_place_and_reads_back_exactly(daemon, host):
    old, before = files(host), pids(host)
    status, payload = daemon.call("update", VALUES)
    assert status == 0, payload
    assert payload.endswith(f"restarted {PLAIN_UNIT}, {SSL_UNIT}")
    new = files(host)
    assert only_managed_lines_differ(old[IMAPD], new[IMAPD]) == [
        b"MAXDAEMONS=25\n", b"IMAP_ULIMITD=292968 # imapd-ctl: imap_mem_limit=300000000 bytes\n"]
    ssl_lines = only_managed_lines_differ(old[IMAPD_SSL], new[IMAPD_SSL])
    assert ssl_lines[-2:] == [b"MAXDAEMONS=15 # imapd-ctl: imap_secure_max_connections\n",
                              b"IMAP_ULIMITD=195312 # imapd-ctl: imap_secure_mem_limit=200000000 bytes\n"]
    assert new[IMAPD_SSL].endswith(b"".join(ssl_lines[-2:]))
    assert daemon.call("queryUpdate") == (0, VALUES)
    assert daemon.route("queryUpdate") == (0, VALUES)
    after = pids(host)
    assert all(after[u] != before[u] for u in UNITS)
    # What the daemons were started with: couriertcpd -maxprocs per port.
    for unit, conns in ((PLAIN_UNIT, 25), (SSL_UNIT, 15)):
        tcpd = next(pid for pid, comm in unit_processes(host, unit).items() if comm == "couriertcpd")
        args = host.read_file(f"/proc/{tcpd}/cmdline").split(b"\0")
        assert f"-maxprocs={conns}".encode() in args, args
    assert greeting(host, 143).startswith(b"* OK") and greeting(host, 993).startswith(b"* OK")

    # The same values again: nothing written, nothing restarted.
    status, payload = daemon.route("update", VALUES)
    assert status == 0 and "unchanged" in payload, payload
    assert daemon.call("update", {})[1].startswith("IMAP4 server settings unchanged")
    assert pids(host) == after and files(host) == new

    # A secure-only change touches imapd-ssl and restarts only the SSL daemon.
    status, payload = daemon.call("update", {"imap_secure_max_connections": 16})
    assert status == 0 and payload.endswith(f"restarted {SSL_UNIT}"), payload
    assert files(host)[IMAPD] == new[IMAPD]
    now = pids(host)
    assert now[PLAIN_UNIT] == after[PLAIN_UNIT] and now[SSL_UNIT] != after[SSL_UNIT]
    assert daemon.call("queryUpdate") == (0, {**VALUES, "imap_secure_max_connections": 16})
    assert daemon.call("update", VALUES)[0] == 0


def test_dry_run_shows_the_diff_and_changes_nothing(daemon, host):
    assert daemon.call("update", VALUES)[0] == 0
    old, before = files(host), pids(host)
    status, diff = daemon.call("update", {"imap_mem_limit": 104_857_600, "dry_run": 1})
    assert status == 0
    assert "-IMAP_ULIMITD=292968 # imapd-ctl: imap_mem_limit=300000000 bytes" in diff
    assert "+IMAP_ULIMITD=102400 # imapd-ctl: imap_mem_limit=104857600 bytes" in diff
    assert files(host) == old and pids(host) == before


def refused(daemon, host, change: dict, *expected: str) -> None:
    """The update is refused on both transports (500 quoting `expected`) and changes nothing."""
    old, before = files(host), pids(host)
    for call in (daemon.call, daemon.route):
        status, payload = call("update", change)
        assert status == 500, payload
        for text in expected:
            assert text in payload, payload
        assert "/var/lib/imapd-ctl" not in payload, payload        # never the candidate's temp path
        assert files(host) == old and pids(host) == before
    assert daemon.call("isRunning") == (0, True)


def test_a_candidate_that_fails_validation_changes_nothing(daemon, host):
    assert daemon.call("update", VALUES)[0] == 0
    plain, secure = host.read_file(IMAPD), host.read_file(IMAPD_SSL)
    try:
        # A line the editor cannot rewrite cleanly: the candidate is not valid shell.
        host.write_file(IMAPD, plain + b"MAXDAEMONS=$( (echo 25) )\n")
        assert daemon.call("queryUpdate") == (0, VALUES)
        refused(daemon, host, {"imap_max_connections": 26},
                f"{IMAPD} would not be valid shell", "Syntax error")
        # A later line that overrides ours: the shell proves the values would not hold.
        host.write_file(IMAPD, plain + b"[ -n \"$PORT\" ] && MAXDAEMONS=99\n")
        refused(daemon, host, {"imap_max_connections": 26},
                "MAXDAEMONS would be '99' instead of 26 for port 143 (/etc/courier/imapd)")
        host.write_file(IMAPD, plain)
        # A live file that is already broken: refused, quoting the shell.
        host.write_file(IMAPD_SSL, secure + b"if [ -n \"$SSLPORT\" ]; then\n")      # no fi
        refused(daemon, host, {"imap_secure_max_connections": 30},
                f"{IMAPD_SSL}: Syntax error: end of file unexpected")
    finally:
        host.write_file(IMAPD, plain)
        host.write_file(IMAPD_SSL, secure)
    assert daemon.call("queryUpdate") == (0, VALUES)


def test_a_limit_the_daemon_cannot_start_with_is_rolled_back(daemon, host):
    """ulimit -v 1024 (1 MiB) leaves the start script unable to load libc: the restart fails,
    the old files come back and both daemons serve again."""
    assert daemon.call("update", VALUES)[0] == 0
    old = files(host)
    status, payload = daemon.call("update", {"imap_mem_limit": 1 << 20})
    assert status == 500 and f"restart {PLAIN_UNIT} failed" in payload, payload
    assert files(host) == old
    assert daemon.call("queryUpdate") == (0, VALUES)
    assert daemon.call("isRunning") == (0, True)
    assert greeting(host, 143).startswith(b"* OK") and greeting(host, 993).startswith(b"* OK")


# --- the limits hold -----------------------------------------------------------------------

def test_limits_really_hold(daemon, host):
    values = {**VALUES, "imap_max_connections": 2}
    status, payload = daemon.call("update", values)
    assert status == 0, payload
    clients = [imaplib.IMAP4(host.address, 143, timeout=10) for _ in range(2)]
    third = None
    try:
        assert all(c.welcome.startswith(b"* OK") for c in clients)
        # MAXDAEMONS=2: couriertcpd accepts no third connection on 143 while two are open...
        third = socket.create_connection((host.address, 143), timeout=10)
        third.settimeout(3)
        with pytest.raises(TimeoutError):
            third.recv(100)
        # ...while 993 has its own limit (15) and still serves.
        assert greeting(host, 993).startswith(b"* OK")

        # ulimit -v from IMAP_ULIMITD, per port, on every process of each unit (the two
        # sessions' imaplogin included).
        for unit, field in ((PLAIN_UNIT, "imap_mem_limit"), (SSL_UNIT, "imap_secure_mem_limit")):
            limit = str(kib(values[field]) * 1024)
            procs = unit_processes(host, unit)
            if unit == PLAIN_UNIT:
                assert list(procs.values()).count("imaplogin") == 2, procs
            for pid, comm in procs.items():
                assert address_space_limit(host, pid) == (limit, limit), (unit, pid, comm)

        # A slot frees up: the waiting client gets its greeting.
        clients.pop(0).logout()
        third.settimeout(10)
        assert third.recv(100).startswith(b"* OK")
    finally:
        for c in clients:
            c.logout()
        if third is not None:
            third.close()
    assert daemon.call("update", VALUES)[0] == 0
