"""/metrics through the real server: counts agree whichever worker answers the scrape, and a
real Prometheus (Debian's `prometheus`, started inside the mail host on its loopback) scrapes
it and sees the IMAP server go down and up. The monitoring pack (packaging/monitoring): promtool
checks and unit-tests the rules; the real Prometheus evaluates them on the real daemon's series
(an alert fires when Dovecot is stopped) and every query of the Grafana dashboard returns data."""
from __future__ import annotations

import imaplib
import json
import re
import time
import urllib.parse

import pytest
from prometheus_client.parser import text_string_to_metric_families
from daemon import REPO
from probes import bus_down

pytestmark = pytest.mark.mailhost

PROMETHEUS = "/usr/bin/prometheus"
PROM_UNIT = "prometheus-imapd-ctl-test.service"
PROM_DIR = "/var/tmp/prometheus-test"
PROM_API = "http://127.0.0.1:9090/api/v1/query"
# The daemon listens on 127.0.0.1:8143 inside the host: a loopback peer, which the default
# metrics_access ("local") lets read /metrics without a key.
MONITORING = REPO / "packaging" / "monitoring"
RULES = MONITORING / "imapd-ctl.rules.yml"
DASHBOARD = MONITORING / "imapd-ctl-dashboard.json"
PROM_CONFIG = f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: ["{PROM_DIR}/rules.yml"]
scrape_configs:
  - job_name: imapd-ctl
    static_configs:
      - targets: ["127.0.0.1:8143"]
"""
WAIT = 60      # seconds: bound on every poll below (a scrape a second)


def scrape(daemon) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one GET /metrics over the unix socket."""
    status, body = daemon.http("GET", "/metrics")
    assert status == 200, body
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_counts_are_the_same_whichever_worker_answers(daemon):
    key = ("imapd_ctl_action_duration_seconds_count", (("action", "listServiceName"), ("controller", "imap"), ("status", "0")))
    before = scrape(daemon).get(key, 0)
    calls = 12
    for _ in range(calls):
        assert daemon.call("listServiceName")[0] == 0
    # Two workers share the calls and the scrapes; every scrape adds up all of them.
    seen = {scrape(daemon)[key] for _ in range(8)}
    assert seen == {before + calls}


def test_a_failed_action_is_counted_by_its_status(daemon):
    key = ("imapd_ctl_action_duration_seconds_count", (("action", "update"), ("controller", "imap"), ("status", "400")))
    before = scrape(daemon).get(key, 0)
    assert daemon.call("update", {"imap_max_connections": 0})[0] == 400
    assert scrape(daemon)[key] == before + 1


def test_scrapes_share_one_reading_and_a_change_through_the_daemon_shows_at_once(daemon, mailhost):
    up = ("imapd_ctl_imap_up", (("port", "143"), ("unit", "dovecot.service")))
    assert scrape(daemon)[up] == 1
    assert daemon.call("stop")[0] == 0
    assert scrape(daemon)[up] == 0                           # whichever worker answers
    assert daemon.call("start")[0] == 0
    assert scrape(daemon)[up] == 1                           # read anew after the change
    before = mailhost.last_pid()
    ages = [scrape(daemon)[("imapd_ctl_state_age_seconds", ())] for _ in range(40)]
    # Reading the state runs doveadm and doveconf (3 processes): 40 scrapes of that one reading
    # start none (the second reading of the count is one; a timer of the host's may be another).
    assert mailhost.last_pid() - before <= 2
    assert ages == sorted(ages) and ages[-1] < 10          # one reading, getting older


def test_loopback_tcp_reads_metrics_without_a_key(daemon, mailhost):
    out = mailhost.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{content_type}",
                        "http://127.0.0.1:8143/metrics"]).stdout
    assert out.startswith("200 text/plain"), out


def test_the_bus_going_away_is_said_and_reconnects_are_counted(daemon, mailhost):
    reconnects = ("imapd_ctl_bus_reconnects_total", ())
    for _ in range(6):                     # every worker holds a connection
        assert daemon.call("isRunning") == (0, True)
    before = scrape(daemon)[reconnects]
    with bus_down(mailhost):
        assert daemon.call("isRunning")[0] == 503
        during = scrape(daemon)
        assert during[("imapd_ctl_state_readable", ())] == 0
        assert not any(name == "imapd_ctl_imap_up" for name, _ in during)   # no stale 1
    deadline = time.monotonic() + WAIT
    answered = 0
    while answered < 6 and time.monotonic() < deadline:
        if daemon.call("isRunning") == (0, True):
            answered += 1
        else:
            answered = 0
            time.sleep(0.05)
    assert answered == 6
    after = scrape(daemon)
    assert after[reconnects] > before and after[("imapd_ctl_state_readable", ())] == 1


@pytest.fixture(scope="module")
def prometheus(mailhost, daemon):
    mailhost.write_file(f"{PROM_DIR}/prometheus.yml", PROM_CONFIG)
    # The packaged rules, their `for` cut to seconds (the durations are promtool's to test).
    mailhost.write_file(f"{PROM_DIR}/rules.yml", re.sub(r"for: \d+m", "for: 3s", RULES.read_text()))
    mailhost.run(["systemd-run", f"--unit={PROM_UNIT}", "--collect", PROMETHEUS,
                  f"--config.file={PROM_DIR}/prometheus.yml", f"--storage.tsdb.path={PROM_DIR}/data",
                  "--web.listen-address=127.0.0.1:9090"])
    yield mailhost
    mailhost.systemctl("stop", PROM_UNIT, check=False)


