"""write(2) and a non-blocking read(2), called without letting go of the GIL, and
this process's id without a system call.

Why: Python's `os` functions release the GIL around every system call. In a busy worker the
event loop and the request threads all want it, so each release hands it to a waiting thread
and costs about two thread switches (and futex calls) to get it back. A panel's isRunning
poll made two such calls, a stat of the key file (now adapters.filewatch) and its check of the
listening socket: they alone took isRunning from 0.84 to 0.73 of /healthz's req/s
(bench/isrunning.py; the worker's futex calls per request went from 19 to 29). These calls
touch kernel memory only (an inotify queue, a sock_diag lookup the kernel answers within the
write) and return in microseconds, so holding the GIL across them is cheaper than sharing it.
Use them for nothing that can block: no network file systems; reads and writes only of
descriptors that never block (an inotify queue, a non-blocking netlink socket).

They go through libc with ctypes.PyDLL (which keeps the GIL); where that cannot be loaded,
the os functions do the same job. Even a system call that keeps the GIL costs a busy worker
more than its own time, so what can be known without one is: `pid` is kept by a fork hook
(glibc's getpid() is a system call; the D-Bus link and the metrics ask on every request).
"""
from __future__ import annotations

import ctypes
import errno
import os
import threading

_MIN_BUFFER = 4096


def _bind() -> tuple[object | None, object | None]:
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        read, write = libc.read, libc.write
    except (OSError, AttributeError):
        return None, None
    read.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
    read.restype = ctypes.c_ssize_t
    write.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
    write.restype = ctypes.c_ssize_t
    return read, write


_read, _write = _bind()


_local = threading.local()


def _buffer(size: int) -> ctypes.Array[ctypes.c_char]:
    """This thread's buffer of at least `size` bytes (a thread may switch between a call and
    the read of its result: threads never share one)."""
    buf: ctypes.Array[ctypes.c_char] | None = getattr(_local, "buf", None)
    if buf is None or len(buf) < size:
        buf = _local.buf = ctypes.create_string_buffer(max(size, _MIN_BUFFER))
    return buf


def _error(path: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), path)   # ENOENT makes a FileNotFoundError


def read_nonblocking(fd: int, size: int) -> bytes | None:
    """Up to `size` bytes from a descriptor opened O_NONBLOCK; None when none are ready."""
    if _read is None:
        try:
            return os.read(fd, size)
        except BlockingIOError:
            return None
    buf = _buffer(size)
    n = _read(fd, buf, size)  # type: ignore[operator]
    if n < 0:
        if ctypes.get_errno() in (errno.EAGAIN, errno.EWOULDBLOCK):
            return None
        raise _error(f"fd {fd}")
    return ctypes.string_at(buf, n)


def write(fd: int, data: bytes) -> int:
    """os.write(fd, data) to a descriptor that never blocks, holding the GIL."""
    if _write is None:
        return os.write(fd, data)
    n = _write(fd, data, len(data))  # type: ignore[operator]
    if n < 0:
        raise _error(f"fd {fd}")
    return int(n)


_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def pid() -> int:
    """os.getpid(), from memory (updated in the child of every os.fork)."""
    return _pid
