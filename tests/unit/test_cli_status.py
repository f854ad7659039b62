"""`imapd-ctl status` and `call`'s output without root or a mail host: the real app (dispatch,
keys, controller on the fakes of conftest.py's `env`) served on a unix socket, the CLI against
it; other nodes through a stand-in for cluster.Session.call."""
import io
import json
import threading
from http.server import BaseHTTPRequestHandler

import pytest
from test_cli import _UnixHTTPServer

from imapd_ctl.adapters import hostinfo
from imapd_ctl.adapters.cluster import Session
from imapd_ctl.core.settings import Settings
from imapd_ctl.cli import main as cli, show, status, statusview


class _App(BaseHTTPRequestHandler):
    """Hands each request to the Flask test client of server.env (the real app on fakes)."""

    def _any(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
        resp = self.server.env.client.open(self.path, method=self.command, headers=headers, data=body)
        self.send_response(resp.status_code)
        self.send_header("Content-Length", str(len(resp.data)))
        self.end_headers()
        self.wfile.write(resp.data)

    do_GET = do_POST = _any

    def log_message(self, *args):
        pass


@pytest.fixture
def served(env, tmp_path, monkeypatch):
    """The app on a unix socket, a settings file pointing at it, host facts pinned."""
    sock = str(tmp_path / "ctl.sock")
    server = _UnixHTTPServer(sock, _App)
    server.env = env
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "imapd-ctl.toml"
    config.write_text(f'state_dir = "{env.settings.state_dir}"\nsocket = "{sock}"\nnode_id = "mail1"\n'
                      f'node_timeout = 5.0\n'
                      + "".join(f'[[nodes]]\nid = "{n}"\nurl = "https://198.18.0.{i}:8443"\nkey = "k{i}"\nca = "/ca"\n'
                                for i, n in ((2, "node2"), (3, "node3"))))
    monkeypatch.setenv("IMAPD_CTL_KEY", env.key)
    monkeypatch.setattr(hostinfo, "server_version", lambda flavour: "9.9.9-1")
    monkeypatch.setattr(hostinfo, "port_state", lambda unit, port: hostinfo.PortState(
        unit, port, "active", "running", "enabled", 2, "success", True))
    yield str(config)
    server.shutdown()
    server.server_close()


def ctl(config, *argv):
    return cli.main(["--config", config, *argv])


def test_status_shows_each_field_and_json_is_the_apis_answers(served, env, fake_wiring, capsys):
    assert ctl(served, "status", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    for action, answer in report["api"].items():
        now = env.call(action).get_json()
        # A capacity reading carries the second it was taken: two readings may straddle one.
        shown_at, now_at = (r["payload"].pop("checked_at", 0) if isinstance(r["payload"], dict) else 0
                            for r in (answer, now))
        assert answer == now and 0 <= now_at - shown_at <= 5, action
    assert set(report["api"]) >= {"isRunning", "queryStartOnBoot", "queryUpdate"}
    assert report["server"] == {"flavour": "fake", "version": "9.9.9-1", "units": ["fake-imapd.service"]}
    assert report["ports"][0]["restarts"] == 2 and report["interrupted_change"] is None
    assert ctl(served, "status") == 0
    screen = capsys.readouterr().out
    for shown in ("IMAP server   fake 9.9.9-1 (fake-imapd.service)", "serving       yes (isRunning)",
                  "start on boot enabled", "imap_max_connections", "changes       none interrupted",
                  "daemon        answers on", "LAST RESULT"):
        assert shown in screen, shown
    assert "143   fake-imapd.service  active" in screen
    assert "\x1b[" not in screen                      # not a terminal: no colour


def test_status_without_the_daemon_still_shows_the_host(served, tmp_path, fake_wiring, capsys):
    assert ctl(served, "status", "--socket", str(tmp_path / "gone.sock")) == 3
    screen = capsys.readouterr().out
    assert "IMAP server   fake 9.9.9-1" in screen and "daemon        DOWN" in screen
    assert "is imapd-ctl.socket active?" in screen


def test_status_without_a_key_says_how_to_make_one(served, fake_wiring, capsys, monkeypatch):
    monkeypatch.delenv("IMAPD_CTL_KEY")
    assert ctl(served, "status") == 5
    assert "imapd-ctl key create NAME" in capsys.readouterr().out


def _other_nodes(monkeypatch, env):
    """node2 answers as this node's app does (for the controller asked); node3 cannot be reached."""
    def call(self, action, inputs):
        if self.node.id == "node3":
            return 502, "node node3: cannot reach https://198.18.0.3:8443: [Errno 111] Connection refused"
        reply = env.client.post(f"{self.controller}/{action}", json=inputs, headers=env.auth())
        return tuple(reply.get_json().values())
    monkeypatch.setattr(Session, "call", call)


def test_status_all_is_one_row_per_node_and_names_the_unreachable(served, env, fake_wiring, capsys, monkeypatch):
    _other_nodes(monkeypatch, env)
    assert ctl(served, "status", "--all", "--json") == 1
    rows = json.loads(capsys.readouterr().out)["nodes"]
    assert [(r["node"], r["reached"]) for r in rows] == [("mail1", True), ("node2", True), ("node3", False)]
    assert rows[1]["api"]["queryUpdate"] == env.call("queryUpdate").get_json()
    assert ctl(served, "status", "--all") == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["NODE", "DAEMON", "SERVING"] and len(lines) == 4
    assert lines[1].startswith("mail1 (this node)") and " yes " in lines[1]
    assert "UNREACHABLE" in lines[3] and "Connection refused" in lines[3]


def test_call_node_forwards_through_the_registry(served, env, fake_wiring, capsys, monkeypatch):
    _other_nodes(monkeypatch, env)
    assert ctl(served, "call", "queryUpdate", "--node", "node2") == 0
    assert "imap_mem_limit" in capsys.readouterr().out
    assert ctl(served, "call", "isRunning", "--node", "node3") == 3
    assert "node node3: cannot reach" in capsys.readouterr().err
    assert ctl(served, "call", "isRunning", "--node", "mail1") == 0        # this node: the socket
    assert capsys.readouterr().out == "true\n"
    assert ctl(served, "call", "listPortNumbers", "--node", "node2", "--controller", "simap") == 0
    assert capsys.readouterr().out == "993\n"            # node2's simap, not its imap
    monkeypatch.setattr(Session, "call", lambda self, action, inputs: (401, "unknown API key"))
    assert ctl(served, "call", "isRunning", "--node", "node2") == 5
    assert "node node2 refused the key this host holds for it" in capsys.readouterr().err


# --- words for payloads ---------------------------------------------------------------------

CASCADE = [{"id": "node1", "status": 0, "payload": "restarted dovecot.service"},
           {"id": "node22", "status": 502, "payload": "node node22: no answer within 30 s"}]


@pytest.mark.parametrize("payload, text", [
    ("restarted dovecot.service", "restarted dovecot.service"),
    (True, "true"),
    ([143], "143"),
    ({"imap_mem_limit": 268435456, "imap_max_connections": 40},
     "imap_mem_limit        268435456 (256 MiB)\nimap_max_connections  40"),
    (CASCADE, "NODE    STATUS  RESULT\nnode1   ok      restarted dovecot.service\n"
              "node22  502     node node22: no answer within 30 s"),
])
def test_each_payload_kind_reads_well(payload, text):
    assert show.payload_text(payload) == text


@pytest.mark.parametrize("tty, no_color, coloured", [(True, None, True), (True, "1", False), (False, None, False)])
def test_colour_only_on_a_terminal_without_no_color(monkeypatch, tty, no_color, coloured):
    stream = io.StringIO()
    stream.isatty = lambda: tty
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    if no_color:
        monkeypatch.setenv("NO_COLOR", no_color)
    text = show.cascade(CASCADE, show.Style.for_stream(stream))
    assert ("\x1b[31m502\x1b[0m" in text) is coloured
    # Escape codes take no width: the columns line up either way.
    assert [line.index("node22" if "node22" in line else "n") for line in text.splitlines()[1:]] == [0, 0]
    assert text.splitlines()[2].index("node node22") == text.splitlines()[1].index("restarted")


@pytest.mark.parametrize("capacity, shown", [
    ({"ports": [{"port": 143, "in_use": 3, "limit": 100}, {"port": 993, "in_use": 0, "limit": 50}]},
     "143: 3/100, 993: 0/50"),
    ({"ports": [{"port": 143, "unit": "dovecot.service", "up": True, "in_use": 2, "queued": 0, "limit": None}]},
     "143: 2/no limit"),
    ({"143": {"connections": 3, "limit": 100}}, "143: 3/100"),
    ({"ports": [{"port": 143, "in_use": 1, "limit": 110, "shared_with": [993]},    # Dovecot's one pool
                {"port": 993, "in_use": 0, "limit": 110, "shared_with": [143]}]},
     "143: 1/110, 993: 0/110 (143 and 993 share one limit)"),
    ("not a record", "-"),
])
def test_connections_from_query_capacity(capacity, shown):
    assert statusview.connections(capacity) == shown


def test_the_screen_shows_capacity_signals_and_an_interrupted_change():
    ok = lambda payload: {"status": 0, "payload": payload}  # noqa: E731
    report = {"node": "mail1", "server": {"flavour": "dovecot", "version": None, "units": ["dovecot.service"]},
              "ports": [], "daemon": {"ok": True, "socket": "/run/s"}, "problems": ["interrupted change: t1"],
              "interrupted_change": {"txn_id": "t1", "action": "update", "step": "written"},
              "api": {"isRunning": ok(True), "queryCapacity": ok({
                  "ports": [{"port": 143, "in_use": 3, "limit": 40}],
                  "signals": [{"code": "full", "text": "imap runs at its process limit (40 processes)"}]})}}
    screen = statusview.node_screen(report)
    assert "IMAP server   dovecot version unknown (dovecot.service)" in screen
    assert "connections   143: 3/40 (in use/limit)\n              saturation: imap runs at its process limit" in screen
    assert "changes       interrupted: t1 (update) at step written; run `imapd-ctl recover`" in screen
    assert screen.endswith("\n! interrupted change: t1")


def test_the_secure_port_is_listed_where_the_flavour_names_its_unit():
    class Flavour:
        def __init__(self, secure_unit):
            self.secure_unit = secure_unit

        def unit_ports(self):
            return {"dovecot.service": 143}
    settings = Settings()
    settings.ssl_port = 993          # the simap branch's setting
    assert status.ports_of(settings, Flavour(None)) == [("dovecot.service", 143)]
    assert status.ports_of(settings, Flavour("dovecot.service")) == [("dovecot.service", 143),
                                                                     ("dovecot.service", 993)]


def test_a_saturated_server_is_a_problem():
    api = {"isRunning": {"status": 0, "payload": True},
           "queryCapacity": {"status": 0, "payload": {"saturated": True, "summary": "143: 40 in use (limit 40, 0 free)"}}}
    assert status._problems_of_api(api) == ["saturated: 143: 40 in use (limit 40, 0 free)"]


def test_a_failed_cascade_is_a_table_on_stderr():
    assert show.failure_text("restart", 502, CASCADE) == (
        "imapd-ctl: restart failed (status 502):\n" + show.payload_text(CASCADE))
