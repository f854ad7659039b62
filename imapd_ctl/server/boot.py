"""A stop that reaches a worker while it boots is kept, not lost.

gunicorn's arbiter makes the worker object, forks, and the child installs its own signal
handlers only once it has set itself up. Until then the child still has the arbiter's
handlers, which put the signal on the (child's copy of the) arbiter's queue, where nothing
reads it: a SIGTERM sent in that window is lost, the worker serves on, and the stop waits for
gunicorn's graceful_timeout or systemd's TimeoutStopSec. Here the stop signals are blocked
from just before that fork (gunicorn's pre_fork hook, then the fork's own hook) until the
worker's handlers are in place, so the kernel holds one sent meanwhile and delivers it then;
the arbiter unblocks them as soon as fork returns. Any other fork changes no mask."""
from __future__ import annotations

import os
import signal
from typing import Any

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
_next_is_a_worker = False   # gunicorn's pre_fork said the next fork is a worker's
_blocked = False            # this process blocked the stop signals for the fork under way


def worker_about_to_fork(server: Any = None, worker: Any = None) -> None:
    """gunicorn's pre_fork hook: the arbiter forks a worker right after it."""
    global _next_is_a_worker
    _next_is_a_worker = True


def handlers_installed() -> None:
    """In the worker: its own handlers are set; a stop sent meanwhile is delivered now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _before_fork() -> None:
    global _next_is_a_worker, _blocked
    if _next_is_a_worker:
        _next_is_a_worker, _blocked = False, True
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def _after_fork_in_parent() -> None:
    global _blocked
    if _blocked:
        _blocked = False
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _after_fork_in_child() -> None:
    global _blocked
    _blocked = False          # the mask stays as it is until handlers_installed()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


def keep_identity(cfg: Any) -> None:
    """In a worker, after fork, before gunicorn's own start of it: a worker runs as the user
    systemd started the daemon as and never changes who it is. gunicorn 20.1 (Debian 12) calls
    setuid() at each worker's start even with the uid the worker already has, and the packaged
    unit's system call filter refuses setuid() (~@privileged), so the worker would die; with user
    0 it calls nothing. Only the worker's copy of the settings changes; as root nothing does."""
    if os.getuid() != 0 and cfg.uid == os.getuid() and cfg.gid == os.getgid():
        cfg.set("user", 0)
