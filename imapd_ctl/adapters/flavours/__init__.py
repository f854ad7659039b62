"""IMAP server flavours and their detection."""
from __future__ import annotations

import os
import subprocess

from imapd_ctl.core.errors import ActionFailed, ConfigInvalid
from imapd_ctl.core.protocols import Flavour
from imapd_ctl.adapters.flavours.courier import flavour as _courier
from imapd_ctl.adapters.flavours.courier import Courier, find_config_dir
from imapd_ctl.core.protocols import Systemd
from imapd_ctl.core.settings import Settings
from imapd_ctl.adapters.flavours.dovecot import Dovecot, readings


class NoFlavour(ActionFailed):
    pass


class BrokenConfig(NoFlavour, ConfigInvalid):
    """The IMAP server is installed, but its own configuration does not load: which server it
    serves cannot be read, and it would not start. Said apart from "not installed"."""


def _dovecot_serves_imap(doveconf: str, unit: str) -> bool:
    """dovecot-core alone (kept for Postfix SASL, or left behind when Courier replaced
    dovecot-imapd) is not an IMAP server: imap must be among its protocols (2.3 prints their
    names; 2.4 prints `imap = yes` or `imap = no`). BrokenConfig if doveconf cannot load it."""
    try:
        proc = subprocess.run([doveconf, "-h", "protocols"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if proc.returncode != 0:
        said = " ".join(proc.stderr.split())[:300] or f"doveconf exited {proc.returncode}"
        raise BrokenConfig(f"Dovecot is installed ({unit}) but its configuration does not load: {said}. "
                           "Fix that file (`doveconf -n` shows the error), then try again")
    return "imap" in readings.protocols(proc.stdout)


def courier_units(settings: Settings, systemd: Systemd) -> tuple[str, ...]:
    """Courier's units: the 143 unit, and the SSL unit if systemd knows it (a host may serve
    143 only)."""
    units = [settings.courier.unit]
    if settings.courier.ssl_unit and systemd.unit(settings.courier.ssl_unit).load_state == "loaded":
        units.append(settings.courier.ssl_unit)
    return tuple(units)


def detect(settings: Settings, systemd: Systemd) -> Flavour:
    """The configured flavour (settings.flavour "dovecot" or "courier"), or in "auto" the first
    that is installed: Dovecot (its unit loaded and doveconf present), else Courier (its 143
    unit loaded and its config directory found). Raises NoFlavour naming what was looked for.
    Unit discovery happens here (the flavours' constructors never call systemd)."""
    if settings.flavour == "dovecot":
        return Dovecot(settings)
    if settings.flavour == "courier":
        return Courier(settings, courier_units(settings, systemd))
    looked: list[str] = []
    unit = settings.dovecot.unit
    if os.path.exists(settings.dovecot.doveconf) and systemd.unit(unit).load_state == "loaded" \
            and _dovecot_serves_imap(settings.dovecot.doveconf, unit):
        return Dovecot(settings)
    looked.append(f"Dovecot ({unit} with {settings.dovecot.doveconf} and imap in its protocols)")
    courier = settings.courier
    if find_config_dir(courier.config_dir) and systemd.unit(courier.unit).load_state == "loaded":
        return Courier(settings, courier_units(settings, systemd))
    dirs = courier.config_dir or " or ".join(f"{d}/imapd" for d in _courier.CONFIG_DIRS)
    looked.append(f"Courier ({courier.unit} with {dirs})")
    raise NoFlavour("no supported IMAP server is installed on this host; looked for: "
                    + "; ".join(looked))
