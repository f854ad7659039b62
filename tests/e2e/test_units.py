"""The unit files of systemd/ running this checkout (Debian 12: its venv, PyPI's gunicorn, Flask,
psutil; Debian 13: Debian's own python3 modules) on a throw-away mail host: socket activation on the first connection, Type=notify readiness from
gunicorn's arbiter, the hardening, and a settings socket that differs from the socket unit's.
(tests/test_package.py runs the same units from the .deb with Debian 12's modules.)"""
from __future__ import annotations

import json
import re
import time

import pytest

from daemon import IMAPD_CTL, REPO, project_python

pytestmark = pytest.mark.mailhost
SOCK = "/run/imapd-ctl/imapd-ctl.sock"


def _use_checkout(h) -> None:
    """The packaged ExecStart is /usr/bin/imapd-ctl; here the checkout's venv. The checkout
    may live under /tmp or /root (CI clones anywhere), which PrivateTmp/ProtectHome hide from
    the service: bind it back, read-only, as an installed package would be visible, and let
    the service execute it (NoExecPaths=/). ProtectHome=tmpfs instead of yes, so that the path
    down to a checkout in root's home can be walked (systemd's own recipe for making one path of
    a hidden home visible: an empty read-only tmpfs, with only the bound path in it). The daemon's user and the polkit rule that lets it
    control the IMAP units, and the ExecStartPre= helper that hands it the files it rewrites,
    as the package installs them."""
    h.write_file("/etc/sysusers.d/imapd-ctl.conf", (REPO / "packaging" / "sysusers" / "imapd-ctl.conf").read_text())
    h.run(["systemd-sysusers", "imapd-ctl.conf"])
    h.write_file("/etc/polkit-1/rules.d/50-imapd-ctl.rules",
                 (REPO / "packaging" / "polkit" / "50-imapd-ctl.rules").read_text())
    h.write_file("/usr/libexec/imapd-ctl/own-config-files",
                 (REPO / "packaging" / "libexec" / "own-config-files").read_text(), mode=0o755)
    h.write_file("/etc/systemd/system/imapd-ctl.service.d/venv.conf",
                 f"[Service]\nExecStart=\nExecStart={IMAPD_CTL} serve\nBindReadOnlyPaths={REPO}\n"
                 f"ExecPaths={REPO} {IMAPD_CTL}\nProtectHome=tmpfs\n")   # the checkout's launcher (daemon.install_project)


def _install_units(h, key_name: str) -> str:
    """The shipped units and settings, running the checkout; returns a new key."""
    for name in ("imapd-ctl.service", "imapd-ctl.socket"):
        h.write_file(f"/etc/systemd/system/{name}", (REPO / "systemd" / name).read_text())
    _use_checkout(h)
    h.write_file("/etc/imapd-ctl/imapd-ctl.toml", (REPO / "config" / "imapd-ctl.toml").read_text())
    key = h.run([IMAPD_CTL, "key", "create", key_name]).stdout.strip()
    h.systemctl("daemon-reload")
    h.systemctl("start", "imapd-ctl.socket")
    return key


@pytest.fixture(scope="module")
def units(mailhost):
    h = mailhost
    key = _install_units(h, "units")
    yield h, key
    h.systemctl("stop", "imapd-ctl.service", "imapd-ctl.socket", check=False)


def _curl(h, key, action="isRunning", sock=SOCK):
    out = h.run(["curl", "-sS", "--max-time", "60", "--unix-socket", sock, "-H", f"Authorization: Bearer {key}",
                 f"http://localhost/nodeworx/mail/imap/{action}"]).stdout
    return json.loads(out)


