"""The Dovecot flavour's pure parts (sizes, mapping, the drop-in), transaction._diff, and --
when doveconf is installed -- Dovecot.validate against a copy of /etc/dovecot."""
import os
import shutil
from pathlib import Path

import pytest


from imapd_ctl.adapters.listening import UnitListening
from imapd_ctl.core.actions import MEM_MAX, MEM_MIN, UPDATE_FIELDS
from imapd_ctl.core.errors import ConfigInvalid
from imapd_ctl.adapters.flavours.dovecot import Dovecot, mapped, parse_size, parse_values
from imapd_ctl.core.settings import Settings
from imapd_ctl.operations.transaction import _diff

DOVECONF = "/usr/bin/doveconf"
SEED_VALUES = {"imap_mem_limit": 256000000, "imap_max_connections": 40,
               "imap_secure_mem_limit": 256000000, "imap_secure_max_connections": 40}


def dovecot(tmp_path, config="/etc/dovecot/dovecot.conf", dropin="/etc/dovecot/conf.d/99-imapd-ctl.conf"):
    settings = Settings(state_dir=str(tmp_path / "state"))
    settings.dovecot.config = str(config)
    settings.dovecot.dropin = str(dropin)
    return Dovecot(settings)


# --- parse_size -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, size", [
    ("250000 k", 256000000),
    ("256 M", 256 << 20),
    ("1 G", 1 << 30),
    ("1 T", 1 << 40),
    ("18446744073709551615 B", (1 << 64) - 1),
    ("0", 0),
    ("300000000 B", 300000000),
    ("  12 m\n", 12 << 20),
    ("7k", 7 << 10),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "k", "1.5 G", "-1 M", "12 X", "1 KB", "unlimited", "1 G 2"])
def test_parse_size_rejects_non_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


# --- mapped -----------------------------------------------------------------------------------

def test_mapped_sums_connections_and_takes_the_larger_memory():
    values = {"imap_mem_limit": 300000000, "imap_max_connections": 40,
              "imap_secure_mem_limit": 256000000, "imap_secure_max_connections": 15}
    assert mapped(values) == (55, 300000000)
    values = {**values, "imap_secure_mem_limit": 400000000}
    assert mapped(values) == (55, 400000000)


def test_mapped_seed_defaults():
    assert mapped(SEED_VALUES) == (80, 256000000)


# --- render / parse_values --------------------------------------------------------------------

@pytest.mark.parametrize("values", [
    SEED_VALUES,
    {"imap_mem_limit": MEM_MIN, "imap_max_connections": 1,
     "imap_secure_mem_limit": MEM_MAX, "imap_secure_max_connections": 50000},
    {"imap_mem_limit": 123456789, "imap_max_connections": 7,
     "imap_secure_mem_limit": 987654321, "imap_secure_max_connections": 3},
])
def test_render_round_trips_the_four_values(tmp_path, values):
    text = dovecot(tmp_path).render(values)
    assert isinstance(text, bytes)
    assert parse_values(text.decode()) == values
    process_limit, vsz = mapped(values)
    assert f"  process_limit = {process_limit}\n".encode() in text
    assert f"  vsz_limit = {vsz}B\n".encode() in text
    assert text.count(b"service imap {") == 1 and text.endswith(b"}\n")


def test_render_records_the_values_in_field_order(tmp_path):
    text = dovecot(tmp_path).render(SEED_VALUES).decode()
    line = next(l for l in text.splitlines() if l.startswith("# imapd-ctl-values: "))
    assert [p.split("=")[0] for p in line.split(": ", 1)[1].split()] == list(UPDATE_FIELDS)


def test_plan_owns_only_the_dropin(tmp_path):
    flavour = dovecot(tmp_path, dropin=tmp_path / "99-imapd-ctl.conf")
    assert flavour.plan(SEED_VALUES) == {str(tmp_path / "99-imapd-ctl.conf"): flavour.render(SEED_VALUES)}


@pytest.mark.parametrize("text", [
    "",
    "garbage\n",
    "service imap {\n  process_limit = 80\n}\n",
    "# imapd-ctl-values:\n",
    "# imapd-ctl-values: imap_mem_limit=1 imap_max_connections=2 imap_secure_mem_limit=3\n",
    "# imapd-ctl-values: imap_mem_limit=x imap_max_connections=2 imap_secure_mem_limit=3 "
    "imap_secure_max_connections=4\n",
    "# imapd-ctl-values: imap_mem_limit imap_max_connections=2 imap_secure_mem_limit=3 "
    "imap_secure_max_connections=4\n",
    "#imapd-ctl-values: imap_mem_limit=1 imap_max_connections=2 imap_secure_mem_limit=3 "
    "imap_secure_max_connections=4\n",
])
def test_parse_values_of_garbage_is_none(text):
    assert parse_values(text) is None


