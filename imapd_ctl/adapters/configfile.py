"""Compatibility names: the file primitives moved to adapters.files, the lock to adapters.lock
and the journal to adapters.journal. New code imports from those modules."""
from __future__ import annotations

from imapd_ctl.adapters.files import atomic_remove, atomic_write, read_bytes_or_none, remove_stale_temps
from imapd_ctl.adapters.journal import Journal, JournalCorrupt, JournalEntry, JournalError, JournalPending, NoJournal
from imapd_ctl.adapters.lock import TransactionLock

__all__ = ["atomic_remove", "atomic_write", "read_bytes_or_none", "remove_stale_temps", "Journal",
           "JournalCorrupt", "JournalEntry", "JournalError", "JournalPending", "NoJournal", "TransactionLock"]
