"""IMAP server flavours and their detection."""
from __future__ import annotations

import os

from ..errors import ActionFailed
from .base import Flavour
from .dovecot import Dovecot


class NoFlavour(ActionFailed):
    pass


def detect(settings, systemd) -> Flavour:
    """The configured flavour, or (auto) the first whose unit systemd knows and whose tools
    are installed. Raises NoFlavour with what was looked for."""
    if settings.flavour == "dovecot":
        return Dovecot(settings)
    looked = []
    unit = settings.dovecot.unit
    if os.path.exists(settings.dovecot.doveconf) and systemd.unit(unit).load_state == "loaded":
        return Dovecot(settings)
    looked.append(f"Dovecot ({unit} with {settings.dovecot.doveconf})")
    raise NoFlavour("no supported IMAP server is installed on this host; looked for: "
                    + "; ".join(looked))
