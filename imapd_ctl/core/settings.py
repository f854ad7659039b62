"""The daemon's settings: defaults, overridden by a TOML file (config/imapd-ctl.toml documents
every key). The file is chosen by --config or IMAPD_CTL_CONFIG."""
from __future__ import annotations

import dataclasses
import grp
import os
import re
import socket
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PATH = "/etc/imapd-ctl/imapd-ctl.toml"
FLAVOURS = ("auto", "dovecot", "courier")
BUILT_IN = "(built-in defaults)"   # Settings.source when no file was read
METRICS_ACCESS = ("local", "key", "off")


@dataclass(frozen=True)
class Node:
    """Another node of the cluster (a [[nodes]] table), called by adapters.cluster."""
    id: str
    url: str        # https://host:port of that node's imapd-ctl
    key: str        # the API key this host uses on that node, inline ("" with key_file)
    ca: str         # CA bundle that must have signed that node's certificate
    key_file: str = ""   # or: the file holding that key (owner-only: 0600 or 0400)


@dataclass(frozen=True)
class SecretFile:
    """A file that holds a secret: it must be readable and writable by its owner only."""
    path: str
    holds: str      # what, for messages: "the key of node node2 (key_file)"


@dataclass
class DovecotSettings:
    unit: str = "dovecot.service"
    config: str = "/etc/dovecot/dovecot.conf"
    dropin: str = "/etc/dovecot/conf.d/99-imapd-ctl.conf"
    doveconf: str = "/usr/bin/doveconf"
    doveadm: str = "/usr/bin/doveadm"


@dataclass
class CourierSettings:
    unit: str = "courier-imap.service"          # serves 143, reads `imapd`
    ssl_unit: str = "courier-imap-ssl.service"  # serves 993, reads `imapd` then `imapd-ssl`
    # The directory holding imapd and imapd-ssl; "" detects /etc/courier (Debian) or
    # /etc/courier-imap (RHEL-style).
    config_dir: str = ""


@dataclass
class Settings:
    node_id: str = field(default_factory=lambda: socket.gethostname().split(".")[0] or "localhost")
    state_dir: str = "/var/lib/imapd-ctl"
    socket: str = "/run/imapd-ctl/imapd-ctl.sock"
    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:8143"])
    tls_cert: str = ""
    tls_key: str = ""
    # OpenSSL's list of TLS 1.2 suites for the HTTPS listeners; empty: the policy of
    # imapd_ctl/server/tls.py (ECDHE with AES-GCM or ChaCha20-Poly1305 only)
    tls_ciphers: str = ""
    # A group whose members, like root, call the API over the unix socket without a key (all
    # permissions; the kernel says who connects). Empty: root only. HTTP over TCP needs a key.
    operator_group: str = ""
    workers: int = 1               # gunicorn processes (each: an event loop and 32 threads)
    audit_log: str = "/var/log/imapd-ctl/audit.log"
    flavour: str = "auto"          # auto | dovecot | courier
    port: int = 143                # the port isRunning checks and list* report (/nodeworx/mail/imap)
    ssl_port: int = 993            # the same for IMAP over TLS (/nodeworx/mail/simap)
    lock_timeout: float = 10.0     # seconds a change waits for another before 409
    job_timeout: float = 90.0      # seconds to wait for a systemd job
    listen_timeout: float = 15.0   # seconds to wait for the port after start/restart
    # seconds `serve` gives the recovery of an interrupted change before it listens (below the
    # unit's TimeoutStartSec=120); past it, reads are served and changes refused
    recovery_timeout: float = 60.0
    # Other nodes of the cluster: [[nodes]] tables with id, url (https://...), key, ca.
    nodes: list[Node] = field(default_factory=list)
    node_timeout: float = 30.0     # seconds for one node's answer (forwarding, cascades)
    # More nodes, one file each (ID.toml: url, ca; the key in ID.key beside it, 0600), read
    # again whenever the directory changes: `imapd-ctl node add|remove` writes them.
    nodes_dir: str = "/etc/imapd-ctl/nodes.d"
    # Calls made at once by a cascade, `status --all` and `node check`: every node of a fleet
    # at once, up to this many (each call is a thread and a connection).
    cascade_parallel: int = 4096
    # Who may read /metrics: "local" (the unix socket and loopback TCP peers, no key), "key"
    # (a key holding the METRICS permission, from any listener), "off" (404).
    metrics_access: str = "local"
    # The private directory where each process of the daemon keeps its counts (emptied at start).
    metrics_dir: str = "/run/imapd-ctl/metrics"
    # Seconds the IMAP server's state in /metrics may be old: it is read (doveadm, D-Bus) at
    # most this often for every scraper, and again after any change through the daemon. 0: at
    # every scrape.
    metrics_state_interval: float = 10.0
    dovecot: DovecotSettings = field(default_factory=DovecotSettings)
    courier: CourierSettings = field(default_factory=CourierSettings)
    source: str = BUILT_IN

    @property
    def keys_path(self) -> Path:
        return Path(self.state_dir) / "keys.json"

    @property
    def lock_path(self) -> Path:
        return Path(self.state_dir) / "config.lock"

    def secret_files(self) -> list[SecretFile]:
        """The files these settings make hold secrets: tls_key, each node's key_file, and the
        settings file itself if a node's key is written in it inline. (Their modes are
        checked by adapters.secrets; reading settings stays free of such checks.)"""
        found = []
        if self.tls_key:
            found.append(SecretFile(self.tls_key, "the TLS private key (tls_key)"))
        found += [SecretFile(n.key_file, f"the key of node {n.id} (key_file)") for n in self.nodes if n.key_file]
        inline = [n.id for n in self.nodes if n.key]
        if inline and self.source != BUILT_IN:
            found.append(SecretFile(self.source, f"the key of node {', '.join(inline)} inline "
                                                 f"(move it to a key_file, or keep this file private)"))
        return found


