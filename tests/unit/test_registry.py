"""The cluster's registry kept with plain files (adapters.registry, `imapd-ctl node
add|remove|list`): a node added is called at the next call, without a restart, with the key
beside its file; one removed is gone; what cannot be used is refused naming the field."""
import json
import logging
import os

from test_cluster import KEY, pki, server  # noqa: F401 - fixtures

from imapd_ctl.adapters.cluster import Cluster
from imapd_ctl.adapters.registry import Registry
from imapd_ctl.cli import main as cli
from imapd_ctl.core.settings import Node


def settings_file(tmp_path, extra=""):
    path = tmp_path / "imapd-ctl.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\naudit_log = "{tmp_path / "audit.log"}"\n'
                    f'nodes_dir = "{tmp_path / "nodes.d"}"\nnode_id = "mail1"\n' + extra)
    return str(path)


def test_a_node_added_is_called_at_once_and_one_removed_is_gone(server, pki, tmp_path, capsys):  # noqa: F811
    config, nodes_dir = settings_file(tmp_path), tmp_path / "nodes.d"
    key_in = tmp_path / "from-mail2.key"
    key_in.write_text(KEY + "\n")
    url = f"https://127.0.0.1:{server.server_address[1]}"
    cluster = Cluster("mail1", Registry([], str(nodes_dir)).nodes, timeout=5)     # as the daemon holds it
    assert cluster.nodes == {}
    assert cli.main(["--config", config, "node", "add", "mail2", url, "--ca", pki["ca"], "--key-file", str(key_in)]) == 0
    assert "added mail2" in capsys.readouterr().out
    assert oct(os.stat(nodes_dir).st_mode & 0o777) == "0o700"
    assert oct(os.stat(nodes_dir / "mail2.key").st_mode & 0o777) == "0o600"
    assert "key" not in (nodes_dir / "mail2.toml").read_text().replace("key_file", "")   # the key is not in it
    server.seen.clear()
    assert cluster.call(cluster.node("mail2"), "isRunning", {}) == (0, True)
    assert server.seen[-1][1] == f"Bearer {KEY}"
    assert cli.main(["--config", config, "node", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(n["id"], n["source"]) for n in listed] == [("mail1", "settings"), ("mail2", str(nodes_dir / "mail2.toml"))]
    assert cli.main(["--config", config, "node", "check"]) == 0
    assert "ok   mail2: answers" in capsys.readouterr().out
    assert cli.main(["--config", config, "node", "remove", "mail2"]) == 0
    assert cluster.nodes == {} and sorted(os.listdir(nodes_dir)) == []


def test_what_cannot_be_used_is_refused_naming_it_and_nothing_is_written(pki, tmp_path, capsys):  # noqa: F811
    config = settings_file(tmp_path, '[[nodes]]\nid = "mail3"\nurl = "https://198.18.0.3:2443"\nkey = "k"\n'
                                     f'ca = "{pki["ca"]}"\n')
    key_in = tmp_path / "k"
    key_in.write_text(KEY)
    cases = [
        (["mail1", "https://198.18.0.9:2443", "--ca", pki["ca"]], "mail1 is this node"),
        (["mail3", "https://198.18.0.9:2443", "--ca", pki["ca"]], "mail3 is in the settings' [[nodes]]"),
        (["mail2", "http://198.18.0.9:2443", "--ca", pki["ca"]], "url must be https://"),
        (["bad id!", "https://198.18.0.9:2443", "--ca", pki["ca"]], "is not a valid node id"),
        (["mail2", "https://198.18.0.9:2443", "--ca", str(tmp_path / "none.pem")], "--ca: "),
    ]
    for args, expected in cases:
        assert cli.main(["--config", config, "node", "add", *args, "--key-file", str(key_in)]) == 2, args
        assert expected in capsys.readouterr().err, args
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert cli.main(["--config", config, "node", "add", "mail2", "https://198.18.0.9:2443", "--ca", pki["ca"],
                     "--key-file", str(empty)]) == 2
    assert "the key must be one word" in capsys.readouterr().err
    assert not (tmp_path / "nodes.d").exists() or os.listdir(tmp_path / "nodes.d") == []
    assert cli.main(["--config", config, "node", "remove", "mail3"]) == 2
    assert "remove it there" in capsys.readouterr().err


def test_files_that_cannot_be_used_are_skipped_and_said(tmp_path, caplog):
    d = tmp_path / "nodes.d"
    d.mkdir()
    (d / "good.toml").write_text('url = "https://198.18.0.2:2443"\nca = "/ca.pem"\n')
    (d / "broken.toml").write_text('url = "https://198.18.0.4:2443"\nca = \n')
    (d / "plain.toml").write_text('url = "http://198.18.0.5:2443"\nca = "/ca.pem"\n')
    (d / "twice.toml").write_text('url = "https://198.18.0.6:2443"\nca = "/ca.pem"\n')
    (d / "notes.txt").write_text("not a node")
    registry = Registry([Node("twice", "https://198.18.0.7:2443", "k", "/ca.pem")], str(d))
    with caplog.at_level(logging.WARNING):
        found = {n.id: n for n in registry.nodes()}
    assert sorted(found) == ["good", "twice"] and found["twice"].url.endswith(".7:2443")   # the settings' entry
    assert found["good"].key_file == str(d / "good.key")                                  # the key beside it
    text = caplog.text
    assert "broken.toml is skipped: " in text and "plain.toml is skipped: " in text and "url must be https" in text
    assert "twice.toml is skipped: node twice is also in the settings" in text
