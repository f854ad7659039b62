"""A stop that reaches a worker while it boots is kept, not lost.

gunicorn's arbiter makes the worker object, forks, and the child installs its own signal
handlers only once it has set itself up. Until then the child still has the arbiter's
handlers, which put the signal on the (child's copy of the) arbiter's queue, where nothing
reads it: a SIGTERM sent in that window is lost, the worker serves on, and the stop waits for
gunicorn's graceful_timeout or systemd's TimeoutStopSec. Here the stop signals are blocked
from just before the fork until the worker's handlers are in place, so the kernel holds one
sent meanwhile and delivers it then; the arbiter unblocks them as soon as fork returns."""
from __future__ import annotations

import os
import signal

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
_pending = False     # a worker object was made: the next fork is its (gunicorn's spawn_worker)


def worker_made() -> None:
    """The arbiter made a worker object and is about to fork it."""
    global _pending
    _pending = True


def handlers_installed() -> None:
    """In the worker: its own handlers are set; a stop sent meanwhile is delivered now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _before_fork() -> None:
    if _pending:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def _after_fork_in_parent() -> None:
    global _pending
    if _pending:
        _pending = False
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _after_fork_in_child() -> None:
    global _pending
    _pending = False          # the mask stays as it is until handlers_installed()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
