"""Who may call over the daemon's unix socket without a key: root, and the members of
settings.operator_group (empty: root only). The kernel says who connected (SO_PEERCRED, read by
the server); the group's members are read when the daemon starts. Such a caller is an operator
with every permission, named in the audit trail by user and uid. Over TCP only keys count."""
from __future__ import annotations

import functools
import grp
import pwd
from typing import Callable

from imapd_ctl.core.actions import PERMISSIONS
from imapd_ctl.core.protocols import Principal


def _user(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def operators(group: str) -> Callable[[int, int], Principal | None]:
    """(uid, gid) of a unix-socket caller -> the operator it is, or None (a key is needed)."""
    gid: int | None = None
    members: frozenset[str] = frozenset()
    if group:
        entry = grp.getgrnam(group)      # the settings checked that it exists
        gid, members = entry.gr_gid, frozenset(entry.gr_mem)

    @functools.lru_cache(maxsize=64)
    def operator(uid: int, primary_gid: int) -> Principal | None:
        name = _user(uid)
        if uid != 0 and not (gid is not None and (primary_gid == gid or name in members)):
            return None
        return Principal(f"{name or 'uid'} (uid {uid}, no key)", tuple(PERMISSIONS))
    return operator
