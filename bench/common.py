"""What the bench scripts share: a throw-away Dovecot host with the daemon on it (the real
gunicorn server, as tests/e2e/daemon.py launches it), a bounded latency sampler, and a timer
for the shell approach that runs inside the host."""
from __future__ import annotations

import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from daemon import launch  # noqa: E402
from mailhost import MailHost  # noqa: E402

# argv: n, seconds, the shell command; prints the median seconds and the sample count.
SHELL_TIMER = r"""
import statistics, subprocess, sys, time
n, limit, command = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
samples, end = [], time.monotonic() + limit
while len(samples) < n and time.monotonic() < end:
    t = time.perf_counter()
    r = subprocess.run(command, shell=True, capture_output=True, text=True)
    samples.append(time.perf_counter() - t)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
print(statistics.median(samples), len(samples))
"""


def latency(fn: Callable[[], object], n: int, seconds: float, gap: float = 0.0) -> tuple[float, int]:
    """Median seconds of fn() over at most n calls and `seconds`, and the sample count; `gap`:
    seconds slept before each call, not timed."""
    samples: list[float] = []
    end = time.monotonic() + seconds
    while len(samples) < n and time.monotonic() < end:
        time.sleep(gap)
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples), len(samples)


def shell_latency(host: MailHost, command: str, n: int, seconds: float) -> tuple[float, int]:
    """latency() of a shell command run inside the host (so both sides pay the same machine)."""
    out = host.run([sys.executable, "-c", SHELL_TIMER, str(n), str(seconds), command],
                   timeout=seconds + 60).stdout.split()
    return float(out[0]), int(out[1])


@contextlib.contextmanager
def dovecot_daemon(index: int | None = None, **launch_kw: object) -> Iterator[tuple[MailHost, object, Path]]:
    """(host, daemon, share dir): a booted host running Dovecot and the daemon; all gone after."""
    share = Path(tempfile.mkdtemp(prefix="imapd-ctl-bench-", dir="/var/tmp"))
    host = MailHost(index, binds=[str(REPO), str(share)])
    try:
        host.boot()
        host.start_dovecot()
        yield host, launch(host, share, **launch_kw), share
    finally:
        host.shutdown()
        shutil.rmtree(share, ignore_errors=True)