def query(host, expr: str) -> list[float]:
    """The values of an instant query through Prometheus' HTTP API (empty: no series yet, or
    Prometheus not up yet)."""
    url = f"{PROM_API}?{urllib.parse.urlencode({'query': expr})}"
    out = host.run(["curl", "-s", "--max-time", "5", url], check=False).stdout
    try:
        reply = json.loads(out)
    except ValueError:
        return []
    assert reply.get("status") == "success", reply
    return [float(r["value"][1]) for r in reply["data"]["result"]]


def becomes(host, expr: str, want: float) -> list[float]:
    """Poll the query (bounded by WAIT) until its one series has the value `want`; the
    values last seen."""
    deadline = time.monotonic() + WAIT
    while True:
        seen = query(host, expr)
        if seen == [want] or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def test_prometheus_sees_imap_go_down_and_up(prometheus, daemon):
    host = prometheus
    done = {action: scrape(daemon).get(("imapd_ctl_action_duration_seconds_count",
                                         (("action", action), ("controller", "imap"), ("status", "0"))), 0)
            for action in ("stop", "start")}      # by the tests before this one
    up = 'imapd_ctl_imap_up{job="imapd-ctl",port="143"}'
    assert becomes(host, up, 1) == [1]
    assert becomes(host, 'up{job="imapd-ctl"}', 1) == [1]       # the scrape itself succeeds
    assert daemon.call("stop")[0] == 0
    assert becomes(host, up, 0) == [0]
    assert daemon.call("start")[0] == 0
    assert becomes(host, up, 1) == [1]
    # Connections in use, as queryCapacity counts them.
    clients = [imaplib.IMAP4(host.address, 143, timeout=10) for _ in range(3)]
    try:
        assert becomes(host, 'imapd_ctl_imap_connections{job="imapd-ctl",port="143"}', 3) == [3]
    finally:
        for c in clients:
            c.logout()
    assert becomes(host, 'imapd_ctl_imap_connections{job="imapd-ctl",port="143"}', 0) == [0]
    # What Prometheus stored of the daemon's counts: the stop and the start, status 0.
    count = 'imapd_ctl_action_duration_seconds_count{{job="imapd-ctl",action="{}",status="0"}}'
    assert becomes(host, count.format("stop"), done["stop"] + 1) == [done["stop"] + 1]
    assert becomes(host, count.format("start"), done["start"] + 1) == [done["start"] + 1]


def test_promtool_checks_the_rules_and_passes_their_unit_tests(mailhost):
    checked = mailhost.run(["promtool", "check", "rules", str(RULES)], check=False)
    assert checked.returncode == 0 and "SUCCESS: 11 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = mailhost.run(["promtool", "test", "rules", str(REPO / "tests" / "monitoring" / "imapd-ctl.rules.test.yml")],
                          check=False)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query) of every target of the dashboard, its variables as "All" sets them."""
    found = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            expr = (target["expr"].replace("$instance", ".*").replace("$controller", ".*")
                    .replace("$__rate_interval", "1m"))
            found.append((panel["title"], expr))
    return found


def test_every_dashboard_query_returns_data_and_an_alert_fires_when_dovecot_stops(prometheus, daemon):
    host = prometheus
    dashboard = json.loads(DASHBOARD.read_text())
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "instance", "controller"}
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])
    # What the panels show needs happening: a change, a failed call, calls on both controllers.
    assert daemon.call("update", {"imap_max_connections": 61})[0] == 0
    assert daemon.call("update", {"imap_max_connections": 0})[0] == 400
    assert daemon.http("GET", "/nodeworx/mail/simap/listPortNumbers", key=daemon.key)[0] == 200
    for _ in range(5):
        assert daemon.call("isRunning") == (0, True)
    assert becomes(host, 'up{job="imapd-ctl"}', 1) == [1]
    waiting = dict(dashboard_queries())
    # Every recording rule records series from the real daemon's.
    waiting.update({f"record {name}": name for name in re.findall(r"- record: (\S+)", RULES.read_text())})
    deadline = time.monotonic() + WAIT
    while waiting and time.monotonic() < deadline:
        waiting = {title: expr for title, expr in waiting.items() if not query(host, expr)}
        time.sleep(1)
    assert not waiting, f"dashboard queries with no data: {waiting}"
    versions = query_series(host, "imapd_ctl_build_info")
    assert versions and versions[0]["flavour"] == "dovecot" and re.match(r"2\.[34]\.", versions[0]["server_version"])
    # The rules on the real series: stopping Dovecot fires ImapServerDown, and only that.
    firing = 'ALERTS{alertname="%s", alertstate="firing"}'
    assert daemon.call("stop")[0] == 0
    try:
        assert becomes(host, firing % "ImapServerDown", 1) == [1]
        assert query(host, firing % "ImapServerNotListening") == []
    finally:
        assert daemon.call("start")[0] == 0
    assert becomes(host, f'count({firing % "ImapServerDown"}) or vector(0)', 0) == [0]
    assert daemon.call("update", {"imap_max_connections": 60})[0] == 0


def query_series(host, expr: str) -> list[dict]:
    """The label sets of an instant query's series."""
    url = f"{PROM_API}?{urllib.parse.urlencode({'query': expr})}"
    reply = json.loads(host.run(["curl", "-s", "--max-time", "5", url]).stdout)
    return [r["metric"] for r in reply["data"]["result"]]
