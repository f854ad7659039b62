"""Run the real imapd-ctl (gunicorn) inside a booted MailHost and talk to it.

The daemon runs as a transient systemd unit inside the host, from this checkout's venv (the
repo is bind-mounted at the same path). Its unix socket lives in a directory bind-mounted
from the caller, so tests and the demo reach it from outside the host.
"""
from __future__ import annotations

import functools
import json
import time
import warnings
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path

from imapd_ctl.core.actions import CONTROLLER
from imapd_ctl.cli import client

REPO = Path(__file__).resolve().parents[2]

# The seed's example payloads of the constant list* actions (the compatibility target).
SEED_PAYLOADS = {
    "listGeneralName": "##LG_IMAP##",
    "listPortNumbers": "143",
    "listPortNumbersArray": [143],
    "listRequiredPermissions": ["EMAIL"],
    "listServiceName": "imap4",
    "listServicePage": "/nodeworx/mail/mda",
}


# The same for InterWorx's secure-IMAP controller: service imap4-ssl on port 993.
SIMAP = "/nodeworx/mail/simap"
PAYLOADS = {
    CONTROLLER: SEED_PAYLOADS,
    SIMAP: {**SEED_PAYLOADS, "listGeneralName": "##LG_SIMAP##", "listPortNumbers": "993",
            "listPortNumbersArray": [993], "listServiceName": "imap4-ssl"},
}
CONTROLLERS = list(PAYLOADS)       # what the walk is parametrized over


def caller(daemon: "Daemon", transport: str, controller: str = CONTROLLER):
    """daemon.call (HTTP JSON), daemon.route (XML-RPC) or daemon.soap, bound to one controller."""
    method = {"http": daemon.call, "xmlrpc": daemon.route, "soap": daemon.soap}[transport]
    return functools.partial(method, controller=controller)


def service_info(running: int, controller: str = CONTROLLER) -> dict:
    """The seed's listServiceInfo payload (of simap: the same for imap4-ssl on 993)."""
    p = PAYLOADS[controller]
    return {"id": p["listServiceName"], "name": p["listGeneralName"], "ports": p["listPortNumbers"],
            "page": p["listServicePage"], "ctrl": controller, "is_running": running}


def assert_seed_payloads(call, node_id: str, controller: str = CONTROLLER) -> None:
    """The read-only actions answer the seed's example payloads on a running server."""
    for action, payload in PAYLOADS[controller].items():
        assert call(action) == (0, payload), action
    assert call("isRunning") == (0, True)
    assert call("isRunningOnNode") == (0, True)
    assert call("isRunningOnNode", {"node_id": node_id}) == (0, True)
    assert call("listServiceInfo") == (0, service_info(1, controller))


def exercise_every_action(call, node_id: str) -> dict:
    """Run all 20 actions with their usual inputs through `call` (Daemon.call or .route),
    asserting each succeeds, and leave the server as it was: running, enabled at boot, with
    the limits it had. Returns those limits (queryUpdate before)."""
    from imapd_ctl.core.actions import ACTIONS
    current = call("queryUpdate")[1]
    plan = [
        ("stop", {}), ("start", {}), ("restart", {"cascade_to_nodes": 0}),
        ("stopOnNode", {"node_id": node_id}), ("startOnNode", {}),
        ("restartOnNode", {"node_id": node_id}),
        ("startOnBoot", {"mda_imap_startonboot": 0}), ("queryStartOnBoot", {}),
        ("startOnBoot", {"mda_imap_startonboot": 1}), ("queryStartOnBoot", {}),
        ("update", {"imap_max_connections": current["imap_max_connections"] + 1}),
        ("update", current), ("queryUpdate", {}), ("queryCapacity", {}),
        ("isRunning", {}), ("isRunningOnNode", {}), ("listServiceInfo", {}),
        *[(name, {}) for name in SEED_PAYLOADS],
    ]
    assert {name for name, _ in plan} == set(ACTIONS)
    for name, inputs in plan:
        status, payload = call(name, inputs)
        assert status == 0, (name, payload)
    assert call("queryStartOnBoot") == (0, {"mda_imap_startonboot": 1})
    assert call("queryUpdate") == (0, current)
    assert call("isRunning") == (0, True)
    return current
VENV_BIN = REPO / ".venv" / "bin"
# The command inside a test host (install_project puts it there): on Debian 12 it runs this
# checkout's venv; on Debian 13 (Python 3.13) this checkout's code on Debian's own python3
# modules (Flask 3.1, gunicorn 23, psutil 7, gi), which the venv's 3.11 cannot load.
IMAPD_CTL = "/usr/local/bin/imapd-ctl"
UNIT = "imapd-ctl-test.service"


