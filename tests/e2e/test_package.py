"""The Debian package, end to end, on a throw-away mail host (real systemd, real Dovecot).

The .deb is built with dpkg-buildpackage (scripts/build-deb) by the distribution it runs on:
on this machine for Debian 12 (once per session, the `built_deb` fixture), inside the booted
Debian 13 host for Debian 13; lintian of that distribution checks it. Its Debian dependencies
are downloaded here beforehand (`apt-get install --download-only` into a cache of ours; nothing
is installed on this machine), and inside a booted MailHost it is installed with
`apt-get install ./imapd-ctl_*.deb`, exactly as an operator would. Then: the units are
enabled and running under systemd and its hardening, with the distribution's own Flask,
Werkzeug, gunicorn and psutil (Debian 12 and Debian 13: the lifecycle runs once per `dist`; on
Debian 13 the dependencies are already in the cached root, tests/e2e/rootfs.py); curl over the unix socket gets isRunning from the host's Dovecot; the
mutating actions work under the sandbox; restarts and crashes keep the API up; TLS and the
refusal of a non-loopback listener without TLS; upgrade to a next version whose conffiles
changed, one of them edited by the admin; remove keeps settings and keys; purge leaves nothing
of ours; a reinstall starts afresh. The tests run in file order on one host (a lifecycle).
The build itself, the RPM and the comparison of the two: test_package_build.py.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from attacks import assert_isrunning_holds
from bodies import assert_bounded, assert_odd_paths_answer_the_envelope
from imapd_ctl.server.worker import CONNECTIONS
import rootfs
from mailhost import MailHost, machine_ready
from pkgbuild import (NEXT_VERSION_LINE, build_deb, build_deb_in_host, lintian_findings, source_tree)

# The distribution's own modules the package runs on (name: version prefix, Starting gunicorn X).
DEBIAN_MODULES = {
    "bookworm": ({"flask": "2.2.", "werkzeug": "2.2.", "gunicorn": "20.1.", "psutil": "5.9."}, "20.1.0"),
    "trixie": ({"flask": "3.1.", "werkzeug": "3.1.", "gunicorn": "23.0.", "psutil": "7.0."}, "23.0.0"),
}

pytestmark = pytest.mark.mailhost

DEB_CACHE = Path("/var/tmp/imapd-ctl-debcache")   # downloaded Debian dependencies, reused
SOCK = "/run/imapd-ctl/imapd-ctl.sock"
UNITS = ("imapd-ctl.socket", "imapd-ctl.service")
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
# The man page and completion, where man-db, bash-completion's loader and zsh look for them.
DOC_FILES = ("/usr/share/man/man8/imapd-ctl.8.gz", "/usr/share/bash-completion/completions/imapd-ctl",
             "/usr/share/zsh/vendor-completions/_imapd-ctl")


MONITORING = ("/usr/share/imapd-ctl/monitoring/imapd-ctl.rules.yml",
              "/usr/share/imapd-ctl/monitoring/imapd-ctl-dashboard.json")


# ------------------------------------------------------------------ the lifecycle on a host

class Pkg:
    """The booted host with the package installed, and helpers to talk to it."""

    def __init__(self, host: MailHost, debdir: Path, deb: Path):
        self.host, self.debdir, self.deb = host, debdir, deb
        self.key: str | None = None

    def run(self, *argv: str, check: bool = True, timeout: float = 120, env_key: str | None = None):
        env = {**APT_ENV, **({"IMAPD_CTL_KEY": env_key} if env_key else {})}
        return self.host.run(list(argv), check=check, timeout=timeout, env=env)

    def curl(self, action: str, *data: str, key: str | None = None) -> str:
        argv = ["curl", "-sS", "--max-time", "60", "--unix-socket", SOCK,
                "-H", f"Authorization: Bearer {key or self.key}"]
        for d in data:
            argv += ["-d", d]
        if not data and action in ("start", "stop", "restart"):
            argv += ["-X", "POST"]
        return self.run(*argv, f"http://localhost/nodeworx/mail/imap/{action}").stdout

    def call(self, action: str, *data: str) -> tuple[int, object]:
        reply = json.loads(self.curl(action, *data))
        return reply["status"], reply["payload"]

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "-p", prop, "--value", unit).stdout.strip()

    def active(self, unit: str) -> str:
        return self.run("systemctl", "is-active", unit, check=False).stdout.strip()

    def journal(self, since_cursor: str | None = None) -> str:
        args = ["journalctl", "--no-pager", "-o", "cat", "-u", "imapd-ctl.service"]
        if since_cursor:
            args += ["--after-cursor", since_cursor]
        return self.run(*args, check=False).stdout

    def cursor(self) -> str:
        out = self.run("journalctl", "--no-pager", "-n", "0", "--show-cursor", check=False).stdout
        m = re.search(r"-- cursor: (\S+)", out)
        return m.group(1) if m else ""

    def set_config(self, text: str) -> None:
        self.host.write_file("/etc/imapd-ctl/imapd-ctl.toml", text)

    def config(self) -> str:
        return self.host.read_file("/etc/imapd-ctl/imapd-ctl.toml").decode()


def _apt_get(args: list[str], *, timeout: float = 300) -> subprocess.CompletedProcess:
    """apt-get on this machine; one `apt-get update` and a retry if the lists are stale."""
    argv = ["apt-get", "-q", "-y", *args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **APT_ENV})
    if r.returncode != 0:
        subprocess.run(["apt-get", "-q", "update"], capture_output=True, text=True, timeout=timeout)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **APT_ENV})
    if r.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}", pytrace=False)
    return r


def _build(p: "Pkg", tree: Path, version: str | None = None) -> Path:
    """The .deb of `tree` (a source_tree() copy in p.debdir), built by the distribution of the
    host: on this machine for Debian 12, inside the host for Debian 13."""
    if p.dist == "bookworm":
        deb, took = build_deb(p.debdir, version, repo=tree)
    else:
        deb, took = build_deb_in_host(p.host, tree, p.debdir, version)
    print(f"\ndpkg-buildpackage ({p.dist}): {deb.name}, {took:.1f} s")
    return deb


@pytest.fixture(scope="module")
def pkg(dist, request):
    ok, reason = machine_ready()
    if not ok:
        pytest.fail(f"cannot boot a mail host here: {reason} (run `bash scripts/setup` as root)", pytrace=False)
    debdir = Path(tempfile.mkdtemp(prefix="imapd-ctl-deb-", dir="/var/tmp"))
    host = None
    try:
        (DEB_CACHE / "partial").mkdir(parents=True, exist_ok=True)
        host = MailHost(binds=[str(debdir), str(DEB_CACHE)], dist=dist)
        host.boot()
        host.start_dovecot()
        p = Pkg(host, debdir, Path())
        p.dist = dist
        if dist == "bookworm":
            built, _ = request.getfixturevalue("built_deb")
            shutil.copy(built, debdir)
            p.deb = debdir / built.name
            # Dependencies from the package registry, downloaded on this machine (not installed);
            # the host's root is an overlay of this machine's, so it sees the cache. (Debian 13's
            # are in its cached root already.)
            t0 = time.monotonic()
            _apt_get(["install", "--download-only", "-o", f"Dir::Cache::archives={DEB_CACHE}", str(p.deb)])
            print(f"dependencies downloaded/checked: {time.monotonic() - t0:.1f} s")
        else:
            p.deb = _build(p, source_tree(debdir / "src"))
        # apt refuses --no-download together with a local .deb, so the downloaded
        # dependencies go into the host's own archive cache (its writes vanish with it).
        p.run("sh", "-c", f"cp {DEB_CACHE}/*.deb /var/cache/apt/archives/ 2>/dev/null || true")
        t0 = time.monotonic()
        r = p.run("sh", "-c", f"cd {debdir} && apt-get install -y -q ./{p.deb.name}", check=False, timeout=300)
        print(f"apt-get install ./{p.deb.name} inside the host: {time.monotonic() - t0:.1f} s")
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        yield p
    finally:
        if host is not None:
            host.shutdown()
        shutil.rmtree(debdir, ignore_errors=True)


def test_lintian_of_the_distribution_finds_nothing_unexplained(pkg):
    """The distribution's own lintian on the .deb it built: no error or warning that is not
    overridden (debian/imapd-ctl.lintian-overrides says why for each), no info or pedantic tag
    that is neither overridden nor explained (pkgbuild.EXPLAINED_TAGS)."""
    r = pkg.run("lintian", "--pedantic", "--display-info", "--show-overrides", str(pkg.deb), check=False,
                timeout=300)
    overridden = [line for line in r.stdout.splitlines() if line.startswith("O: ")]
    print(f"\nlintian --pedantic ({pkg.dist}): {len(overridden)} overridden:", *overridden, sep="\n  ")
    assert lintian_findings(r.stdout) == [], r.stdout
    assert r.returncode == 0, r.stdout + r.stderr


def test_installed_enabled_and_running_with_debian_python(pkg):
    for unit in UNITS:
        assert pkg.run("systemctl", "is-enabled", unit, check=False).stdout.strip() == "enabled", unit
        assert pkg.active(unit) == "active", pkg.run("systemctl", "status", unit, check=False).stdout
    # Type=notify: gunicorn's arbiter said READY (and its status text) to systemd.
    assert pkg.show("imapd-ctl.service", "Type") == "notify"
    assert pkg.show("imapd-ctl.service", "StatusText") == "Gunicorn arbiter booted"
    # The key store exists before any key was made; logs too: the daemon's user's, private.
    assert pkg.run("stat", "-c", "%a %U", "/var/lib/imapd-ctl").stdout.split() == ["700", "imapd-ctl"]
    assert pkg.run("stat", "-c", "%a %U", "/var/log/imapd-ctl").stdout.split() == ["750", "imapd-ctl"]
    # Secrets apart from settings: the settings are world-readable (no secrets in them), peer
    # key files go into a root-only directory.
    assert pkg.run("stat", "-c", "%a %U", "/etc/imapd-ctl/imapd-ctl.toml").stdout.split() == ["644", "root"]
    assert pkg.run("stat", "-c", "%a %U", "/etc/imapd-ctl/nodes", "/etc/imapd-ctl/nodes.d").stdout.split() == \
        ["700", "root", "700", "root"]
    # The monitoring pack where docs/monitoring.md says, and rules Debian's promtool accepts.
    for path in MONITORING:
        assert pkg.run("stat", "-c", "%a %U", path).stdout.split() == ["644", "root"], path
    assert "SUCCESS: 11 rules found" in pkg.run("promtool", "check", "rules", MONITORING[0]).stdout
    # The daemon runs as its own system user, with one capability only.
    assert pkg.show("imapd-ctl.service", "User") == "imapd-ctl"
    status = pkg.host.read_file(f"/proc/{pkg.show('imapd-ctl.service', 'MainPID')}/status").decode()
    assert re.search(r"^Uid:\s+(\d+)", status, re.M).group(1) == pkg.run("id", "-u", "imapd-ctl").stdout.strip()
    assert re.search(r"^CapEff:\s+(\w+)", status, re.M).group(1) == "0000000000000002"   # DAC_OVERRIDE only
    conffiles = pkg.run("dpkg-query", "-W", "-f", "${Conffiles}", "imapd-ctl").stdout
    assert "/etc/imapd-ctl/imapd-ctl.toml" in conffiles
    # The distribution's modules, from Debian's packages (no venv, nothing from PyPI).
    probe = ("import flask, gunicorn, psutil, werkzeug, gi, importlib.metadata as m, json; "
             "print(json.dumps({n: [m.version(n), mod.__file__] for n, mod in "
             "[('flask', flask), ('gunicorn', gunicorn), ('psutil', psutil), ('werkzeug', werkzeug)]}))")
    versions = json.loads(pkg.run("/usr/bin/python3", "-c", probe).stdout)
    print("\nDebian modules in the host:", {k: v[0] for k, v in versions.items()})
    for name, (version, path) in versions.items():
        assert path.startswith("/usr/lib/python3/dist-packages/"), (name, path)
    prefixes, gunicorn_version = DEBIAN_MODULES[pkg.dist]
    assert {n: v[0][:len(prefixes[n])] for n, v in versions.items()} == prefixes
    log = pkg.journal()
    assert f"Starting gunicorn {gunicorn_version}" in log
    assert f"socket activation: serving unix:{SOCK} (from systemd), 127.0.0.1:8143 (from the settings)" in log
    main = pkg.show("imapd-ctl.service", "MainPID")
    cmdline = pkg.host.read_file(f"/proc/{main}/cmdline").split(b"\0")
    assert cmdline[:3] == [b"/usr/bin/python3", b"/usr/bin/imapd-ctl", b"serve"], cmdline


def test_root_needs_no_key_on_the_socket_and_everyone_else_still_does(pkg):
    """Right after installing, before any key exists: the kernel says root is calling."""
    r = pkg.run("imapd-ctl", "call", "isRunning", check=False)
    assert (r.returncode, r.stdout.strip()) == (0, "true"), r.stderr
    r = pkg.run("imapd-ctl", "status", check=False)
    assert r.returncode == 0 and "yes (isRunning)" in r.stdout, r.stdout + r.stderr
    assert pkg.run("imapd-ctl", "call", "startOnBoot", "mda_imap_startonboot=1").returncode == 0
    audit = [json.loads(line) for line in pkg.host.read_file("/var/log/imapd-ctl/audit.log").splitlines()]
    assert (audit[-1]["key"], audit[-1]["peer"]) == ("root (uid 0, no key)", "unix-socket (uid 0)"), audit[-1]
    r = pkg.run("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "imapd-ctl", "call",
                "isRunning", check=False)
    assert r.returncode == 5 and "an API key is needed (root needs none on this host)" in r.stderr, r.stderr
    # Over TCP only keys count, for root too.
    r = pkg.run("curl", "-sS", "http://127.0.0.1:8143/nodeworx/mail/imap/isRunning")
    assert json.loads(r.stdout)["status"] == 401


def test_curl_over_the_unix_socket_with_a_created_key(pkg):
    pkg.key = pkg.run("imapd-ctl", "key", "create", "panel").stdout.strip()
    assert pkg.key.startswith("ictl_")
    assert pkg.curl("isRunning").strip() == '{"status": 0, "payload": true}'
    tcp = pkg.run("curl", "-sS", "-H", f"Authorization: Bearer {pkg.key}",
                  "http://127.0.0.1:8143/nodeworx/mail/imap/isRunning").stdout
    assert json.loads(tcp) == {"status": 0, "payload": True}
    # The rest of the surface on Debian's Flask/Werkzeug 2.2: XML-RPC, OpenAPI, errors.
    probe = ("import xmlrpc.client, sys; api = xmlrpc.client.ServerProxy('http://127.0.0.1:8143/xmlrpc', allow_none=True); "
             "print(api.iworx.route(sys.argv[1], '/nodeworx/mail/imap', 'listServiceInfo', {'perms': []}))")
    assert "'is_running': 1" in pkg.run("/usr/bin/python3", "-c", probe, pkg.key).stdout
    # Entities are refused before they expand (a million-fold bomb here), with Debian's expat.
    bomb = ('<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "' + "a" * 1000 + '"><!ENTITY b "' + "&a;" * 1000
            + '">]><methodCall><methodName>&b;</methodName></methodCall>')
    r = pkg.run("curl", "-sS", "-H", "Content-Type: text/xml", "--data-binary", bomb,
                "http://127.0.0.1:8143/xmlrpc").stdout
    assert len(r) < 1000 and "no DTD, no entities" in r, r[:300]
    assert '"openapi"' in pkg.run("curl", "-sS", "--unix-socket", SOCK, "http://localhost/openapi.json").stdout
    assert json.loads(pkg.curl("isRunning", key="ictl_wrong"))["status"] == 401
    assert json.loads(pkg.curl("noSuchAction"))["status"] == 404
    assert json.loads(pkg.curl("update", "imap_max_connections=1.5"))["status"] == 400
    r = pkg.run("curl", "-sS", "--unix-socket", SOCK, "-H", f"Authorization: Bearer {pkg.key}",
                "-H", "Content-Type: application/json", "-d", '{"dry_run": 1, "imap_max_connections": 70}',
                "http://localhost/nodeworx/mail/imap/update").stdout
    assert json.loads(r)["status"] == 0 and "process_limit" in json.loads(r)["payload"], r
    assert pkg.run("imapd-ctl", "call", "isRunning", env_key=pkg.key).stdout.strip() == "true"
    # The socket is systemd's, 0660 root:root.
    assert pkg.run("stat", "-c", "%a %U %G %F", SOCK).stdout.split() == ["660", "root", "root", "socket"]


def test_bodies_are_bounded_and_odd_paths_enveloped_on_debian_modules(pkg):
    """Werkzeug 2.2 reads any body whole by itself: the limit must hold below it (bodies.py)."""
    main = pkg.show("imapd-ctl.service", "MainPID")
    workers = [int(p) for p in pkg.run("pgrep", "-P", main).stdout.split()]
    figures = assert_bounded(pkg.host, SOCK, pkg.key, workers)
    print(f"\nDebian 12 modules: 512 MiB bodies: {figures}")
    assert_odd_paths_answer_the_envelope(pkg.host, SOCK, pkg.key)
    assert pkg.call("isRunning") == (0, True)


def test_isrunning_holds_with_every_attack_at_once_on_debian_modules(pkg):
    """The serving model on Debian's gunicorn and Werkzeug, one worker (attacks.py)."""
    figures = assert_isrunning_holds(pkg.host, SOCK, pkg.key, flood=CONNECTIONS + 200)
    print(f"\n.deb: every attack at once past the connection limit: {figures}")
    assert pkg.call("isRunning") == (0, True)


