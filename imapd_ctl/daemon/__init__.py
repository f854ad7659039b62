"""The daemon as assembled for a host: wiring (the one object graph, for the app, the CLI and
serve), recovery (finishing a change a crash interrupted, at start), serve (`imapd-ctl serve`:
the Flask app under gunicorn with imapd_ctl.server's worker)."""
