"""Courier-IMAP inside a throw-away MailHost (tests/mailhost.py).

Courier conflicts with dovecot-imapd in dpkg, so it is only ever installed inside a booted
host, whose writes vanish with it: `scripts/setup` downloads the .debs on the machine
(`apt-get install --download-only`), and :func:`install_courier` runs the very same apt
transaction inside the host with `--no-download`, replacing Dovecot by Courier (dovecot-core
goes too, so auto-detection finds Courier, not a Dovecot without IMAP). Services are kept from
starting during the install (policy-rc.d exits 101: no exim4, no half-configured starts); then
courier-imap and courier-imap-ssl are started and checked from outside on 143 and 993.

What Debian 12 ships (found this way): courier-imap.service / courier-imap-ssl.service,
Type=forking, ExecStart=/usr/sbin/imapd start / imapd-ssl start (Debian 13: /usr/lib/courier/imapd), MainPID courierlogger (its
child couriertcpd listens), config /etc/courier/imapd and imapd-ssl; the postinst makes the TLS
pair /etc/courier/imapd.pem and dhparams.pem, so 993 works out of the box.
"""
from __future__ import annotations

import glob
import os
import socket
import time

import rootfs

# Keep in step with COURIER_APT in scripts/setup.
COURIER_APT = ["--no-install-recommends", "courier-imap", "dovecot-core-", "dovecot-imapd-"]
UNITS = ("courier-imap.service", "courier-imap-ssl.service")
PORTS = {"courier-imap.service": 143, "courier-imap-ssl.service": 993}
CONFIG_DIR = "/etc/courier"
ARCHIVES = "/var/cache/apt/archives"


def debs_ready(dist: str = "bookworm") -> tuple[bool, str]:
    """Are the courier .debs in the apt cache of `dist`'s root (for Debian 12 this machine's:
    scripts/setup puts them there; for Debian 13 the cached root, built with them)?"""
    archives = os.path.join(rootfs.root_path(dist), ARCHIVES.lstrip("/"))
    if not glob.glob(f"{archives}/courier-imap_*.deb"):
        return False, f"no courier-imap .deb in {archives} (run `bash scripts/setup` as root)"
    return True, "ok"


def install_courier(host, timeout: float = 180) -> float:
    """Install and start Courier-IMAP inside `host`; return the seconds it took."""
    t0 = time.monotonic()
    host.write_file("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", mode=0o755)
    # Inside a throw-away host: no man-db index rebuild, no fsyncs (about 10 s -> 5 s).
    host.run(["rm", "-f", "/var/lib/man-db/auto-update"])
    r = host.run(["apt-get", "install", "-y", "-q", "--no-download",
                  "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
                  "-o", "Dpkg::Options::=--force-unsafe-io", *COURIER_APT],
                 env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=timeout, check=False)
    host.run(["rm", "-f", "/usr/sbin/policy-rc.d"])
    if r.returncode != 0:
        raise RuntimeError(f"apt-get install courier-imap inside {host.name} failed (rc={r.returncode}); "
                           f"did `scripts/setup` download the .debs?\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    start_courier(host)
    return time.monotonic() - t0


def start_courier(host, timeout: float = 15) -> None:
    """Start both units, wait until 143 and 993 listen inside and accept a connection from
    outside."""
    host.systemctl("start", *UNITS)
    wait_listening(host, timeout)


def wait_listening(host, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    for port in PORTS.values():
        while not host.listening(port):
            if time.monotonic() > end:
                st = host.systemctl("status", *UNITS, check=False)
                raise RuntimeError(f"{host.name}: Courier does not listen on {port} after {timeout} s\n"
                                   f"{st.stdout}{st.stderr}")
            time.sleep(0.05)
        with socket.create_connection((host.address, port), timeout=5):
            pass


def main_pid(host, unit: str) -> int:
    return int(host.systemctl("show", "-p", "MainPID", "--value", unit).stdout.strip())


def unit_processes(host, unit: str) -> dict[int, str]:
    """{pid: comm} of every process in the unit's cgroup inside the host."""
    out = host.run(["sh", "-c", 'for p in $(cat "/sys/fs/cgroup/system.slice/$1/cgroup.procs"); do '
                    'printf "%s %s\\n" "$p" "$(cat /proc/$p/comm 2>/dev/null)"; done', "sh", unit]).stdout
    return {int(pid): comm for pid, _, comm in (line.partition(" ") for line in out.splitlines()) if comm}


def address_space_limit(host, pid: int) -> tuple[str, str]:
    """(soft, hard) "Max address space" of a process inside the host, as /proc/PID/limits says."""
    text = host.run(["cat", f"/proc/{pid}/limits"]).stdout
    line = next(l for l in text.splitlines() if l.startswith("Max address space"))
    soft, hard = line[len("Max address space"):].split()[:2]
    return soft, hard
