"""Courier with the RHEL-style layout: its files in /etc/courier-imap instead of Debian's
/etc/courier, on Debian 12 (Courier 5.0) and Debian 13 (Courier 5.2) hosts.

The host's Courier is moved there: /etc/courier becomes /etc/courier-imap, and the Courier units
(built for /etc/courier) see it through a BindPaths= drop-in, so the daemons really read the
RHEL-style files while imapd-ctl, outside the units, finds only /etc/courier-imap. imapd-ctl must
detect that directory, edit the files there, and the restarted daemons must take the new limits up.
"""
from __future__ import annotations

import pytest

from courierhost import UNITS, start_courier
from daemon import launch
from probes import maxprocs

pytestmark = pytest.mark.mailhost

RHEL_DIR = "/etc/courier-imap"
VALUES = {"imap_mem_limit": 300_000_000, "imap_max_connections": 23,
          "imap_secure_mem_limit": 200_000_000, "imap_secure_max_connections": 13}


@pytest.fixture(scope="module")
def rhel(courierhost):
    h = courierhost
    h.systemctl("stop", *UNITS, "courier-authdaemon.service")
    h.run(["sh", "-ec", f"mv /etc/courier {RHEL_DIR} && mkdir /etc/courier"])
    for unit in (*UNITS, "courier-authdaemon.service"):
        h.write_file(f"/etc/systemd/system/{unit}.d/rhel-layout.conf",
                     f"[Service]\nBindPaths={RHEL_DIR}:/etc/courier\n")
    h.systemctl("daemon-reload")
    h.systemctl("start", "courier-authdaemon.service")
    start_courier(h)
    d = launch(h, h.share / "rhel")
    yield h, d
    d.stop()


def test_the_rhel_style_directory_is_detected_edited_and_taken_up(rhel):
    h, d = rhel
    assert h.run(["test", "-e", "/etc/courier/imapd"], check=False).returncode != 0
    before = {name: h.read_file(f"{RHEL_DIR}/{name}") for name in ("imapd", "imapd-ssl")}
    status, payload = d.call("update", VALUES)
    assert status == 0, payload
    after = {name: h.read_file(f"{RHEL_DIR}/{name}") for name in ("imapd", "imapd-ssl")}
    assert after != before
    assert b"MAXDAEMONS=23" in after["imapd"] and b"MAXDAEMONS=13" in after["imapd-ssl"]
    assert d.call("queryUpdate") == (0, VALUES)
    assert maxprocs(h, UNITS[0]) == 23 and maxprocs(h, UNITS[1]) == 13
    assert h.run(["ls", "-A", "/etc/courier"]).stdout == ""     # nothing written Debian's way
