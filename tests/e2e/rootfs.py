"""Root file systems of the test hosts' distributions (tests/e2e/mailhost.py).

``bookworm`` (Debian 12) is this machine's own ``/``: a host overlays it.  ``trixie``
(Debian 13: Dovecot 2.4, Courier 5.2, systemd 257, Python 3.13, Flask 3.1, gunicorn 23) is a
root file system built here with ``debootstrap`` from the Debian mirror this machine's apt
already uses, once per machine, and cached::

    /var/cache/imapd-ctl-test/trixie-<hash>/      complete root (read-only lower layer)

``<hash>`` is a content hash of the recipe (package list, courier .debs, build steps), so a
changed recipe builds a new root beside the old one.  Concurrent runs build it once: the build
runs under an exclusive flock of ``/var/cache/imapd-ctl-test/build.lock`` into a temporary
directory that is renamed into place when complete (a crashed build leaves only a ``.tmp-``
directory, removed by the next build).  The Courier .debs are downloaded into the root's own
``/var/cache/apt/archives`` (installed only inside a booted host, as on Debian 12).

    python3 tests/e2e/rootfs.py trixie      # build now (prints the path and the seconds)

Only the standard library is used; needs root.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time

CACHE = "/var/cache/imapd-ctl-test"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DISTS = ("bookworm", "trixie")
ENV_DISTS = "IMAPD_CTL_TEST_DISTS"

# What a Debian 13 mail host of this project has: systemd + D-Bus, Dovecot, Debian's own python3
# modules for imapd-ctl, and the tools the tests use inside (ss, curl, openssl, ps).
TRIXIE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "iproute2", "procps", "curl", "openssl", "ca-certificates",
    "ssl-cert", "passwd", "dovecot-core", "dovecot-imapd", "python3", "python3-flask",
    "python3-werkzeug", "python3-gunicorn", "python3-psutil", "python3-gi",
    "python3-prometheus-client", "prometheus",   # /metrics, and the real Prometheus of its test
    "man-db", "bash-completion", "zsh",          # the package test reads the man page, completes
    "python3-defusedxml",                        # the .deb's XML parsing
    "php-cli", "php-soap", "php-xmlrpc",         # PHP's SoapClient and ext/xmlrpc call the daemon
)
# Installed after debootstrap, with /proc mounted (polkitd's postinst fails in debootstrap's
# bare chroot): the .deb's unit control through polkit.
LATER_PACKAGES = ("polkitd",)
# The Debian package's Build-Depends (debian/control), git (scripts/build-deb copies the tree git
# knows) and lintian: tests/e2e/test_package.py builds the .deb with scripts/build-deb
# (dpkg-buildpackage) inside a Debian 13 host and checks it with Debian 13's lintian.
BUILD_PACKAGES = ("build-essential", "debhelper", "dh-python", "pybuild-plugin-pyproject", "python3-setuptools",
                  "python3-wheel", "python3-argparse-manpage", "python3-shtab", "git", "lintian")
# Downloaded only (Courier conflicts with dovecot-imapd): the same transaction as courierhost.py.
COURIER_APT = ("--no-install-recommends", "courier-imap", "dovecot-core-", "dovecot-imapd-")
RECIPE = 1   # bump when the build steps below change


class RootfsError(RuntimeError):
    """The root file system could not be built."""


def wanted_dists() -> tuple[str, ...]:
    """The distributions the e2e tests run on: $IMAPD_CTL_TEST_DISTS (comma-separated), default
    both.  An unknown name is an error naming the allowed ones."""
    raw = os.environ.get(ENV_DISTS, "").strip()
    if not raw:
        return DISTS
    names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    bad = [n for n in names if n not in DISTS]
    if bad or not names:
        raise ValueError(f"{ENV_DISTS}={raw!r}: unknown distribution {bad}; allowed: "
                         f"{', '.join(DISTS)} (comma-separated)")
    return names


def recipe_hash() -> str:
    text = repr((RECIPE, "trixie", TRIXIE_PACKAGES, LATER_PACKAGES, BUILD_PACKAGES, COURIER_APT))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def mirror() -> str:
    """The Debian mirror of this machine's apt sources (deb822 or one-line), else deb.debian.org."""
    texts = []
    for path in ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"):
        try:
            with open(path) as f:
                texts.append(f.read())
        except OSError:
            pass
    for text in texts:
        for m in re.finditer(r"^(?:URIs:|deb)\s+(\S+)", text, re.M):
            uri = m.group(1).rstrip("/")
            if uri.startswith("http") and not uri.endswith(("-security", "-updates")) \
                    and "security" not in uri:
                return uri
    return DEFAULT_MIRROR


def root_path(dist: str) -> str:
    """The cached root of `dist` ("/" for bookworm), building it first if needed."""
    if dist == "bookworm":
        return "/"
    if dist != "trixie":
        raise ValueError(f"dist must be one of {', '.join(DISTS)}, not {dist!r}")
    path = os.path.join(CACHE, f"trixie-{recipe_hash()}")
    if os.path.isdir(path):
        return path
    os.makedirs(CACHE, exist_ok=True)
    fd = os.open(os.path.join(CACHE, "build.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)   # another run may be building it: wait for it
        if not os.path.isdir(path):
            _build(path)
    finally:
        os.close(fd)
    return path


def _run(argv: list[str], log, timeout: float) -> None:
    log.write(f"+ {' '.join(argv)}\n".encode())
    log.flush()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "DEBIAN_FRONTEND": "noninteractive"}
    r = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, env=env)
    if r.returncode != 0:
        raise RootfsError(f"{' '.join(argv[:4])} ... failed (rc={r.returncode}); see {log.name}")


def _build(path: str) -> None:
    if shutil.which("debootstrap") is None:
        raise RootfsError("debootstrap is not installed (run `bash scripts/setup` as root)")
    for name in os.listdir(CACHE):   # leftovers of a crashed build (we hold the lock)
        if ".tmp-" in name:
            shutil.rmtree(os.path.join(CACHE, name), ignore_errors=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    log_path = f"{path}.log"
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        try:
            _run(["debootstrap", "--variant=minbase", f"--include={','.join(TRIXIE_PACKAGES)}",
                  "trixie", tmp, mirror()], log, 1800)
            chroot = ["chroot", tmp]
            _run([*chroot, "apt-get", "-q", "update"], log, 600)
            _run(["mount", "-t", "proc", "proc", os.path.join(tmp, "proc")], log, 30)
            try:
                _run([*chroot, "apt-get", "install", "-y", "-q", "--no-install-recommends", *LATER_PACKAGES,
                      *BUILD_PACKAGES], log, 900)
            finally:
                _run(["umount", os.path.join(tmp, "proc")], log, 30)
            _run([*chroot, "apt-get", "clean"], log, 120)
            _run([*chroot, "apt-get", "install", "-y", "-q", "--download-only", *COURIER_APT], log, 600)
            # No man-db triggers inside the hosts (as courierhost.py does on Debian 12).
            for leftover in ("var/lib/man-db/auto-update", "etc/machine-id"):
                p = os.path.join(tmp, leftover)
                if os.path.lexists(p):
                    os.unlink(p)
            open(os.path.join(tmp, "etc/machine-id"), "w").close()   # systemd fills it at boot
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.rename(tmp, path)
        log.write(f"built in {time.monotonic() - t0:.1f} s\n".encode())


if __name__ == "__main__":
    want = sys.argv[1] if len(sys.argv) > 1 else "trixie"
    started = time.monotonic()
    print(root_path(want), f"{time.monotonic() - started:.1f} s")
