"""adapters.quickcalls (system calls that keep the GIL) answer as the os functions do, through
libc and through the os fallback; adapters.filewatch says when a file may have changed, and
says so whenever it cannot tell."""
import errno
import os

import pytest

from imapd_ctl.adapters import filewatch, quickcalls
from imapd_ctl.adapters.filewatch import FileWatch


@pytest.fixture(params=["libc", "os"])
def calls(request, monkeypatch):
    """quickcalls through libc (PyDLL), and with libc unavailable (the os fallback)."""
    if request.param == "os":
        monkeypatch.setattr(quickcalls, "_write", None)
        monkeypatch.setattr(quickcalls, "_read", None)
    else:
        assert quickcalls._write is not None and quickcalls._read is not None
    return quickcalls


def test_write_writes_as_os_does(calls):
    r, w = os.pipe()
    try:
        assert calls.write(w, b"abc") == 3
        assert os.read(r, 10) == b"abc"
        os.close(r)
        with pytest.raises(BrokenPipeError):
            calls.write(w, b"x")                         # no reader: EPIPE, as os.write says
    finally:
        os.close(w)
    with pytest.raises(OSError) as raised:
        calls.write(w, b"x")                             # closed
    assert raised.value.errno == errno.EBADF


def test_read_nonblocking_says_none_when_nothing_is_ready(calls):
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        assert calls.read_nonblocking(r, 100) is None
        os.write(w, b"abc")
        assert calls.read_nonblocking(r, 2) == b"ab"
        assert calls.read_nonblocking(r, 100) == b"c"
        os.close(w)
        assert calls.read_nonblocking(r, 100) == b""      # end of file
    finally:
        os.close(r)
    with pytest.raises(OSError):
        calls.read_nonblocking(r, 100)                       # closed


def test_pid_is_the_process_id_in_a_forked_child_too():
    assert quickcalls.pid() == os.getpid()
    r, w = os.pipe()
    child = os.fork()
    if child == 0:                                   # the child: report and leave at once
        os.write(w, f"{quickcalls.pid()} {os.getpid()}".encode())
        os._exit(0)
    os.close(w)
    try:
        seen, real = os.read(r, 100).split()
    finally:
        os.close(r)
        os.waitpid(child, 0)
    assert seen == real == str(child).encode()


@pytest.fixture
def watched(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text("{}")
    watch = FileWatch(path)
    assert watch.changed()          # the first look is always a look
    assert not watch.changed()
    yield path, watch
    watch.close()


def test_a_replaced_or_rewritten_file_is_a_change(watched):
    path, watch = watched
    tmp = path.with_name(".keys.tmp")
    tmp.write_text('{"keys": []}')
    tmp.rename(path)                                         # what the key commands do
    assert watch.changed() and not watch.changed()
    with open(path, "a") as fh:                              # a hand edit in place
        fh.write(" ")
    assert watch.changed() and not watch.changed()
    path.unlink()
    assert watch.changed()


def test_other_files_in_the_directory_are_not_a_change(watched):
    path, watch = watched
    path.with_name("keys.json.lock").write_text("")
    path.with_name("audit.log").write_text("x")
    assert not watch.changed()


def test_a_lost_watch_says_changed_until_it_is_back(watched, tmp_path):
    path, watch = watched
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    tmp_path.rename(moved)                                   # the directory goes away
    try:
        assert watch.changed()
        assert watch.changed()                               # no directory: cannot tell
    finally:
        moved.rename(tmp_path)
    assert watch.changed()                                   # watching the new one
    assert not watch.changed()


def test_without_inotify_or_through_a_symlink_it_always_says_changed(tmp_path, monkeypatch):
    real = tmp_path / "real.json"
    real.write_text("{}")
    link = tmp_path / "keys.json"
    link.symlink_to(real)
    through_link = FileWatch(link)
    assert through_link.changed() and through_link.changed()
    monkeypatch.setattr(filewatch, "_LIBC", None)
    without = FileWatch(real)
    assert without.changed() and without.changed()


def test_a_forked_process_watches_afresh(watched, monkeypatch):
    path, watch = watched
    monkeypatch.setattr(quickcalls, "_pid", -2)
    assert watch.changed()
    assert not watch.changed()
