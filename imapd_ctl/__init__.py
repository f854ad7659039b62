"""imapd-ctl: control daemon for a mail host's IMAP server."""

__version__ = "0.1.0"
