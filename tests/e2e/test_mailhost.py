"""Tests of the mail-host harness (tests/mailhost.py) itself.

Run as root after ``bash scripts/setup``::

    .venv/bin/pytest tests/test_mailhost.py

Uses host indexes 241-243 (links imh241..imh243, 198.18.241-243.0/24).
"""

import imaplib
import os
import socket
import tempfile
import time

import pytest

try:
    from mailhost import MailHost, MailHostError, machine_ready
except ImportError:  # tests/ imported as a package
    from tests.mailhost import MailHost, MailHostError, machine_ready

pytestmark = pytest.mark.mailhost

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_ready, _why = machine_ready()
if not _ready:
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must be able to boot mail hosts: {_why}")
    pytest.skip(_why, allow_module_level=True)


def _mounts_mentioning(text):
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if text in line]


@pytest.fixture(scope="module")
def shared():
    d = tempfile.mkdtemp(prefix="imapd-ctl-shared-", dir="/tmp")
    yield d
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)


@pytest.fixture(scope="module")
def marker():
    """A file in this machine's /tmp: booting systemd must not empty /tmp."""
    fd, path = tempfile.mkstemp(prefix="imapd-ctl-marker-", dir="/tmp")
    os.close(fd)
    yield path
    os.unlink(path)


@pytest.fixture(scope="module")
def hosts(shared, marker):
    a = MailHost(241, binds=[REPO, shared])
    b = MailHost(242, binds=[shared])
    with a, b:  # both booted, both running at once
        yield a, b


def test_index_is_validated():
    for bad in (0, 251, -1, "1"):
        with pytest.raises(ValueError):
            MailHost(bad)


def test_two_hosts_boot_with_own_names_and_addresses(hosts, marker):
    a, b = hosts
    assert a.pid != b.pid
    assert a.address == "198.18.241.2" and b.address == "198.18.242.2"
    assert a.run(["hostname"]).stdout.strip() == "mailhost241"
    assert b.run(["hostname"]).stdout.strip() == "mailhost242"
    assert a.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    for h in hosts:
        state = h.systemctl("is-system-running", check=False).stdout.strip()
        assert state in ("running", "degraded"), state
        addrs = h.run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
        assert f"{h.address}/24" in addrs
        # each host has a cgroup tree of its own (cgroup namespace)
        cg = h.run(["cat", "/proc/1/cgroup"]).stdout.splitlines()
        assert "0::/init.scope" in cg
        with open(f"/proc/{h.pid}/cgroup") as f:
            outside = f.read().splitlines()
        assert any(line.startswith("0::/") and line.endswith("/init.scope")
                   and "imapd-ctl-host-" in line for line in outside), outside
    assert os.path.exists(marker), "booting a host emptied this machine's /tmp"


def test_dovecot_in_one_host_only(hosts):
    a, b = hosts
    t0 = time.monotonic()
    a.start_dovecot()
    assert time.monotonic() - t0 < 10
    imap = imaplib.IMAP4(a.address, 143, timeout=5)
    try:
        assert imap.welcome.startswith(b"* OK"), imap.welcome
    finally:
        imap.shutdown()
    assert a.listening(143)
    assert not b.listening(143)
    assert b.systemctl("is-active", "dovecot", check=False).stdout.strip() == "inactive"
    with pytest.raises(OSError):
        socket.create_connection((b.address, 143), timeout=2).close()


def test_files_inside_are_private(hosts):
    a, b = hosts
    path = "/etc/imapd-ctl-harness-test.conf"
    a.write_file(path, "only in a\n", mode=0o600)
    assert a.read_file(path) == b"only in a\n"
    assert a.run(["stat", "-c", "%a", path]).stdout.strip() == "600"
    assert not os.path.exists(path)
    assert b.run(["test", "-e", path], check=False).returncode == 1
    # /tmp inside is the host's own too (a name no checkout bind-mounted under /tmp will have)
    tmp = "/tmp/imapd-ctl-harness-private.bin"
    a.write_file(tmp, b"\x00binary\xff")
    assert a.read_file(tmp) == b"\x00binary\xff"
    assert b.run(["test", "-e", tmp], check=False).returncode == 1


def test_shared_bind_mount_is_visible_both_ways(hosts, shared):
    a, b = hosts
    a.write_file(f"{shared}/from-a", "hello from a\n")
    with open(f"{shared}/from-a") as f:
        assert f.read() == "hello from a\n"
    assert b.read_file(f"{shared}/from-a") == b"hello from a\n"
    with open(f"{shared}/from-machine", "w") as f:
        f.write("hello from the machine\n")
    assert a.read_file(f"{shared}/from-machine") == b"hello from the machine\n"
    assert b.read_file(f"{shared}/from-machine") == b"hello from the machine\n"


