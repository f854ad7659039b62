"""Has a file changed since we last looked? Answered from inotify events on its directory.

The key store is asked on every request, and a stat of the key file per request cost a panel's
poll about 6 us of a busy worker's time (on an overlay root; adapters.quickcalls says why a
system call is dear there at all). The directory's inotify queue is read without blocking and
without releasing the GIL instead: no event, no change. A change is queued by the kernel
before the rename (or write) that makes it returns, so the next request sees it, as it did
with a stat.

Whenever it cannot be sure (no inotify, the file is a symlink, the directory is missing or
was moved or replaced, the queue overflowed, after fork) `changed` says True, and the caller
looks at the file itself.
"""
from __future__ import annotations

import ctypes
import os
import struct

from imapd_ctl.adapters.quickcalls import pid, read_nonblocking

_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF = 0x400, 0x800
_IN_Q_OVERFLOW, _IN_IGNORED = 0x4000, 0x8000
_WATCHED = (_IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO
            | _IN_CREATE | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF)
_LOST = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_Q_OVERFLOW | _IN_IGNORED   # the watch is no good
_EVENT = struct.Struct("=iIII")     # struct inotify_event: wd, mask, cookie, len; then the name


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes, libc.inotify_init1.restype = (ctypes.c_int,), ctypes.c_int
        libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        libc.inotify_add_watch.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


class FileWatch:
    """One file, watched through its directory; one inotify descriptor per process."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.path.abspath(path)
        self.name = os.fsencode(os.path.basename(self.path))
        self._fd = -1
        self._pid = -1

    def changed(self) -> bool:
        """True if the file may have changed since the last call (always true on the first
        call, and whenever the watch cannot tell)."""
        if self._fd < 0 or self._pid != pid():
            return self._start()
        seen = False
        while True:
            try:
                data = read_nonblocking(self._fd, 1024)   # room for 3 events with long names
            except OSError:
                data = b""
            if data is None:          # nothing (more) queued
                return seen
            if not data:
                self._stop()
                return True
            seen = self._relevant(data) or seen
            if self._fd < 0:          # the watch was lost: look at the file until it is back
                return True

    def _relevant(self, data: bytes) -> bool:
        hit, offset = False, 0
        while offset + _EVENT.size <= len(data):
            _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & _LOST:
                self._stop()
                return True
            hit = hit or name == self.name
        return hit

    def _start(self) -> bool:
        self._stop()
        self._pid = pid()
        if _LIBC is None or os.path.islink(self.path):
            return True
        fd = _LIBC.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            return True
        if _LIBC.inotify_add_watch(fd, os.fsencode(os.path.dirname(self.path)), _WATCHED) < 0:
            os.close(fd)          # no directory yet (or no inotify watches left): try next time
            return True
        self._fd = fd
        return True

    def _stop(self) -> None:
        if self._fd >= 0 and self._pid == pid():
            os.close(self._fd)
        self._fd = -1

    def close(self) -> None:
        self._stop()

    def __del__(self) -> None:    # a store dropped (tests make many) gives its descriptor back
        self._stop()

