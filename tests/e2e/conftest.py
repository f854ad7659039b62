"""Fixtures for end-to-end tests: a throw-away mail host (real systemd as PID 1 in namespaces,
real Dovecot) with the real imapd-ctl under gunicorn inside, one per test module."""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import pytest

from daemon import REPO, launch
from mailhost import MailHost, machine_ready


def _require_machine():
    ok, reason = machine_ready()
    if not ok:
        # Never a silent skip: CI runs scripts/setup first, so this is a broken setup.
        pytest.fail(f"cannot boot a mail host here: {reason} (run `sudo scripts/setup`)", pytrace=False)


@contextlib.contextmanager
def booted_host(prepare):
    """A booted host (first free index) with the repo and a shared dir (`host.share`, for the
    daemon's socket) bind-mounted; `prepare(host)` installs/starts the IMAP server."""
    _require_machine()
    share = Path(tempfile.mkdtemp(prefix="imapd-ctl-share-", dir="/var/tmp"))
    host = MailHost(binds=[str(REPO), str(share)])
    host.share = share
    try:
        host.boot()
        prepare(host)
        yield host
    finally:
        host.shutdown()
        shutil.rmtree(share, ignore_errors=True)


@pytest.fixture(scope="module")
def mailhost():
    with booted_host(lambda host: host.start_dovecot()) as host:
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
def courierhost():
    from courierhost import debs_ready, install_courier
    ok, reason = debs_ready()
    if not ok:
        pytest.fail(f"cannot install Courier in a mail host: {reason}", pytrace=False)

    def prepare(host):
        host.courier_install_seconds = install_courier(host)

    with booted_host(prepare) as host:
        yield host


@pytest.fixture(scope="module")
def courier_daemon(courierhost):
    d = launch(courierhost, courierhost.share)
    yield d
    d.stop()
