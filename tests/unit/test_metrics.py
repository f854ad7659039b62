"""The metrics registry (adapters.metrics): what each count and the state gauges look like in
the exposition, counts added up over processes in multiprocess mode, and who may read /metrics
(metrics_access)."""
import math
import os
import subprocess
import sys
import textwrap

import pytest

import imapd_ctl
from prometheus_client.parser import text_string_to_metric_families

from imapd_ctl.adapters import metrics
from imapd_ctl.adapters.metrics import Metrics, Reading
from imapd_ctl.core.capacity import Capacity, Pool, PortLoad, UnitHealth
from imapd_ctl.core.errors import Unavailable
from imapd_ctl.core.settings import Settings, load
from imapd_ctl.transports.app import create_app

STATE = Capacity(
    flavour="dovecot",
    ports=(PortLoad(port=143, unit="dovecot.service", up=True, in_use=3, queued=1, limit=10,
                    shared_with=(993,), pool_in_use=3),
           PortLoad(port=993, unit="dovecot.service", up=False, in_use=0, queued=0, limit=None)),
    pools=(Pool(name="imap", unit="dovecot.service", ports=(143, 993), processes=3, process_limit=None,
                last_drop_warning=1700000000, exit_failures_in_sec=2),),
    units=(UnitHealth(unit="dovecot.service", active_state="active", sub_state="running",
                      result="exit-code", restarts=4),))

READING = Reading(STATE, server_version="2.3.19.1", journal_pending=False)


def samples(text: bytes) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def test_the_state_gauges():
    got = samples(Metrics().exposition(lambda: READING))
    assert got[("imapd_ctl_state_readable", ())] == 1
    assert got[("imapd_ctl_imap_up", (("port", "143"), ("unit", "dovecot.service")))] == 1
    assert got[("imapd_ctl_imap_up", (("port", "993"), ("unit", "dovecot.service")))] == 0
    assert got[("imapd_ctl_imap_connections", (("port", "143"),))] == 3
    assert got[("imapd_ctl_imap_connections_queued", (("port", "143"),))] == 1
    assert got[("imapd_ctl_imap_connection_limit", (("port", "143"),))] == 10
    assert math.isinf(got[("imapd_ctl_imap_connection_limit", (("port", "993"),))])
    assert got[("imapd_ctl_pool_processes", (("pool", "imap"),))] == 3
    assert math.isinf(got[("imapd_ctl_pool_process_limit", (("pool", "imap"),))])
    assert got[("imapd_ctl_pool_last_drop_warning_timestamp_seconds", (("pool", "imap"),))] == 1700000000
    assert got[("imapd_ctl_pool_exit_failures", (("pool", "imap"),))] == 2
    assert got[("imapd_ctl_unit_restarts", (("unit", "dovecot.service"),))] == 4
    assert got[("imapd_ctl_unit_failed", (("result", "exit-code"), ("unit", "dovecot.service")))] == 1
    assert got[("imapd_ctl_unit_active", (("unit", "dovecot.service"),))] == 1
    assert got[("imapd_ctl_journal_pending", ())] == 0
    assert got[("imapd_ctl_build_info", (("flavour", "dovecot"), ("server_version", "2.3.19.1"),
                                         ("version", imapd_ctl.__version__)))] == 1


def test_an_unreadable_state_is_said_and_the_counts_still_come():
    m = Metrics()
    m.bus_reconnect()

    def unreachable():
        raise Unavailable("cannot connect to the system bus")
    got = samples(m.exposition(unreachable))
    assert got[("imapd_ctl_state_readable", ())] == 0
    assert not any(name == "imapd_ctl_imap_up" for name, _ in got)
    assert got[("imapd_ctl_bus_reconnects_total", ())] == 1


