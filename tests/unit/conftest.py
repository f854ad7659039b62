"""Fixtures shared by the fast tests of the API (test_api.py, test_xmlrpc.py): the real
wiring, Controller, dispatch, KeyStore and audit log; only systemd, the IMAP server and psutil
are faked."""
import json

import pytest

from imapd_ctl.core.protocols import Applied

from imapd_ctl.adapters import ports
from imapd_ctl.adapters.keys import KeyStore
from imapd_ctl.core.actions import CONTROLLER
from imapd_ctl.core.settings import Settings
from imapd_ctl.entry import wiring
from imapd_ctl.transports.app import create_app

UNIT = "fake-imap.service"


# --- fakes for the external systems -------------------------------------------------------

class FakeUnit:
    def __init__(self, load_state="loaded", unit_file_state="enabled"):
        self.load_state = load_state
        self.unit_file_state = unit_file_state


class FakeSystemd:
    """systemd over D-Bus: unit states and a log of the jobs asked for."""

    def __init__(self):
        self.state = {UNIT: "active"}
        self.units = {UNIT: FakeUnit()}
        self.calls = []

    def ping(self):
        return "252 (fake)"

    def active_state(self, unit):
        return self.state.get(unit, "inactive")

    def main_pid(self, unit):
        return 4242 if self.active_state(unit) == "active" else 0

    def unit(self, unit):
        return self.units.setdefault(unit, FakeUnit())

    def _job(self, verb, unit, state=None):
        self.calls.append((verb, unit))
        if state:
            self.state[unit] = state

    def start(self, unit):
        self._job("start", unit, "active")

    def stop(self, unit):
        self._job("stop", unit, "inactive")

    def restart(self, unit):
        self._job("restart", unit, "active")

    def reload(self, unit):
        self._job("reload", unit)

    def enable(self, unit):
        self._job("enable", unit)
        self.unit(unit).unit_file_state = "enabled"

    def disable(self, unit):
        self._job("disable", unit)
        self.unit(unit).unit_file_state = "disabled"

    def journal_tail(self, unit):
        return f"-- journal of {unit} --"


class FakeFlavour:
    """An IMAP server whose one config file holds the four values as JSON."""
    name = "fake"
    units = (UNIT,)
    primary_unit = UNIT
    DEFAULTS = {"imap_mem_limit": 256000000, "imap_max_connections": 40,
                "imap_secure_mem_limit": 256000000, "imap_secure_max_connections": 40}

    def __init__(self, conf_path):
        self.conf = str(conf_path)
        self.calls = []

    def unit_ports(self):
        return {UNIT: 143}

    def current_values(self):
        try:
            with open(self.conf) as fh:
                return json.load(fh)
        except FileNotFoundError:
            return dict(self.DEFAULTS)

    def plan(self, values):
        return {self.conf: (json.dumps(values, indent=1, sort_keys=True) + "\n").encode()}

    def validate(self, files):
        self.calls.append(("validate", sorted(files)))

    def apply(self, systemd, changed, serving):
        self.calls.append(("apply",))
        systemd.reload(UNIT)
        return Applied(reloaded=(UNIT,))

    def verify(self, systemd, values, applied):
        self.calls.append(("verify", values))


class FakePorts:
    def __init__(self):
        self.listening = True
        self.asked = []

    def __call__(self, main_pid, port):
        self.asked.append((main_pid, port))
        return self.listening and main_pid > 0 and port == 143


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture
def fake_ports(monkeypatch):
    fake = FakePorts()
    monkeypatch.setattr(ports, "unit_listens", fake)
    return fake


@pytest.fixture
def env(tmp_path, fake_ports):
    """Everything one test needs: app, client, keys, fakes and paths."""
    settings = Settings(state_dir=str(tmp_path / "state"), audit_log=str(tmp_path / "audit.log"),
                        node_id="mail1", listen_timeout=1.0)
    systemd = FakeSystemd()
    flavour = FakeFlavour(tmp_path / "imap.conf")
    keys = KeyStore(tmp_path / "state" / "keys.json")
    services = wiring.build(settings, systemd=systemd, flavour=flavour, keys=keys)
    app = create_app(services.context())
    app.testing = True
    env = Env(app=app, client=app.test_client(), settings=settings, systemd=systemd, flavour=flavour,
              keys=keys, ports=fake_ports, audit_log=tmp_path / "audit.log", services=services, unit=UNIT,
              key=keys.create("panel", ["EMAIL"]), dns_key=keys.create("dns", ["DNS"]))
    yield env
    # The audit log attached a file handler to the "imapd_ctl.audit" logger: detach it.
    services.audit.close()


@pytest.fixture
def fake_wiring(tmp_path, monkeypatch, fake_ports):
    """wiring.build with the fake systemd and flavour (for the CLI's check and recover); the
    dict holds the fake classes and, once built, the last graph and its fakes."""
    made = {"Systemd": FakeSystemd, "Flavour": FakeFlavour}
    real_build, built = wiring.build, []

    def build(settings, **kw):
        made["systemd"], made["flavour"] = FakeSystemd(), FakeFlavour(tmp_path / "imap.conf")
        made["services"] = real_build(settings, systemd=made["systemd"], flavour=made["flavour"], **kw)
        built.append(made["services"])
        return made["services"]
    monkeypatch.setattr(wiring, "build", build)
    yield made
    for services in built:
        services.audit.close()


class Env:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def auth(self, key=None):
        return {"Authorization": f"Bearer {key or self.key}"}

    def call(self, action, method="POST", key=None, **kw):
        headers = kw.pop("headers", {})
        if key is not False:
            headers.update(self.auth(key))
        return self.client.open(f"{CONTROLLER}/{action}", method=method, headers=headers, **kw)

    def audit_lines(self):
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]
