"""Limits set through `update` really hold on a running Dovecot, seen by real IMAP clients:
connections beyond process_limit are not served, and the memory limit is the address-space
limit of the IMAP processes."""
from __future__ import annotations

import imaplib
import socket
import time

import pytest
from sessions import login

pytestmark = pytest.mark.mailhost


def newest_imap_pid(host) -> int:
    """The post-login imap process of the session that logged in last."""
    return int(host.run(["pgrep", "-n", "-x", "imap"]).stdout)


def address_space_limit(host, pid: int) -> str:
    limits = host.read_file(f"/proc/{pid}/limits").decode()
    line = next(l for l in limits.splitlines() if l.startswith("Max address space"))
    return line.split()[3]   # soft limit, bytes


def test_connections_beyond_the_limit_are_not_served(daemon, mailhost, mail_user):
    status, payload = daemon.call("update", {"imap_max_connections": 1, "imap_secure_max_connections": 1})
    assert status == 0, payload
    first, second = login(mailhost), login(mailhost)
    try:
        assert first.noop()[0] == "OK" and second.noop()[0] == "OK"
        # The third session is over process_limit (1 + 1): its LOGIN gets no answer.
        with pytest.raises((socket.timeout, TimeoutError, imaplib.IMAP4.abort, OSError)):
            login(mailhost, timeout=4).logout()
        assert first.noop()[0] == "OK"
    finally:
        first.logout()
        second.logout()
    # With a slot free again, a new client is served: it was the limit, not the server.
    deadline = time.monotonic() + 10
    while True:
        try:
            login(mailhost, timeout=4).logout()
            break
        except (socket.timeout, TimeoutError, imaplib.IMAP4.abort, OSError):
            if time.monotonic() > deadline:
                raise
    # Raising the limit lets three in at once.
    assert daemon.call("update", {"imap_max_connections": 2})[0] == 0
    sessions = [login(mailhost) for _ in range(3)]
    for s in sessions:
        s.logout()


def test_memory_limit_is_the_imap_processes_address_space_limit(daemon, mailhost, mail_user):
    for mem in (300_000_000, 200_000_000):
        status, payload = daemon.call("update", {"imap_mem_limit": mem, "imap_secure_mem_limit": mem - (10 << 20),
                                                 "imap_max_connections": 5, "imap_secure_max_connections": 5})
        assert status == 0, payload
        session = login(mailhost)
        try:
            # vsz_limit is the larger of the two memory limits.
            assert address_space_limit(mailhost, newest_imap_pid(mailhost)) == str(mem)
        finally:
            session.logout()