def test_repo_bind_mount_gives_the_venv(hosts):
    a, _ = hosts
    py = os.path.join(REPO, ".venv", "bin", "python")
    if not os.path.exists(py):
        pytest.skip("no .venv (run scripts/setup)")
    assert a.run(["mountpoint", "-q", REPO], check=False).returncode == 0
    r = a.run([py, "-c", "import flask, gi; print('ok')"])
    assert r.stdout.strip() == "ok"


def test_run_failure_names_argv_rc_and_output(hosts):
    a, _ = hosts
    with pytest.raises(MailHostError) as ei:
        a.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    msg = str(ei.value)
    for part in ("exit 3", "rc=3", "out", "err"):
        assert part in msg
    assert a.run(["sh", "-c", "exit 3"], check=False).returncode == 3
    assert a.run(["sh", "-c", 'echo "$FOO"'], env={"FOO": "bar"}).stdout == "bar\n"
    assert a.run(["cat"], input="piped").stdout == "piped"


def test_shutdown_leaves_nothing_behind():
    host = MailHost(243).boot()
    host.start_dovecot()
    pid, link, workdir = host.pid, host.link, host.workdir
    own_pidns = os.readlink(f"/proc/{pid}/ns/pid")
    members = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.readlink(f"/proc/{p}/ns/pid") == own_pidns:
                    members.append(int(p))
            except OSError:
                pass
    assert pid in members and len(members) > 3  # systemd, journald, dovecot...
    assert os.path.exists(f"/sys/class/net/{link}")
    host.shutdown()
    for p in members:
        with pytest.raises(ProcessLookupError):
            os.kill(p, 0)
    assert not os.path.exists(f"/sys/class/net/{link}")
    assert not os.path.exists(workdir)
    assert _mounts_mentioning(os.path.basename(workdir)) == []
    host.shutdown()  # idempotent


POLICY = "/usr/sbin/policy-rc.d"


@pytest.fixture
def container_policy():
    """This machine with a Docker-style policy-rc.d (exit 101), as the machine image ships it.
    One that is already there is used as it is; one made here is removed again."""
    made = not os.path.lexists(POLICY)
    if made:
        with open(POLICY, "x") as f:
            f.write("#!/bin/sh\n# imapd-ctl test_mailhost: a container image's policy\nexit 101\n")
        os.chmod(POLICY, 0o755)
    yield
    if made:
        os.unlink(POLICY)


def test_hosts_never_inherit_the_machines_policy_rc_d(container_policy):
    """A real mail host has no policy-rc.d: with the machine's in place, a package's postinst
    inside a host must still be allowed to start its units (invoke-rc.d asks the policy)."""
    assert os.path.exists(POLICY)
    with MailHost(243) as host:
        assert host.run(["test", "-e", POLICY], check=False).returncode == 1
    assert os.path.exists(POLICY)   # this machine's file is untouched


# -- Debian 13 hosts (tests/e2e/rootfs.py) ------------------------------------------------------

def test_dist_is_validated(monkeypatch):
    import rootfs
    with pytest.raises(ValueError, match="bookworm, trixie"):
        MailHost(dist="sid")
    monkeypatch.setenv(rootfs.ENV_DISTS, "trixie, bookworm")
    assert rootfs.wanted_dists() == ("trixie", "bookworm")
    monkeypatch.setenv(rootfs.ENV_DISTS, "bookworm,jessie")
    with pytest.raises(ValueError, match=r"IMAPD_CTL_TEST_DISTS=.*jessie.*allowed: bookworm, trixie"):
        rootfs.wanted_dists()


def test_trixie_host_boots_debian_13_from_the_cached_root_like_a_debian_12_one(marker):
    """Built once (the path is the cache's, not rebuilt by a second call), booted as Debian 12
    hosts are: private /run, /tmp, /var/tmp, a cgroup namespace of its own; Dovecot 2.4 runs."""
    import rootfs
    path = rootfs.root_path("trixie")
    built = os.stat(path).st_mtime_ns
    with MailHost(dist="trixie") as host:
        assert host.run(["cat", "/etc/debian_version"]).stdout.startswith("13")
        assert host.run(["python3", "-c", "import sys; print(sys.version_info[:2])"]).stdout.strip() == "(3, 13)"
        for d in ("/run", "/tmp", "/var/tmp"):
            assert host.run(["findmnt", "-n", "-o", "FSTYPE", d]).stdout.strip() == "tmpfs", d
        assert "0::/init.scope" in host.run(["cat", "/proc/1/cgroup"]).stdout.splitlines()   # own cgroup ns
        host.start_dovecot()
        assert host.run(["dovecot", "--version"]).stdout.startswith("2.4.")
        assert host.run(["test", "-e", "/usr/sbin/policy-rc.d"], check=False).returncode == 1
    assert rootfs.root_path("trixie") == path and os.stat(path).st_mtime_ns == built
    assert os.path.exists(marker)   # this machine's /tmp was not emptied
