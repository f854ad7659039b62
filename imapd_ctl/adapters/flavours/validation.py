"""Where candidate configurations are validated: private, secret-free, never left behind.

A candidate is checked before anything reaches the live path (Dovecot: `doveconf -n -c` on a
candidate tree; Courier: `sh -n` and sourcing of the two candidate files). That happens in a
scratch directory under ``<state_dir>/validation`` (0700, like the state directory):

* Dovecot's candidate tree copies nothing: every live file and directory appears in it as a
  symlink to the live one, which doveconf reads where it is (read-only). Only the directories
  on the way to a candidate file are real directories, and only the candidate files (the
  drop-in imapd-ctl renders: limits, no secrets) are written. Private TLS keys, passwords in
  ``*.conf.ext`` files and the like are never copied, whatever the admin keeps in the
  configuration directory.
* Every scratch directory is removed when the validation ends, however it ends (accepted,
  rejected, an OSError such as ENOSPC, an exception). What a killed worker left behind is
  removed by :func:`remove_stale`, which `imapd-ctl serve` runs at start and every validation
  runs first (validations run under the transaction lock, so no other one is in progress).
  It also removes the ``validate-*`` copies that earlier versions made directly in the state
  directory (those held copies of the whole configuration directory, private keys included).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

SUBDIR = "validation"
_OLD_PREFIX = "validate-"        # what versions up to 0.1.0 left in the state dir itself


def private_dir(state_dir: str | os.PathLike[str]) -> Path:
    """``<state_dir>/validation``, created 0700 if missing and made 0700 if it is not.
    Refuses (OSError) a symlink or non-directory in its place."""
    path = Path(state_dir) / SUBDIR
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(20, "not a directory (refusing to validate through it)", str(path))
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def _remove(path: Path) -> None:
    """Remove a scratch directory or file; symlinks inside are unlinked, never followed."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale(state_dir: str | os.PathLike[str]) -> list[str]:
    """Remove every scratch directory (and old-style ``validate-*`` copy); returns what went."""
    removed: list[str] = []
    state = Path(state_dir)
    leftovers = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        leftovers += [p for p in state.iterdir() if p.name.startswith(_OLD_PREFIX)]
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        leftovers += list((state / SUBDIR).iterdir())
    for path in leftovers:
        _remove(path)
        removed.append(str(path))
    return removed


@contextlib.contextmanager
def scratch(state_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh, empty 0700 directory inside the private directory, removed on exit."""
    remove_stale(state_dir)
    path = Path(tempfile.mkdtemp(prefix="tree-", dir=private_dir(state_dir)))
    try:
        yield path
    finally:
        _remove(path)


def _ancestors(rel: Path) -> list[Path]:
    return [rel.parents[i] for i in range(len(rel.parents) - 1)]   # without "."


@contextlib.contextmanager
def candidate_tree(state_dir: str | os.PathLike[str], conf_dir: str | os.PathLike[str],
                   files: Mapping[str, bytes | None]) -> Iterator[Path]:
    """A tree that reads as ``conf_dir`` with ``files`` (absolute paths under conf_dir) put in
    place (None: the file is absent). Yields the tree's root, the stand-in for conf_dir.
    Raises ValueError for a path outside conf_dir, OSError if the tree cannot be made."""
    live_root = Path(conf_dir)
    candidates = {Path(path).relative_to(live_root): data for path, data in files.items()}
    real_dirs = {a for rel in candidates for a in _ancestors(rel)}
    with scratch(state_dir) as tree:
        _mirror(live_root, tree, Path("."), real_dirs, set(candidates))
        for rel, data in candidates.items():
            if data is None:
                continue
            target = tree / rel
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        yield tree


def _mirror(live: Path, tree: Path, rel: Path, real_dirs: set[Path], candidates: set[Path]) -> None:
    """Symlink every entry of live/rel into tree/rel, except candidates (written by the caller)
    and the directories leading to them (made real, and mirrored the same way)."""
    try:
        names = sorted(os.listdir(live / rel))
    except FileNotFoundError:
        return          # a directory the candidate creates
    for name in names:
        entry = rel / name
        if entry in candidates:
            continue
        if entry in real_dirs and (live / entry).is_dir():
            (tree / entry).mkdir(mode=0o700)
            _mirror(live, tree, entry, real_dirs, candidates)
        else:
            os.symlink(live / entry, tree / entry)
