"""The `imapd-ctl` command (imapd_ctl.cli.main) without root or a mail host: argument
parsing, key management on a scratch key store, `call` against a tiny server on a unix socket,
`check` and `recover` on the fakes of fakes.py (conftest.py's fake_wiring patches wiring.build)."""
import io
import json
import time
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import UnixStreamServer

import pytest

from imapd_ctl.core.errors import Busy, Unavailable
from imapd_ctl.core.protocols import Check
from imapd_ctl.core.settings import Settings
from imapd_ctl.cli import access, commands
from imapd_ctl.cli import main as cli
from imapd_ctl.daemon import recovery


@pytest.fixture
def config(tmp_path, monkeypatch):
    """A settings file whose state and logs live in tmp_path."""
    path = tmp_path / "imapd-ctl.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\naudit_log = "{tmp_path / "audit.log"}"\n'
                    f'socket = "{tmp_path / "ctl.sock"}"\nnode_id = "mail1"\n')
    monkeypatch.delenv("IMAPD_CTL_KEY", raising=False)
    monkeypatch.delenv("IMAPD_CTL_CONFIG", raising=False)
    return str(path)


def run(config, *argv):
    return cli.main(["--config", config, *argv])


# --- parsing ------------------------------------------------------------------------------

def test_call_arguments():
    args = cli.build_parser().parse_args(["call", "update", "imap_max_connections=5", "--json",
                                          "--key-file", "/k", "--node", "node2"])
    assert (args.fn, args.action, args.inputs, args.json, args.key_file, args.node, args.controller) == \
        (commands.cmd_call, "update", ["imap_max_connections=5"], True, "/k", "node2", "imap")


@pytest.mark.parametrize("argv", [[], ["nope"], ["key"], ["key", "create"], ["node"]])
def test_bad_command_lines_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2


def test_a_bad_settings_file_is_ex_config(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("porte = 1\n")
    with pytest.raises(SystemExit) as exc:
        cli.main(["--config", str(bad), "key", "list"])
    assert exc.value.code == 78
    assert "unknown setting 'porte'" in capsys.readouterr().err


# --- keys ---------------------------------------------------------------------------------

def test_key_create_list_revoke(config, capsys):
    assert run(config, "key", "create", "panel") == 0
    out, err = capsys.readouterr()
    secret = out.strip()
    assert secret.startswith("ictl_") and "shown only this once" in err
    assert run(config, "key", "create", "dns", "--perm", "METRICS", "--perm", "EMAIL") == 0
    capsys.readouterr()
    assert run(config, "key", "list") == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [(name, perms) for name, perms, _ in lines] == [("panel", "EMAIL"), ("dns", "EMAIL,METRICS")]
    assert secret not in open(Settings(state_dir=os.path.dirname(config) + "/state").keys_path).read()
    assert run(config, "key", "revoke", "panel") == 0
    assert run(config, "key", "revoke", "panel") == 1
    assert "no key named 'panel'" in capsys.readouterr().err
    # Key commands write the key store only: the audit trail is the serving daemon's.
    assert not os.path.exists(os.path.join(os.path.dirname(config), "audit.log"))


def test_a_permission_name_the_daemon_does_not_know_is_a_usage_error_listing_the_known_ones(config, capsys):
    with pytest.raises(SystemExit) as exc:
        run(config, "key", "create", "x", "--perm", "FOO")
    assert exc.value.code == 2
    assert "invalid choice: 'FOO' (choose from 'EMAIL', 'METRICS')" in capsys.readouterr().err
    assert run(config, "key", "list") == 0 and capsys.readouterr().out == ""


BLOCK = ("-----BEGIN INTERWORX API KEY-----\n" + "\n".join(["Ab3+/x9Z" * 8] * 5)
         + "\n-----END INTERWORX API KEY-----\n")


def test_key_import(config, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("sys.stdin", io.StringIO("s" * 40 + "\n"))
    assert run(config, "key", "import", "fromstdin") == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(BLOCK))          # the block as panels hold it
    assert run(config, "key", "import", "iworx-stdin") == 0
    (tmp_path / "k").write_text(BLOCK.replace("\n", "\r\n").replace("Ab3", "Cd4"))
    assert run(config, "key", "import", "iworx-file", "--file", str(tmp_path / "k")) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("tooshort\n"))
    assert run(config, "key", "import", "short") == 2
    assert "key: must be 32 to 1024" in capsys.readouterr().err
    assert run(config, "key", "import", "none", "--file", str(tmp_path / "missing")) == 2
    assert "--file: cannot read" in capsys.readouterr().err
    assert run(config, "key", "create", "bad name") == 2
    assert run(config, "key", "create", "iworx-stdin") == 2     # the name is taken
    assert run(config, "key", "list") == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == [
        "fromstdin", "iworx-stdin", "iworx-file"]


