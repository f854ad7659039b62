"""What every IMAP server flavour provides: the Flavour protocol of core.protocols (kept under
this name for the flavours' readers)."""
from __future__ import annotations

from imapd_ctl.core.actions import UPDATE_FIELDS
from imapd_ctl.core.protocols import Applied, Check, Files, Flavour, Values

__all__ = ["Applied", "Check", "Files", "Flavour", "Values", "UPDATE_FIELDS"]
