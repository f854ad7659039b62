"""The README's run command (scripts/run): sets up, starts the daemon on a throw-away mail host, prints a
key, a curl line and a CLI line; the curl line prints {"status": 0, "payload": true}, the CLI
line `true`."""
import os
import re
import signal
import subprocess
import threading
import time
from queue import Empty, Queue

import pytest

from daemon import REPO

pytestmark = pytest.mark.mailhost


class Output:
    """proc's output lines as they come (a reader thread, because a buffered pipe and select()
    do not mix)."""

    def __init__(self, proc):
        self.queue: Queue = Queue()
        threading.Thread(target=lambda: [self.queue.put(l) for l in proc.stdout] + [self.queue.put(None)],
                         daemon=True).start()
        self.lines: list[str] = []

    def _lines(self, seconds: float):
        """The lines as they come within `seconds`, until the output ends."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=0.2)
            except Empty:
                continue
            if line is None:
                return
            yield line

    def until(self, pattern: str, timeout: float) -> list[str]:
        """The lines up to the first matching one."""
        for line in self._lines(timeout):
            self.lines.append(line)
            if re.match(pattern, line):
                return self.lines
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s; got:\n{''.join(self.lines)}")

    def rest(self, seconds: float) -> str:
        """What comes within `seconds`."""
        return "".join(self._lines(seconds))


def _background():
    """What a shell does to a job started with `&`: SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("stop, background", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM", "SIGINT-in-the-background"])
def test_run_command_prints_a_working_curl_line(stop, background):
    """No --index: the command picks a host index no other run holds by itself. Stopped by
    SIGTERM, or by SIGINT although started in the background, it exits 0 and leaves nothing
    behind: no host, no /run/imapd-ctl-demo-* directory of its own."""
    proc = subprocess.Popen(["bash", str(REPO / "scripts" / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_background if background else None)
    output = Output(proc)
    try:
        lines = output.until(r"IMAPD_CTL_KEY=", timeout=300)
        curl, cli = lines[-2].strip(), lines[-1].strip()
        systemd_pid = int(re.search(r"systemd pid (\d+)", "".join(lines)).group(1))
        share = os.path.dirname(re.search(r"^Socket: (\S+)", "".join(lines), re.M).group(1))
        assert share.startswith("/run/imapd-ctl-demo-") and os.path.isdir(share)
        assert re.search(r"API key \(EMAIL permission\): ictl_\S+", "".join(lines))
        out = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30)
        assert out.stdout == '{"status": 0, "payload": true}\n', (curl, out)
        out = subprocess.run(cli, shell=True, capture_output=True, text=True, timeout=60)     # the CLI line
        assert (out.returncode, out.stdout) == (0, "true\n"), (cli, out)
    finally:
        proc.send_signal(stop)
        try:
            proc.wait(timeout=120)     # MailHost.shutdown is bounded at about 50 s
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)      # the demo's faulthandler: every thread's stack
            stacks = output.rest(2)
            proc.kill()
            raise AssertionError(f"scripts/run did not exit within 120 s of {stop.name}:\n{stacks}") from None
    assert proc.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(systemd_pid, 0)
    assert not os.path.exists(share)
