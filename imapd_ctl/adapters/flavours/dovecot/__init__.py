"""Dovecot 2.3 and 2.4: flavour (the Dovecot flavour: the drop-in we own, units, apply,
verify), readings (what the two versions print differently), layout (where the drop-in is read
and what overrides it), status (`doveadm service status`: the pools queryCapacity reports)."""
from __future__ import annotations

from imapd_ctl.adapters.flavours.dovecot.flavour import UNLIMITED, Dovecot, mapped, parse_size, parse_values

__all__ = ["Dovecot", "mapped", "parse_size", "parse_values", "UNLIMITED"]