def test_every_kind_of_action_works_under_the_hardening(pkg):
    """Writes in /etc/dovecot, doveconf/doveadm/journalctl, D-Bus manager calls, /proc fds."""
    status, payload = pkg.call("update", "imap_max_connections=60", "imap_secure_max_connections=40")
    assert status == 0, payload
    assert "reloaded dovecot.service" in payload
    dropin = pkg.host.read_file("/etc/dovecot/conf.d/99-imapd-ctl.conf").decode()
    assert "process_limit = 100" in dropin
    assert pkg.run("doveconf", "-h", "service/imap/process_limit").stdout.strip() == "100"
    assert pkg.call("queryUpdate")[1]["imap_max_connections"] == 60
    assert pkg.call("stop") == (0, "stopped dovecot.service")
    assert pkg.call("isRunning") == (0, False)
    assert pkg.call("start") == (0, "started dovecot.service")
    assert pkg.call("isRunning") == (0, True)
    assert pkg.call("restart")[0] == 0
    assert pkg.call("startOnBoot", "mda_imap_startonboot=0")[0] == 0
    assert pkg.run("systemctl", "is-enabled", "dovecot", check=False).stdout.strip() == "disabled"
    assert pkg.call("startOnBoot", "mda_imap_startonboot=1")[0] == 0
    assert pkg.run("systemctl", "is-enabled", "dovecot").stdout.strip() == "enabled"
    # A failed start quotes the unit's journal (journalctl inside the sandbox).
    pkg.call("stop")
    pkg.host.write_file("/etc/dovecot/local.conf", "bogus_setting_for_the_test = 1\n")
    try:
        status, payload = pkg.call("start")
        assert status == 500 and "Unknown setting: bogus_setting_for_the_test" in payload, payload
    finally:
        pkg.run("rm", "-f", "/etc/dovecot/local.conf")
    assert pkg.call("start") == (0, "started dovecot.service")
    audit = pkg.host.read_file("/var/log/imapd-ctl/audit.log").decode().splitlines()
    assert json.loads(audit[-1])["action"] == "start" and json.loads(audit[-1])["key"] == "panel"
    # A broken administrator's file: restart is refused, the server keeps serving (same process).
    pid = pkg.show("dovecot.service", "MainPID")
    pkg.host.write_file("/etc/dovecot/local.conf", "protocol imap {{\n")
    try:
        status, payload = pkg.call("restart")
        assert status == 500 and payload.startswith("restart refused: the IMAP server would not start"), payload
        assert "/etc/dovecot/local.conf" in payload, payload
    finally:
        pkg.run("rm", "-f", "/etc/dovecot/local.conf")
    assert pkg.show("dovecot.service", "MainPID") == pid and pkg.call("isRunning") == (0, True)
    # A restart that fails with the last update's values (a start condition the validator cannot
    # see) goes back to the values before it.
    assert pkg.call("update", "imap_max_connections=61")[0] == 0
    dropin = "/etc/systemd/system/dovecot.service.d/50-test-refuse.conf"
    pkg.host.write_file(dropin, "[Service]\nExecStartPre=/bin/sh -c '! grep -q \"process_limit = 101\" "
                                "/etc/dovecot/conf.d/99-imapd-ctl.conf'\n")
    pkg.run("systemctl", "daemon-reload")
    try:
        status, payload = pkg.call("restart")
        assert status == 500 and payload.startswith("restart failed; the last update ("), payload
        assert pkg.call("queryUpdate")[1]["imap_max_connections"] == 60
        assert pkg.call("isRunning") == (0, True)
    finally:
        pkg.run("rm", "-f", dropin)
        pkg.run("systemctl", "daemon-reload")
    check = pkg.run("imapd-ctl", "check")
    assert "FAIL" not in check.stdout


