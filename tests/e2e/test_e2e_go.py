"""A Go InterWorx API client against the real daemon on a real Dovecot host: github.com/kolo/xmlrpc
(Debian's golang-github-kolo-xmlrpc-dev), as InterWorx integrations written in Go use it
(jakdept/iworxApi), driven by tests/e2e/go_client (built once for the module) inside the host:
https://HOST:2443/xmlrpc without verifying the certificate (here the pair `imapd-ctl tls
selfsigned` makes), route({"apikey": KEY}, ctrl_name, action, input) with the input a Go map, an
empty slice for no input, numbers as Go ints or as strings. Each reply must be the one Python's
xmlrpc.client gets for the same call.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from daemon import IMAPD_CTL, REPO, launch, tls_settings
from imapd_ctl.core.actions import CONTROLLERS
from panel_walk import UPDATE, check_same_as_xmlrpc, walk

pytestmark = pytest.mark.mailhost

SOURCE = REPO / "tests" / "e2e" / "go_client"
GOPATH = "/usr/share/gocode"          # where Debian's golang-*-dev packages put their source
# Not a Go call: Go's client sends every key in an {apikey} map (asserted below), and kolo/xmlrpc
# cannot send a nil input.
NOT_GO = {"apikey-map-nil-input"}
PORT = 2443


@pytest.fixture(scope="module")
def daemon(mailhost):
    """The daemon serving HTTPS on 2443 too, with the pair `imapd-ctl tls selfsigned` makes (what
    an operator does for panels that do not verify the certificate, as Go's do not)."""
    cert, key = "/etc/imapd-ctl/tls/go.pem", "/etc/imapd-ctl/tls/go.key"
    mailhost.run([IMAPD_CTL, "tls", "selfsigned", "--name", mailhost.address, "--cert", cert, "--key", key])
    d = launch(mailhost, mailhost.share, listen=("127.0.0.1:8143", f"0.0.0.0:{PORT}"),
               extra_config=tls_settings(cert, key))
    yield d
    d.stop()


@pytest.fixture(scope="module")
def go_client(mailhost) -> str:
    """The Go client built (offline, from Debian's kolo/xmlrpc source; build cache in a temp dir)
    into the host's shared dir, so it runs inside the host."""
    if shutil.which("go") is None or not os.path.isdir(f"{GOPATH}/src/github.com/kolo/xmlrpc"):
        pytest.fail("go or kolo/xmlrpc missing: run `sudo scripts/setup`", pytrace=False)
    binary = mailhost.share / "go_client"
    # cgo left on: Debian ships the standard library built so (about 1 s; CGO_ENABLED=0 rebuilds it, 7 s).
    with tempfile.TemporaryDirectory(prefix="imapd-ctl-gocache-") as cache:
        env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOCACHE": cache, "GOPROXY": "off",
               "GOFLAGS": ""}
        built = subprocess.run(["go", "build", "-o", str(binary), "."], cwd=SOURCE, env=env,
                               capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, f"go build failed:\n{built.stdout}{built.stderr}"
    return str(binary)


@pytest.mark.parametrize("ctrl", list(CONTROLLERS))
@pytest.mark.parametrize("numbers, tag", [(int, "int"), (str, "string")], ids=["go-ints", "strings"])
def test_go_kolo_xmlrpc_client_walk(daemon, go_client, numbers, tag, ctrl):
    current = daemon.call("queryUpdate")[1]
    assert current != UPDATE
    calls = [c for c in walk(daemon.key, current, ctrl, numbers=numbers, no_input=[]) if c[0] not in NOT_GO]
    entries = daemon.go(go_client, "/xmlrpc", [params for _, params in calls],
                        base=f"https://{daemon.host.address}:{PORT}")
    sent = dict(zip((label for label, _ in calls), (e["request"] for e in entries)))
    # What the Go client put on the wire: the key in a struct, an empty <array> for no input,
    # numbers as asked.
    assert f"<member><name>apikey</name><value><string>{daemon.key}</string></value></member>" in sent["isRunning"]
    assert "<param><value><array><data></data></array></value></param>" in sent["isRunning"]
    assert f"<value><{tag}>61</{tag}></value>" in sent["update"]
    assert "<boolean>1</boolean>" in sent["startOnBoot-true"]
    check_same_as_xmlrpc(daemon, calls, entries)
    assert daemon.call("queryUpdate") == (0, current)
    assert daemon.host.systemctl("is-enabled", "dovecot.service").stdout.strip() == "enabled"
