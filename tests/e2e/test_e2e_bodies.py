"""Bounded bodies and the envelope on odd paths, through the real gunicorn with the venv's
modules (Werkzeug 3.1, as Debian 13's); the same checks against the .deb on Debian 12's
modules are in test_package.py. The checks themselves are in bodies.py."""
import pytest

from bodies import assert_bounded, assert_odd_paths_answer_the_envelope
from probes import daemon_pids

pytestmark = pytest.mark.mailhost


def test_huge_bodies_are_refused_unread_and_workers_stay_small(daemon):
    figures = assert_bounded(daemon.host, daemon.socket, daemon.key, daemon_pids(daemon.host)[1])
    print(f"\nvenv: 512 MiB bodies: {figures}")
    assert daemon.call("isRunning") == (0, True)


def test_odd_paths_answer_the_envelope(daemon):
    assert_odd_paths_answer_the_envelope(daemon.host, daemon.socket, daemon.key)