def _apply(obj: Any, table: dict[str, Any], where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in table.items():
        f = fields.get(key)
        if f is None or key == "source":
            raise ValueError(f"{where}: unknown setting {key!r} (known: {', '.join(n for n in fields if n != 'source')})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: [{key}] must be a table")
            _apply(current, value, f"{where} [{key}]")
            continue
        expected = type(current)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool) != isinstance(current, bool):
            raise ValueError(f"{where}: {key} must be {expected.__name__}, got {value!r}")
        setattr(obj, key, value)


def load(path: str | None = None) -> Settings:
    """Read settings; a missing file at the default path means defaults, a missing file
    that was asked for explicitly is an error."""
    explicit = path or os.environ.get("IMAPD_CTL_CONFIG")
    path = explicit or DEFAULT_PATH
    settings = Settings()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if explicit:
            raise ValueError(f"config file {path} does not exist")
        return settings
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    _apply(settings, data, path)
    if settings.flavour not in FLAVOURS:
        raise ValueError(f"{path}: flavour must be one of {', '.join(FLAVOURS)}, got {settings.flavour!r}")
    if settings.recovery_timeout <= 0:
        raise ValueError(f"{path}: recovery_timeout must be a number of seconds above 0, got {settings.recovery_timeout:g}")
    if settings.operator_group:
        try:
            grp.getgrnam(settings.operator_group)
        except KeyError:
            raise ValueError(f"{path}: operator_group: no group named {settings.operator_group!r} on this "
                             "host (create it, or leave it empty: root only)") from None
    if settings.tls_ciphers:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(settings.tls_ciphers)
        except ssl.SSLError:
            raise ValueError(f"{path}: tls_ciphers: OpenSSL matches no cipher suite with "
                             f"{settings.tls_ciphers!r} (an OpenSSL cipher list, e.g. 'ECDHE+AESGCM')") from None
    if settings.metrics_access not in METRICS_ACCESS:
        raise ValueError(f"{path}: metrics_access must be one of {', '.join(METRICS_ACCESS)}, "
                         f"got {settings.metrics_access!r}")
    if not 0 <= settings.metrics_state_interval <= 3600:
        raise ValueError(f"{path}: metrics_state_interval must be a number of seconds from 0 (read at every "
                         f"scrape) to 3600, got {settings.metrics_state_interval:g}")
    if not 1 <= settings.cascade_parallel <= 65536:
        raise ValueError(f"{path}: cascade_parallel must be from 1 to 65536 calls at once, got {settings.cascade_parallel}")
    nodes = settings.nodes    # still the raw [[nodes]] tables of the file
    settings.nodes = [node_from(entry, f"{path} [[nodes]] #{i + 1}") for i, entry in enumerate(nodes)]
    settings.source = path
    return settings


def node_from(entry: Any, where: str) -> Node:
    """A node of the registry from its table (the settings' [[nodes]], a nodes_dir file);
    ValueError naming `where` and what is wrong."""
    fields = ("id", "url", "ca")
    if not isinstance(entry, dict) or not set(fields) <= set(entry) \
            or len({"key", "key_file"} & set(entry)) != 1 or len(entry) != 4:
        raise ValueError(f"{where}: needs exactly the keys {', '.join(fields)} and one of key_file "
                         "(a file holding the key, mode 0600) or key (the key itself)")
    if not all(isinstance(v, str) and v for v in entry.values()):
        raise ValueError(f"{where}: {', '.join(entry)} must be non-empty strings")
    if "key_file" in entry and not entry["key_file"].startswith("/"):
        raise ValueError(f"{where}: key_file must be an absolute path, got {entry['key_file']!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", entry["id"]):
        raise ValueError(f"{where}: id {entry['id']!r} is not a valid node id")
    if not entry["url"].startswith("https://"):
        raise ValueError(f"{where}: url must be https:// (node-to-node calls are verified TLS)")
    return Node(id=entry["id"], url=entry["url"], key=entry.get("key", ""), ca=entry["ca"],
                key_file=entry.get("key_file", ""))
