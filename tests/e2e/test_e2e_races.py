"""Races: 50 concurrent updates with different values, mixed with status polls and a restart,
through the real gunicorn server with several workers."""
from __future__ import annotations

import imaplib
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from daemon import UNIT, launch
from imapd_ctl.adapters.flavours.dovecot import mapped, parse_size

pytestmark = pytest.mark.mailhost

UPDATES = 50


@pytest.fixture(scope="module")
def daemon(mailhost):
    d = launch(mailhost, mailhost.share, workers=4)
    yield d
    d.stop()


def values_for(i: int) -> dict[str, int]:
    return {"imap_mem_limit": 200_000_000 + i * 1_000_000, "imap_max_connections": 10 + i,
            "imap_secure_mem_limit": 150_000_000 + i * 1_000, "imap_secure_max_connections": 100 + i}


def storm(daemon, mailhost) -> tuple[int, int]:
    """Fire the mix; check every reply and the end state; return (applied, busy)."""
    replies: list[tuple[str, int, object, dict | None]] = []
    lock = threading.Lock()

    def job(kind: str, i: int):
        if kind == "update":
            inputs = values_for(i)
            call = daemon.call if i % 2 else daemon.route   # both transports
            status, payload = call("update", inputs)
        elif kind == "restart":
            inputs = None
            status, payload = daemon.call("restart")
        else:
            inputs = None
            status, payload = daemon.call("isRunning" if i % 2 else "queryUpdate", method="GET")
        with lock:
            replies.append((kind, status, payload, inputs))

    jobs = [("update", i) for i in range(UPDATES)] + [("poll", i) for i in range(40)]
    jobs.insert(UPDATES // 2, ("restart", 0))
    random.Random(7).shuffle(jobs)   # interleave the kinds, the same way every run
    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(lambda j: job(*j), jobs))

    assert len(replies) == len(jobs)
    bad = [r for r in replies if r[1] not in (0, 409)]
    assert not bad, bad[:5]
    busy = [r for r in replies if r[1] == 409]
    assert all("in progress" in r[2] for r in busy)
    succeeded = [r[3] for r in replies if r[0] == "update" and r[1] == 0]
    assert succeeded, "no update went through"

    # The final config is valid and is exactly one successful request's values...
    final = daemon.call("queryUpdate")
    assert final[0] == 0 and final[1] in succeeded
    # ...and the files, the validator and the running server agree with queryUpdate.
    mailhost.run(["doveconf", "-n"])
    process_limit, vsz = mapped(final[1])
    assert int(mailhost.run(["doveconf", "-h", "service/imap/process_limit"]).stdout) == process_limit
    assert parse_size(mailhost.run(["doveconf", "-h", "service/imap/vsz_limit"]).stdout) == vsz
    status = mailhost.run(["doveadm", "service", "status", "imap"]).stdout
    assert f"process_limit: {process_limit}" in status
    assert mailhost.run(["test", "!", "-e", "/var/lib/imapd-ctl/journal.json"]).returncode == 0
    assert daemon.call("isRunning") == (0, True)
    conn = imaplib.IMAP4(mailhost.address, 143, timeout=10)
    assert conn.welcome.startswith(b"* OK")
    conn.logout()
    print(f"\nraces: {len(replies)} replies, {len(succeeded)} updates applied, {len(busy)} answered 409")
    return len(succeeded), len(busy)


def test_concurrent_updates_polls_and_a_restart(daemon, mailhost):
    storm(daemon, mailhost)


def test_with_a_short_lock_timeout_the_losers_get_409(daemon, mailhost):
    with open(daemon.config, "a") as fh:
        fh.write("lock_timeout = 0.05\n")
    mailhost.systemctl("restart", UNIT)
    daemon.wait_healthy()
    applied, busy = storm(daemon, mailhost)
    assert busy > 0 and applied > 0
