"""The `imapd-ctl` command: main (the parser and the local commands), commands (`call`,
`status`), access (key sources, exit codes, what-to-do-next errors), calls (where a call goes:
the socket or another node), status (`status` as data), show and statusview (the command
line's words), client (calling the daemon over its socket)."""
