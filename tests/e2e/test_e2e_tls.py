"""HTTPS on port 2443, where InterWorx API clients call (https://HOST:2443, hard-coded): the real
daemon inside a mail host serves it with a certificate signed by a CA this test makes, and
clients on the machine verify it against that CA only (Python's ssl, xmlrpc.client and curl
--cacert); then with the pair `imapd-ctl tls selfsigned` makes, whose printed fingerprint is the
one the client sees."""
from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import subprocess
import xmlrpc.client

import pytest

from daemon import launch, tls_settings, write_config

pytestmark = pytest.mark.mailhost

PORT = 2443
LISTEN = ("127.0.0.1:8143", f"0.0.0.0:{PORT}")
TLS_DIR = "/etc/imapd-ctl/tls"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory, mailhost):
    """A CA of this test, a server certificate it signed for the host's address, and an
    unrelated CA."""
    where = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other"):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-days", "2", "-subj", f"/CN=test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", cwd=where)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", f"/CN={mailhost.address}", "-keyout", "server.key", "-out", "server.csr", cwd=where)
    (where / "san.ext").write_text(f"subjectAltName=IP:{mailhost.address}\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=where)
    return where


@pytest.fixture(scope="module")
def daemon(mailhost, pki):
    """The daemon with TLS on its TCP listeners: loopback 8143 and every address on 2443."""
    cert, key = f"{TLS_DIR}/server.pem", f"{TLS_DIR}/server.key"
    mailhost.write_file(cert, (pki / "server.pem").read_bytes(), mode=0o644)
    mailhost.write_file(key, (pki / "server.key").read_bytes(), mode=0o600)
    d = launch(mailhost, mailhost.share, listen=LISTEN, extra_config=tls_settings(cert, key))
    yield d
    d.stop()


def context(cafile) -> ssl.SSLContext:
    """What a verifying client does: the chain against `cafile` only, and the host's IP."""
    return ssl.create_default_context(cafile=str(cafile))


def get(host: str, path: str, key: str, ctx: ssl.SSLContext) -> tuple[dict, bytes]:
    """One HTTPS GET to port 2443; (envelope, the server's DER certificate)."""
    conn = http.client.HTTPSConnection(host, PORT, context=ctx, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        der = conn.sock.getpeercert(binary_form=True)
        return json.loads(conn.getresponse().read()), der
    finally:
        conn.close()


def test_https_on_2443_is_verified_against_the_ca_that_signed_it(daemon, mailhost, pki):
    addr = mailhost.address
    envelope, der = get(addr, "/nodeworx/mail/simap/isRunning", daemon.key, context(pki / "ca.pem"))
    assert envelope == {"status": 0, "payload": True}
    assert der == ssl.PEM_cert_to_DER_cert((pki / "server.pem").read_text())
    # A client that trusts another CA (or only the system bundle) refuses the server.
    with pytest.raises(ssl.SSLCertVerificationError):
        get(addr, "/nodeworx/mail/imap/isRunning", daemon.key, context(pki / "other.pem"))
    with pytest.raises(ssl.SSLCertVerificationError):
        get(addr, "/nodeworx/mail/imap/isRunning", daemon.key, ssl.create_default_context())


def test_curl_with_cacert_and_xmlrpc_clients_call_https_host_2443_unchanged(daemon, mailhost, pki):
    url = f"https://{mailhost.address}:{PORT}"
    out = subprocess.run(["curl", "-sS", "--cacert", str(pki / "ca.pem"), "-H", f"Authorization: Bearer {daemon.key}",
                          f"{url}/nodeworx/mail/simap/listServiceName"], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, '{"status": 0, "payload": "imap4-ssl"}\n'), out.stderr
    refused = subprocess.run(["curl", "-sS", f"{url}/healthz"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 60, refused          # 60: peer certificate cannot be authenticated
    # An InterWorx-style XML-RPC client, only its base URL and key set.
    api = xmlrpc.client.ServerProxy(f"{url}/xmlrpc", context=context(pki / "ca.pem"), allow_none=True)
    for ctrl, port in (("/nodeworx/mail/imap", "143"), ("/nodeworx/mail/simap", "993")):
        reply = api.iworx.route(daemon.key, ctrl, "listServiceInfo", {})
        assert reply["status"] == 0 and reply["payload"]["ports"] == port and reply["payload"]["is_running"] == 1
    # The unix socket stays plain HTTP for local operators.
    assert daemon.call("isRunning") == (0, True)


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_php_soapclient_calls_https_2443_verifying_the_test_ca(daemon, mailhost, pki, version):
    """As ClientExec does: new SoapClient('https://HOST:2443/soap?wsdl') with the certificate
    verified (here against the test's CA only); the WSDL names the HTTPS endpoint it came from."""
    for ca in ("ca", "other"):
        mailhost.write_file(f"/run/php-{ca}.pem", (pki / f"{ca}.pem").read_bytes())
    base = f"https://{mailhost.address}:{PORT}"
    calls = [[daemon.key, ctrl, "listServiceInfo", {}] for ctrl in ("/nodeworx/mail/imap", "/nodeworx/mail/simap")]
    calls.append(["wrong-" + daemon.key, "/nodeworx/mail/imap", "isRunning", {}])
    entries = daemon.php("soap", "/soap?wsdl", calls, version, base=base, cafile="/run/php-ca.pem")
    assert [e["result"]["payload"]["ports"] for e in entries[:2]] == ["143", "993"], entries
    assert all(e["result"]["payload"]["is_running"] == 1 for e in entries[:2])
    assert entries[2]["result"] == {"status": 401, "payload": "unknown API key"}
    assert f"Host: {mailhost.address}:{PORT}" in entries[0]["request_headers"]
    refused = daemon.php("soap", "/soap?wsdl", calls[:1], version, base=base, cafile="/run/php-other.pem", check=False)
    assert refused.returncode != 0 and "Parsing WSDL" in refused.stdout + refused.stderr, refused


def test_selfsigned_command_fingerprint_is_what_the_client_sees(daemon, mailhost, pki):
    addr = mailhost.address
    where = "/etc/imapd-ctl/selfsigned"          # made by the command
    cert, key = f"{where}/cert.pem", f"{where}/key.pem"
    made = daemon.ctl("tls", "selfsigned", "--name", addr, "--cert", cert, "--key", key)
    printed = made.stdout.strip()
    assert printed.startswith("SHA256 Fingerprint="), made.stdout
    modes = mailhost.run(["stat", "-c", "%a %U %n", cert, key, where]).stdout.split("\n")
    assert modes[:3] == [f"644 root {cert}", f"600 root {key}", f"700 root {where}"]
    assert daemon.ctl("tls", "fingerprint", "--cert", cert).stdout.strip() == printed
    write_config(daemon.share, daemon.node_id, listen=LISTEN, extra=tls_settings(cert, key))
    daemon.stop()
    daemon.start()
    try:
        pinned = pki / "self.pem"
        pinned.write_bytes(mailhost.read_file(cert))        # a panel that trusts exactly this certificate
        envelope, der = get(addr, "/nodeworx/mail/imap/isRunning", daemon.key, context(pinned))
        assert envelope == {"status": 0, "payload": True}
        seen = hashlib.sha256(der).hexdigest().upper()
        assert printed == "SHA256 Fingerprint=" + ":".join(seen[i:i + 2] for i in range(0, 64, 2))
        with pytest.raises(ssl.SSLCertVerificationError):        # the CA's pair is no longer served
            get(addr, "/nodeworx/mail/imap/isRunning", daemon.key, context(pki / "ca.pem"))
    finally:
        write_config(daemon.share, daemon.node_id, listen=LISTEN,
                     extra=tls_settings(f"{TLS_DIR}/server.pem", f"{TLS_DIR}/server.key"))
        daemon.stop()
        daemon.start()
