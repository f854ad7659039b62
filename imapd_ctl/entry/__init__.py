"""Entry points: the imapd-ctl command, gunicorn serving (socket activation, TLS on TCP only),
recovery at start, the client over the unix socket, and the wiring that builds the object graph
for all of them."""