def test_first_connection_starts_the_service_which_notifies_ready(units):
    h, key = units
    assert h.run(["systemctl", "is-active", "imapd-ctl.service"], check=False).stdout.strip() == "inactive"
    assert _curl(h, key) == {"status": 0, "payload": True}
    assert h.run(["systemctl", "is-active", "imapd-ctl.service"]).stdout.strip() == "active"
    status = h.run(["systemctl", "show", "-p", "StatusText", "--value", "imapd-ctl.service"]).stdout.strip()
    assert status == "Gunicorn arbiter booted"
    log = h.journal("-u", "imapd-ctl.service", "-o", "cat")
    version = h.run([project_python(h), "-c", "import gunicorn; print(gunicorn.__version__)"]).stdout.strip()
    assert f"Starting gunicorn {version}" in log
    assert f"socket activation: serving unix:{SOCK} (from systemd), 127.0.0.1:8143 (from the settings)" in log
    # The update path (doveconf, the drop-in in /etc/dovecot, reload, doveadm) under the sandbox.
    out = h.run(["curl", "-sS", "--unix-socket", SOCK, "-H", f"Authorization: Bearer {key}",
                 "-d", "imap_max_connections=33", "http://localhost/nodeworx/mail/imap/update"]).stdout
    assert json.loads(out)["status"] == 0, out


def test_stop_and_restart_keep_the_socket(units):
    h, key = units
    h.systemctl("stop", "imapd-ctl.service")
    assert h.run(["test", "-S", SOCK], check=False).returncode == 0   # systemd still holds it
    assert _curl(h, key) == {"status": 0, "payload": True}           # ... and starts the service
    h.systemctl("restart", "imapd-ctl.service")
    assert _curl(h, key) == {"status": 0, "payload": True}


def test_a_settings_socket_beside_the_units_one_is_bound_too(units):
    h, key = units
    conf = (REPO / "config" / "imapd-ctl.toml").read_text()
    other = "/run/imapd-ctl/other.sock"
    h.write_file("/etc/imapd-ctl/imapd-ctl.toml", re.sub(r'(?m)^socket = .*$', f'socket = "{other}"', conf))
    try:
        h.systemctl("restart", "imapd-ctl.service")
        assert _curl(h, key, sock=other) == {"status": 0, "payload": True}
        assert _curl(h, key) == {"status": 0, "payload": True}   # the socket unit's still served
        log = h.journal("-u", "imapd-ctl.service", "-o", "cat")
        assert f"unix:{other} (bound here: the socket unit does not pass it)" in log
        assert f"{'unix:' + SOCK} (from systemd; not in the settings)" in log
    finally:
        h.write_file("/etc/imapd-ctl/imapd-ctl.toml", conf)
        h.systemctl("reset-failed", "imapd-ctl.service", check=False)
        h.systemctl("restart", "imapd-ctl.service")
    deadline = time.monotonic() + 10
    while _curl(h, key)["status"] != 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_courier_under_the_hardening(courierhost):
    """The same sandbox with Courier: /etc/courier edited in place (mode kept; the file given
    to the daemon's user by the unit's ExecStartPre=), validated by sh, both units restarted
    over D-Bus, and the port check on couriertcpd (a child of the unit's main process,
    courierlogger)."""
    h = courierhost
    before = h.run(["stat", "-c", "%a", "/etc/courier/imapd"]).stdout.strip() + " imapd-ctl imapd-ctl\n"
    key = _install_units(h, "courier")
    try:
        assert _curl(h, key) == {"status": 0, "payload": True}
        out = h.run(["curl", "-sS", "--max-time", "120", "--unix-socket", SOCK, "-H", f"Authorization: Bearer {key}",
                     "-d", "imap_max_connections=37", "-d", "imap_secure_max_connections=23",
                     "http://localhost/nodeworx/mail/imap/update"]).stdout
        assert json.loads(out)["status"] == 0, out
        assert re.search(r'(?m)^MAXDAEMONS="?37"?$', h.read_file("/etc/courier/imapd").decode())
        assert h.run(["stat", "-c", "%a %U %G", "/etc/courier/imapd"]).stdout == before
        assert _curl(h, key) == {"status": 0, "payload": True}
    finally:
        h.systemctl("stop", "imapd-ctl.service", "imapd-ctl.socket", check=False)
