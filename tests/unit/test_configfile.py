import datetime
import errno
import os
from pathlib import Path
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from imapd_ctl.adapters import files
from imapd_ctl.adapters.files import atomic_remove, atomic_write, read_bytes_or_none
from imapd_ctl.adapters.journal import Journal, JournalCorrupt, JournalError, JournalPending, NoJournal
from imapd_ctl.adapters.lock import TransactionLock
from imapd_ctl.core.errors import Busy, ConfigWriteError

# The holder subprocess imports imapd_ctl from the checkout.
REPO = str(Path(__file__).resolve().parents[2])

IS_ROOT = os.geteuid() == 0
BINARY = bytes(range(256)) * 3 + b"\x00\r\n\xff"


def temp_leftovers(directory):
    return [n for n in os.listdir(directory) if ".imapd-ctl." in n]


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# --- atomic_write -----------------------------------------------------------------

@pytest.mark.skipif(not IS_ROOT, reason="chown to another uid needs root")
def test_existing_file_keeps_mode_and_owner(tmp_path):
    path = tmp_path / "10-mail.conf"
    path.write_bytes(b"old\n")
    os.chmod(path, 0o640)
    os.chown(path, 1234, 1235)
    inode = os.stat(path).st_ino

    atomic_write(path, b"new\n")

    st = os.stat(path)
    assert path.read_bytes() == b"new\n"
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (1234, 1235)
    assert st.st_ino != inode  # replaced by rename, not rewritten in place
    assert temp_leftovers(tmp_path) == []


def test_new_file_gets_default_mode(tmp_path):
    old_umask = os.umask(0o077)  # the final mode must not depend on the umask
    try:
        atomic_write(tmp_path / "a.conf", b"a")
        atomic_write(tmp_path / "b.conf", b"b", default_mode=0o600)
    finally:
        os.umask(old_umask)
    assert mode_of(tmp_path / "a.conf") == 0o644
    assert mode_of(tmp_path / "b.conf") == 0o600
    assert (tmp_path / "a.conf").read_bytes() == b"a"
    assert temp_leftovers(tmp_path) == []


@pytest.mark.skipif(not IS_ROOT, reason="chown to another uid needs root")
def test_new_file_gets_directory_owner(tmp_path):
    d = tmp_path / "conf.d"
    d.mkdir()
    os.chown(d, 1234, 1235)
    atomic_write(d / "new.conf", b"x")
    st = os.stat(d / "new.conf")
    assert (st.st_uid, st.st_gid) == (1234, 1235)


def test_binary_and_empty_content(tmp_path):
    path = tmp_path / "bin"
    atomic_write(path, BINARY)
    assert path.read_bytes() == BINARY
    atomic_write(path, b"")
    assert path.read_bytes() == b""


def test_symlink_is_kept_and_target_written(tmp_path):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    target = real_dir / "dovecot.conf"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)
    link = tmp_path / "dovecot.conf"
    os.symlink("real/dovecot.conf", link)  # relative, as admins often write them

    atomic_write(link, b"new")

    assert os.path.islink(link)
    assert os.readlink(link) == "real/dovecot.conf"
    assert target.read_bytes() == b"new"
    assert mode_of(target) == 0o600
    assert temp_leftovers(tmp_path) == [] and temp_leftovers(real_dir) == []


def test_dangling_symlink_creates_target(tmp_path):
    link = tmp_path / "link.conf"
    os.symlink("target.conf", link)
    atomic_write(link, b"x")
    assert os.path.islink(link)
    assert (tmp_path / "target.conf").read_bytes() == b"x"


def test_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "x.conf"
    path.write_bytes(b"old contents")

    def broken_fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(files.os, "fsync", broken_fsync)
    with pytest.raises(ConfigWriteError) as info:
        atomic_write(path, b"new contents")
    monkeypatch.undo()

    assert str(path) in info.value.message
    assert "Input/output error" in info.value.message
    assert info.value.status == 500
    assert path.read_bytes() == b"old contents"
    assert temp_leftovers(tmp_path) == []


def test_missing_directory_raises_config_write_error(tmp_path):
    with pytest.raises(ConfigWriteError, match="No such file or directory"):
        atomic_write(tmp_path / "nope" / "x.conf", b"x")