def test_parse_values_finds_the_line_anywhere():
    text = "# hand note\n# imapd-ctl-values: imap_mem_limit=1 imap_max_connections=2 " \
           "imap_secure_mem_limit=3 imap_secure_max_connections=4\nservice imap {\n}\n"
    assert parse_values(text) == {"imap_mem_limit": 1, "imap_max_connections": 2,
                                  "imap_secure_mem_limit": 3, "imap_secure_max_connections": 4}


# --- transaction._diff ------------------------------------------------------------------------

def test_diff_of_a_new_file():
    path = "/etc/dovecot/conf.d/99-imapd-ctl.conf"
    assert _diff({path: None}, {path: b"line one\nline two\n"}) == (
        "--- /dev/null\n"
        "+++ b/etc/dovecot/conf.d/99-imapd-ctl.conf\n"
        "@@ -0,0 +1,2 @@\n"
        "+line one\n"
        "+line two\n")


def test_diff_of_a_changed_and_a_removed_file():
    a, b = "/etc/x.conf", "/etc/y.conf"
    out = _diff({a: b"k = 1\n", b: b"gone\n"}, {a: b"k = 2\n", b: None})
    assert out == ("--- a/etc/x.conf\n+++ b/etc/x.conf\n@@ -1 +1 @@\n-k = 1\n+k = 2\n"
                   "--- a/etc/y.conf\n+++ /dev/null\n@@ -1 +0,0 @@\n-gone\n")


def test_diff_of_nothing_is_empty():
    assert _diff({}, {}) == ""


# --- Dovecot.validate with the real doveconf --------------------------------------------------

needs_doveconf = pytest.mark.skipif(not os.path.exists(DOVECONF) or not os.path.isdir("/etc/dovecot"),
                                    reason="doveconf and /etc/dovecot are not installed")


@pytest.fixture
def live(tmp_path):
    """A copy of /etc/dovecot standing in for the live tree; validate must never touch it."""
    conf = tmp_path / "etc-dovecot"
    try:
        shutil.copytree("/etc/dovecot", conf, symlinks=True)
    except (PermissionError, shutil.Error) as exc:
        pytest.skip(f"cannot copy /etc/dovecot: {exc}")
    (conf / "conf.d" / "99-imapd-ctl.conf").unlink(missing_ok=True)
    (conf / "local.conf").unlink(missing_ok=True)
    return conf


def snapshot(tree: Path) -> dict:
    return {str(p.relative_to(tree)): p.read_bytes() for p in sorted(tree.rglob("*")) if p.is_file()}


@pytest.fixture
def flavour(tmp_path, live):
    return dovecot(tmp_path, config=live / "dovecot.conf", dropin=live / "conf.d" / "99-imapd-ctl.conf")


@needs_doveconf
def test_validate_accepts_a_good_candidate_and_leaves_the_live_tree_alone(flavour, live, tmp_path):
    before = snapshot(live)
    values = {**SEED_VALUES, "imap_secure_max_connections": 10, "imap_secure_mem_limit": 300000000}
    flavour.validate(flavour.plan(values))
    assert snapshot(live) == before
    assert list((tmp_path / "state" / "validation").iterdir()) == []  # the candidate tree is gone


@needs_doveconf
def test_validate_names_the_live_path_of_a_broken_conf_d_file(flavour, live, tmp_path):
    broken = live / "conf.d" / "50-broken.conf"
    files = {**flavour.plan(SEED_VALUES), str(broken): b"service imap {\n  no_such_setting = 1\n}\n"}
    with pytest.raises(ConfigInvalid) as err:
        flavour.validate(files)
    message = err.value.message
    assert err.value.status == 500
    assert str(broken) in message
    assert "no_such_setting" in message
    assert str(tmp_path / "state") not in message  # not the temporary copy
    assert not broken.exists()


@needs_doveconf
def test_validate_reports_a_broken_admin_file_at_its_live_path(flavour, live, tmp_path):
    master = live / "conf.d" / "10-master.conf"
    master.write_text(master.read_text() + "\nno_such_setting = 5\n")
    with pytest.raises(ConfigInvalid) as err:
        flavour.validate(flavour.plan(SEED_VALUES))
    assert str(master) in err.value.message
    assert str(tmp_path / "state") not in err.value.message


@needs_doveconf
def test_validate_refuses_when_local_conf_overrides_the_dropin(flavour, live, tmp_path):
    (live / "local.conf").write_text("service imap {\n  process_limit = 7\n}\n")
    with pytest.raises(ConfigInvalid) as err:
        flavour.validate(flavour.plan(SEED_VALUES))
    message = err.value.message
    assert "overrides" in message
    assert "process_limit=7" in message and "process_limit=80" in message
    assert str(tmp_path / "state") not in message


