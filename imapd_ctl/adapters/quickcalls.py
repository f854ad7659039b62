"""readlink(2) and a non-blocking read(2), called without letting go of the GIL.

Why: Python's `os` functions release the GIL around every system call. In a busy worker the
event loop and the request threads all want it, so each release hands it to a waiting thread
and costs about two thread switches (and futex calls) to get it back. A panel's isRunning
poll made two such calls, a stat of the key file (now adapters.filewatch) and the listening
socket's readlink: they alone took isRunning from 0.84 to 0.73 of /healthz's req/s
(bench/isrunning.py; the worker's futex calls per request went from 19 to 29). These calls
read kernel memory (procfs, an inotify queue) and return in about a microsecond, so holding
the GIL across them is cheaper than sharing it. Use them for nothing that can block: no
network file systems; reads only of descriptors that never block (an inotify queue).

They go through libc with ctypes.PyDLL (which keeps the GIL); where that cannot be loaded,
the os functions do the same job.
"""
from __future__ import annotations

import ctypes
import errno
import os

_LINK_MAX = 512          # /proc/PID/fd/N names "socket:[INODE]"; longer targets take os.readlink


def _bind() -> tuple[object | None, object | None]:
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        readlink, read = libc.readlink, libc.read
    except (OSError, AttributeError):
        return None, None
    read.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
    read.restype = ctypes.c_ssize_t
    readlink.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t)
    readlink.restype = ctypes.c_ssize_t
    return readlink, read


_readlink, _read = _bind()


def _error(path: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), path)   # ENOENT makes a FileNotFoundError


def readlink(path: str) -> str:
    """os.readlink(path), holding the GIL."""
    if _readlink is None:
        return os.readlink(path)
    buf = ctypes.create_string_buffer(_LINK_MAX)     # one per call: threads share nothing
    n = _readlink(os.fsencode(path), buf, _LINK_MAX)  # type: ignore[operator]
    if n < 0:
        raise _error(path)
    if n >= _LINK_MAX:       # maybe cut short
        return os.readlink(path)
    return os.fsdecode(buf.raw[:n])


def read_nonblocking(fd: int, size: int) -> bytes | None:
    """Up to `size` bytes from a descriptor opened O_NONBLOCK; None when none are ready."""
    if _read is None:
        try:
            return os.read(fd, size)
        except BlockingIOError:
            return None
    buf = ctypes.create_string_buffer(size)
    n = _read(fd, buf, size)  # type: ignore[operator]
    if n < 0:
        if ctypes.get_errno() in (errno.EAGAIN, errno.EWOULDBLOCK):
            return None
        raise _error(f"fd {fd}")
    return buf.raw[:n]
