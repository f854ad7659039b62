"""Key management with the imapd-ctl command, taking effect in the running workers at once."""
import pytest

from daemon import IMAPD_CTL

pytestmark = pytest.mark.mailhost

IMPORTED = "iworx-" + "k" * 40


def test_key_lifecycle_against_the_running_daemon(daemon):
    listing = daemon.ctl("key", "list").stdout
    assert "panel\tEMAIL" in listing and "webonly\tWEB" in listing
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
    short = daemon.ctl("key", "import", "short", "--value", "abc", check=False)
    assert short.returncode == 2 and "32" in short.stderr
    dup = daemon.ctl("key", "create", "panel", check=False)
    assert dup.returncode == 2 and "exists" in dup.stderr


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
