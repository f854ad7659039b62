"""Configuration transactions (imapd_ctl.operations.transaction.change / recover) and the Controller's
lock + recovery around them, with a fake flavour owning files in tmp_path (no root, no systemd)."""
import os
import time

import pytest


from fakes import DEFAULTS, MiB, PLAIN, SECURE, FakeAudit, FakeFlavour, FakeKeyStore, FakeSystemd
from imapd_ctl.adapters.listening import UnitListening
from imapd_ctl.adapters.files import read_bytes_or_none
from imapd_ctl.adapters.journal import Journal, JournalForeign, JournalPending
from imapd_ctl.adapters.lock import TransactionLock
from imapd_ctl.core.actions import ACTIONS, UPDATE_FIELDS
from imapd_ctl.core.errors import ActionFailed, ApiError, Busy, ConfigInvalid, ConfigWriteError, Unavailable
from imapd_ctl.core.protocols import Applied
from imapd_ctl.core.settings import Settings
from imapd_ctl.operations import transaction
from imapd_ctl.daemon.wiring import build
from imapd_ctl.operations.outcomes import (
    ChangeFailed, ChangeOutcome, ChangeRefused, ChangeUnreachable, Recovery, RecoveryFailed, RecoveryUnreachable,
    Rollback)
from imapd_ctl.operations import prose

RELOADED = Applied(reloaded=("fake-imapd.service",))


def values(**kw):
    return {**DEFAULTS, **kw}


def none_request(**kw):
    return {**{k: None for k in UPDATE_FIELDS}, **kw}


def leftovers(directory):
    return sorted(n for n in os.listdir(directory) if ".imapd-ctl." in n)


