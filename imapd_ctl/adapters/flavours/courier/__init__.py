"""Courier-IMAP: shellfile (editing its shell configuration files), sourcing (running /bin/sh
on them as the start scripts do), flavour (the Courier flavour: units, apply, verify)."""
from __future__ import annotations

from imapd_ctl.adapters.flavours.courier.shellfile import (
    DEFAULT_MAXDAEMONS, FIELDS, ORDER, PLAIN, SSL, edit, int_value, kib, managed_line, requested_bytes, split,
    textual, wanted)
from imapd_ctl.adapters.flavours.courier.sourcing import SH
from imapd_ctl.adapters.flavours.courier.flavour import CONFIG_DIRS, Courier, find_config_dir

__all__ = ["Courier", "CONFIG_DIRS", "DEFAULT_MAXDAEMONS", "FIELDS", "ORDER", "PLAIN", "SH",
           "SSL", "edit", "find_config_dir", "int_value", "kib", "managed_line", "requested_bytes", "split",
           "textual", "wanted"]