PROBE = Path(__file__).with_name("privilege_probe.py")
AS_DAEMON = ["setpriv", "--reuid=imapd-ctl", "--regid=imapd-ctl", "--clear-groups"]


def test_a_compromised_daemon_is_contained(pkg):
    """What the daemon's own identity (user, capabilities, sandbox, system call filter) can do,
    tried from inside the packaged unit: privilege_probe.py runs as an extra ExecStartPost= of
    a runtime drop-in, exactly as the daemon would run code of an attacker's choosing. Each
    refusal sits next to what its job needs, which still works."""
    pkg.host.write_file("/run/imapd-ctl-probe.py", PROBE.read_text())
    dropin = "/run/systemd/system/imapd-ctl.service.d/probe.conf"
    pkg.host.write_file(dropin, "[Service]\nExecStartPost=/usr/bin/python3 /run/imapd-ctl-probe.py\n")
    cursor = pkg.cursor()
    try:
        pkg.run("systemctl", "daemon-reload")
        pkg.run("systemctl", "reset-failed", "imapd-ctl.service")
        pkg.run("systemctl", "restart", "imapd-ctl")
        line = next((l for l in pkg.journal(cursor).splitlines() if l.startswith(("PROBE ", "PROBE-ERROR"))), "")
        assert line.startswith("PROBE "), pkg.journal(cursor)[-3000:]
        got = json.loads(line[len("PROBE "):])
    finally:
        pkg.run("rm", "-rf", os.path.dirname(dropin), "/run/imapd-ctl-probe.py")
        pkg.run("systemctl", "daemon-reload")
        pkg.run("systemctl", "restart", "imapd-ctl")
        pkg.run("systemctl", "reset-failed", "imapd-ctl.service")   # the start rate limit
    print("\nprobe inside imapd-ctl.service:", json.dumps(got, indent=1))
    uid = int(pkg.run("id", "-u", "imapd-ctl").stdout)
    assert got.pop("identity") == {"uid": uid, "euid": uid, "caps": ["0000000000000002"] * 3}
    # Its job: its configuration paths and state; doveconf, doveadm.
    for allowed in ("create in /etc/dovecot/conf.d", "create in /var/lib/imapd-ctl", "exec doveconf",
                    "exec doveadm service status", "read /etc/dovecot/dovecot.conf"):
        assert got.pop(allowed) == "ok", allowed
    assert got.pop("read /etc/shadow") in ("ENODATA", "EACCES")       # hidden, although CAP_DAC_OVERRIDE
    # Nothing else, although CAP_DAC_OVERRIDE overrides file permissions: read-only file system.
    for path in ("write /etc/passwd", "write /etc/dovecot/dovecot.conf", "create /etc/systemd/system/x.service",
                 "create /etc/polkit-1/rules.d/00-x.rules", "write /etc/imapd-ctl/imapd-ctl.toml",
                 "create /usr/local/bin/x"):
        assert got.pop(path) == "EROFS", path
    for program in ("exec /usr/bin/id", "exec /usr/bin/systemd-run"):
        assert got.pop(program) == "EACCES", program
    wrote = [name for name in got if name.startswith("exec a file it wrote in ")]
    assert "exec a file it wrote in /var/lib/imapd-ctl" in wrote and "exec a file it wrote in /tmp" in wrote, wrote
    for program in wrote:
        assert got.pop(program) == "EACCES", program
    # systemd, through polkit: no transient unit, no other unit, no unit files, no reload.
    assert got and set(got.values()) == {"org.freedesktop.DBus.Error.AccessDenied"}, got
    assert pkg.active("polkit.service") == "active" and pkg.active("imapd-ctl.socket") == "active"
    assert pkg.run("test", "-e", "/etc/probe", check=False).returncode != 0


