"""The daemon's own TLS pair: `imapd-ctl tls selfsigned` makes one, `imapd-ctl tls fingerprint`
shows the SHA-256 fingerprint of a certificate (what panels that pin a certificate compare).

The pair is made by the `openssl` command (as the docs' manual recipe does; no Python crypto
library needed): an ECDSA P-256 key and a self-signed certificate for the names given, as a
server certificate only (CA:FALSE, serverAuth). It is generated in a private directory (0700)
next to the key, then moved into place: the key is never readable by anyone but root (0600,
also when it replaces an older key of another mode), the certificate is 0644.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
from dataclasses import dataclass

from imapd_ctl.adapters.files import atomic_write, reason
from imapd_ctl.core.errors import BadInput, ConfigWriteError

DEFAULT_CERT = "/etc/imapd-ctl/tls/imapd-ctl.pem"
DEFAULT_KEY = "/etc/imapd-ctl/tls/imapd-ctl.key"
DAYS_MIN, DAYS_MAX, DAYS_DEFAULT = 1, 36500, 825
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DNS = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*\.?", re.ASCII)


@dataclass(frozen=True)
class Made:
    cert: str
    key: str
    names: tuple[str, ...]
    days: int
    fingerprint: str      # "AB:CD:..." (SHA-256 of the DER certificate)


def fingerprint(pem: bytes) -> str:
    """SHA-256 of the (first) certificate of a PEM file, as `openssl x509 -fingerprint -sha256`
    prints it: upper-case hex pairs joined by colons."""
    text = pem.decode("ascii", "replace")
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise BadInput("cert: not a PEM certificate (no BEGIN/END CERTIFICATE block)")
    try:
        der = ssl.PEM_cert_to_DER_cert(text[start:stop + len(end)] + "\n")
    except ValueError as exc:
        raise BadInput(f"cert: not a PEM certificate ({exc})") from None
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def default_names() -> list[str]:
    """This host's fully qualified name and short name (those that are valid DNS names)."""
    names = []
    for name in (socket.getfqdn(), socket.gethostname()):
        if name and name not in names and _DNS.fullmatch(name) and name != "localhost":
            names.append(name)
    return names or ["localhost"]


def _san(names: list[str]) -> str:
    entries = []
    for name in names:
        try:
            entries.append(f"IP:{ipaddress.ip_address(name)}")
            continue
        except ValueError:
            pass
        if len(name) > 253 or not _DNS.fullmatch(name):
            raise BadInput(f"name: must be a DNS name or an IP address, got {name[:80]!r}")
        entries.append(f"DNS:{name.rstrip('.')}")
    return ", ".join(entries)


def make_selfsigned(cert: str, key: str, names: list[str], days: int = DAYS_DEFAULT, *,
                    force: bool = False, openssl: str = "openssl") -> Made:
    """Make a self-signed pair for `names` (DNS names or IP addresses). Refuses to replace an
    existing file unless `force`. Raises BadInput (names, days, existing files; nothing was
    written) or ConfigWriteError (openssl or the file system failed)."""
    if not names:
        raise BadInput("name: at least one DNS name or IP address is needed")
    san = _san(names)
    if not DAYS_MIN <= days <= DAYS_MAX:
        raise BadInput(f"days: must be an integer from {DAYS_MIN} to {DAYS_MAX}, got {days}")
    if os.path.abspath(cert) == os.path.abspath(key):
        raise BadInput("cert, key: must be two different files")
    existing = [p for p in (cert, key) if os.path.lexists(p)]
    if existing and not force:
        raise BadInput(f"{', '.join(existing)}: already exists; --force replaces it (panels that pinned "
                       "the old certificate must then be given the new fingerprint)")
    if shutil.which(openssl) is None:
        raise ConfigWriteError(f"the {openssl} command is needed to make a key pair (Debian/RHEL package: openssl)")
    common = names[0] if len(names[0]) <= 64 else "imapd-ctl"
    key_dir = os.path.dirname(os.path.abspath(key))
    try:
        os.makedirs(key_dir, mode=0o700, exist_ok=True)
        os.makedirs(os.path.dirname(os.path.abspath(cert)), mode=0o755, exist_ok=True)
        work = tempfile.mkdtemp(prefix=".imapd-ctl-tls.", dir=key_dir)     # 0700
    except OSError as exc:
        raise ConfigWriteError(f"cannot prepare {key_dir}: {reason(exc)}") from None
    try:
        config = os.path.join(work, "req.cnf")
        with open(config, "w", encoding="ascii") as fh:
            fh.write("[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n"
                     f"[dn]\nCN = {common}\n"
                     "[ext]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n"
                     "extendedKeyUsage = serverAuth\nsubjectKeyIdentifier = hash\n"
                     f"subjectAltName = {san}\n")
        new_key, new_cert = os.path.join(work, "key.pem"), os.path.join(work, "cert.pem")
        argv = [openssl, "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-sha256", "-days", str(days), "-config", config, "-keyout", new_key, "-out", new_cert]
        old = os.umask(0o077)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigWriteError(f"cannot run {openssl}: {exc}") from None
        finally:
            os.umask(old)
        if proc.returncode != 0:
            raise ConfigWriteError(f"{openssl} req failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        with open(new_cert, "rb") as fh:
            pem = fh.read()
        os.chmod(new_key, 0o600)
        with open(new_key, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(new_key, key)        # same directory: atomic; the key is 0600 before it is there
        atomic_write(cert, pem)
        os.chmod(cert, 0o644)
    except OSError as exc:
        raise ConfigWriteError(f"cannot write the key pair: {reason(exc)}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Made(cert=cert, key=key, names=tuple(names), days=days, fingerprint=fingerprint(pem))