def test_key_import_refuses_a_key_on_the_command_line(config, capsys):
    assert run(config, "key", "import", "argv", "--value", "k" * 40) == 2
    err = capsys.readouterr().err
    assert "--value is refused" in err and "stdin" in err and "--file" in err
    assert run(config, "key", "list") == 0
    assert capsys.readouterr().out == ""


# --- call -----------------------------------------------------------------------------------

class _Envelope(BaseHTTPRequestHandler):
    """Answers every action with the envelope in server.reply, noting what it was asked."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen.append((self.path, self.headers["Authorization"], json.loads(body)))
        data = json.dumps(self.server.reply).encode()
        self.send_response(self.server.reply["status"] or 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):                 # /healthz, as the daemon answers it
        data = b'{"status": 0, "payload": "ok"}\n'
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class _UnixHTTPServer(UnixStreamServer, HTTPServer):
    def server_bind(self):
        UnixStreamServer.server_bind(self)   # HTTPServer's wants a (host, port)


@pytest.fixture
def daemon(config):
    sock = os.path.join(os.path.dirname(config), "ctl.sock")
    server = _UnixHTTPServer(sock, _Envelope)
    server.seen, server.reply = [], {"status": 0, "payload": True}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_call_prints_the_payload(config, daemon, capsys, monkeypatch):
    monkeypatch.setenv("IMAPD_CTL_KEY", "K")
    assert run(config, "call", "isRunning") == 0
    assert capsys.readouterr().out == "true\n"
    daemon.reply = {"status": 0, "payload": "restarted dovecot.service"}
    assert run(config, "call", "restart", "cascade_to_nodes=0") == 0
    assert capsys.readouterr().out == "restarted dovecot.service\n"
    assert daemon.seen[-1] == ("/nodeworx/mail/imap/restart", "Bearer K", {"cascade_to_nodes": "0"})


def test_call_json_and_failures(config, daemon, capsys, monkeypatch):
    daemon.reply = {"status": 409, "payload": "another change is in progress"}
    monkeypatch.setenv("IMAPD_CTL_KEY", "K")
    assert run(config, "call", "update", "imap_max_connections=5") == 1
    assert capsys.readouterr().err == "imapd-ctl: update failed (status 409): another change is in progress\n"
    assert run(config, "call", "update", "--json") == 1
    assert json.loads(capsys.readouterr().out) == daemon.reply
    daemon.reply = {"status": 401, "payload": "unknown API key"}
    assert run(config, "call", "isRunning") == 5
    assert "the daemon refused the key (unknown API key); make one on this host with `imapd-ctl key create" \
        in capsys.readouterr().err


@pytest.mark.parametrize("argv, code, message", [
    (["call", "update", "imap_max_conections=5"], 2, "imap_max_conections: not an input of update"),
    (["call", "update", "imap_max_connections=0"], 2, "imap_max_connections: must be"),
    (["call", "nope"], 2, "unknown action 'nope'"),
    (["call", "isRunning", "--key", "K"], 2, "--key is refused: a key on the command line can be read by every "
                                             "local user (ps, /proc); give it in $IMAPD_CTL_KEY, in a file "
                                             "(--key-file FILE, first line) or on stdin (--key-stdin)"),
    (["status", "--key=K"], 2, "--key is refused"),
    (["call", "isRunning"], 5, "an API key is needed (root needs none on this host): give it in $IMAPD_CTL_KEY"),
    (["call", "isRunning", "--key-file", "/nonexistent/key"], 5, "--key-file /nonexistent/key: No such file"),
    (["call", "isRunning", "--node", "node9"], 2, "node_id: unknown node 'node9'; known nodes: mail1 (this node)"),
])
def test_call_refuses_before_sending(config, capsys, monkeypatch, argv, code, message):
    if "--key" not in argv[-1] and code != 5:
        monkeypatch.setenv("IMAPD_CTL_KEY", "K")
    monkeypatch.setattr(access.os, "geteuid", lambda: 1000)      # root would need no key
    assert run(config, *argv) == code
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("how", ["env", "file", "stdin"])
def test_the_key_comes_from_the_environment_a_file_or_stdin(config, daemon, tmp_path, monkeypatch, how):
    argv = ["call", "isRunning"]
    if how == "env":
        monkeypatch.setenv("IMAPD_CTL_KEY", "K-env")
    elif how == "file":
        (tmp_path / "key").write_text("K-file\nignored\n")
        argv += ["--key-file", str(tmp_path / "key")]
    else:
        monkeypatch.setattr("sys.stdin", __import__("io").StringIO("K-stdin\n"))
        argv += ["--key-stdin"]
    assert run(config, *argv) == 0
    assert daemon.seen[-1][1] == f"Bearer K-{how}"


@pytest.mark.parametrize("pair", ["imap_max_connections", "=5"])
def test_call_with_a_pair_that_is_not_name_value_is_a_usage_error(config, capsys, pair):
    assert run(config, "call", "update", pair) == 2
    assert capsys.readouterr().err == ("imapd-ctl: inputs are given as NAME=VALUE (for example "
                                       f"imap_max_connections=60), not {pair!r}\n")


def test_call_without_a_daemon_says_what_to_check(config, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAPD_CTL_KEY", "K")
    assert run(config, "call", "isRunning", "--socket", str(tmp_path / "none.sock")) == 3
    assert f"{tmp_path / 'none.sock'} does not exist; is imapd-ctl.socket active?" in capsys.readouterr().err


# --- check and recover, on the fakes (conftest.py's fake_wiring) ----------------------------

def test_check_reports_the_flavours_checks(config, fake_wiring, daemon, capsys, monkeypatch):
    monkeypatch.setattr(fake_wiring["Flavour"], "checks", lambda self: [Check("config writable", True, "/etc/fake")],
                        raising=False)
    assert run(config, "check") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [f"ok   daemon answers: {daemon.server_address}: answers", "ok   systemd over D-Bus: systemd 252 (fake)", "ok   IMAP server: fake (fake-imapd.service)",
                       "ok   IMAP over TLS (simap): fake-imapd.service on port 993",
                       "ok   config writable: /etc/fake", f"ok   state dir writable: {os.path.dirname(config)}/state",
                       "ok   no interrupted change: none"]
    monkeypatch.setattr(fake_wiring["Flavour"], "checks", lambda self: [Check("validator", False, "/usr/bin/fakeconf")])
    assert run(config, "check") == 1
    assert "FAIL validator: /usr/bin/fakeconf" in capsys.readouterr().out


def test_check_fails_when_the_daemon_does_not_answer(config, fake_wiring, capsys):
    assert run(config, "check") == 1
    out = capsys.readouterr().out
    assert "FAIL daemon answers: " in out and "does not exist; is imapd-ctl.socket active?" in out
    assert "ok   systemd over D-Bus" in out                 # the other checks still run


def test_version_and_listings_as_json(config, capsys):
    with pytest.raises(SystemExit) as exc:
        run(config, "--version")
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("imapd-ctl 0.")
    assert run(config, "key", "create", "panel") == 0
    capsys.readouterr()
    assert run(config, "key", "list", "--json") == 0
    assert [(k["name"], k["perms"]) for k in json.loads(capsys.readouterr().out)] == [("panel", ["EMAIL"])]
    assert run(config, "node", "list", "--json") == 0
    nodes = json.loads(capsys.readouterr().out)
    assert nodes[0]["this"] is True and len(nodes) == 1


def test_check_without_systemd_fails(config, fake_wiring, capsys, monkeypatch):
    def down(self):
        raise Unavailable("systemd is unreachable over D-Bus")
    monkeypatch.setattr(fake_wiring["Systemd"], "ping", down)
    assert run(config, "check") == 1
    assert "FAIL systemd / IMAP server: systemd is unreachable over D-Bus" in capsys.readouterr().out


def test_recover_with_nothing_to_do(config, fake_wiring, capsys):
    assert run(config, "recover") == 0
    assert capsys.readouterr().out == "no interrupted change\n"


def test_recover_failure_is_exit_1(config, fake_wiring, capsys, monkeypatch):
    def busy(self):
        raise Busy("another change holds the lock")
    monkeypatch.setattr("imapd_ctl.operations.controller.Controller.recover", busy)
    assert run(config, "recover") == 1
    assert capsys.readouterr().err == (recovery.FAILED + "another change holds the lock\n")


def test_recover_in_a_child_hands_back_its_result(config, fake_wiring, monkeypatch):
    settings = cli.settings_mod.load(config)
    assert recovery.recover_in_child(settings) == recovery.RecoveryReport(True, "no interrupted change")
    assert "services" not in fake_wiring     # the graph (and D-Bus) existed only in the child

    def boom(self):
        raise RuntimeError("a bug")
    monkeypatch.setattr("imapd_ctl.operations.controller.Controller.recover", boom)
    outcome = recovery.recover_in_child(settings)
    assert not outcome.ok and outcome.message == recovery.FAILED + "internal error: RuntimeError: a bug"


def test_a_recovery_past_its_deadline_is_stopped(config, fake_wiring, monkeypatch):
    """serve gives recovery recovery_timeout seconds; a hung one is killed and reported."""
    settings = cli.settings_mod.load(config)
    settings.recovery_timeout = 0.5

    def hang(self):
        time.sleep(120)
    monkeypatch.setattr("imapd_ctl.operations.controller.Controller.recover", hang)
    outcome = recovery.recover_in_child(settings)
    assert not outcome.ok and not outcome.finished
    assert outcome.message == (f"{recovery.UNFINISHED} it did not finish within recovery_timeout = "
                               "0.5 s and was stopped")


def test_audit_reads_the_trail_newest_last_with_filters(config, capsys):
    log = os.path.join(os.path.dirname(config), "audit.log")
    line = {"key": "panel", "peer": "unix-socket (uid 0)", "transport": "http", "controller": "/nodeworx/mail/imap"}
    with open(log, "w") as fh:
        for entry in ({"time": "2026-12-07T10:00:00+0000", "phase": "begin", "action": "restart", "inputs": {}},
                      {"time": "2026-12-07T10:00:01+0000", "phase": "end", "action": "restart", "inputs": {},
                       "status": 0, "result": "restarted dovecot.service"},
                      {"time": "2026-12-07T11:00:00+0000", "phase": "begin", "action": "update",
                       "inputs": {"imap_max_connections": 60}},
                      {"time": "2026-12-07T11:00:02+0000", "phase": "end", "action": "update",
                       "inputs": {"imap_max_connections": 60}, "status": 500, "result": "update failed"},
                      {"time": "2026-12-07T12:00:00+0000", "phase": "begin", "action": "stop", "inputs": {}}):
            fh.write(json.dumps({**line, **entry}) + "\n")
        fh.write('{"torn\n')
    assert run(config, "audit") == 0
    rows = [r.split("\t") for r in capsys.readouterr().out.splitlines()]
    assert [(r[3], r[4]) for r in rows] == [("restart", "0"), ("update imap_max_connections=60", "500"), ("stop", "-")]
    assert "cut short" in rows[2][5] and rows[0][1:3] == ["panel", "unix-socket (uid 0)"]
    assert run(config, "audit", "--failed", "--json") == 0
    assert [e["action"] for e in json.loads(capsys.readouterr().out)] == ["update", "stop"]
    assert run(config, "audit", "--action", "restart", "--last", "1") == 0
    assert capsys.readouterr().out.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        run(config, "audit", "--last", "0")
    assert exc.value.code == 2
