"""`imapd-ctl tls selfsigned|fingerprint` (imapd_ctl.adapters.tls through imapd_ctl.cli.main):
the pair openssl makes, its modes, what it is a certificate for, the fingerprint as openssl
prints it, and refusals that leave nothing behind."""
import contextlib
import os
import ssl
import socket
import stat
import subprocess
import threading
import warnings

import pytest

from imapd_ctl.adapters import tls
from imapd_ctl.core.errors import BadInput
from imapd_ctl.cli import main as cli
from imapd_ctl.core import settings
from imapd_ctl.server import tls as server_tls


@pytest.fixture
def config(tmp_path, monkeypatch):
    path = tmp_path / "imapd-ctl.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    monkeypatch.delenv("IMAPD_CTL_CONFIG", raising=False)
    return str(path)


def selfsigned(config, tmp_path, *argv):
    return cli.main(["--config", config, "tls", "selfsigned", "--cert", str(tmp_path / "pub" / "c.pem"),
                     "--key", str(tmp_path / "priv" / "k.pem"), *argv])


def openssl_text(cert) -> str:
    return subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-text", "-fingerprint", "-sha256"],
                          capture_output=True, text=True, check=True).stdout


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_selfsigned_makes_a_server_pair_and_prints_the_fingerprint_openssl_sees(config, tmp_path, capsys):
    assert selfsigned(config, tmp_path, "--name", "mail1.example.com", "--name", "198.51.100.7") == 0
    out, err = capsys.readouterr()
    cert, key = tmp_path / "pub" / "c.pem", tmp_path / "priv" / "k.pem"
    text = openssl_text(cert)
    # "SHA256 Fingerprint=AB:..." as openssl prints it (OpenSSL 3 spells the digest "sha256")
    assert out.startswith("SHA256 Fingerprint=") and len(out.strip().split("=")[1]) == 95
    assert f"sha256 Fingerprint={out.strip().split('=')[1]}" in text.splitlines()
    assert "DNS:mail1.example.com, IP Address:198.51.100.7" in text
    assert "CA:FALSE" in text and "TLS Web Server Authentication" in text
    assert "Subject: CN = mail1.example.com" in text
    assert (mode(key), mode(cert), mode(tmp_path / "priv")) == (0o600, 0o644, 0o700)
    assert os.listdir(tmp_path / "priv") == ["k.pem"]   # the private work directory is gone
    assert 'listen = ["127.0.0.1:8143", "0.0.0.0:2443"]' in err and f'tls_key = "{key}"' in err
    # The pair belongs together and serves TLS.
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert), str(key))
    assert cli.main(["--config", config, "tls", "fingerprint", "--cert", str(cert)]) == 0
    assert capsys.readouterr().out == out


def test_existing_files_are_kept_unless_forced(config, tmp_path, capsys):
    assert selfsigned(config, tmp_path, "--name", "a.example") == 0
    first = (tmp_path / "pub" / "c.pem").read_bytes()
    os.chmod(tmp_path / "priv" / "k.pem", 0o644)
    capsys.readouterr()
    assert selfsigned(config, tmp_path, "--name", "b.example") == 2
    assert "already exists; --force replaces it" in capsys.readouterr().err
    assert (tmp_path / "pub" / "c.pem").read_bytes() == first
    assert selfsigned(config, tmp_path, "--name", "b.example", "--force") == 0
    assert (tmp_path / "pub" / "c.pem").read_bytes() != first
    assert mode(tmp_path / "priv" / "k.pem") == 0o600      # a replaced key is 0600 whatever it was


@pytest.mark.parametrize("argv, message", [
    (["--name", "bad name"], "name: must be a DNS name or an IP address, got 'bad name'"),
    (["--name", "x\nCN = evil"], "name: must be a DNS name or an IP address"),
    (["--name=-lead.example"], "name: must be a DNS name"),
    (["--name", "ok.example", "--days", "0"], "days: must be an integer from 1 to 36500, got 0"),
])
def test_bad_input_names_the_field_and_writes_nothing(config, tmp_path, capsys, argv, message):
    assert selfsigned(config, tmp_path, *argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "pub").exists() and not (tmp_path / "priv").exists()


