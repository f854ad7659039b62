"""Where Dovecot reads our drop-in from, and which later files override it (no subprocesses here).

A conf.d include is a packaging choice, not a given (Debian's dovecot.conf has
`!include conf.d/*.conf`; upstream 2.4 ships no example config), so before anything is written
the drop-in must be matched by an `!include`/`!include_try` reachable from the main config.
Files read after the drop-in (Debian 13's conf.d/99-local.conf sorts after 99-imapd-ctl.conf;
local.conf is included after conf.d) can set the same settings: `overriding` names them.
"""
from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Callable

from imapd_ctl.core.errors import ConfigInvalid

_INCLUDE_RE = re.compile(r"^\s*!include(?:_try)?\s+(\"[^\"]+\"|\S+)", re.M)
# Settings that decide the service's limits (2.3 short names, 2.4 canonical service_* names;
# not default_*, which an explicit service setting wins over), outside comments.
_LIMIT_RE = re.compile(r"(?<!\w)(?:service_)?(?:process_limit|vsz_limit)\s*=")
_COMMENT_RE = re.compile(r"#.*$", re.M)
MAX_DEPTH = 8


def _includes(path: Path, rebase: tuple[str, str]) -> list[Path]:
    """Files an include line of `path` matches (relative patterns from the file's directory;
    absolute ones under rebase[0] looked up under rebase[1], the copy being checked), in Dovecot's
    order: include lines in file order, each glob sorted."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    found: list[Path] = []
    for m in _INCLUDE_RE.finditer(text):
        pattern = m.group(1).strip('"')
        if not os.path.isabs(pattern):
            pattern = str(path.parent / pattern)
        elif rebase[0] and (pattern + "/").startswith(rebase[0].rstrip("/") + "/"):
            pattern = rebase[1].rstrip("/") + pattern[len(rebase[0].rstrip("/")):]
        found += [Path(p) for p in sorted(glob.glob(pattern))]
    return found


def read_order(config: Path, rebase: tuple[str, str] = ("", "")) -> list[Path]:
    """Every file Dovecot reads for `config`, main file first, includes depth-first."""
    order: list[Path] = []

    def walk(path: Path, depth: int) -> None:
        if path in order or depth > MAX_DEPTH:
            return
        order.append(path)
        for inc in _includes(path, rebase):
            walk(inc, depth + 1)

    walk(config, 0)
    return order


def include_hint(config: Path, dropin: Path, rebase: tuple[str, str] = ("", "")) -> str | None:
    """None if the drop-in (present in the tree) is read; else the refusal, naming the file to
    add the include line to and the line."""
    if dropin in read_order(config, rebase):
        return None
    rel = os.path.relpath(dropin.parent, config.parent)
    line = f"!include {dropin.parent}/*.conf" if rel.startswith("..") else f"!include {rel}/*.conf"
    return (f"Dovecot does not read {dropin.parent}/*.conf, where imapd-ctl keeps its settings "
            f"({dropin.name}): add the line `{line}` to {config} (after any dovecot_config_version "
            f"and dovecot_storage_version lines); nothing was changed")


def later_files(config: Path, dropin: Path, rebase: tuple[str, str] = ("", "")) -> list[Path]:
    """Files read after the drop-in that set a process or vsz limit (textually)."""
    order = read_order(config, rebase)
    if dropin not in order:
        return []
    after = order[order.index(dropin) + 1:]
    if config not in after:
        after.append(config)   # settings below the include line in the main file itself
    hits = []
    for path in after:
        try:
            if _LIMIT_RE.search(_COMMENT_RE.sub("", path.read_text(errors="replace"))):
                hits.append(path)
        except OSError:
            pass
    return hits


def overriding(config: Path, dropin: Path, effective: Callable[[], object],
               rebase: tuple[str, str] = ("", "")) -> list[Path]:
    """The later files that override the drop-in, found with Dovecot's own parser: each candidate
    of `later_files` inside the caller's throw-away copy of the tree (rebase[1]) is emptied in
    turn and counts if the effective values (`effective()`) then change. A symlink in the copy is
    replaced, never written through (its target may be a live file); files outside the copy are
    never touched. When no emptied file explains the override, the remaining candidates (the
    main config, files outside the copy) are named."""
    baseline = effective()
    candidates = later_files(config, dropin, rebase)
    copy = Path(rebase[1]) if rebase[1] else config.parent
    found: list[Path] = []
    untested: list[Path] = []
    for path in candidates:
        if path == config or copy not in path.parents:
            untested.append(path)
            continue
        link = os.readlink(path) if path.is_symlink() else None
        saved = b"" if link is not None else path.read_bytes()
        path.unlink()
        path.write_bytes(b"")
        try:
            changed = effective() != baseline
        except ConfigInvalid:   # the config needs the file: not the culprit
            changed = False
        finally:
            path.unlink()
            if link is not None:
                os.symlink(link, path)
            else:
                path.write_bytes(saved)
        if changed:
            found.append(path)
    return found or untested
