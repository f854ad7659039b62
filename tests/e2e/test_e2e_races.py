"""Races (issue 3, item 9): 50 concurrent updates with different values, mixed with status polls
and a restart, through the real gunicorn server with 4 workers, on a mail host of each flavour
(tests/e2e/probes.py says what differs between Dovecot and Courier)."""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from daemon import launch
from probes import JOURNAL, PROBES, cat

pytestmark = pytest.mark.mailhost

UPDATES = 50


@pytest.fixture(scope="module", params=list(PROBES))
def flavour(request):
    return request.param


@pytest.fixture(scope="module")
def racer(request, flavour, dist):
    """The real daemon with 4 workers on the flavour's host."""
    host = request.getfixturevalue(PROBES[flavour].host_fixture)
    d = launch(host, host.share / "races", workers=4)
    yield d
    d.stop()


def values_for(i: int) -> dict[str, int]:
    """Distinct in all four values, so every update rewrites every file and reapplies it."""
    return {"imap_mem_limit": 250_000_000 + i * 1_000_000, "imap_max_connections": 10 + i,
            "imap_secure_mem_limit": 200_000_000 + i * 2_000_000, "imap_secure_max_connections": 100 + i}


def storm(racer, probe) -> tuple[int, int]:
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
    before = probe.files(host)
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
    data = probe.files(host)
    assert data == probe.expected(before, final[1])
    probe.assert_lines(data, final[1])
    # ...the server's parser and the running server agree, no journal, and it serves.
    probe.assert_parsed(host, final[1])
    probe.assert_running(host, final[1])              # at once: every reply is in
    assert cat(host, JOURNAL) is None
    probe.assert_config(racer, data, final[1])
    print(f"\nraces: {len(replies)} replies in {elapsed:.1f} s, {len(succeeded)} updates applied, "
          f"{len(busy)} answered 409")
    return len(succeeded), len(busy)


def test_concurrent_updates_polls_and_a_restart(racer, flavour):
    storm(racer, PROBES[flavour])


def test_with_a_short_lock_timeout_the_losers_get_409(racer, flavour):
    with open(racer.config, "a") as fh:
        fh.write("lock_timeout = 0.05\n")
    racer.stop()
    racer.start()
    applied, busy = storm(racer, PROBES[flavour])
    assert busy > 0 and applied > 0
