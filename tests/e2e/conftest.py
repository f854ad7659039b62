"""Fixtures for end-to-end tests: a throw-away mail host (real systemd as PID 1 in namespaces,
real Dovecot) with the real imapd-ctl under gunicorn inside, one per test module and
distribution.

`dist` is parametrized over the distributions of the test hosts: Debian 12 ("bookworm",
Dovecot 2.3, Courier 5.0) and Debian 13 ("trixie", Dovecot 2.4, Courier 5.2); every test using
a host fixture runs on each (ids `[bookworm]`, `[trixie]`).  IMAPD_CTL_TEST_DISTS=bookworm (or
trixie; comma-separated) picks them (tests/e2e/rootfs.py)."""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import pytest

import rootfs
from daemon import REPO, install_project, launch
from mailhost import MailHost, machine_ready
from pkgbuild import build_deb


def _require_machine():
    ok, reason = machine_ready()
    if not ok:
        # Never a silent skip: CI runs scripts/setup first, so this is a broken setup.
        pytest.fail(f"cannot boot a mail host here: {reason} (run `bash scripts/setup` as root)", pytrace=False)


def _dists() -> tuple[str, ...]:
    try:
        return rootfs.wanted_dists()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def built_deb() -> tuple[Path, float]:
    """The .deb of this tree, built once per session on this machine by scripts/build-deb
    (dpkg-buildpackage), in /var/tmp so that test hosts can bind it: (path, seconds)."""
    outdir = Path(tempfile.mkdtemp(prefix="imapd-ctl-deb-", dir="/var/tmp"))
    try:
        yield build_deb(outdir)
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


@pytest.fixture(scope="module", params=_dists())
def dist(request) -> str:
    """The distribution of this module's test hosts ("bookworm" or "trixie")."""
    return request.param


@contextlib.contextmanager
def booted_host(prepare, dist: str = "bookworm", name: str | None = None):
    """A booted host of `dist` (first free index) with the repo and a shared dir (`host.share`,
    for the daemon's socket) bind-mounted and the project installed (daemon.IMAPD_CTL);
    `prepare(host)` installs/starts the IMAP server."""
    _require_machine()
    share = Path(tempfile.mkdtemp(prefix="imapd-ctl-share-", dir="/var/tmp"))
    host = MailHost(binds=[str(REPO), str(share)], dist=dist, name=name)
    host.share = share
    try:
        host.boot()
        install_project(host)
        prepare(host)
        yield host
    finally:
        host.shutdown()
        shutil.rmtree(share, ignore_errors=True)


@pytest.fixture(scope="module")
def mailhost(dist):
    with booted_host(lambda host: host.start_dovecot(), dist) as host:
        yield host


@pytest.fixture(scope="module")
def mail_user(mailhost):
    """A user who can log in to the module's Dovecot (sessions.login)."""
    from sessions import add_mail_user
    return add_mail_user(mailhost)


@pytest.fixture(scope="module")
def daemon(mailhost):
    d = launch(mailhost, mailhost.share)
    yield d
    d.stop()


# -- Courier ---------------------------------------------------------------------------------
# A mail host with Courier-IMAP instead of Dovecot (installed inside the host from the .debs that
# scripts/setup downloads; see tests/courierhost.py), and the real daemon auto-detecting it.

@pytest.fixture(scope="module")
def courierhost(dist):
    from courierhost import debs_ready, install_courier
    ok, reason = debs_ready(dist)
    if not ok:
        pytest.fail(f"cannot install Courier in a mail host: {reason}", pytrace=False)

    def prepare(host):
        host.courier_install_seconds = install_courier(host)

    with booted_host(prepare, dist) as host:
        yield host


@pytest.fixture(scope="module")
def courier_daemon(courierhost):
    d = launch(courierhost, courierhost.share)
    yield d
    d.stop()
