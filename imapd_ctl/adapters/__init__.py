"""Host adapters: systemd over D-Bus, listening sockets, the IMAP server flavours (Dovecot,
Courier), atomic files, the lock and the journal, keys, audit, other nodes. They implement
core.protocols and import only core."""
