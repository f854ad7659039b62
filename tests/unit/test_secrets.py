"""Secrets apart from settings: peer keys in key files (or inline in a private settings file),
every file holding secrets owner-only, or `serve` refuses to start with exit 78 naming the
file and the mode to set (adapters/secrets.py, daemon/serve.py)."""
import os

import pytest

from imapd_ctl.adapters import secrets
from imapd_ctl.core import settings
from imapd_ctl.daemon import serve

NODE = '[[nodes]]\nid = "node2"\nurl = "https://198.18.0.2:8443"\nca = "/etc/imapd-ctl/ca.pem"\n'


def load(tmp_path, text, mode=0o644):
    path = tmp_path / "imapd-ctl.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n' + text)
    os.chmod(path, mode)
    return settings.load(str(path))


def key_file(tmp_path, mode, name="node2.key"):
    path = tmp_path / name
    path.write_text("ictl_" + "k" * 43 + "\n")
    os.chmod(path, mode)
    return path


def test_key_file_is_parsed_and_named_as_a_secret(tmp_path):
    path = key_file(tmp_path, 0o600)
    s = load(tmp_path, NODE + f'key_file = "{path}"\n')
    assert [(n.id, n.key, n.key_file) for n in s.nodes] == [("node2", "", str(path))]
    assert s.secret_files() == [settings.SecretFile(str(path), "the key of node node2 (key_file)")]
    assert secrets.problems(s.secret_files()) == []
    assert secrets.read_key(str(path)) == "ictl_" + "k" * 43


@pytest.mark.parametrize("extra, message", [
    ('key = "k"\nkey_file = "/etc/imapd-ctl/nodes/node2.key"\n', "one of key_file"),
    ("", "one of key_file"),
    ('key_file = "nodes/node2.key"\n', "key_file must be an absolute path"),
    ('key_file = ""\n', "non-empty strings"),
])
def test_a_node_needs_exactly_one_of_key_and_key_file(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        load(tmp_path, NODE + extra)


def test_inline_keys_make_the_settings_file_a_secret(tmp_path):
    s = load(tmp_path, 'tls_key = "/etc/imapd-ctl/tls/key.pem"\n' + NODE + 'key = "k"\n')
    assert [f.path for f in s.secret_files()] == ["/etc/imapd-ctl/tls/key.pem", s.source]
    assert "inline" in s.secret_files()[1].holds
    assert load(tmp_path, "").secret_files() == []


@pytest.mark.parametrize("mode, words", [
    (0o644, "readable by group and others (mode 0644)"),
    (0o640, "readable by group (mode 0640)"),
    (0o604, "readable by others (mode 0604)"),
    (0o620, "writable by group (mode 0620)"),
    (0o602, "writable by others (mode 0602)"),
    (0o660, "readable by group, writable by group (mode 0660)"),
])
def test_group_or_other_bits_are_refused_naming_the_file_and_the_mode(tmp_path, mode, words):
    path = key_file(tmp_path, mode)
    [problem] = secrets.problems([settings.SecretFile(str(path), "the key of node node2 (key_file)")])
    assert problem == (f"{path} holds the key of node node2 (key_file) but is {words}: "
                       f"set mode 0600 (chmod 0600 {path})")


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_modes_pass(tmp_path, mode):
    assert secrets.problems([settings.SecretFile(str(key_file(tmp_path, mode)), "x")]) == []


def test_a_file_of_another_user_or_a_missing_one_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    path = key_file(tmp_path, 0o600)
    os.chown(path, 4242, 4242)
    [problem] = secrets.problems([settings.SecretFile(str(path), "x")])
    assert f"{path} holds x but belongs to" in problem and f"chown root {path}" in problem
    [problem] = secrets.problems([settings.SecretFile(str(tmp_path / "gone.key"), "x")])
    assert problem == f"{tmp_path / 'gone.key'} holds x but cannot be examined: No such file or directory"


@pytest.mark.parametrize("where", ["key_file", "inline", "tls_key"])
def test_serve_refuses_to_start_with_exit_78(tmp_path, capsys, where):
    if where == "key_file":
        bad = key_file(tmp_path, 0o644)
        s = load(tmp_path, NODE + f'key_file = "{bad}"\n')
    elif where == "inline":
        s = load(tmp_path, NODE + 'key = "k"\n', mode=0o644)
        bad = s.source
    else:
        bad = key_file(tmp_path, 0o640, "tls.key")
        s = load(tmp_path, f'tls_cert = "{tmp_path}/c.pem"\ntls_key = "{bad}"\n')
    with pytest.raises(SystemExit) as exit_:
        serve.run(s)
    assert exit_.value.code == 78
    err = capsys.readouterr().err
    assert f"imapd-ctl: refusing to start: {bad} holds " in err and f"chmod 0600 {bad}" in err
    assert not (tmp_path / "state").exists()       # refused before anything was made