def test_the_counts():
    m = Metrics()
    m.action("isRunning", 0, 0.002)
    m.action("isRunning", 0, 0.003)
    m.action("update", 400, 0.2)
    m.change("applied")
    m.change("rolled_back")
    m.change("rolled_back")
    m.lock_wait(0.5, acquired=True)
    m.lock_wait(10.0, acquired=False)
    got = samples(m.exposition(lambda: READING))
    count = "imapd_ctl_action_duration_seconds_count"
    assert got[(count, (("action", "isRunning"), ("controller", "imap"), ("status", "0")))] == 2
    assert got[(count, (("action", "update"), ("controller", "imap"), ("status", "400")))] == 1
    assert got[("imapd_ctl_action_duration_seconds_sum", (("action", "update"), ("controller", "imap"), ("status", "400")))] == 0.2
    assert got[("imapd_ctl_changes_total", (("outcome", "applied"),))] == 1
    assert got[("imapd_ctl_changes_total", (("outcome", "rolled_back"),))] == 2
    assert got[("imapd_ctl_lock_wait_seconds_count", (("outcome", "acquired"),))] == 1
    assert got[("imapd_ctl_lock_wait_seconds_bucket", (("le", "5.0"), ("outcome", "busy")))] == 0
    assert got[("imapd_ctl_lock_wait_seconds_bucket", (("le", "10.0"), ("outcome", "busy")))] == 1