def project_python(host) -> str:
    """The Python that runs the project inside `host` (install_project)."""
    return str(VENV_BIN / "python") if host.dist == "bookworm" else "/usr/bin/python3"


def install_project(host) -> None:
    """Install this checkout (bind-mounted at REPO) as IMAPD_CTL inside a booted host."""
    if host.dist == "bookworm":
        launcher = f'#!/bin/sh\nexec {VENV_BIN / "imapd-ctl"} "$@"\n'
    else:
        launcher = ("#!/usr/bin/python3\nimport sys\nsys.dont_write_bytecode = True\n"
                    f"sys.path.insert(0, {str(REPO)!r})\n"
                    "from imapd_ctl.cli.main import main\nsys.exit(main())\n")
    host.write_file(IMAPD_CTL, launcher, mode=0o755)


@dataclass
class Daemon:
    host: object                # tests.mailhost.MailHost
    share: Path
    config: str
    key: str                    # has EMAIL
    key_without_email: str
    node_id: str

    @property
    def socket(self) -> str:
        return str(self.share / "imapd-ctl.sock")

    def call(self, action: str, inputs: dict | None = None, *, key: str | None = "default",
             method: str = "POST", controller: str = CONTROLLER):
        """(status, payload) of one HTTP JSON call over the unix socket."""
        return client.call(self.socket, self.key if key == "default" else key, action, inputs,
                           method=method, controller=controller)

    def http(self, method: str, url: str, **kw) -> tuple[int, bytes]:
        return client.request(self.socket, method, url, **kw)

    def xmlrpc(self) -> xmlrpc.client.ServerProxy:
        return xmlrpc.client.ServerProxy("http://localhost/xmlrpc", allow_none=True,
                                         transport=client.UnixTransport(self.socket))

    def route(self, action: str, inputs=None, *, key=None, controller: str = CONTROLLER):
        """iworx.route over XML-RPC exactly as InterWorx clients call it."""
        reply = self.xmlrpc().iworx.route(self.key if key is None else key, controller, action, inputs)
        return reply["status"], reply["payload"]

    def soap(self, action: str, inputs=None, *, key=None, version: str = "1.1", controller: str = CONTROLLER):
        """route over SOAP, in the envelope PHP's SoapClient sends (tests/e2e/soapwire.py); no
        input is PHP's array(), an empty SOAP-ENC:Array."""
        import soapwire
        body = soapwire.envelope([self.key if key is None else key, controller, action,
                                  [] if inputs is None else inputs], version)
        status, reply = self.http("POST", "/soap", body=body, headers={"Content-Type": soapwire.CTYPE[version]})
        answer = soapwire.read(reply)
        assert status == 200 and answer.fault is None, (status, answer)
        return answer.result["status"], answer.result["payload"]

    def php(self, client: str, path: str, calls: list, version: str = "1.1", *,
            base: str = "http://127.0.0.1:8143", cafile: str | None = None, check: bool = True):
        """PHP's own API client ("soap": SoapClient through the WSDL at `path`; "xmlrpc": ext/xmlrpc
        POSTing to `path`) making `calls` (route's parameters) from inside the host to `base`
        (HTTPS: verified against `cafile`, a path inside the host); one dict per call
        (tests/e2e/php_client.php). With check=False: the CompletedProcess, for a failing run."""
        request = {"client": client, "url": base + path, "version": version, "calls": calls}
        if cafile is not None:
            request["cafile"] = cafile
        run = self.host.run(["php", str(REPO / "tests" / "e2e" / "php_client.php")], input=json.dumps(request),
                            check=check)
        return json.loads(run.stdout) if check else run

    def go(self, binary: str, path: str, calls: list, *, base: str = "http://127.0.0.1:8143") -> list[dict]:
        """The Go client (tests/e2e/go_client, built to `binary`, a path the host sees) making
        `calls` (route's parameters, the key a string) from inside the host to `base` + `path`,
        one run per call; one dict per call, shaped as php()'s."""
        return [json.loads(self.host.run([binary, base + path, key, ctrl, action], input=json.dumps(inputs)).stdout)
                for key, ctrl, action, inputs in calls]

    def ctl(self, *args: str, check: bool = True, input: str | None = None):
        """Run the imapd-ctl command inside the host with this daemon's config."""
        return self.host.run([IMAPD_CTL, "--config", self.config, *args], check=check, input=input)

    def audit_lines(self, phase: str = "end") -> list[dict]:
        """The audit lines of `phase` ("begin": a change about to run; "end": its result)."""
        text = self.host.read_file("/var/log/imapd-ctl/audit.log").decode()
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [line for line in lines if line["phase"] == phase]

    def start(self, timeout: float = 30) -> None:
        """Run the daemon as a transient unit (gone once stopped: start() makes it again)."""
        self.host.run(["systemd-run", f"--unit={UNIT}", "--collect", "-p", "KillMode=mixed",
                       "--setenv=PYTHONUNBUFFERED=1", IMAPD_CTL, "--config", self.config, "serve"])
        self.wait_healthy(timeout)

    def stop(self) -> None:
        if self.host.running:   # a host shut down first took the daemon with it
            stop_unit(self.host, UNIT)

    def wait_healthy(self, timeout: float = 30) -> None:
        """Return when /healthz answers on the unix socket; raise with the unit's log if not."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.request(self.socket, "GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                log = self.host.run(["journalctl", "--no-pager", "-n", "40", "-u", UNIT], check=False).stdout
                raise RuntimeError(f"imapd-ctl did not answer on {self.socket} within {timeout} s:\n{log}")
            time.sleep(0.1)


SLOW_STOP = 20.0     # seconds after which a stop is worth a look at what the daemon is doing


def _threads(host, unit: str) -> str:
    """Each process of `unit` with its threads' names, states and kernel wait channels."""
    script = (f'for p in $(systemctl show -p ControlGroup --value {unit} | xargs -I@ cat /sys/fs/cgroup@/cgroup.procs); do '
              'echo "pid $p: $(tr "\\0" " " </proc/$p/cmdline)"; for t in /proc/$p/task/*; do '
              'echo "  $(cat $t/comm) $(cut -d" " -f3 $t/stat) $(cat $t/wchan)"; done; done')
    return host.run(["sh", "-c", script], check=False).stdout


