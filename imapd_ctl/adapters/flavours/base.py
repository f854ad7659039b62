"""What the flavours share beyond the Flavour protocol (core.protocols)."""
from __future__ import annotations

import os

from imapd_ctl.core.protocols import Check


def config_checks(config_dir: str, validator: str) -> list[Check]:
    """The lines every flavour gives `imapd-ctl check`: the directory of the files it writes
    is writable, and the program that validates a candidate can be run."""
    return [Check("config writable", os.access(config_dir, os.W_OK), config_dir),
            Check("validator", os.access(validator, os.X_OK), validator)]