def test_root_recover_refuses_a_journal_the_daemons_user_forged(pkg):
    """A journal written by the daemon's identity, naming a file outside the flavour's with
    chosen bytes: root's `imapd-ctl recover` (which `check` and the 503s tell the admin to run)
    refuses it and writes nothing."""
    pwned = "/etc/imapd-ctl-pwned"
    forged = json.dumps({"version": 1, "txn_id": "f0f0", "action": "update", "step": "written",
                         "started": "2026-01-01T00:00:00+00:00", "meta": {},
                         "old": {pwned: base64.b64encode(b"root::0:0::/root:/bin/sh\n").decode()},
                         "new": {pwned: None}})
    journal = "/var/lib/imapd-ctl/journal.json"
    pkg.run(*AS_DAEMON, "sh", "-c", f"umask 077; printf '%s' '{forged}' > {journal}")
    try:
        r = pkg.run("imapd-ctl", "recover", check=False)
        assert r.returncode != 0 and "not trusted" in r.stdout + r.stderr, (r.stdout, r.stderr)
        assert pkg.run("test", "-e", pwned, check=False).returncode == 1
    finally:
        pkg.run("rm", "-f", journal, pwned)
    assert pkg.call("isRunning") == (0, True)


def test_systemd_run_and_other_units_are_refused_to_the_daemons_user(pkg):
    """The same through systemd's own tools, as the daemon's user (polkit decides by user)."""
    r = pkg.run(*AS_DAEMON, "systemd-run", "--wait", "touch", "/etc/imapd-ctl-escape", check=False)
    assert r.returncode != 0 and "Access denied" in r.stderr, r.stdout + r.stderr
    assert pkg.run("test", "-e", "/etc/imapd-ctl-escape", check=False).returncode != 0
    for argv in (["systemctl", "stop", "polkit.service"], ["systemctl", "start", "systemd-tmpfiles-clean.service"],
                 # Unit files: not even the IMAP unit's directly (only through the helper unit).
                 ["systemctl", "--no-reload", "enable", "dovecot.service"], ["systemctl", "daemon-reload"],
                 ["systemctl", "start", "imapd-ctl-enable@ssh.service.service"]):
        r = pkg.run(*AS_DAEMON, *argv, check=False)
        assert r.returncode != 0 and "Access denied" in r.stderr, (argv, r.stdout + r.stderr)
    # ...while the IMAP unit's jobs are allowed to it.
    # The actions test before restarted Dovecot within systemd's start-limit interval (5 starts
    # in 10 s); Dovecot 2.4 (Debian 13) stops fast enough for this restart to be refused.
    pkg.run("systemctl", "reset-failed", "dovecot.service")
    assert pkg.run(*AS_DAEMON, "systemctl", "restart", "dovecot.service").returncode == 0
    assert pkg.call("isRunning") == (0, True)