@pytest.fixture
def env(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    journal = Journal(tmp_path / "state")
    flavour = FakeFlavour(etc / "10-imap.conf", etc / "20-imaps.conf", journal)
    initial = flavour.plan(DEFAULTS)
    assert initial[flavour.secure] is None
    (etc / "10-imap.conf").write_bytes(initial[flavour.main])
    env = type("Env", (), {})()
    env.etc, env.journal, env.flavour, env.systemd = etc, journal, flavour, FakeSystemd()
    env.main, env.secure = flavour.main, flavour.secure
    env.old_main = initial[flavour.main]
    return env


def change(env, requested, **kw):
    return transaction.change(env.flavour, requested, systemd=env.systemd, journal=env.journal,
                              listening=UnitListening(env.systemd), **kw)


# --- change(): success -----------------------------------------------------------------

def test_successful_change_validates_first_then_writes_applies_verifies_and_clears_journal(env):
    want = values(imap_max_connections=99)
    out = change(env, want)

    new_main = FakeFlavour.render(want, PLAIN)
    assert read_bytes_or_none(env.main) == new_main
    assert read_bytes_or_none(env.secure) is None
    assert [e[0] for e in env.flavour.events] == ["validate", "apply", "verify"]
    # validate saw the whole candidate while the live files were still the old ones,
    # and before any journal existed
    ev, live, step = env.flavour.snapshots[0]
    assert ev == "validate"
    assert live == {env.main: env.old_main, env.secure: None}
    assert step is None
    assert env.flavour.events[0][1] == {env.main: new_main, env.secure: None}
    # apply ran on the written files (journal "written"), verify after apply (journal "applied")
    assert env.flavour.snapshots[1] == ("apply", {env.main: new_main, env.secure: None}, "written")
    assert env.flavour.snapshots[2][2] == "applied"
    assert env.flavour.events[1][1] is env.systemd
    assert env.flavour.events[2][1:] == (env.systemd, want)
    assert env.flavour.verified == [RELOADED]               # verify is told what apply did
    assert env.flavour.applies == [([env.main], [])]         # changed files; no unit served
    assert env.journal.pending() is None
    assert not os.path.exists(env.journal.path)
    assert leftovers(env.etc) == []

    assert isinstance(out, ChangeOutcome)
    assert out.changed is True
    assert out.values == want
    assert out.files == (env.main,)
    assert out.applied == RELOADED
    assert out.flavour == "fake"
    assert "-imap_max_connections = 40\n" in out.diff
    assert "+imap_max_connections = 99\n" in out.diff


def test_successful_change_creates_a_new_file_and_removes_it_again(env):
    want = values(imap_secure_max_connections=7)
    out = change(env, want)
    assert read_bytes_or_none(env.secure) == FakeFlavour.render(want, SECURE)
    assert read_bytes_or_none(env.main) == env.old_main       # unchanged file not rewritten
    assert out.files == (env.secure,)
    # validate ran while the new file did not exist yet
    assert env.flavour.snapshots[0][1][env.secure] is None
    assert env.flavour.events[0][1][env.secure] == FakeFlavour.render(want, SECURE)
    assert env.flavour.current_values() == want

    # back to the defaults: the flavour plans None, the file is removed
    out = change(env, values())
    assert out.changed is True and out.files == (env.secure,)
    assert not os.path.exists(env.secure)
    assert env.flavour.count("apply") == 2 and env.flavour.count("verify") == 2
    assert env.journal.pending() is None


# --- change(): nothing to do, dry run, None inputs ---------------------------------------

@pytest.mark.parametrize("requested", [values(), none_request()], ids=["same-values", "all-none"])
def test_unchanged_values_do_not_validate_or_apply(env, requested):
    st = os.stat(env.main)
    out = change(env, requested)
    assert out.changed is False
    assert out.files == () and out.diff == "" and out.applied is None
    assert out.values == DEFAULTS
    assert env.flavour.events == []
    assert env.systemd.calls == []
    assert os.stat(env.main).st_ino == st.st_ino and os.stat(env.main).st_mtime_ns == st.st_mtime_ns
    assert not os.path.exists(env.secure)
    assert not os.path.exists(env.journal.state_dir)   # no journal was even begun


def test_dry_run_returns_a_unified_diff_and_writes_nothing(env):
    st = os.stat(env.main)
    out = change(env, values(imap_max_connections=99, imap_secure_mem_limit=512 * MiB), dry_run=True)
    assert out.changed is True
    assert out.files == tuple(sorted([env.main, env.secure]))
    assert out.applied is None
    lines = out.diff.splitlines()
    assert f"--- a{env.main}" in lines and f"+++ b{env.main}" in lines
    assert "-imap_max_connections = 40" in lines and "+imap_max_connections = 99" in lines
    assert " imap_mem_limit = 268435456" in lines        # unified-diff context line
    # the file that does not exist yet is diffed against /dev/null
    assert "--- /dev/null" in lines and f"+++ b{env.secure}" in lines
    assert f"+imap_secure_mem_limit = {512 * MiB}" in lines
    assert sum(1 for line in lines if line.startswith("@@ ")) == 2
    # nothing written, validated, applied or journaled
    assert read_bytes_or_none(env.main) == env.old_main
    assert os.stat(env.main).st_ino == st.st_ino
    assert not os.path.exists(env.secure)
    assert env.flavour.events == []
    assert env.journal.pending() is None
    assert leftovers(env.etc) == []


def test_dry_run_of_a_removal_diffs_against_dev_null(env):
    change(env, values(imap_secure_max_connections=7))
    before = env.flavour.live()
    out = change(env, none_request(imap_secure_max_connections=40), dry_run=True)
    assert f"--- a{env.secure}" in out.diff.splitlines()
    assert "+++ /dev/null" in out.diff.splitlines()
    assert env.flavour.live() == before


def test_none_inputs_keep_current_values(env):
    first = values(imap_mem_limit=64 * MiB, imap_max_connections=11,
                   imap_secure_mem_limit=128 * MiB, imap_secure_max_connections=22)
    change(env, first)
    out = change(env, none_request(imap_max_connections=12))
    assert out.values == {**first, "imap_max_connections": 12}
    assert env.flavour.current_values() == out.values
    assert out.files == (env.main,)                        # the secure file kept its bytes
    assert env.flavour.events[-1] == ("verify", env.systemd, out.values)


# --- change(): validate fails -----------------------------------------------------------

def test_validate_failure_leaves_every_file_untouched(env):
    env.flavour.validate_error = ConfigInvalid("doveconf: Error: bad vsz_limit")
    st = os.stat(env.main)
    with pytest.raises(ConfigInvalid) as ei:
        change(env, values(imap_max_connections=99, imap_secure_max_connections=7))
    assert "bad vsz_limit" in prose.message(ei.value)
    assert read_bytes_or_none(env.main) == env.old_main    # byte for byte
    assert os.stat(env.main).st_ino == st.st_ino            # not even rewritten
    assert not os.path.exists(env.secure)                   # absent file stays absent
    assert [e[0] for e in env.flavour.events] == ["validate"]
    assert env.journal.pending() is None
    assert not os.path.exists(env.journal.path)
    assert leftovers(env.etc) == []


# --- change(): apply / verify / write fail -> roll back ------------------------------------

def assert_rolled_back(env):
    assert read_bytes_or_none(env.main) == env.old_main
    assert not os.path.exists(env.secure)                   # created by the change, removed again
    assert env.flavour.current_values() == DEFAULTS
    assert env.journal.pending() is None
    assert not os.path.exists(env.journal.path)
    assert leftovers(env.etc) == []


CHANGE_BOTH = values(imap_max_connections=99, imap_secure_max_connections=7)


def test_apply_failure_restores_old_files_and_applies_them_again(env):
    boom = env.flavour.apply_errors[1] = ActionFailed("reload of fake-imapd.service failed: boom")
    with pytest.raises(ActionFailed) as ei:
        change(env, CHANGE_BOTH)
    assert type(ei.value) is ChangeFailed and ei.value.status == 500
    assert ei.value.cause is boom
    assert ei.value.rollback == Rollback(files=(env.main, env.secure), restored=(env.main, env.secure),
                                         reapplied=RELOADED, flavour="fake")
    assert ei.value.rollback.journal_kept is False
    assert "reload of fake-imapd.service failed: boom" in prose.message(ei.value)
    assert "restored" in prose.message(ei.value)
    assert env.main in prose.message(ei.value) and env.secure in prose.message(ei.value)
    assert_rolled_back(env)
    assert [e[0] for e in env.flavour.events] == ["validate", "apply", "apply"]
    # the first apply saw the new files, the re-apply saw the restored old ones
    assert env.flavour.snapshots[1][1][env.secure] is not None
    assert env.flavour.snapshots[2][1] == {env.main: env.old_main, env.secure: None}
    assert env.flavour.events[2][1] is env.systemd


@pytest.mark.parametrize("error, reason", [
    (ActionFailed("fake-imapd reports process_limit 80, expected 106"), "expected 106"),
    (RuntimeError("socket vanished"), "RuntimeError: socket vanished"),
], ids=["ActionFailed", "unexpected-exception"])
def test_verify_failure_restores_old_files_and_applies_them_again(env, error, reason):
    env.flavour.verify_error = error
    with pytest.raises(ActionFailed) as ei:
        change(env, CHANGE_BOTH)
    assert type(ei.value) is ChangeFailed and ei.value.cause is error
    rollback = ei.value.rollback
    assert rollback.restored == (env.main, env.secure) and rollback.already_held == ()
    assert rollback.reapplied == RELOADED and rollback.reapply_error is None
    assert rollback.journal_kept is False
    assert reason in prose.message(ei.value)
    assert "restored" in prose.message(ei.value)
    assert ei.value.status == 500
    assert_rolled_back(env)
    assert [e[0] for e in env.flavour.events] == ["validate", "apply", "verify", "apply"]
    assert env.flavour.snapshots[3][1] == {env.main: env.old_main, env.secure: None}


def test_unavailable_from_apply_keeps_status_503_after_rollback(env):
    gone = env.flavour.apply_errors[1] = Unavailable("cannot reach systemd over D-Bus")
    with pytest.raises(ApiError) as ei:
        change(env, CHANGE_BOTH)
    assert ei.value.status == 503
    assert isinstance(ei.value, Unavailable)
    assert type(ei.value) is ChangeUnreachable and isinstance(ei.value, ChangeFailed)
    assert ei.value.cause is gone
    assert ei.value.rollback.reapplied == RELOADED and ei.value.rollback.journal_kept is False
    assert "cannot reach systemd over D-Bus" in prose.message(ei.value)
    assert "restored" in prose.message(ei.value)
    assert_rolled_back(env)
    assert env.flavour.count("apply") == 2


def test_reapply_failing_too_is_reported_and_files_are_still_restored(env):
    first = env.flavour.apply_errors[1] = ActionFailed("reload failed: first")
    second = env.flavour.apply_errors[2] = ActionFailed("reload failed: second")
    with pytest.raises(ActionFailed) as ei:
        change(env, CHANGE_BOTH)
    assert ei.value.cause is first and ei.value.status == 500
    assert ei.value.rollback.reapply_error is second and ei.value.rollback.reapplied is None
    assert ei.value.rollback.restored == (env.main, env.secure)
    assert ei.value.rollback.journal_kept is False
    msg = prose.message(ei.value)
    assert "reload failed: first" in msg and "reload failed: second" in msg
    assert "restored" in msg and "failed too" in msg
    assert_rolled_back(env)


def test_write_failure_part_way_restores_the_files_already_written(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    journal = Journal(tmp_path / "state")
    # the second file's directory does not exist: writing it fails after the first was replaced
    flavour = FakeFlavour(etc / "10-imap.conf", tmp_path / "missing" / "20-imaps.conf", journal)
    old_main = flavour.plan(DEFAULTS)[flavour.main]
    (etc / "10-imap.conf").write_bytes(old_main)
    with pytest.raises(ActionFailed) as ei:
        transaction.change(flavour, CHANGE_BOTH, systemd=(sd := FakeSystemd()), journal=journal,
                           listening=UnitListening(sd))
    assert type(ei.value) is ChangeFailed
    assert isinstance(ei.value.cause, ConfigWriteError)
    assert ei.value.rollback.restored == (flavour.main,)
    assert ei.value.rollback.already_held == (flavour.secure,)
    assert ei.value.rollback.reapplied == RELOADED
    assert "cannot write" in prose.message(ei.value) and "restored" in prose.message(ei.value)
    assert read_bytes_or_none(flavour.main) == old_main
    assert journal.pending() is None
    # never applied the half-written config; applied the restored one once
    assert [e[0] for e in flavour.events] == ["validate", "apply"]
    assert flavour.snapshots[1][1][flavour.main] == old_main
    assert leftovers(etc) == []


# --- recover() ----------------------------------------------------------------------------

def interrupt(env, step, want=CHANGE_BOTH, txn="deadbeef0001"):
    """What a worker killed mid-change leaves behind: journal at `step`, new files written."""
    new = {p: b for p, b in env.flavour.plan(want).items() if b != read_bytes_or_none(p)}
    env.journal.begin(txn, "update", old={p: read_bytes_or_none(p) for p in new}, new=new,
                      meta={"flavour": "fake", "values": want})
    for path, data in new.items():
        with open(path, "wb") as fh:
            fh.write(data)
    if step != "begun":
        for s in ("written", "applied", "verified")[:("written", "applied", "verified").index(step) + 1]:
            env.journal.mark(s)
    assert env.journal.pending().step == step
    return new


@pytest.mark.parametrize("step", ["begun", "written", "applied"])
def test_recover_undoes_an_interrupted_change(env, step):
    interrupt(env, step)
    assert env.flavour.current_values() == CHANGE_BOTH
    done = transaction.recover(env.flavour, env.systemd, env.journal)
    assert done == Recovery("deadbeef0001", "update", step, Rollback(
        files=(env.main, env.secure), restored=(env.main, env.secure), reapplied=RELOADED, flavour="fake"))
    assert done.completed is False and done.rollback.journal_kept is False
    msg = prose.text(done)
    assert f"'{step}'" in msg and "deadbeef0001" in msg and "restored" in msg
    assert_rolled_back(env)                                  # new file removed, old bytes back
    assert [e[0] for e in env.flavour.events] == ["apply"]  # re-applied the old config once
    assert env.flavour.snapshots[0][1] == {env.main: env.old_main, env.secure: None}
    assert env.flavour.events[0][1] is env.systemd


def test_recover_after_verified_only_ends_the_journal(env):
    new = interrupt(env, "verified")
    done = transaction.recover(env.flavour, env.systemd, env.journal)
    assert done == Recovery("deadbeef0001", "update", "verified", rollback=None) and done.completed
    msg = prose.text(done)
    assert msg is not None and "verified" in msg and "deadbeef0001" in msg
    assert env.journal.pending() is None
    assert env.journal.previous().txn_id == "deadbeef0001"   # kept as the last change
    assert env.flavour.live() == new                         # the new files stay
    assert env.flavour.events == []


def test_recover_without_journal_returns_none(env):
    assert transaction.recover(env.flavour, env.systemd, env.journal) is None
    assert env.flavour.events == []
    assert read_bytes_or_none(env.main) == env.old_main


def test_recover_when_reapply_fails_still_restores_and_clears(env):
    interrupt(env, "written")
    failed = env.flavour.apply_errors[1] = ActionFailed("reload of fake-imapd.service failed")
    done = transaction.recover(env.flavour, env.systemd, env.journal)
    assert done.rollback.reapply_error is failed and done.rollback.journal_kept is False
    msg = prose.text(done)
    assert "'written'" in msg and "failed too" in msg and "reload of fake-imapd.service failed" in msg
    assert_rolled_back(env)


def test_recover_when_systemd_is_unreachable_restores_but_keeps_the_journal(env):
    # Restored files but no reload: a server still running the new configuration must not be
    # forgotten, so the journal stays until the re-apply can happen.
    interrupt(env, "applied")
    gone = env.flavour.apply_errors[1] = Unavailable("cannot reach systemd over D-Bus")
    with pytest.raises(Unavailable) as ei:
        transaction.recover(env.flavour, env.systemd, env.journal)
    assert ei.value.status == 503
    assert type(ei.value) is RecoveryUnreachable and isinstance(ei.value, RecoveryFailed)
    rollback = ei.value.recovery.rollback
    assert rollback.unreachable is gone and rollback.journal_kept is True and rollback.kept_by is gone
    assert rollback.restored == (env.main, env.secure) and ei.value.recovery.step == "applied"
    msg = prose.message(ei.value)
    assert "'applied'" in msg and "could not be re-applied yet" in msg and "cannot reach systemd" in msg
    assert read_bytes_or_none(env.main) == env.old_main and not os.path.exists(env.secure)
    assert env.journal.pending().step == "applied"
    # systemd is back: the next recovery re-applies the (already restored) old files
    done = transaction.recover(env.flavour, env.systemd, env.journal)
    assert done.rollback.restored == () and done.rollback.already_held == (env.main, env.secure)
    assert done.rollback.reapplied == RELOADED
    msg = prose.text(done)
    assert "already held the previous contents" in msg and "re-applied" in msg
    assert_rolled_back(env)
    assert env.flavour.count("apply") == 2


# --- Controller: lock + automatic recovery ------------------------------------------------

@pytest.fixture
def ctl(env, tmp_path):
    settings = Settings(state_dir=str(tmp_path / "state"), lock_timeout=0.2)
    controller = build(settings, systemd=env.systemd, flavour=env.flavour,
                       keys=FakeKeyStore(), audit=FakeAudit()).controller
    assert controller.journal.path == env.journal.path
    return controller


def update_values(**raw):
    return ACTIONS["update"].validate(raw)


def test_controller_update_runs_a_transaction(env, ctl):
    outcome = ctl.run(ACTIONS["update"], update_values(imap_max_connections=99))
    assert outcome.changed and outcome.files == (env.main,) and outcome.applied == RELOADED
    result = prose.render(outcome)
    assert "updated" in result and env.main in result and "reloaded fake-imapd.service" in result
    assert env.flavour.current_values() == values(imap_max_connections=99)
    assert env.journal.pending() is None
    diff = ctl.run(ACTIONS["update"], update_values(imap_max_connections=98, dry_run=1))
    assert "+imap_max_connections = 98" in diff
    assert env.flavour.current_values() == values(imap_max_connections=99)
    unchanged = ctl.run(ACTIONS["update"], update_values(imap_max_connections=99))
    assert unchanged.changed is False and unchanged.applied is None
    assert "unchanged" in prose.render(unchanged)


def test_controller_recovers_a_pending_journal_before_the_next_update(env, ctl):
    interrupt(env, "written", want=values(imap_mem_limit=64 * MiB, imap_secure_max_connections=7))
    # only one input given: the others must be taken from the RESTORED files, not the
    # interrupted change's
    result = prose.render(ctl.run(ACTIONS["update"], update_values(imap_max_connections=55)))
    assert "updated" in result
    assert env.flavour.current_values() == values(imap_max_connections=55)
    assert not os.path.exists(env.secure)
    assert env.journal.pending() is None
    # recovery re-applied the old config first, then the update applied + verified
    assert [e[0] for e in env.flavour.events] == ["apply", "validate", "apply", "verify"]
    assert env.flavour.snapshots[0][1] == {env.main: env.old_main, env.secure: None}


def test_controller_recovers_before_a_service_action_too(env, ctl):
    interrupt(env, "applied")
    ctl.run(ACTIONS["stop"], ACTIONS["stop"].validate({}))
    assert_rolled_back(env)
    assert ("stop", "fake-imapd.service") in env.systemd.calls


def test_read_only_action_neither_locks_nor_recovers(env, ctl):
    new = interrupt(env, "written")
    other = TransactionLock(ctl.settings.lock_path)
    with other.hold(timeout=0):
        assert ctl.run(ACTIONS["queryUpdate"], {}) == CHANGE_BOTH
    assert env.journal.pending() is not None
    assert env.flavour.live() == {**{env.main: env.old_main, env.secure: None}, **new}


@pytest.mark.parametrize("action, raw", [
    ("update", {"imap_max_connections": 99}),
    ("stop", {}),
], ids=["update", "stop"])
def test_mutating_action_while_the_lock_is_held_raises_busy(env, ctl, action, raw):
    new = interrupt(env, "written")
    other = TransactionLock(ctl.settings.lock_path)
    other.acquire(timeout=0)
    try:
        start = time.monotonic()
        with pytest.raises(Busy) as ei:
            ctl.run(ACTIONS[action], ACTIONS[action].validate(raw))
        waited = time.monotonic() - start
    finally:
        other.release()
    assert ei.value.status == 409
    assert 0.15 <= waited < 1.5                              # waited lock_timeout, then gave up
    # nothing happened: no recovery, no change, no service call
    assert env.flavour.events == []
    assert env.systemd.calls == []
    assert env.journal.pending().step == "written"
    assert env.flavour.live() == {**{env.main: env.old_main, env.secure: None}, **new}
    # once the lock is free the same call goes through (recovering first)
    ctl.run(ACTIONS[action], ACTIONS[action].validate(raw))
    assert env.journal.pending() is None


# --- faults: crash points, refusing before the live path, units the change stopped ----------------

class Crashed(BaseException):
    """What os.kill(self, SIGKILL) would have done; BaseException so nothing catches it."""


@pytest.mark.parametrize("step", Journal.STEPS)
def test_crash_point_kills_the_process_right_after_the_journal_records_the_step(env, monkeypatch, step):
    killed = []

    def fake_kill(pid, sig):
        killed.append((pid, sig, env.journal.pending().step, env.flavour.live()))
        raise Crashed()

    monkeypatch.setattr(transaction.os, "kill", fake_kill)
    monkeypatch.setenv(transaction.CRASH_ENV, step)
    with pytest.raises(Crashed):
        change(env, CHANGE_BOTH)
    [(pid, sig, journaled, live)] = killed
    assert (pid, sig, journaled) == (os.getpid(), transaction.signal.SIGKILL, step)
    new = {p: b for p, b in env.flavour.plan(CHANGE_BOTH).items()}
    assert live == ({env.main: env.old_main, env.secure: None} if step == "begun" else new)
    assert env.journal.pending().step == step
    # what the next start (or the next mutating call) does with it
    monkeypatch.delenv(transaction.CRASH_ENV)
    done = transaction.recover(env.flavour, env.systemd, env.journal)
    msg = prose.text(done)
    assert env.journal.pending() is None
    if step == "verified":
        assert "completed" in msg and env.flavour.live() == new
    else:
        assert "rolled back" in msg
        assert_rolled_back(env)
        # the change's own apply (from "applied" on) plus recovery's re-apply, which is skipped
        # when the process died before anything reached the live files
        assert env.flavour.count("apply") == {"begun": 0, "written": 1, "applied": 2}[step]


def test_crash_point_is_read_at_every_call_and_ignores_other_values(env, monkeypatch):
    monkeypatch.setattr(transaction.os, "kill", lambda *a: pytest.fail("killed"))
    monkeypatch.setenv(transaction.CRASH_ENV, "nonsense")
    change(env, values(imap_max_connections=99))
    monkeypatch.delenv(transaction.CRASH_ENV)
    change(env, values(imap_max_connections=98))
    assert env.flavour.current_values() == values(imap_max_connections=98)


def test_systemd_unreachable_refuses_before_the_journal_or_the_files(env):
    systemd = FakeSystemd({"fake-imapd.service": "active"})
    systemd.unreachable = True
    st = os.stat(env.main)
    with pytest.raises(Unavailable) as ei:
        transaction.change(env.flavour, CHANGE_BOTH, systemd=systemd, journal=env.journal,
                           listening=UnitListening(systemd))
    assert type(ei.value) is Unavailable                  # the pre-check's own error: no rollback
    assert ei.value.status == 503 and "rolled back" not in prose.message(ei.value)
    assert os.stat(env.main).st_ino == st.st_ino and read_bytes_or_none(env.main) == env.old_main
    assert not os.path.exists(env.secure)
    assert env.journal.pending() is None
    assert [e[0] for e in env.flavour.events] == ["validate"]


def test_journal_that_cannot_be_written_refuses_the_change(env, monkeypatch):

    def full(_entry):
        raise ConfigWriteError(f"cannot write {env.journal.path}: No space left on device")

    monkeypatch.setattr(env.journal, "_save", full)
    st = os.stat(env.main)
    with pytest.raises(ConfigWriteError) as ei:
        change(env, CHANGE_BOTH)
    assert type(ei.value) is ChangeRefused and ei.value.status == 500
    assert ei.value.cause.message == f"cannot write {env.journal.path}: No space left on device"
    assert "No space left on device" in prose.message(ei.value)
    assert "refused before touching the live configuration" in prose.message(ei.value)
    assert os.stat(env.main).st_ino == st.st_ino and read_bytes_or_none(env.main) == env.old_main
    assert not os.path.exists(env.secure)
    assert [e[0] for e in env.flavour.events] == ["validate"]


def test_write_failure_before_any_file_changed_is_not_reapplied(env, monkeypatch):

    def full(path, data, **kw):
        raise ConfigWriteError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(transaction, "atomic_write", full)
    with pytest.raises(ActionFailed) as ei:
        change(env, values(imap_max_connections=99))
    assert ei.value.rollback == Rollback(files=(env.main,), modified=False, flavour="fake")
    assert ei.value.rollback.journal_kept is False
    assert "No space left on device" in prose.message(ei.value)
    assert "rolled back: the live configuration had not been modified" in prose.message(ei.value)
    assert_rolled_back(env)
    assert [e[0] for e in env.flavour.events] == ["validate"]      # no reload of an unchanged config


def test_a_change_that_stops_a_serving_unit_is_rolled_back_and_the_unit_started(env):
    systemd = FakeSystemd({"fake-imapd.service": "active"})
    real_apply = env.flavour.apply

    def apply_and_die(sd, changed, serving):
        out = real_apply(sd, changed, serving)
        if env.flavour.apply_count == 1:
            systemd.states["fake-imapd.service"] = "failed"   # the reload took the server down
        return out

    env.flavour.apply = apply_and_die
    with pytest.raises(ActionFailed) as ei:
        transaction.change(env.flavour, CHANGE_BOTH, systemd=systemd, journal=env.journal,
                           listening=UnitListening(systemd))
    assert isinstance(ei.value.cause, ActionFailed)
    assert ei.value.rollback.started == ("fake-imapd.service",) and ei.value.rollback.start_error is None
    assert env.flavour.applies[0][1] == ["fake-imapd.service"]   # apply was told what served
    assert env.flavour.applies[1][1] == ["fake-imapd.service"]   # and so was the undo's re-apply
    msg = prose.message(ei.value)
    assert "fake-imapd.service was running before the change and is failed after applying it" in msg
    assert "rolled back" in msg and "fake-imapd.service had stopped and was started again" in msg
    assert_rolled_back(env)
    assert ("start", "fake-imapd.service") in systemd.calls
    assert systemd.states["fake-imapd.service"] == "active"


def test_recovery_starts_a_unit_that_served_before_the_crash(env):
    interrupt(env, "applied")
    entry = env.journal.pending()
    entry.meta["serving"] = ["fake-imapd.service"]
    env.journal._save(entry)
    systemd = FakeSystemd({"fake-imapd.service": "failed"})
    done = transaction.recover(env.flavour, systemd, env.journal)
    assert done.rollback.started == ("fake-imapd.service",)
    msg = prose.text(done)
    assert "'applied'" in msg and "was started again" in msg
    assert_rolled_back(env)
    assert {u for u, state in systemd.states.items() if state == "active"} == {"fake-imapd.service"}


def test_restore_that_cannot_write_keeps_the_journal_for_the_next_recovery(env, monkeypatch):
    interrupt(env, "written")
    real = env.journal.restore
    monkeypatch.setattr(env.journal, "restore",
                        lambda entry: (_ for _ in ()).throw(ConfigWriteError("cannot write x: No space left on device")))
    with pytest.raises(ActionFailed) as ei:
        transaction.recover(env.flavour, env.systemd, env.journal)
    assert type(ei.value) is RecoveryFailed and ei.value.status == 500
    assert isinstance(ei.value.recovery.rollback.restore_error, ConfigWriteError)
    assert ei.value.recovery.rollback.journal_kept is True
    assert "could NOT be rolled back yet" in prose.message(ei.value) and "No space left on device" in prose.message(ei.value)
    assert env.journal.pending() is not None
    monkeypatch.setattr(env.journal, "restore", real)
    assert "rolled back" in prose.text(transaction.recover(env.flavour, env.systemd, env.journal))
    assert_rolled_back(env)


def test_systemd_lost_during_the_change_keeps_the_journal_until_it_can_reapply(env, ctl):
    # reachable for the pre-check, gone at apply and at the rollback's re-apply
    env.flavour.apply_errors[1] = Unavailable("cannot reach systemd over D-Bus")
    env.flavour.apply_errors[2] = Unavailable("cannot reach systemd over D-Bus")
    with pytest.raises(Unavailable) as ei:
        change(env, CHANGE_BOTH)
    assert ei.value.rollback.journal_kept is True and ei.value.rollback.unreachable is not None
    assert ei.value.status == 503 and "could not be re-applied yet" in prose.message(ei.value)
    assert read_bytes_or_none(env.main) == env.old_main and not os.path.exists(env.secure)
    assert env.journal.pending() is not None
    # the next mutating call re-applies the restored files first, then does its own work
    ctl.run(ACTIONS["stop"], ACTIONS["stop"].validate({}))
    assert_rolled_back(env)
    assert env.flavour.count("apply") == 3 and ("stop", "fake-imapd.service") in env.systemd.calls


# --- prose: the sentences made from the structures (operations/prose.py) --------------------------

A, B = "/etc/courier/imapd", "/etc/courier/imapd-ssl"
BOTH_UNITS = ("courier-imap.service", "courier-imap-ssl.service")
LATER = ("it stays journaled and is finished by the next change or service action, or when "
         "imapd-ctl starts")


def test_prose_of_an_update_reply():
    done = ChangeOutcome(changed=True, values=DEFAULTS, files=("/etc/dovecot/conf.d/99-imapd-ctl.conf",),
                         applied=Applied(reloaded=("dovecot.service",)), flavour="dovecot")
    assert prose.render(done) == ("IMAP4 server settings updated (/etc/dovecot/conf.d/99-imapd-ctl.conf); "
                                  "reloaded dovecot.service")
    idle = ChangeOutcome(changed=True, values=DEFAULTS, files=(A, B), applied=Applied(idle=("dovecot.service",)))
    assert prose.render(idle) == (f"IMAP4 server settings updated ({A}, {B}); dovecot.service is not running; "
                                  f"the new limits apply when it starts")
    assert prose.render(ChangeOutcome(changed=False, values=DEFAULTS)) == \
        "IMAP4 server settings unchanged; nothing was reloaded"
    # plain JSON values pass unchanged; outcomes inside a cascade's list of dicts are rendered
    assert prose.render("--- a\n+++ b\n") == "--- a\n+++ b\n"
    assert prose.render({"a": 1, "b": [True, None]}) == {"a": 1, "b": [True, None]}
    assert prose.render([{"id": "n1", "status": 0, "payload": done}]) == [
        {"id": "n1", "status": 0, "payload": prose.render(done)}]
    assert prose.payload_of(done) == prose.render(done)


def test_prose_of_rollbacks():
    rolled = Rollback(files=(A, B), restored=(A, B), reapplied=Applied(restarted=BOTH_UNITS), flavour="courier")
    assert prose.rollback(rolled) == (f"the change was rolled back: the previous configuration was restored ({A}, {B}) "
                                      f"and re-applied (restarted courier-imap.service, courier-imap-ssl.service)")
    held = Rollback(files=(A, B), already_held=(A, B), reapplied=Applied(restarted=BOTH_UNITS))
    assert prose.rollback(held).startswith(
        f"the change was rolled back: the live configuration already held the previous contents ({A}, {B}) "
        f"and re-applied (")
    assert prose.rollback(Rollback(files=(A,), modified=False)) == \
        "the change was rolled back: the live configuration had not been modified"
    refused = ActionFailed("reload failed: second")
    assert prose.rollback(Rollback(files=(A,), restored=(A,), reapply_error=refused)) == \
        f"the change was rolled back: the previous configuration was restored ({A}) but applying it failed too: " \
        f"reload failed: second"
    gone = Unavailable("systemd is unreachable")
    kept = Rollback(files=(A,), restored=(A,), unreachable=gone)
    assert kept.journal_kept is True and kept.kept_by is gone
    assert prose.rollback(kept) == (f"the change was rolled back: the previous configuration was restored ({A}) "
                                    f"but could not be re-applied yet: systemd is unreachable; {LATER}")
    full = Rollback(files=(A,), restore_error=ConfigWriteError(f"cannot write {A}: No space left on device"))
    assert full.journal_kept is True
    assert prose.rollback(full) == (f"the change could NOT be rolled back yet: cannot write {A}: No space left on "
                                    f"device; {LATER}")
    started = Rollback(files=(A,), restored=(A,), reapplied=Applied(reloaded=("dovecot.service",)),
                       started=("dovecot.service",))
    assert prose.rollback(started).endswith(
        "and re-applied (reloaded dovecot.service); dovecot.service had stopped and was started again")
    two = Rollback(files=(A,), restored=(A,), reapplied=Applied(), started=BOTH_UNITS, flavour="courier")
    assert prose.rollback(two).endswith(
        "re-applied (no Courier unit reads the changed files); courier-imap.service, courier-imap-ssl.service "
        "had stopped and were started again")
    no_start = Rollback(files=(A,), restored=(A,), reapplied=Applied(), start_failed=("dovecot.service",),
                        start_error=ActionFailed("start dovecot.service failed"))
    assert prose.rollback(no_start).endswith("; starting dovecot.service again failed: start dovecot.service failed")


def test_prose_of_errors_and_recoveries():
    boom = ActionFailed("reload of dovecot.service failed: boom")
    rolled = Rollback(files=(A,), restored=(A,), reapplied=Applied(reloaded=("dovecot.service",)))
    failed = ChangeFailed.of(boom, rolled)
    assert type(failed) is ChangeFailed and failed.status == 500
    assert prose.message(failed) == (
        f"reload of dovecot.service failed: boom; the change was rolled back: the previous configuration was "
        f"restored ({A}) and re-applied (reloaded dovecot.service)")
    assert prose.payload_of(failed) == prose.message(failed)
    assert failed.message == "ChangeFailed"       # no words below the edge
    bug = ChangeFailed.of(RuntimeError("socket vanished"), rolled)
    assert prose.message(bug).startswith("RuntimeError: socket vanished; the change was rolled back")
    gone = ChangeFailed.of(Unavailable("systemd is unreachable"), rolled)
    assert type(gone) is ChangeUnreachable and gone.status == 503 and isinstance(gone, Unavailable)
    refused = ChangeRefused(ConfigWriteError("cannot write /var/lib/imapd-ctl/journal.json: No space left on device"))
    assert refused.status == 500 and prose.message(refused) == (
        "cannot write /var/lib/imapd-ctl/journal.json: No space left on device; the change was refused before "
        "touching the live configuration (the journal that makes it undoable could not be written)")
    verified = Recovery("0123456789ab", "update", "verified", None)
    assert prose.text(verified) == ("change 0123456789ab (update) had been verified before the crash; completed it "
                             "(the new configuration stays)")
    undone = Recovery("0123456789ab", "update", "written", rolled)
    assert prose.render(undone) == (f"change 0123456789ab (update) was interrupted at step 'written'; the change "
                                    f"was rolled back: the previous configuration was restored ({A}) and re-applied "
                                    f"(reloaded dovecot.service)")
    kept = Recovery("0123456789ab", "update", "applied",
                    Rollback(files=(A,), already_held=(A,), unreachable=Unavailable("bus gone")))
    stuck = RecoveryFailed.of(kept)
    assert type(stuck) is RecoveryUnreachable and stuck.status == 503
    assert prose.message(stuck) == (f"recovery: change 0123456789ab (update) was interrupted at step 'applied'; the change "
                             f"was rolled back: the live configuration already held the previous contents ({A}) but "
                             f"could not be re-applied yet: bus gone; {LATER}")
    disk = RecoveryFailed.of(Recovery("x", "update", "written",
                                      Rollback(files=(A,), restore_error=ConfigWriteError("disk full"))))
    assert type(disk) is RecoveryFailed and disk.status == 500


def test_journal_begin_while_a_change_is_pending_is_a_typed_error(env):
    interrupt(env, "written")
    with pytest.raises(JournalPending) as ei:
        change(env, none_request(imap_max_connections=12))
    assert ei.value.status == 500 and env.journal.path in prose.message(ei.value)
    assert env.journal.pending().txn_id == "deadbeef0001"


# --- core.waiting.wait_until (every bounded poll: settle, listen, verify, jobs, the lock) ---------

def test_wait_until_returns_the_first_truthy_answer_or_the_last_falsy_one():
    from imapd_ctl.core.waiting import wait_until
    answers = iter([0, None, "ready"])
    assert wait_until(lambda: next(answers), 5, 0.001) == "ready"
    calls = []
    start = time.monotonic()
    assert wait_until(lambda: calls.append(1) or [], 0.1, 0.02) == []
    assert 0.1 <= time.monotonic() - start < 0.5 and 3 <= len(calls) <= 7
    calls.clear()
    assert wait_until(lambda: calls.append(1), 0, 1) is None and calls == [1]   # timeout 0: asked once

    def gives_up():
        raise ActionFailed("dead")

    with pytest.raises(ActionFailed):
        wait_until(gives_up, 5, 0.01)


def test_still_serving_waits_for_activating_units_and_fails_fast_on_failed_ones(monkeypatch):
    monkeypatch.setattr(transaction, "SETTLE_SECONDS", 0.2)
    sd = FakeSystemd({"a.service": "activating", "b.service": "active"})
    sd.faults[("active_state", "a.service")] = lambda unit: (
        sd.states.update({unit: "active"}) if len(sd.calls) > 3 else None)
    transaction._still_serving(sd, ["a.service", "b.service"])
    sd = FakeSystemd({"a.service": "activating"})
    with pytest.raises(ActionFailed, match="a.service was running before the change and is activating after"):
        transaction._still_serving(sd, ["a.service"])
    sd = FakeSystemd({"a.service": "active", "b.service": "inactive"})
    start = time.monotonic()
    with pytest.raises(ActionFailed, match="b.service was running before the change and is inactive after"):
        transaction._still_serving(sd, ["a.service", "b.service"])
    assert time.monotonic() - start < 0.1


def test_a_journal_naming_a_file_the_flavour_does_not_write_is_refused_and_nothing_written(env, tmp_path):
    """Root's `imapd-ctl recover` writes what a journal says: a journal the daemon's user forged
    (naming /etc/<anything>, with chosen bytes) must not become a root write."""
    victim = tmp_path / "passwd"
    victim.write_bytes(b"root:x:0:0\n")
    env.journal.begin("f0f0", "update", old={str(victim): b"owned\n", env.main: env.old_main},
                      new={str(victim): b"x", env.main: env.old_main}, meta={})
    with pytest.raises(JournalForeign, match=f"it names {victim}, which fake does not have imapd-ctl write"):
        transaction.recover(env.flavour, env.systemd, env.journal)
    assert victim.read_bytes() == b"root:x:0:0\n" and env.journal.pending() is not None
    assert env.flavour.events == []


@pytest.mark.parametrize("spoil", ["mode", "link"])
def test_a_journal_imapd_ctl_did_not_make_is_refused(env, tmp_path, spoil):
    interrupt(env, "written")
    path = env.journal.path
    if spoil == "mode":
        os.chmod(path, 0o644)
    else:
        real = tmp_path / "elsewhere.json"
        os.replace(path, real)
        os.symlink(real, path)
    with pytest.raises(JournalForeign, match="not trusted"):
        transaction.recover(env.flavour, env.systemd, env.journal)
    assert env.flavour.events == []