def test_str_data_is_rejected_before_touching_disk(tmp_path):
    with pytest.raises(TypeError):
        atomic_write(tmp_path / "x.conf", "text")
    assert os.listdir(tmp_path) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs to simulate a full disk needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("mount(8) is not installed; cannot simulate a full disk")
    if res.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_raises_and_keeps_old_file(tiny_tmpfs):
    path = tiny_tmpfs / "99-imapd-ctl.conf"
    old = b"protocols = imap\n" * 10
    path.write_bytes(old)

    with pytest.raises(ConfigWriteError) as info:
        atomic_write(path, b"x" * 256 * 1024)

    assert info.value.message == f"cannot write {path}: No space left on device"
    assert path.read_bytes() == old
    assert temp_leftovers(tiny_tmpfs) == []


# --- atomic_remove / read_bytes_or_none -------------------------------------------

def test_read_bytes_or_none_and_atomic_remove(tmp_path):
    path = tmp_path / "f"
    assert read_bytes_or_none(path) is None
    path.write_bytes(b"\x00data")
    assert read_bytes_or_none(path) == b"\x00data"
    atomic_remove(path)
    assert not path.exists()
    atomic_remove(path)  # absent: no error


def test_atomic_remove_through_symlink_keeps_link(tmp_path):
    (tmp_path / "target").write_bytes(b"x")
    os.symlink("target", tmp_path / "link")
    atomic_remove(tmp_path / "link")
    assert os.path.islink(tmp_path / "link")
    assert not (tmp_path / "target").exists()
    assert read_bytes_or_none(tmp_path / "link") is None


# --- TransactionLock --------------------------------------------------------------

HOLDER = """
import sys, time
from imapd_ctl.adapters.lock import TransactionLock
TransactionLock(sys.argv[1]).acquire(timeout=5)
print("held", flush=True)
time.sleep(60)
"""


def test_lock_excludes_other_process_and_is_freed_on_sigkill(tmp_path):
    lock_path = tmp_path / "run" / "imapd-ctl" / "config.lock"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_path)],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert mode_of(lock_path) == 0o600

        lock = TransactionLock(lock_path)
        start = time.monotonic()
        with pytest.raises(Busy) as info:
            lock.acquire(timeout=0.3)
        elapsed = time.monotonic() - start
        assert 0.25 <= elapsed < 2.0
        assert info.value.message == "another configuration change is in progress; try again"
        assert info.value.status == 409

        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        lock.acquire(timeout=2)  # the kernel dropped the dead holder's lock
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()


def test_lock_serializes_threads(tmp_path):
    lock_path = tmp_path / "config.lock"
    held = threading.Event()
    go = threading.Event()
    results = []

    def worker():
        with TransactionLock(lock_path).hold(timeout=1):
            held.set()
            go.wait(5)

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert held.wait(5)
        with pytest.raises(Busy):
            with TransactionLock(lock_path).hold(timeout=0.1):
                results.append("entered")
        assert results == []
    finally:
        go.set()
        t.join(5)
    with TransactionLock(lock_path).hold(timeout=1) as lock:
        assert isinstance(lock, TransactionLock)


def test_lock_released_when_block_raises(tmp_path):
    lock = TransactionLock(tmp_path / "l")
    with pytest.raises(ZeroDivisionError):
        with lock.hold(timeout=0):
            1 / 0
    with lock.hold(timeout=0):
        pass
    with pytest.raises(RuntimeError):
        lock.release()


# --- Journal ----------------------------------------------------------------------