def test_defaults_come_from_the_settings(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "s.toml"
    cfg.write_text(f'tls_cert = "{tmp_path / "t.pem"}"\ntls_key = "{tmp_path / "t.key"}"\n')
    monkeypatch.delenv("IMAPD_CTL_CONFIG", raising=False)
    assert cli.main(["--config", str(cfg), "tls", "selfsigned", "--name", "h.example"]) == 0
    err = capsys.readouterr().err
    assert (tmp_path / "t.pem").exists() and (tmp_path / "t.key").exists()
    assert "listen =" not in err          # already what the settings serve: only the restart hint


def test_fingerprint_of_something_that_is_not_a_certificate(config, tmp_path, capsys):
    (tmp_path / "x.pem").write_text("hello\n")
    assert cli.main(["--config", config, "tls", "fingerprint", "--cert", str(tmp_path / "x.pem")]) == 2
    assert "cert: not a PEM certificate" in capsys.readouterr().err
    assert cli.main(["--config", config, "tls", "fingerprint", "--cert", str(tmp_path / "none.pem")]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(BadInput, match="at least one"):
        tls.make_selfsigned(str(tmp_path / "c"), str(tmp_path / "k"), [])


def _handshake(server_ctx, protocol=None, ciphers=None):
    """The suite a client with these limits agrees with the server on, None if they cannot."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    if protocol is not None:
        with warnings.catch_warnings():     # TLSv1_1 is deprecated: the point is that it fails
            warnings.simplefilter("ignore", DeprecationWarning)
            client.minimum_version = client.maximum_version = protocol
    if ciphers is not None:
        client.set_ciphers(ciphers + ":@SECLEVEL=0")
    a, b = socket.socketpair()
    a.settimeout(5), b.settimeout(5)

    def serve():
        with contextlib.suppress(OSError):
            server_ctx.wrap_socket(a, server_side=True).recv(1)
    server = threading.Thread(target=serve)
    server.start()
    try:
        with client.wrap_socket(b) as tls_sock:
            return tls_sock.cipher()[0]
    except (ssl.SSLError, OSError):
        return None
    finally:
        server.join(5)
        a.close()
        b.close()


def test_the_https_policy_is_tls12_and_13_with_forward_secret_aead_suites_only(tmp_path):
    """server/tls.py, over a real handshake: what a scanner would try against the listener. An
    RSA certificate (an operator's own, e.g. Let's Encrypt's RSA ones), with which OpenSSL's
    defaults would also offer static-RSA key exchange."""
    pair = (str(tmp_path / "rsa.pem"), str(tmp_path / "rsa.key"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=a.example",
                    "-days", "2", "-out", pair[0], "-keyout", pair[1]], check=True, capture_output=True)
    ctx = server_tls.context(*pair)
    assert _handshake(ctx).startswith("TLS_")                                   # TLS 1.3
    assert _handshake(ctx, ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-GCM-SHA256") == "ECDHE-RSA-AES128-GCM-SHA256"
    assert _handshake(ctx, ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-CHACHA20-POLY1305") == "ECDHE-RSA-CHACHA20-POLY1305"
    for weak in ("AES128-SHA:AES256-SHA:AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA384",
                 "DHE-RSA-AES128-SHA"):
        assert _handshake(ctx, ssl.TLSVersion.TLSv1_2, weak) is None, weak
    assert _handshake(ctx, ssl.TLSVersion.TLSv1_1, "ALL") is None
    # An operator's tls_ciphers (gunicorn's `ciphers`) replaces the TLS 1.2 list.
    assert _handshake(server_tls.context(*pair, "AES128-SHA"), ssl.TLSVersion.TLSv1_2, "AES128-SHA") == "AES128-SHA"


def test_a_cipher_list_openssl_cannot_use_is_refused_naming_the_setting(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('tls_ciphers = "NO-SUCH-SUITE"\n')
    with pytest.raises(ValueError, match="tls_ciphers: OpenSSL matches no cipher suite"):
        settings.load(str(path))
