"""The serving model against attackers with no key (attacks.py), through the real gunicorn with
the venv's modules, on the unix socket and on loopback TCP: every connection a worker can hold
is taken, and a panel's keyed isRunning still answers at its usual speed. The same on the .deb
is in test_package.py."""
from __future__ import annotations

import pytest

from attacks import assert_isrunning_holds
from imapd_ctl.server.worker import CONNECTIONS

pytestmark = pytest.mark.mailhost


def test_isrunning_holds_on_the_unix_socket_with_every_attack_at_once_past_the_limits(daemon):
    workers = 2       # daemon.launch's default
    figures = assert_isrunning_holds(daemon.host, daemon.socket, daemon.key,
                                     flood=workers * CONNECTIONS + 200)
    print(f"\nunix socket, every attack at once past the connection limit: {figures}")


def test_isrunning_holds_on_loopback_tcp_with_every_attack_at_once(daemon):
    figures = assert_isrunning_holds(daemon.host, "127.0.0.1:8143", daemon.key)
    print(f"\nloopback TCP, every attack at once: {figures}")