def test_journal_round_trip(tmp_path):
    conf = tmp_path / "etc"
    conf.mkdir()
    existing = str(conf / "10-ssl.conf")
    created = str(conf / "99-imapd-ctl.conf")
    old_bytes = BINARY
    new_existing = b"ssl = required\n"
    new_created = b"\x00binary\xff"
    with open(existing, "wb") as f:
        f.write(old_bytes)

    state = tmp_path / "state"  # does not exist yet
    journal = Journal(state)
    assert journal.pending() is None
    journal.begin("txn-1", "set_ssl",
                  old={existing: old_bytes, created: None},
                  new={existing: new_existing, created: new_created},
                  meta={"user": "admin", "n": 1})
    assert mode_of(state / "journal.json") == 0o600

    with pytest.raises(JournalPending) as ei:
        journal.begin("txn-2", "other", old={}, new={}, meta={})
    assert isinstance(ei.value, JournalError) and ei.value.status == 500
    assert str(state / "journal.json") in ei.value.message

    # apply the change as a caller would
    atomic_write(existing, new_existing)
    atomic_write(created, new_created)
    journal.mark("written")
    journal.mark("applied")

    entry = Journal(state).pending()  # a fresh instance, as after a restart
    assert entry.txn_id == "txn-1"
    assert entry.action == "set_ssl"
    assert entry.step == "applied"
    assert entry.meta == {"user": "admin", "n": 1}
    assert entry.old == {existing: old_bytes, created: None}
    assert entry.new == {existing: new_existing, created: new_created}
    assert datetime.datetime.fromisoformat(entry.started).tzinfo is not None
    assert mode_of(state / "journal.json") == 0o600

    assert journal.restore(entry) == [existing, created]
    assert read_bytes_or_none(existing) == old_bytes
    assert read_bytes_or_none(created) is None
    assert journal.restore(entry) == [existing, created]  # idempotent
    assert read_bytes_or_none(existing) == old_bytes
    assert read_bytes_or_none(created) is None

    journal.clear()
    assert journal.pending() is None
    journal.clear()  # nothing to clear: no error
    assert temp_leftovers(state) == [] and temp_leftovers(conf) == []


def test_journal_mark_errors(tmp_path):
    journal = Journal(tmp_path)
    with pytest.raises(NoJournal):
        journal.mark("written")
    journal.begin("t", "a", old={"/x": None}, new={"/x": b"1"}, meta={})
    with pytest.raises(ValueError):
        journal.mark("done")
    assert journal.pending().step == "begun"


def test_journal_begin_requires_old_for_every_new_file(tmp_path):
    journal = Journal(tmp_path)
    with pytest.raises(ValueError, match="/etc/x.conf"):
        journal.begin("t", "a", old={}, new={"/etc/x.conf": b"1"}, meta={})
    assert journal.pending() is None


def test_journal_unreadable(tmp_path):
    (tmp_path / "journal.json").write_bytes(b"{not json")
    (tmp_path / "journal.json").chmod(0o600)      # as the daemon writes it: only its content is bad
    with pytest.raises(JournalCorrupt, match="unreadable") as ei:
        Journal(tmp_path).pending()
    assert ei.value.status == 500 and ei.value.path == str(tmp_path / "journal.json")
    assert "remove it" in ei.value.message


def test_journal_restore_leaves_files_that_hold_their_old_bytes_alone(tmp_path):
    conf = tmp_path / "etc"
    conf.mkdir()
    same, changed = str(conf / "a.conf"), str(conf / "b.conf")
    for p in (same, changed):
        with open(p, "wb") as f:
            f.write(b"old\n")
    journal = Journal(tmp_path / "state")
    journal.begin("t", "update", old={same: b"old\n", changed: b"old\n"},
                  new={same: b"new\n", changed: b"new\n"}, meta={})
    atomic_write(changed, b"new\n")
    ino = os.stat(same).st_ino
    assert journal.restore(journal.pending()) == [same, changed]
    assert os.stat(same).st_ino == ino              # not rewritten (a full disk could not)
    assert read_bytes_or_none(changed) == b"old\n"


def test_remove_stale_temps_only_removes_our_temporaries_of_that_file(tmp_path):
    target = tmp_path / "99-imapd-ctl.conf"
    target.write_bytes(b"x")
    stale = tmp_path / ".99-imapd-ctl.conf.imapd-ctl.0123456789ab"
    other = tmp_path / ".10-mail.conf.imapd-ctl.0123456789ab"
    odd = tmp_path / ".99-imapd-ctl.conf.imapd-ctl.keep"
    for p in (stale, other, odd):
        p.write_bytes(b"partial")
    assert files.remove_stale_temps(target) == [str(stale)]
    assert sorted(os.listdir(tmp_path)) == sorted([target.name, other.name, odd.name])