@needs_doveconf
def test_validate_refuses_a_vsz_override_too(flavour, live):
    (live / "local.conf").write_text("service imap {\n  vsz_limit = 64M\n}\n")
    with pytest.raises(ConfigInvalid, match="overrides"):
        flavour.validate(flavour.plan(SEED_VALUES))


@needs_doveconf
def test_effective_reads_what_the_dropin_sets(flavour, live):
    values = {**SEED_VALUES, "imap_mem_limit": 300000000, "imap_max_connections": 5}
    (live / "conf.d" / "99-imapd-ctl.conf").write_bytes(flavour.render(values))
    assert flavour.effective() == mapped(values) == (45, 300000000)
    assert flavour.current_values() == values


@needs_doveconf
def test_current_values_without_a_dropin_split_the_effective_limits(flavour):
    process_limit, vsz = flavour.effective()
    values = flavour.current_values()
    assert values["imap_max_connections"] + values["imap_secure_max_connections"] == process_limit
    assert values["imap_mem_limit"] == values["imap_secure_mem_limit"] == min(vsz, MEM_MAX)


# --- apply / verify / checks with the shared fake systemd -----------------------------------------

def test_apply_reloads_a_running_dovecot_and_leaves_a_stopped_one(tmp_path):
    from fakes import FakeSystemd
    from imapd_ctl.core.protocols import Applied
    flavour = dovecot(tmp_path)
    sd = FakeSystemd({"dovecot.service": "active"})
    assert flavour.apply(sd, [flavour.s.dropin], ["dovecot.service"]) == Applied(reloaded=("dovecot.service",))
    assert sd.jobs == [("reload", "dovecot.service")]
    sd = FakeSystemd({"dovecot.service": "inactive"})
    assert flavour.apply(sd, [flavour.s.dropin], []) == Applied(idle=("dovecot.service",))
    assert sd.jobs == []


def test_verify_waits_for_the_running_limit_and_gives_up_when_dovecot_dies(tmp_path, monkeypatch):
    from fakes import FakeSystemd
    from imapd_ctl.adapters.flavours.dovecot import flavour as dovecot_mod
    from imapd_ctl.core.errors import ActionFailed
    from imapd_ctl.core.protocols import Applied
    flavour = dovecot(tmp_path)
    flavour.listen_timeout = 0.3
    want = mapped(SEED_VALUES)
    monkeypatch.setattr(flavour, "effective", lambda config=None: want)
    answers = iter([None, 60, want[0], want[0]])
    monkeypatch.setattr(flavour, "running_process_limit", lambda: next(answers))
    monkeypatch.setattr(dovecot_mod.ports, "unit_listens", lambda pid, port, *_: pid > 0 and port == 143)
    sd = FakeSystemd({"dovecot.service": "active"}, pids={"dovecot.service": 42})
    applied = Applied(reloaded=("dovecot.service",))
    flavour.verify(UnitListening(sd), SEED_VALUES, applied)                  # after two polls the new limit shows
    monkeypatch.setattr(flavour, "running_process_limit", lambda: 60)
    with pytest.raises(ActionFailed, match=f"shows process_limit=60 \\(expected {want[0]}\\)"):
        flavour.verify(UnitListening(sd), SEED_VALUES, applied)
    # active when verify starts, dead at its first poll (the reload took it down)
    reads = []

    def dies_after_the_first_read(unit):
        reads.append(unit)
        if len(reads) > 1:
            sd.states[unit] = "failed"

    sd.faults[("unit", "dovecot.service")] = dies_after_the_first_read
    with pytest.raises(ActionFailed, match="after the reload dovecot.service is failed, no longer serving"):
        flavour.verify(UnitListening(sd), SEED_VALUES, applied)
    monkeypatch.setattr(flavour, "effective", lambda config=None: (1, 2))
    with pytest.raises(ActionFailed, match="Dovecot's configuration shows process_limit=1 vsz_limit=2B"):
        flavour.verify(UnitListening(sd), SEED_VALUES, applied)


def test_checks_name_the_config_dir_and_doveconf(tmp_path):
    flavour = dovecot(tmp_path, config=tmp_path / "dovecot.conf", dropin=tmp_path / "conf.d" / "99-imapd-ctl.conf")
    flavour.s.doveconf = str(tmp_path / "no-doveconf")
    [writable, validator, version] = flavour.checks()
    assert (writable.what, writable.ok, writable.detail) == ("config writable", False, str(tmp_path / "conf.d"))
    assert (validator.what, validator.ok, validator.detail) == ("validator", False, str(tmp_path / "no-doveconf"))
    assert (version.what, version.ok) == ("version", False)   # no doveconf to ask
    (tmp_path / "conf.d").mkdir()
    assert flavour.checks()[0].ok is True