def test_a_node_added_as_files_is_called_by_the_hardened_daemon_without_a_restart(pkg):
    """`imapd-ctl node add` writes root's nodes.d (0700; the key 0600); the daemon's user reads
    both at its next call (the reply is the peer's: unreachable here, not "unknown node" nor "cannot
    read its key"); removed, the node is unknown again. The daemon never restarted."""
    main = pkg.show("imapd-ctl.service", "MainPID")
    pkg.run("sh", "-c", f"echo ictl_{'p' * 43} > /root/peer2.key")
    added = pkg.run("imapd-ctl", "node", "add", "peer2", "https://198.18.0.99:2443", "--ca",
                    "/etc/ssl/certs/ca-certificates.crt", "--key-file", "/root/peer2.key")
    assert "added peer2" in added.stdout, added.stdout + added.stderr
    assert pkg.run("stat", "-c", "%a %U", "/etc/imapd-ctl/nodes.d", "/etc/imapd-ctl/nodes.d/peer2.key").stdout.split() \
        == ["700", "root", "600", "root"]
    listed = json.loads(pkg.run("imapd-ctl", "node", "list", "--json").stdout)
    assert ("peer2", "/etc/imapd-ctl/nodes.d/peer2.toml") in [(n["id"], n["source"]) for n in listed]
    status, payload = pkg.call("isRunningOnNode", "node_id=peer2")
    assert status == 502 and payload.startswith("node peer2: ") and "key" not in payload, payload
    assert pkg.run("imapd-ctl", "node", "remove", "peer2").returncode == 0
    status, payload = pkg.call("isRunningOnNode", "node_id=peer2")
    assert status == 404 and "unknown node 'peer2'" in payload, payload
    assert pkg.show("imapd-ctl.service", "MainPID") == main
    pkg.run("rm", "-f", "/root/peer2.key")


