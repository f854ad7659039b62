"""What differs between Dovecot 2.3 (Debian 12) and 2.4 (Debian 13), handled by one flavour and
shown on both (the `dist` parameter): an unset vsz_limit read back (2.3 prints
18446744073709551615 B, 2.4 an empty line), a size an admin wrote as `300M` read as bytes (2.4
prints it as written), an override in a file read after the drop-in (Debian 13's
conf.d/99-local.conf) refused with its file named, and a main config without the conf.d include
refused saying what to add -- each refusal with nothing written and Dovecot untouched."""
from __future__ import annotations

import contextlib

import pytest

pytestmark = pytest.mark.mailhost

DROPIN = "/etc/dovecot/conf.d/99-imapd-ctl.conf"
MAIN = "/etc/dovecot/dovecot.conf"
RELOADED = "SIGHUP received - reloading configuration"


def read(host, path: str) -> bytes | None:
    r = host._nsenter(["cat", path], check=False, timeout=30)
    return r.stdout if r.returncode == 0 else None


@contextlib.contextmanager
def files(host, changes: dict[str, bytes | None]):
    """`changes` in place for the block (None: removed), then the old files back."""
    def put(path: str, data: bytes | None) -> None:
        if data is None:
            host.run(["rm", "-f", path])
        else:
            host.write_file(path, data)

    saved = {path: read(host, path) for path in changes}
    try:
        for path, data in changes.items():
            put(path, data)
        yield
    finally:
        for path, data in saved.items():
            put(path, data)


def version(host) -> str:
    return host.run(["dovecot", "--version"]).stdout.split()[0]


def test_the_host_runs_its_distributions_dovecot(mailhost, dist):
    assert version(mailhost).startswith({"bookworm": "2.3.", "trixie": "2.4."}[dist])


@pytest.mark.parametrize("admin, mem", [
    ("", 256 << 20),                                         # unset: default_vsz_limit (256 M)
    ("service imap {\n  vsz_limit = 300M\n}\n", 300 << 20),  # as an admin writes it
], ids=["unset-vsz_limit", "admin-300M"])
def test_limits_without_our_dropin_are_read_in_either_form(daemon, mailhost, admin, mem):
    changes = {DROPIN: None, "/etc/dovecot/conf.d/50-admin.conf": admin.encode() if admin else None}
    with files(mailhost, changes):
        raw = mailhost.run(["doveconf", "-h", "service/imap/vsz_limit"]).stdout.strip()
        status, payload = daemon.call("queryUpdate")
        assert status == 0, (raw, payload)
        assert payload["imap_mem_limit"] == payload["imap_secure_mem_limit"] == mem, raw
        # Debian's process_limit of service imap is 1024 on both, split between the ports
        assert payload["imap_max_connections"] + payload["imap_secure_max_connections"] == 1024


def changed(daemon) -> dict[str, int]:
    """Values that differ from the current ones (an identical update is a no-op)."""
    current = daemon.call("queryUpdate")[1]
    return {**current, "imap_max_connections": current["imap_max_connections"] % 500 + 1}


def refused(daemon, mailhost, expect: list[str]) -> None:
    """update is refused with every text of `expect`; the drop-in and the running Dovecot stay."""
    before, reloads = read(mailhost, DROPIN), mailhost.journal("-u", "dovecot").count(RELOADED)
    values = changed(daemon)
    want = values["imap_max_connections"] + values["imap_secure_max_connections"]
    status, payload = daemon.call("update", values)
    expect = [text.replace("{want}", str(want)) for text in expect]
    assert status == 500, payload
    for text in expect:
        assert text in payload, payload
    assert "nothing was changed" in payload and "/var/lib" not in payload, payload
    assert read(mailhost, DROPIN) == before
    assert mailhost.journal("-u", "dovecot").count(RELOADED) == reloads


@pytest.mark.parametrize("path", ["/etc/dovecot/conf.d/99-local.conf", "/etc/dovecot/local.conf"])
def test_a_later_file_overriding_our_limits_is_refused_by_name(daemon, mailhost, path):
    with files(mailhost, {path: b"service imap {\n  process_limit = 7\n}\n"}):
        refused(daemon, mailhost, [f"another file overrides imapd-ctl's settings in {DROPIN}: {path} ",
                                   "process_limit=7", "process_limit={want}"])
    assert daemon.call("update", changed(daemon))[0] == 0     # once it is gone


def test_a_main_config_without_the_conf_d_include_is_refused_saying_what_to_add(daemon, mailhost):
    main = read(mailhost, MAIN)
    without = b"".join(l for l in main.splitlines(keepends=True) if b"conf.d/*.conf" not in l)
    assert without != main
    with files(mailhost, {MAIN: without}):
        refused(daemon, mailhost, [f"Dovecot does not read /etc/dovecot/conf.d/*.conf",
                                   f"add the line `!include conf.d/*.conf` to {MAIN}"])
