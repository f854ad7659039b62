"""Fixtures shared by the fast tests of the API (test_api.py, test_xmlrpc.py, test_cli.py): the
real wiring, Controller, dispatch, KeyStore and audit log; only systemd, the IMAP server and
psutil are faked (the fakes are in fakes.py)."""
import json

import pytest
from fakes import FakeFlavour, FakePorts, FakeSystemd

from imapd_ctl.adapters import ports
from imapd_ctl.adapters.keys import KeyStore
from imapd_ctl.core.actions import CONTROLLER
from imapd_ctl.core.settings import Settings
from imapd_ctl.daemon import wiring
from imapd_ctl.transports.app import create_app

UNIT = FakeFlavour.primary_unit


def fake_systemd():
    """systemd with the fake flavour's unit running."""
    return FakeSystemd({UNIT: "active"}, pids={UNIT: 4242})


def fake_flavour(tmp_path):
    return FakeFlavour(tmp_path / "imap.conf", tmp_path / "imaps.conf")


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture
def fake_ports(monkeypatch):
    fake = FakePorts()
    monkeypatch.setattr(ports, "unit_listens", fake)
    monkeypatch.setattr(ports, "connections", fake.connections)
    return fake


@pytest.fixture
def env(tmp_path, fake_ports):
    """Everything one test needs: app, client, keys, fakes and paths."""
    settings = Settings(state_dir=str(tmp_path / "state"), audit_log=str(tmp_path / "audit.log"),
                        node_id="mail1", listen_timeout=1.0)
    systemd = fake_systemd()
    flavour = fake_flavour(tmp_path)
    keys = KeyStore(tmp_path / "state" / "keys.json")
    services = wiring.build(settings, systemd=systemd, flavour=flavour, keys=keys)
    app = create_app(services.context())
    app.testing = True
    env = Env(app=app, client=app.test_client(), settings=settings, systemd=systemd, flavour=flavour,
              keys=keys, ports=fake_ports, audit_log=tmp_path / "audit.log", services=services, unit=UNIT,
              key=keys.create("panel", ["EMAIL"]), dns_key=keys.create("dns", ["METRICS"]))
    yield env
    services.audit.close()


@pytest.fixture
def fake_wiring(tmp_path, monkeypatch, fake_ports):
    """wiring.build with the fake systemd and flavour (for the CLI's check and recover); the
    dict holds the fake classes and, once built, the last graph and its fakes."""
    made = {"Systemd": FakeSystemd, "Flavour": FakeFlavour}
    real_build, built = wiring.build, []

    def build(settings, **kw):
        made["systemd"], made["flavour"] = fake_systemd(), fake_flavour(tmp_path)
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

    def audit_lines(self, phase="end"):
        """The audit lines of `phase` ("begin": a change about to run; "end": its result)."""
        if not self.audit_log.exists():
            return []
        lines = [json.loads(line) for line in self.audit_log.read_text().splitlines()]
        return [line for line in lines if line["phase"] == phase]