def stop_unit(host, unit: str, timeout: float = 120) -> None:
    """Stop `unit` and wait until it is gone. A stop that takes longer than SLOW_STOP is
    reported (a warning in the test output) with what each of its threads waits on and the
    unit's log, so a rare slow shutdown can be read from a CI log; systemd ends it itself
    after its TimeoutStopSec."""
    host.systemctl("stop", "--no-block", unit, check=False)
    began = time.monotonic()
    reported = False
    while host.systemctl("show", "-p", "ActiveState", "--value", unit, check=False).stdout.strip() \
            in ("active", "activating", "deactivating", "reloading"):
        waited = time.monotonic() - began
        if waited > timeout:
            raise RuntimeError(f"{unit} still stopping after {timeout:.0f} s:\n{_threads(host, unit)}")
        if waited > SLOW_STOP and not reported:
            reported = True
            log = host.run(["journalctl", "--no-pager", "-n", "30", "-u", unit], check=False).stdout
            warnings.warn(f"{unit} took more than {SLOW_STOP:.0f} s to stop; its threads:\n"
                          f"{_threads(host, unit)}\nits log:\n{log}")
        time.sleep(0.1)


def write_config(share: Path, node_id: str, workers: int = 2, extra: str = "",
                 listen: tuple[str, ...] = ("127.0.0.1:8143",)) -> str:
    """The daemon's settings file in the shared dir; `extra` is appended (TOML)."""
    path = share / "imapd-ctl.toml"
    path.write_text(
        f'node_id = "{node_id}"\n'
        f'socket = "{share / "imapd-ctl.sock"}"\n'
        f"listen = {json.dumps(list(listen))}\n"
        f"workers = {workers}\n"
        'state_dir = "/var/lib/imapd-ctl"\n'
        'audit_log = "/var/log/imapd-ctl/audit.log"\n'
        + extra
    )
    return str(path)


def tls_settings(cert: str, key: str) -> str:
    """The settings lines (TOML) that make the daemon serve TLS on its TCP listeners."""
    return f'tls_cert = "{cert}"\ntls_key = "{key}"\n'


def launch(host, share: Path, *, node_id: str = "node1", workers: int = 2, timeout: float = 30,
           extra_config: str = "", listen: tuple[str, ...] = ("127.0.0.1:8143",)) -> Daemon:
    """Install the project (install_project), create keys and start the daemon inside `host`;
    return when /healthz answers."""
    install_project(host)
    share.mkdir(parents=True, exist_ok=True)
    config = write_config(share, node_id, workers, extra_config, listen)
    run = lambda *a, **kw: host.run([IMAPD_CTL, "--config", config, *a], **kw)  # noqa: E731
    key = run("key", "create", "panel").stdout.strip()
    key_without_email = run("key", "create", "webonly", "--perm", "METRICS").stdout.strip()
    daemon = Daemon(host, share, config, key, key_without_email, node_id)
    daemon.start(timeout)
    return daemon
