"""A stop signal sent to a worker between gunicorn's fork and the worker's own handlers reaches
the worker's handler (server.boot), not the arbiter's handler the child inherited; the arbiter
gets its signals back at once. Real fork, real signals."""
import os
import signal

from imapd_ctl.server import boot


def _blocked() -> set:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))


def test_a_stop_sent_while_the_worker_boots_reaches_the_workers_handler():
    inherited = signal.signal(signal.SIGTERM, lambda *_: os._exit(3))   # the arbiter's, in the child: lost
    try:
        boot.worker_about_to_fork()            # gunicorn's pre_fork hook, then its fork
        pid = os.fork()
        if pid == 0:      # the worker, booting
            code = 4
            try:
                os.kill(os.getpid(), signal.SIGTERM)            # the stop arrives now
                got = []
                signal.signal(signal.SIGTERM, lambda *_: got.append("term"))   # the worker's handler
                boot.handlers_installed()
                code = 0 if got == ["term"] and not _blocked() & boot.STOP_SIGNALS else 5
            finally:
                os._exit(code)
        assert not _blocked() & boot.STOP_SIGNALS          # the arbiter is not left deaf
        assert os.waitpid(pid, 0)[1] >> 8 == 0
    finally:
        signal.signal(signal.SIGTERM, inherited)


def test_other_forks_change_no_signal_mask():
    pid = os.fork()
    if pid == 0:
        os._exit(0 if not _blocked() & boot.STOP_SIGNALS else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert not _blocked() & boot.STOP_SIGNALS


def test_only_the_fork_gunicorn_announced_blocks_and_the_next_one_does_not():
    """A Worker made without a fork (tests, tools) must not leave the next fork of the process
    (a subprocess with preexec_fn) with the stop signals blocked: they would stay blocked across exec."""
    boot.worker_about_to_fork()
    first = os.fork()
    if first == 0:
        os._exit(0)
    os.waitpid(first, 0)
    second = os.fork()
    if second == 0:
        os._exit(0 if not _blocked() & boot.STOP_SIGNALS else 1)
    assert os.waitpid(second, 0)[1] == 0


def test_a_worker_of_a_non_root_daemon_asks_gunicorn_for_no_identity_change():
    """In a child that became `nobody` (as systemd starts the packaged daemon as its user): after
    keep_identity, gunicorn's own worker start makes no setuid() (user 0 means "none")."""
    from gunicorn import util
    from gunicorn.config import Config
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            cfg = Config()        # gunicorn's default is who imported it (here root): who runs it
            cfg.set("user", 65534)
            cfg.set("group", 65534)
            boot.keep_identity(cfg)
            assert (cfg.uid, cfg.gid) == (0, 65534)
            calls = []
            os.setuid, real = (lambda uid: calls.append(uid)), os.setuid
            util.set_owner_process(cfg.uid, cfg.gid, initgroups=cfg.initgroups)
            os.setuid = real
            code = 0 if calls == [] else 2
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] >> 8 == 0


def test_a_root_daemons_workers_settings_are_left_alone():
    from gunicorn.config import Config
    cfg = Config()
    boot.keep_identity(cfg)
    assert cfg.uid == os.getuid() == 0
