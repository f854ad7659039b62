"""A start or restart that fails with the last update's configuration goes back to the one
before it (operations.transaction.failed_start), through the real API, wiring and journal, with
systemd and the IMAP server faked (tests/unit/conftest.py)."""
import json
import os

from fakes import FakeFlavour

from imapd_ctl.adapters.files import read_bytes_or_none
from imapd_ctl.core.errors import ActionFailed

UNIT = FakeFlavour.primary_unit


def envelope(reply):
    return json.loads(reply.data)


def _update(env, n):
    body = envelope(env.call("update", json={"imap_max_connections": n}))
    assert body["status"] == 0, body


def _refuses(env, bad):
    """systemd's start and restart fail (the unit ends failed) while `bad(main file's bytes)`."""
    def job(unit):
        if bad(read_bytes_or_none(env.flavour.main) or b""):
            env.systemd.states[unit] = "failed"
            raise ActionFailed(f"restart {unit} failed: the job ended 'failed'")
    env.systemd.faults["restart"] = env.systemd.faults["start"] = job


def test_a_restart_that_fails_with_the_last_update_goes_back_to_the_configuration_before_it(env):
    before = env.flavour.current_values()
    _update(env, 77)
    previous = json.loads(open(os.path.join(env.settings.state_dir, "previous.json")).read())
    _refuses(env, lambda main: b"= 77" in main)
    body = envelope(env.call("restart"))
    assert body["status"] == 500, body
    text = body["payload"]
    assert text.startswith(f"restart failed; the last update ({previous['txn_id']}, "), text
    assert f"{env.flavour.main} holds the configuration from before it and {UNIT} serves with it" in text
    assert f"imap_max_connections={before['imap_max_connections']}" in text
    assert text.endswith(f"What failed: restart {UNIT} failed: the job ended 'failed'"), text
    assert env.flavour.current_values() == before
    assert env.systemd.states[UNIT] == "active"
    assert os.listdir(env.settings.state_dir).count("journal.json") == 0
    assert "previous.json" not in os.listdir(env.settings.state_dir)     # used once
    assert envelope(env.call("restart")) == {"status": 0, "payload": f"restarted {UNIT}"}
    assert envelope(env.call("isRunning")) == {"status": 0, "payload": True}


def test_a_start_goes_back_too(env):
    before = env.flavour.current_values()
    _update(env, 77)
    envelope(env.call("stop"))
    _refuses(env, lambda main: b"= 77" in main)
    body = envelope(env.call("start"))
    assert body["status"] == 500 and body["payload"].startswith("start failed; the last update ("), body
    assert env.flavour.current_values() == before and env.systemd.states[UNIT] == "active"


def test_when_the_previous_configuration_fails_too_the_update_is_put_back(env):
    _update(env, 77)
    updated = open(env.flavour.main, "rb").read()
    _refuses(env, lambda main: True)
    body = envelope(env.call("restart"))
    assert body["status"] == 500, body
    assert "going back to the configuration before the last update (" in body["payload"]
    assert "did not help" in body["payload"] and f"{UNIT} is not running" in body["payload"]
    assert open(env.flavour.main, "rb").read() == updated        # the host as it was found
    assert "journal.json" not in os.listdir(env.settings.state_dir)


def test_nothing_is_put_back_without_an_update_on_record_or_after_the_files_changed(env):
    _refuses(env, lambda main: True)
    body = envelope(env.call("restart"))
    assert body == {"status": 500, "payload": f"restart {UNIT} failed: the job ended 'failed'"}
    env.systemd.faults.clear()
    env.systemd.states[UNIT] = "active"
    _update(env, 77)
    with open(env.flavour.main, "ab") as fh:
        fh.write(b"imap_mem_limit = 1\n")                   # someone edited it since
    edited = open(env.flavour.main, "rb").read()
    _refuses(env, lambda main: True)
    body = envelope(env.call("restart"))
    assert body["status"] == 500
    assert ("; the configuration before the last update was not put back: the files were changed since "
            "that update (") in body["payload"], body
    assert open(env.flavour.main, "rb").read() == edited


def test_a_kept_record_imapd_ctl_did_not_write_as_it_does_is_not_used(env):
    _update(env, 77)
    updated = open(env.flavour.main, "rb").read()
    os.chmod(os.path.join(env.settings.state_dir, "previous.json"), 0o644)
    _refuses(env, lambda main: True)
    body = envelope(env.call("restart"))
    assert body["status"] == 500
    assert "; the configuration before the last update was not put back: journal " in body["payload"], body
    assert "previous.json is not trusted: its mode is 0644, not 0600" in body["payload"], body
    assert open(env.flavour.main, "rb").read() == updated