def test_a_secret_file_open_to_others_stops_the_daemon_with_exit_78(pkg):
    original = pkg.config()
    key_file = "/etc/imapd-ctl/nodes/peer.key"
    pkg.run("install", "-m", "0644", "/dev/null", key_file)
    pkg.run("sh", "-c", f"echo ictl_{'k' * 43} > {key_file}")
    pkg.set_config(original + '\n[[nodes]]\nid = "peer"\nurl = "https://198.18.0.99:8443"\n'
                   f'key_file = "{key_file}"\nca = "/etc/ssl/certs/ca-certificates.crt"\n')
    cursor = pkg.cursor()
    pkg.run("systemctl", "reset-failed", "imapd-ctl.service")
    try:
        assert pkg.run("systemctl", "restart", "imapd-ctl", check=False).returncode != 0
        assert pkg.active("imapd-ctl.service") == "failed"
        assert pkg.show("imapd-ctl.service", "ExecMainStatus") == "78"
        log = pkg.journal(cursor)
        assert (f"refusing to start: {key_file} holds the key of node peer (key_file) but is readable by "
                f"group and others (mode 0644): set mode 0600 (chmod 0600 {key_file})") in log, log
        assert "FAIL secret file private" in pkg.run("imapd-ctl", "check", check=False).stdout
        # As the message says: then it starts.
        pkg.run("chmod", "0600", key_file)
        pkg.run("systemctl", "reset-failed", "imapd-ctl.service")
        pkg.run("systemctl", "restart", "imapd-ctl")
        assert pkg.call("isRunning") == (0, True)
    finally:
        pkg.set_config(original)
        pkg.run("rm", "-f", key_file)
        pkg.run("systemctl", "reset-failed", "imapd-ctl.service")
        pkg.run("systemctl", "restart", "imapd-ctl")
        pkg.run("systemctl", "reset-failed", "imapd-ctl.service")   # the start rate limit
    assert pkg.call("isRunning") == (0, True)


def test_restart_and_crash_keep_the_api_up(pkg):
    pid = pkg.show("imapd-ctl.service", "MainPID")
    pkg.run("systemctl", "restart", "imapd-ctl")
    assert pkg.show("imapd-ctl.service", "MainPID") != pid
    assert pkg.call("isRunning") == (0, True)
    # A call made while the daemon restarts waits in systemd's socket instead of failing.
    pkg.run("systemctl", "restart", "--no-block", "imapd-ctl")
    assert pkg.call("isRunning") == (0, True)
    # A crash: Restart=on-failure brings it back.
    pid = pkg.show("imapd-ctl.service", "MainPID")
    restarts = int(pkg.show("imapd-ctl.service", "NRestarts"))
    pkg.run("kill", "-9", pid)
    deadline = time.monotonic() + 20
    while not (pkg.active("imapd-ctl.service") == "active" and pkg.show("imapd-ctl.service", "MainPID") not in ("0", pid)):
        assert time.monotonic() < deadline, pkg.run("systemctl", "status", "imapd-ctl", check=False).stdout
        time.sleep(0.2)
    assert pkg.call("isRunning") == (0, True)
    # Back through Restart=on-failure, or earlier through the socket if a connection came in
    # first (then systemd does not count it in NRestarts); either way it saw the crash.
    log = pkg.run("journalctl", "--no-pager", "-o", "cat", "-u", "imapd-ctl.service").stdout
    assert "status=9/KILL" in log
    assert int(pkg.show("imapd-ctl.service", "NRestarts")) in (restarts, restarts + 1)


def test_units_verify_and_exposure_score(pkg):
    r = pkg.run("systemd-analyze", "verify", "/lib/systemd/system/imapd-ctl.service",
                "/lib/systemd/system/imapd-ctl.socket", check=False)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    out = pkg.run("systemd-analyze", "security", "--no-pager", "imapd-ctl.service").stdout
    m = re.search(r"Overall exposure level for imapd-ctl.service: ([0-9.]+) (\w+)", out)
    assert m, out[-2000:]
    print(f"\nsystemd-analyze security imapd-ctl.service: exposure {m.group(1)} {m.group(2)}")
    assert float(m.group(1)) <= 1.5, out


