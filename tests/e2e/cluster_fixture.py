"""Three mail hosts joined by a bridge, each running Dovecot and imapd-ctl with HTTPS between
them (a CA made here), for the cluster tests and the cascade benchmark.

Addresses: each host's eth0 gets 198.19.0.(10+n) on the bridge (198.18.0.0/15, the range for
benchmarking network devices); every node lists the others in its [[nodes]] registry with a key
that node imported for it ("from-node<n>").
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from daemon import REPO, UNIT, Daemon, launch
from mailhost import MailHost

PORT = 8443


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "2", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=directory)


def issue_cert(directory: Path, ca: str, name: str, ip: str, out_dir: Path) -> None:
    """out_dir/server.{pem,key}: a certificate for `ip` signed by directory/ca.{pem,key}."""
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", f"/CN={name}", "-keyout", str(out_dir / "server.key"), "-out", f"{name}.csr", cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", str(out_dir / "server.pem"),
             cwd=directory)


@dataclass
class Node:
    n: int
    host: MailHost
    share: Path
    daemon: Daemon | None = None

    @property
    def id(self) -> str:
        return f"node{self.n}"

    @property
    def address(self) -> str:
        return f"198.19.0.{10 + self.n}"

    def wait_healthy(self) -> None:
        self.daemon.wait_healthy()


class Cluster3:
    def __init__(self, size: int = 3, workers: int = 2):
        self.size, self.workers = size, workers
        self.nodes: list[Node] = []
        self.pki = Path(tempfile.mkdtemp(prefix="imapd-ctl-pki-", dir="/var/tmp"))
        self.bridge = f"imbr{os.getpid() % 100000}"

    def start(self) -> "Cluster3":
        make_ca(self.pki, "ca")
        make_ca(self.pki, "rogue")
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        for n in range(1, self.size + 1):
            share = Path(tempfile.mkdtemp(prefix=f"imapd-ctl-node{n}-", dir="/var/tmp"))
            host = MailHost(binds=[str(REPO), str(share)], name=f"node{n}")
            node = Node(n, host, share)
            self.nodes.append(node)
            host.boot()
            host.start_dovecot()
            subprocess.run(["ip", "link", "set", host.link, "master", self.bridge], check=True)
            host.run(["ip", "addr", "add", f"{node.address}/24", "dev", "eth0"])
            shutil.copy(self.pki / "ca.pem", share / "ca.pem")
            issue_cert(self.pki, "ca", node.id, node.address, share)
        keys = {(a.n, b.n): "ictl_" + secrets.token_urlsafe(32)
                for a in self.nodes for b in self.nodes if a is not b}
        for node in self.nodes:
            # Each peer key in its own owner-only file, apart from the settings.
            for other in self.nodes:
                if other is not node:
                    key_file = node.share / f"{other.id}.key"
                    key_file.write_text(keys[node.n, other.n] + "\n")
                    key_file.chmod(0o600)
            registry = "".join(
                f'\n[[nodes]]\nid = "{other.id}"\nurl = "https://{other.address}:{PORT}"\n'
                f'key_file = "{node.share / f"{other.id}.key"}"\nca = "{node.share / "ca.pem"}"\n'
                for other in self.nodes if other is not node)
            extra = (f'tls_cert = "{node.share / "server.pem"}"\ntls_key = "{node.share / "server.key"}"\n'
                     f"node_timeout = 20.0\n" + registry)
            node.daemon = launch(node.host, node.share, node_id=node.id, workers=self.workers,
                                 extra_config=extra, listen=("127.0.0.1:8143", f"{node.address}:{PORT}"))
        for (caller, callee), key in keys.items():
            self.nodes[callee - 1].daemon.ctl("key", "import", f"from-node{caller}", input=key + "\n")
        return self

    def reissue_cert(self, node: Node, *, rogue: bool) -> None:
        """Give the node a certificate from the rogue CA (or the real one again); restart it."""
        issue_cert(self.pki, "rogue" if rogue else "ca", node.id, node.address, node.share)
        node.host.systemctl("restart", UNIT)
        node.wait_healthy()

    def stop(self) -> None:
        for node in self.nodes:
            node.host.shutdown()
            shutil.rmtree(node.share, ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.pki, ignore_errors=True)
