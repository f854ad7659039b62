"""Real IMAP client sessions against a mail host: a mail user and a logged-in session
(tests/e2e/test_e2e_limits.py, test_e2e_capacity.py)."""
from __future__ import annotations

import imaplib
import ssl

USER, PASSWORD = "alice", "wonderland-42"


def add_mail_user(host) -> str:
    """A system user with an mbox that Dovecot's default passdb (PAM) lets log in."""
    host.run(["useradd", "-m", USER])
    host.run(["chpasswd"], input=f"{USER}:{PASSWORD}\n")
    host.run(["install", "-o", USER, "-g", "mail", "-m", "0660", "/dev/null", f"/var/mail/{USER}"])
    return USER


def login(host, timeout: float = 10) -> imaplib.IMAP4:
    """A real client session: connect, STARTTLS (Dovecot refuses plaintext logins from a
    remote address), LOGIN. Raises on timeout."""
    conn = imaplib.IMAP4(host.address, 143, timeout=timeout)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    conn.starttls(ssl_context=ctx)
    conn.login(USER, PASSWORD)
    return conn