def test_counts_of_every_process_are_added_up(tmp_path):
    """Multiprocess mode, as under gunicorn: a parent and two forked children count; one scrape
    (in a third process, like whichever worker answers) sees the sum. In a fresh interpreter:
    the mode is process-wide."""
    script = textwrap.dedent(f"""
        import os
        from imapd_ctl.adapters import metrics
        directory = {str(tmp_path / "m")!r}
        metrics.prepare_directory(directory)
        metrics.use_multiprocess(directory)
        m = metrics.Metrics(directory)
        m.action("isRunning", 0, 0.01)
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                m.action("isRunning", 0, 0.01)
                m.bus_reconnect()
                os._exit(0)
            os.waitpid(pid, 0)
        print(m.exposition(lambda: (_ for _ in ()).throw(RuntimeError("no state"))).decode())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    got = samples(out.encode())
    assert got[("imapd_ctl_action_duration_seconds_count", (("action", "isRunning"), ("controller", "imap"), ("status", "0")))] == 3
    assert got[("imapd_ctl_bus_reconnects_total", ())] == 2
    assert len({name.rsplit("_", 1)[1] for name in os.listdir(tmp_path / "m")}) == 3   # one set per pid
    assert oct(os.stat(tmp_path / "m").st_mode & 0o777) == "0o700"


def test_the_directory_is_emptied_at_start(tmp_path):
    d = tmp_path / "m"
    d.mkdir(mode=0o755)
    (d / "counter_1.db").write_bytes(b"old")
    (d / metrics.STATE_FILE).write_bytes(b"imapd_ctl_imap_up 1\n")     # a reading of the last run
    (d / "keep.txt").write_text("not ours")
    metrics.prepare_directory(str(d))
    assert sorted(os.listdir(d)) == ["keep.txt"] and oct(d.stat().st_mode & 0o777) == "0o700"


# -- who may read /metrics ------------------------------------------------------------------------

def app_for(env, access):
    app = create_app(env.services.context(), scrape=lambda: (b"imapd_ctl_x 1\n", "text/plain"),
                     metrics_access=access)
    app.testing = True
    return app.test_client()


@pytest.mark.parametrize("peer, status", [("127.0.0.1", 200), ("::1", 200), ("198.51.100.7", 403)])
def test_local_access_is_by_peer(env, peer, status):
    reply = app_for(env, "local").get("/metrics", environ_base={"REMOTE_ADDR": peer})
    assert reply.status_code == status
    if status == 403:
        assert reply.get_json() == {"status": 403, "payload": '/metrics is readable from this host only '
                                    '(metrics_access = "local"); 198.51.100.7 is not a loopback address'}
    else:
        assert reply.data == b"imapd_ctl_x 1\n"


def test_key_access_needs_the_metrics_permission(env):
    client = app_for(env, "key")
    reader = env.keys.create("prometheus", ["METRICS"])
    remote = {"REMOTE_ADDR": "198.51.100.7"}
    assert client.get("/metrics", environ_base=remote).status_code == 401
    assert client.get("/metrics", environ_base=remote, headers=env.auth()).status_code == 403   # EMAIL only
    assert client.get("/metrics", environ_base=remote, headers=env.auth(reader)).status_code == 200
    # ...and METRICS alone runs no action.
    assert env.call("isRunning", key=reader).status_code == 403


def test_off_is_404(env):
    reply = app_for(env, "off").get("/metrics")
    assert reply.status_code == 404 and reply.get_json()["status"] == 404


def test_state_interval_setting_is_checked(tmp_path):
    path = tmp_path / "c.toml"
    for bad in ("-1", "3601", "nan"):
        path.write_text(f"metrics_state_interval = {bad}\n")
        with pytest.raises(ValueError, match="metrics_state_interval must be a number of seconds from 0"):
            load(str(path))
    path.write_text("metrics_state_interval = 0\n")
    assert load(str(path)).metrics_state_interval == 0


def test_metrics_access_setting_is_checked(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('metrics_access = "everyone"\n')
    with pytest.raises(ValueError, match='metrics_access must be one of local, key, off, got .everyone.'):
        load(str(path))
    path.write_text('metrics_access = "key"\n')
    assert load(str(path)).metrics_access == "key"
    assert Settings().metrics_access == "local"


def test_actions_through_dispatch_are_counted_by_controller(env):
    env.call("isRunning")
    env.call("isRunning", key="wrong-key")         # not authenticated: no action known, not counted
    env.client.post("/nodeworx/mail/simap/listPortNumbers", headers=env.auth())
    got = samples(env.services.metrics.exposition(lambda: READING))
    count = "imapd_ctl_action_duration_seconds_count"
    assert got[(count, (("action", "isRunning"), ("controller", "imap"), ("status", "0")))] == 1
    assert got[(count, (("action", "listPortNumbers"), ("controller", "simap"), ("status", "0")))] == 1
    assert not any(dict(labels).get("status") == "401" for _, labels in got)


# -- the server's state: read at most once per interval for every scraper of every worker ----------

class Reads:
    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1
        return READING


def test_a_reading_serves_every_scrape_of_the_interval_and_a_change_drops_it():
    now = [1000.0]
    m = Metrics(state_interval=10)
    m.state.clock = lambda: now[0]
    reads = Reads()
    first = samples(m.exposition(reads))
    now[0] += 4
    again = samples(m.exposition(reads))
    assert reads.count == 1
    assert first[("imapd_ctl_state_age_seconds", ())] == 0 and again[("imapd_ctl_state_age_seconds", ())] == 4
    assert again[("imapd_ctl_imap_connections", (("port", "143"),))] == 3
    m.action("isRunning", 0, 0.001)              # a read changes nothing
    m.exposition(reads)
    assert reads.count == 1
    m.action("restart", 0, 1.0)                  # a change: the next scrape reads anew
    m.exposition(reads)
    assert reads.count == 2
    now[0] += 10                                 # the interval passed
    m.exposition(reads)
    assert reads.count == 3
    zero = Metrics(state_interval=0)
    zero.exposition(reads)
    zero.exposition(reads)
    assert reads.count == 5


def test_workers_share_one_reading_through_the_directory(tmp_path):
    now = [1000.0]
    workers = [metrics.StateCache(str(tmp_path), 10, clock=lambda: now[0]) for _ in range(2)]
    reads = Reads()
    texts = [w.text(reads) for w in workers]
    assert reads.count == 1 and texts[0] == texts[1]
    assert oct(os.stat(tmp_path / metrics.STATE_FILE).st_mode & 0o777) == "0o600"
    now[0] += 3
    assert workers[1].text(reads)[1] == 3
    workers[0].drop()                            # a change in one worker is seen by the other
    workers[1].text(reads)
    assert reads.count == 2
    assert sorted(os.listdir(tmp_path)) == sorted([metrics.STATE_FILE, metrics.STATE_LOCK])   # no temporary left
