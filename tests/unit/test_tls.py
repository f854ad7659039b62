"""`imapd-ctl tls selfsigned|fingerprint` (imapd_ctl.adapters.tls through imapd_ctl.cli.main):
the pair openssl makes, its modes, what it is a certificate for, the fingerprint as openssl
prints it, and refusals that leave nothing behind."""
import os
import ssl
import stat
import subprocess

import pytest

from imapd_ctl.adapters import tls
from imapd_ctl.core.errors import BadInput
from imapd_ctl.cli import main as cli


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
