"""Dovecot 2.3 and 2.4 read the same way: what each version's doveconf/doveadm prints (the forms
recorded from 2.3.19.1 and 2.4.1 in ../shared/notes/dovecot-2.4.md and on the test hosts), where
the drop-in is read (.layout), and -- with this machine's doveconf -- the refusals naming the file
that overrides the drop-in or the file that lacks the conf.d include. The same refusals on a real
Dovecot 2.4 are in tests/e2e/test_e2e_dovecot24.py."""
import shutil

import pytest

from imapd_ctl.adapters.flavours.dovecot import layout, readings
from imapd_ctl.core.errors import ConfigInvalid
from test_dovecot_render import SEED_VALUES, flavour, live, needs_doveconf, snapshot  # noqa: F401

U = readings.UNLIMITED


@pytest.mark.parametrize("text, size", [
    ("18446744073709551615 B", None),   # 2.3: unset
    ("", None),                          # 2.4: unset
    ("\n", None),
    ("256 M", 256 << 20),                # 2.3 normalised, 2.4 built-in default
    ("300M", 300 << 20),                 # 2.4 as the admin wrote it
    ("268435456B", 268435456),
    ("300000000 B", 300000000),
    ("unlimited", U),                    # 2.4
    ("0", U),                            # 2.3's unlimited
])
def test_read_size_of_both_versions(text, size):
    assert readings.read_size(text) == size


@pytest.mark.parametrize("text, count", [("1024", 1024), ("", None), ("0", None), (" 7\n", 7)])
def test_read_count_of_both_versions(text, count):
    assert readings.read_count(text) == count


@pytest.mark.parametrize("text", ["1.5 G", "lots", "12 X"])
def test_read_size_rejects_what_no_version_prints(text):
    with pytest.raises(ValueError, match="not a Dovecot size"):
        readings.read_size(text)


@pytest.mark.parametrize("text, served", [
    (" imap\n", {"imap"}),                         # 2.3
    ("imap pop3 lmtp\n", {"imap", "pop3", "lmtp"}),
    ("imap = yes\n", {"imap"}),                    # 2.4
    ("imap = no\n", set()),                        # 2.4, IMAP switched off: not "imap"
    ("imap = no\npop3 = yes\n", {"pop3"}),
    ("", set()),
])
def test_protocols_of_both_versions(text, served):
    assert readings.protocols(text) == served


@pytest.mark.parametrize("first, version", [
    ("# 2.3.19.1 (9b53102964): /etc/dovecot/dovecot.conf\n", (2, 3)),
    ("# 2.4.1-4 (7d8c0e5759): /etc/dovecot/dovecot.conf\n", (2, 4)),
    ("protocols = imap\n", None),
])
def test_version_from_doveconf_n(first, version):
    assert readings.version(first) == version


# --- .layout without doveconf ----------------------------------------------------------------

def tree(tmp_path, main: str, files: dict[str, str]):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "dovecot.conf").write_text(main)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path / "dovecot.conf", tmp_path / "conf.d" / "99-imapd-ctl.conf"


def test_read_order_follows_includes_in_dovecot_order(tmp_path):
    config, dropin = tree(tmp_path, "!include conf.d/*.conf\n!include_try local.conf\n",
                          {"conf.d/10-a.conf": "", "conf.d/99-local.conf": "", "conf.d/99-imapd-ctl.conf": "",
                           "local.conf": ""})
    names = [p.name for p in layout.read_order(config)]
    assert names == ["dovecot.conf", "10-a.conf", "99-imapd-ctl.conf", "99-local.conf", "local.conf"]


def test_later_files_are_those_after_the_dropin_that_set_limits(tmp_path):
    config, dropin = tree(tmp_path, "#service imap { process_limit = 1 }\n!include conf.d/*.conf\n"
                          "!include_try local.conf\n",
                          {"conf.d/10-master.conf": "service imap {\n  process_limit = 5\n}\n",
                           "conf.d/99-imapd-ctl.conf": "", "conf.d/99-local.conf": "service imap {\n vsz_limit = 1G\n}\n",
                           "local.conf": "default_vsz_limit = 1G\n"})
    assert layout.later_files(config, dropin) == [tmp_path / "conf.d" / "99-local.conf"]


@pytest.mark.parametrize("main, line", [
    ("protocols = imap\n", "!include conf.d/*.conf"),
    ("!include other.d/*.conf\n", "!include conf.d/*.conf"),
])
def test_include_hint_names_the_file_and_the_line(tmp_path, main, line):
    config, dropin = tree(tmp_path, main, {"conf.d/99-imapd-ctl.conf": ""})
    hint = layout.include_hint(config, dropin)
    assert f"add the line `{line}` to {config}" in hint


def test_include_hint_accepts_nested_and_absolute_includes(tmp_path):
    config, dropin = tree(tmp_path, "!include main.d/*.conf\n", {"conf.d/99-imapd-ctl.conf": ""})
    (tmp_path / "main.d").mkdir()
    (tmp_path / "main.d" / "all.conf").write_text("!include /etc/dovecot/conf.d/*.conf\n")
    assert layout.include_hint(config, dropin) is not None                   # /etc/dovecot is elsewhere
    assert layout.include_hint(config, dropin, ("/etc/dovecot", str(tmp_path))) is None


# --- the refusals with this machine's doveconf -------------------------------------------------

@needs_doveconf
@pytest.mark.parametrize("where", ["local.conf", "conf.d/99-local.conf"])
def test_an_override_is_refused_naming_its_file(flavour, live, tmp_path, where):  # noqa: F811
    (live / where).write_text("service imap {\n  vsz_limit = 64M\n}\n")
    (live / "conf.d" / "50-harmless.conf").write_text("service imap {\n  process_limit = 9\n}\n")
    before = snapshot(live)
    with pytest.raises(ConfigInvalid) as err:
        flavour.validate(flavour.plan(SEED_VALUES))
    message = err.value.message
    assert f"overrides imapd-ctl's settings in {live}/conf.d/99-imapd-ctl.conf: {live}/{where} " in message
    assert "50-harmless" not in message and str(tmp_path / "state") not in message
    assert "nothing was changed" in message
    assert snapshot(live) == before


@needs_doveconf
def test_a_config_without_the_conf_d_include_is_refused_saying_what_to_add(flavour, live):  # noqa: F811
    main = live / "dovecot.conf"
    main.write_text("\n".join(l for l in main.read_text().splitlines() if "conf.d/*.conf" not in l) + "\n")
    before = snapshot(live)
    with pytest.raises(ConfigInvalid) as err:
        flavour.validate(flavour.plan(SEED_VALUES))
    assert f"add the line `!include conf.d/*.conf` to {main}" in err.value.message
    assert snapshot(live) == before


@needs_doveconf
def test_version_of_this_machines_dovecot(flavour):  # noqa: F811
    assert flavour.version() in ((2, 3), (2, 4))
    assert shutil.which("doveconf")


@needs_doveconf
def test_a_symlinked_override_is_named_and_its_target_never_written(flavour, live, tmp_path):  # noqa: F811
    target = tmp_path / "elsewhere.conf"
    target.write_text("service imap {\n  process_limit = 7\n}\n")
    (live / "conf.d" / "99-local.conf").symlink_to(target)
    with pytest.raises(ConfigInvalid, match=f"{live}/conf.d/99-local.conf "):
        flavour.validate(flavour.plan(SEED_VALUES))
    assert target.read_text() == "service imap {\n  process_limit = 7\n}\n"
    assert (live / "conf.d" / "99-local.conf").is_symlink()
