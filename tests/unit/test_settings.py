"""Settings file parsing, the shipped default config, and the listener safety check."""
import dataclasses
from pathlib import Path

import pytest

from imapd_ctl.daemon import serve
from imapd_ctl.server import listeners
from imapd_ctl.core import settings

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "imapd-ctl.toml"


def test_shipped_config_states_the_built_in_defaults():
    loaded = dataclasses.asdict(settings.load(str(SHIPPED)))
    defaults = dataclasses.asdict(settings.Settings())
    loaded.pop("source"), defaults.pop("source")
    assert loaded == defaults


def test_missing_default_file_means_defaults(monkeypatch):
    monkeypatch.delenv("IMAPD_CTL_CONFIG", raising=False)
    monkeypatch.setattr(settings, "DEFAULT_PATH", "/nonexistent/imapd-ctl.toml")
    assert settings.load().source == "(built-in defaults)"


@pytest.mark.parametrize("text, message", [
    ("porte = 143\n", "unknown setting 'porte'"),
    ("port = '143'\n", "port must be int"),
    ("workers = true\n", "workers must be int"),
    ("[dovecot]\nunit = 5\n", "unit must be str"),
    ("dovecot = 1\n", "[dovecot] must be a table"),
    ("flavour = 'cyrus'\n", "flavour must be"),
    ("port = \n", "not valid TOML"),
    ("recovery_timeout = 0\n", "recovery_timeout must be a number of seconds above 0, got 0"),
])
def test_bad_settings_name_the_key(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        settings.load(str(path))


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        settings.load(str(tmp_path / "nope.toml"))


@pytest.mark.parametrize("bind", ["127.0.0.1:8143", "[::1]:8143", "localhost:8143", "127.0.0.2:9"])
def test_loopback_binds_are_allowed_without_tls(bind):
    listeners.check_binds(settings.Settings(listen=[bind]))


@pytest.mark.parametrize("bind", ["0.0.0.0:8143", "198.18.0.1:8143", "[::]:8143", "mail.example:8143"])
def test_non_loopback_binds_need_tls(bind):
    with pytest.raises(SystemExit, match="not a loopback address and TLS is not configured"):
        listeners.check_binds(settings.Settings(listen=[bind]))
    listeners.check_binds(settings.Settings(listen=[bind], tls_cert="/c.pem", tls_key="/k.pem"))


NODE = '[[nodes]]\nid = "node2"\nurl = "https://198.18.0.2:8443"\nkey = "k"\nca = "/etc/imapd-ctl/ca.pem"\n'


def test_node_registry_is_parsed(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('node_id = "node1"\n' + NODE)
    s = settings.load(str(path))
    assert [(n.id, n.url) for n in s.nodes] == [("node2", "https://198.18.0.2:8443")]


@pytest.mark.parametrize("entry, message", [
    (NODE.replace("https://", "http://"), "url must be https://"),
    (NODE.replace('key = "k"\n', ""), "needs exactly the keys"),
    (NODE.replace('"node2"', '"node 2"'), "not a valid node id"),
    (NODE.replace('key = "k"', 'key = ""'), "non-empty strings"),
])
def test_bad_node_entries_are_refused(tmp_path, entry, message):
    path = tmp_path / "c.toml"
    path.write_text(entry)
    with pytest.raises(ValueError, match=message):
        settings.load(str(path))


def test_example_node_registry_parses():
    s = settings.load(str(SHIPPED.parent / "nodes.example.toml"))
    assert s.node_id == "node1" and [n.id for n in s.nodes] == ["node2", "node3"]
    assert s.tls_cert and all(n.url.startswith("https://") for n in s.nodes)
