"""Key management with the imapd-ctl command, taking effect in the running workers at once."""
import pytest

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