def test_man_page_status_and_completion_as_debian_finds_them(pkg):
    assert pkg.run("man", "-w", "imapd-ctl").stdout.strip() == DOC_FILES[0]
    page = pkg.host.run(["man", "8", "imapd-ctl"], env={"MANWIDTH": "120", "MANPAGER": "cat"}).stdout
    assert "EXIT STATUS" in page and "imapd-ctl status" in page and "queryStartOnBoot" in page
    # bash-completion's lazy loader finds the file by the command's name, as an interactive shell would.
    probe = ("source /usr/share/bash-completion/bash_completion; _completion_loader imapd-ctl; "
             "complete -p imapd-ctl; COMP_WORDS=(imapd-ctl call startOnB); COMP_CWORD=2; _shtab_imapd_ctl; "
             'echo "${COMPREPLY[*]}"')
    out = pkg.run("bash", "--norc", "-c", probe).stdout.splitlines()
    assert "-F _shtab_imapd_ctl" in out[0] and out[1] == "startOnBoot"
    # zsh's compinit finds it on Debian's default fpath.
    found = pkg.run("zsh", "-f", "-c", "autoload -Uz compinit; compinit -u -D; print -r -- $_comps[imapd-ctl]")
    assert found.stdout.strip() == "_imapd-ctl"
    # status of the packaged daemon, Debian's python3, the key from the environment.
    r = pkg.run("imapd-ctl", "status", env_key=pkg.key)
    assert "IMAP server   dovecot " in r.stdout and "daemon        answers on /run/imapd-ctl/imapd-ctl.sock" in r.stdout


def test_tls_listener_beside_the_plain_unix_socket(pkg):
    """HTTPS where InterWorx clients call (port 2443), with the pair the packaged
    `imapd-ctl tls selfsigned` makes, under the hardened unit."""
    # The tests before restarted (and crashed) it several times within systemd's start-limit
    # interval (5 starts in 10 s); on a fast host the restarts below would be refused.
    pkg.run("systemctl", "reset-failed", "imapd-ctl.service")
    original = pkg.config()
    addr = pkg.host.address
    made = pkg.run("imapd-ctl", "tls", "selfsigned", "--name", addr, "--cert", "/etc/imapd-ctl/tls/cert.pem",
                   "--key", "/etc/imapd-ctl/tls/key.pem")
    assert made.stdout.startswith("SHA256 Fingerprint="), made.stderr
    try:
        pkg.set_config(re.sub(r"(?m)^listen = .*$", f'listen = ["127.0.0.1:8143", "{addr}:2443"]', original)
                       .replace('tls_cert = ""', 'tls_cert = "/etc/imapd-ctl/tls/cert.pem"')
                       .replace('tls_key = ""', 'tls_key = "/etc/imapd-ctl/tls/key.pem"'))
        # The earlier tests restarted it often: clear systemd's start rate limit (5 in 10 s).
        pkg.run("systemctl", "reset-failed", "imapd-ctl.service")
        pkg.run("systemctl", "restart", "imapd-ctl")
        with tempfile.NamedTemporaryFile(suffix=".pem") as ca:
            ca.write(pkg.host.read_file("/etc/imapd-ctl/tls/cert.pem"))
            ca.flush()
            # From outside the host, over its network, checking the certificate.
            r = subprocess.run(["curl", "-sS", "--max-time", "20", "--cacert", ca.name,
                                "-H", f"Authorization: Bearer {pkg.key}",
                                f"https://{addr}:2443/nodeworx/mail/simap/isRunning"],
                               capture_output=True, text=True)
        assert json.loads(r.stdout) == {"status": 0, "payload": True}, r.stderr

        def suite(*args: str) -> str | None:      # what openssl agrees on with the listener
            r = subprocess.run(["openssl", "s_client", "-connect", f"{addr}:2443", *args], input="",
                               capture_output=True, text=True, timeout=30)
            m = re.search(r"Cipher is (\S+)", r.stdout)
            return m.group(1) if m and m.group(1) != "(NONE)" else None
        # The TLS policy (server/tls.py) with Debian's gunicorn: forward-secret AEAD suites only.
        assert suite("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256") == "ECDHE-ECDSA-AES128-GCM-SHA256"
        for weak in (["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256"],
                     ["-tls1_1", "-cipher", "ALL:@SECLEVEL=0"]):
            assert suite(*weak) is None, weak
        # Local operators on the unix socket keep plain HTTP.
        assert pkg.call("isRunning") == (0, True)
    finally:
        pkg.set_config(original)
        pkg.run("rm", "-rf", "/etc/imapd-ctl/tls")
        pkg.run("systemctl", "restart", "imapd-ctl")
    assert pkg.call("isRunning") == (0, True)


def test_non_loopback_listener_without_tls_is_refused_at_start(pkg):
    original = pkg.config()
    bind = f"{pkg.host.address}:8143"
    cursor = pkg.cursor()
    pkg.set_config(re.sub(r"(?m)^listen = .*$", f'listen = ["{bind}"]', original))
    # The earlier tests restarted it often: clear systemd's start rate limit (5 in 10 s).
    pkg.run("systemctl", "reset-failed", "imapd-ctl.service")
    try:
        r = pkg.run("systemctl", "restart", "imapd-ctl", check=False)
        assert r.returncode != 0
        assert pkg.active("imapd-ctl.service") == "failed"
        assert pkg.show("imapd-ctl.service", "ExecMainStatus") == "78"
        restarts = pkg.show("imapd-ctl.service", "NRestarts")
        log = pkg.journal(cursor)
        assert f"refusing to listen on {bind}: it is not a loopback address and TLS is not configured" in log, log
        time.sleep(2.5)   # RestartSec=2: exit status 78 is not retried
        assert pkg.active("imapd-ctl.service") == "failed"
        assert pkg.show("imapd-ctl.service", "NRestarts") == restarts
    finally:
        pkg.set_config(original)
        # As `systemctl status` advises after a failed start.
        pkg.run("systemctl", "reset-failed", "imapd-ctl.service")
        pkg.run("systemctl", "restart", "imapd-ctl")
    assert pkg.call("isRunning") == (0, True)


ADMIN_LINE = "# imapd-ctl test: the admin's own edit\n"
NEXT_VERSION = "0.1.0-1+upgrade1"


