"""A fault only Courier has (issue 3, item 5; the faults both flavours share are in
tests/e2e/test_e2e_faults.py): Courier's configuration is two files, so a disk can fill up
after the first of them is replaced. Afterwards /etc/courier/imapd and imapd-ssl hold exactly
the old bytes (never one old and one new), no journal or temporary file is left, queryUpdate
agrees with the files and the running couriertcpd processes, both units serve (143 and 993),
and the reply is a clear error.
"""
from __future__ import annotations

import pytest

from courierhost import CONFIG_DIR
from probes import (BOTH, COURIER, IMAPD, IMAPD_SSL, JOURNAL, OLD, base, cat, courier_ctl,  # noqa: F401
                    ctl, probe, tmpfs_over)

pytestmark = pytest.mark.mailhost


@pytest.fixture
def flavour():
    return COURIER.name


def pages(data: bytes) -> int:
    return -(-len(data) // 4096)


def test_disk_full_after_the_first_file_is_replaced(probe, ctl, base):
    """Room for the new imapd but not for the new imapd-ssl (an admin comment makes it the
    bigger file): imapd is already replaced when the second write fails; the rollback puts
    the old imapd back and restarts the daemons that had read nothing new anyway."""
    host = ctl.host
    padded = base[IMAPD_SSL] + b"".join(b"# padding %04d %s\n" % (i, b"x" * 60) for i in range(80))
    host.write_file(IMAPD_SSL, padded)
    old = {IMAPD: base[IMAPD], IMAPD_SSL: padded}
    try:
        new = probe.expected(old, probe.NEW)
        room = pages(new[IMAPD])
        assert pages(new[IMAPD_SSL]) > room >= pages(old[IMAPD])
        with tmpfs_over(host, CONFIG_DIR, "1m", free_pages=room):
            status, payload = ctl.call("update", probe.NEW)
            assert status == 500, payload
            assert f"cannot write {IMAPD_SSL}: No space left on device" in payload, payload
            assert (f"the change was rolled back: the previous configuration was restored ({IMAPD}) "
                    f"and re-applied (restarted {BOTH})") in payload, payload
            assert probe.files(host) == old
            assert cat(host, JOURNAL) is None
            assert ctl.call("queryUpdate") == (0, OLD)
            probe.assert_serving(host)
        probe.assert_config(ctl, old, OLD)
    finally:
        host.write_file(IMAPD_SSL, base[IMAPD_SSL])
