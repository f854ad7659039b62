"""Crash-safe file primitives: atomic_write / atomic_remove (all or nothing, durable),
remove_stale_temps (what a killed writer left) and read_bytes_or_none.

Everything here is stdlib only and Linux-oriented (fsync on directories).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

from imapd_ctl.core.errors import ConfigWriteError

_TEMP_TAG = ".imapd-ctl."


def reason(exc: OSError) -> str:
    """The OS reason of an OSError, for messages (e.g. "No space left on device")."""
    return exc.strerror or str(exc)


def _fsync_dir(dirname: str) -> None:
    # A rename (or unlink) is only durable once the directory entry itself is on
    # disk; without this a power cut can bring back the old file, or no file.
    fd = os.open(dirname, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # filesystem cannot fsync directories
            raise
    finally:
        os.close(fd)


def _create_temp(dirname: str, basename: str) -> tuple[int, str]:
    # Same directory as the target: os.replace is only atomic within one
    # filesystem, and a file created there gets that directory's defaults (e.g.
    # its SELinux label). The leading dot and the random suffix (not ".conf")
    # keep it out of Dovecot's "!include conf.d/*.conf" while it exists.
    # Created 0600 so nobody can read it before its final mode is set.
    for _ in range(100):
        tmp = os.path.join(dirname, f".{basename}{_TEMP_TAG}{secrets.token_hex(6)}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "cannot create a unique temporary file", dirname)


def atomic_write(path: str | os.PathLike, data: bytes, *, default_mode: int = 0o644) -> None:
    """Replace the contents of ``path`` with ``data``, all or nothing.

    Readers see either the old file or the new one, never a torn file, also
    after a crash or power cut. An existing file keeps its mode, uid and gid
    (if they cannot be kept, e.g. a non-root caller and a file owned by someone
    else, the write fails rather than silently changing the owner). A new file
    gets ``default_mode`` and, when running as root, the uid/gid of the
    directory it is created in (root:root in /etc/dovecot, the daemon's user in
    its own state directory); a non-root caller keeps its own uid/gid. If
    ``path`` is a symlink its target is replaced and the link is kept.
    Raises ConfigWriteError naming the path and the OS reason.
    """
    view = memoryview(data)  # TypeError for str etc., before touching the disk
    shown = os.fspath(path)
    # realpath: write through the admin's symlink instead of replacing it.
    target = os.path.realpath(path)
    if target != os.path.abspath(shown):
        shown = f"{shown} (-> {target})"
    dirname, basename = os.path.split(target)
    tmp = None
    try:
        try:
            st = os.stat(target)
            mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        except FileNotFoundError:
            dst = os.stat(dirname)
            mode, uid, gid = default_mode, dst.st_uid, dst.st_gid
            if os.geteuid() != 0:  # only root can give a file away: keep ours
                uid = gid = -1
        fd, tmp = _create_temp(dirname, basename)
        try:
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view):]
            tst = os.fstat(fd)
            if uid != -1 and (tst.st_uid, tst.st_gid) != (uid, gid):
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)  # after fchown, which clears setuid/setgid bits
            # Data on disk before the rename, else a crash can leave an empty
            # file under the new name.
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        tmp = None
        _fsync_dir(dirname)
    except OSError as exc:
        raise ConfigWriteError(f"cannot write {shown}: {reason(exc)}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_remove(path: str | os.PathLike) -> None:
    """Remove ``path`` if present and make the removal durable.

    Mirrors atomic_write: for a symlink the target is removed and the link
    kept, so that undoing a write through a symlink restores the old state.
    """
    target = os.path.realpath(path)
    try:
        try:
            os.unlink(target)
        except FileNotFoundError:
            return
        _fsync_dir(os.path.dirname(target))
    except OSError as exc:
        raise ConfigWriteError(f"cannot remove {os.fspath(path)}: {reason(exc)}") from exc


def remove_stale_temps(path: str | os.PathLike) -> list[str]:
    """Remove temporary files that atomic_write left next to ``path`` when the process died
    between creating and renaming them (only ours: ``.<basename>.imapd-ctl.<hex>``).
    The caller must hold whatever lock serializes writers of ``path``. Returns what went."""
    dirname, basename = os.path.split(os.path.realpath(path))
    prefix = f".{basename}{_TEMP_TAG}"
    removed: list[str] = []
    try:
        names = os.listdir(dirname)
    except OSError:
        return removed
    for name in names:
        if name.startswith(prefix) and len(name) == len(prefix) + 12:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(dirname, name))
                removed.append(os.path.join(dirname, name))
    return removed


def read_bytes_or_none(path: str | os.PathLike) -> bytes | None:
    """The file's contents, or None if it does not exist (a dangling symlink counts as absent)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None