def test_upgrade_keeps_the_admins_settings_and_replaces_unedited_conffiles(pkg):
    """The next version changes both conffiles; the admin edited the settings only. As an
    unattended upgrade does (--force-confdef --force-confold), dpkg keeps the admin's settings
    and puts the new default beside them; the unedited logrotate file is replaced. Keys stay,
    both units restart."""
    pkg.next_deb = _build(pkg, source_tree(pkg.debdir / "next", next_version=True), NEXT_VERSION)
    before = pkg.config()
    pkg.set_config(before + ADMIN_LINE)
    pid = pkg.show("imapd-ctl.service", "MainPID")
    r = pkg.run("sh", "-c", f"cd {pkg.debdir} && apt-get install -y -q -o Dpkg::Options::=--force-confdef "
                f"-o Dpkg::Options::=--force-confold ./{pkg.next_deb.name}", timeout=300)
    assert f"Unpacking imapd-ctl ({NEXT_VERSION}) over (0.1.0-1)" in r.stdout, r.stdout
    assert "Keeping old config file as default" in r.stdout, r.stdout
    assert pkg.config() == before + ADMIN_LINE
    dist = pkg.host.read_file("/etc/imapd-ctl/imapd-ctl.toml.dpkg-dist").decode()
    assert dist == before + NEXT_VERSION_LINE
    assert pkg.host.read_file("/etc/logrotate.d/imapd-ctl").decode().endswith(NEXT_VERSION_LINE)
    assert pkg.show("imapd-ctl.service", "MainPID") not in ("0", pid)
    assert [pkg.active(u) for u in UNITS] == ["active", "active"]
    assert pkg.call("isRunning") == (0, True)      # the key made before the upgrade


def test_remove_stops_the_units_and_keeps_settings_and_keys(pkg):
    pkg.run("apt-get", "remove", "-y", "-q", "imapd-ctl")
    for unit in UNITS:
        assert pkg.active(unit) != "active", unit
        # Its unit files are gone with the package; nothing enables them.
        assert pkg.run("systemctl", "is-enabled", unit, check=False).stdout.strip() in ("not-found", ""), unit
    assert not pkg.run("pgrep", "-f", "imapd-ctl serve", check=False).stdout.strip()
    assert pkg.run("test", "-e", SOCK, check=False).returncode != 0
    assert pkg.run("test", "-e", "/usr/bin/imapd-ctl", check=False).returncode != 0
    assert pkg.run("test", "-f", "/etc/imapd-ctl/imapd-ctl.toml", check=False).returncode == 0
    keys = json.loads(pkg.host.read_file("/var/lib/imapd-ctl/keys.json"))
    assert "panel" in json.dumps(keys)
    assert pkg.active("dovecot") == "active"          # the mail server is left alone


def test_purge_leaves_no_unit_process_or_file(pkg):
    pkg.run("apt-get", "purge", "-y", "-q", "imapd-ctl")
    assert pkg.run("dpkg-query", "-W", "imapd-ctl", check=False).returncode != 0
    units = pkg.run("systemctl", "list-units", "--all", "--no-legend", "imapd-ctl*", check=False).stdout
    files = pkg.run("systemctl", "list-unit-files", "--no-legend", "imapd-ctl*", check=False).stdout
    assert not units.strip() and not files.strip(), units + files
    assert not pkg.run("pgrep", "-f", "imapd-ctl", check=False).stdout.strip()
    left = pkg.run("sh", "-c", "find /etc /usr /lib /var /run /opt \\( -name '*imapd-ctl*' -o -name '*imapd_ctl*' \\) "
                   f"-not -path '{pkg.debdir}*' -not -path '{DEB_CACHE}*' -not -path '/var/tmp/imapd-ctl-*' "
                   f"-not -path '{rootfs.CACHE}*' "   # the test hosts' cache, seen through the overlay of /
                   "-not -path /var/log/imapd-ctl-setup.log 2>/dev/null", check=False).stdout.split()
    # The host's root is an overlay of this machine's: what this machine itself holds (other
    # checkouts' caches, say) was there before the package and is not its leftover.
    left = [path for path in left if not os.path.lexists(path)]
    assert left == [], left
    for path in DOC_FILES:
        assert pkg.run("test", "-e", path, check=False).returncode != 0, path
    assert pkg.active("dovecot") == "active"


def test_reinstall_after_purge_starts_afresh(pkg):
    """Installed again after a purge: the user, directories and units as on a first install,
    the packaged settings (no admin edit, no dpkg leftovers), no keys."""
    r = pkg.run("sh", "-c", f"cd {pkg.debdir} && apt-get install -y -q ./{pkg.next_deb.name}", timeout=300)
    assert "imapd-ctl key create NAME" in r.stdout, r.stdout     # the first-install hint
    for unit in UNITS:
        assert pkg.run("systemctl", "is-enabled", unit, check=False).stdout.strip() == "enabled", unit
        assert pkg.active(unit) == "active", unit
    assert pkg.run("stat", "-c", "%a %U", "/var/lib/imapd-ctl", "/var/log/imapd-ctl").stdout.split() == \
        ["700", "imapd-ctl", "750", "imapd-ctl"]
    assert pkg.run("ls", "-A", "/etc/imapd-ctl").stdout.split() == ["imapd-ctl.toml", "nodes", "nodes.d"]
    assert pkg.config().endswith(NEXT_VERSION_LINE) and ADMIN_LINE not in pkg.config()
    assert pkg.run("test", "-e", "/var/lib/imapd-ctl/keys.json", check=False).returncode != 0
    assert json.loads(pkg.curl("isRunning"))["status"] == 401     # the old key is gone
    assert pkg.run("imapd-ctl", "call", "isRunning").stdout.strip() == "true"
