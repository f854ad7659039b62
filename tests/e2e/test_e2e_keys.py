"""Key management with the imapd-ctl command, taking effect in the running workers at once."""
import pytest

from daemon import IMAPD_CTL

pytestmark = pytest.mark.mailhost

IMPORTED = "iworx-" + "k" * 40


def test_key_lifecycle_against_the_running_daemon(daemon):
    listing = daemon.ctl("key", "list").stdout
    assert "panel\tEMAIL" in listing and "webonly\tMETRICS" in listing
    assert daemon.key not in listing

    created = daemon.ctl("key", "create", "ops")
    new_key = created.stdout.strip()
    assert new_key.startswith("ictl_") and "shown only this once" in created.stderr
    stored = daemon.host.read_file("/var/lib/imapd-ctl/keys.json").decode()
    assert new_key not in stored
    mode = daemon.host.run(["stat", "-c", "%a", "/var/lib/imapd-ctl/keys.json"]).stdout.strip()
    assert mode == "600"
    # Both workers see the new key (several calls land on both).
    for _ in range(6):
        assert daemon.call("isRunning", key=new_key) == (0, True)
        assert daemon.route("isRunning", key=new_key) == (0, True)

    daemon.ctl("key", "revoke", "ops")
    for _ in range(6):
        assert daemon.call("isRunning", key=new_key)[0] == 401
    assert daemon.ctl("key", "revoke", "ops", check=False).returncode == 1

    daemon.ctl("key", "import", "interworx", input=IMPORTED + "\n")
    assert daemon.route("isRunning", key={"apikey": IMPORTED}) == (0, True)
    dup = daemon.ctl("key", "create", "panel", check=False)
    assert dup.returncode == 2 and "exists" in dup.stderr


def interworx_block() -> str:
    """A key block as InterWorx shows it and panels store it: BEGIN/END lines around base64 lines."""
    import base64
    import secrets
    body = base64.b64encode(secrets.token_bytes(240)).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN INTERWORX API KEY-----\n" + "\n".join(lines) + "\n-----END INTERWORX API KEY-----"


def test_key_import_takes_stdin_or_a_file_never_argv(daemon):
    refused = daemon.ctl("key", "import", "argv", "--value", "k" * 40, check=False)
    assert refused.returncode == 2 and "--value is refused" in refused.stderr and "stdin" in refused.stderr
    short = daemon.ctl("key", "import", "short", check=False, input="abc\n")
    assert short.returncode == 2 and "32" in short.stderr and "INTERWORX API KEY" in short.stderr
    assert "argv" not in daemon.ctl("key", "list").stdout


@pytest.mark.parametrize("how", ["stdin", "file"])
def test_an_interworx_key_block_authenticates_on_every_transport(daemon, how):
    block = interworx_block()
    name = f"iworx-{how}"
    if how == "stdin":
        daemon.ctl("key", "import", name, input=block + "\n")
    else:
        daemon.host.write_file("/run/iworx.key", block.replace("\n", "\r\n") + "\r\n", mode=0o600)
        daemon.ctl("key", "import", name, "--file", "/run/iworx.key")
    stored = daemon.host.read_file("/var/lib/imapd-ctl/keys.json").decode()
    assert name in stored and all(line not in stored for line in block.splitlines()[1:-1])
    one_line = "".join(block.splitlines()[1:-1])
    try:
        # JSON: a header cannot carry line breaks: the body on one line, or the block with spaces.
        for bearer in (one_line, block.replace("\n", " ")):
            assert daemon.call("isRunning", key=bearer) == (0, True)
        for sent in (block, block + "\n", {"apikey": block + "\r\n"}):
            assert daemon.route("isRunning", key=sent) == (0, True)
        for version in ("1.1", "1.2"):
            entries = daemon.php("soap", "/soap?wsdl",
                          [[sent, "/nodeworx/mail/imap", "isRunning", {}] for sent in (block, block + "\n")], version)
            assert [e["result"] for e in entries] == [{"status": 0, "payload": True}] * 2, entries
        entries = daemon.php("xmlrpc", "/xmlrpc", [[block + "\n", "/nodeworx/mail/imap", "isRunning", []]])
        assert entries[0]["result"] == {"status": 0, "payload": True}
        # Another block is another key.
        assert daemon.route("isRunning", key=interworx_block())[0] == 401
    finally:
        daemon.ctl("key", "revoke", name)
    assert daemon.route("isRunning", key=block)[0] == 401


def test_concurrent_key_commands_lose_nothing(daemon):
    """20 `key create` racing `key revoke` (real processes, the real daemon): every printed
    key works, every key whose revoke said so fails, on every worker."""
    olds = [f"old{i}" for i in range(5)]
    for name in olds:
        daemon.ctl("key", "create", name)
    news = [f"race{i}" for i in range(20)]
    ctl = f"{IMAPD_CTL} --config {daemon.config} key"
    jobs = [f"( {ctl} create {n} >/tmp/race/{n}.key 2>/dev/null; echo $? >/tmp/race/{n}.create ) &"
            for n in news]
    jobs += [f"( {ctl} revoke {n} 2>/tmp/race/{n}.said; echo $? >/tmp/race/{n}.revoke ) &"
             for n in olds + news[::3]]
    script = "rm -rf /tmp/race; mkdir /tmp/race\n" + "\n".join(jobs) + "\nwait\n"
    daemon.host.run(["sh", "-c", script], timeout=300)

    def read(name: str, what: str) -> str:
        return daemon.host.read_file(f"/tmp/race/{name}.{what}").decode().strip()

    revoked = {n for n in olds + news[::3] if read(n, "revoke") == "0"}
    assert set(olds) <= revoked            # they existed: each revoke must have removed one
    assert all(read(n, "create") == "0" for n in news)
    printed = {n: read(n, "key") for n in news}
    assert all(k.startswith("ictl_") for k in printed.values())
    for name, key in printed.items():
        expect = 401 if name in revoked else 0
        for _ in range(4):      # the calls land on both workers
            assert daemon.call("isRunning", key=key)[0] == expect, (name, sorted(revoked))
    listed = {line.split("\t")[0] for line in daemon.ctl("key", "list").stdout.splitlines()}
    assert listed >= set(news) - revoked and not listed & revoked
    print(f"\nkey race: {len(news)} creates, {len(olds) + len(news[::3])} revokes, "
          f"{len(revoked)} revoked")
