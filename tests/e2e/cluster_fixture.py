"""N mail hosts joined by a bridge, each running Dovecot and imapd-ctl with HTTPS between them
(a CA made here), for the cluster tests and the cascade and fleet benchmarks.

Addresses: each host's eth0 gets 198.19.<n // 200>.<10 + n % 200> on the bridge (198.18.0.0/15,
the range for benchmarking network devices; a /16 on eth0, so any count fits). With mesh=True
every node lists the others in its [[nodes]] registry; with mesh=False only node1 does (a fleet
driven from one node), which saves the keys no test uses. Each callee imported the key its
caller holds for it as "from-node<n>".
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from daemon import REPO, UNIT, Daemon, install_project, launch
from mailhost import MailHost

PORT = 8443
_SIGNING = threading.Lock()     # openssl keeps the CA's serial in one file


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "2", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
             # Python 3.13 (Debian 13) verifies strictly (VERIFY_X509_STRICT): a CA must say what it may sign.
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)


def issue_cert(directory: Path, ca: str, name: str, ip: str, out_dir: Path) -> None:
    """out_dir/server.{pem,key}: a certificate for `ip` signed by directory/ca.{pem,key}."""
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n"
                   "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
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
        return f"198.19.{self.n // 200}.{10 + self.n % 200}"

    def wait_healthy(self) -> None:
        self.daemon.wait_healthy()


class HostCluster:
    """`size` hosts of `dist`; `setup_parallel` of them are booted and set up at once."""

    def __init__(self, size: int = 3, workers: int = 2, dist: str = "bookworm", mesh: bool = True,
                 setup_parallel: int = 4, node_timeout: float = 20.0):
        self.size, self.workers, self.dist, self.mesh = size, workers, dist, mesh
        self.setup_parallel, self.node_timeout = max(1, setup_parallel), node_timeout
        self.nodes: list[Node] = []
        self.pki = Path(tempfile.mkdtemp(prefix="imapd-ctl-pki-", dir="/var/tmp"))
        self.bridge = f"imbr{os.getpid() % 100000}"

    def callers(self, node: Node) -> list[Node]:
        """The nodes `node` lists in its registry."""
        if not self.mesh and node.n != 1:
            return []
        return [other for other in self.nodes if other is not node]

    def start(self) -> "HostCluster":
        make_ca(self.pki, "ca")
        make_ca(self.pki, "rogue")
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        for n in range(1, self.size + 1):
            share = Path(tempfile.mkdtemp(prefix=f"imapd-ctl-node{n}-", dir="/var/tmp"))
            # Made here, one at a time: each claims its index (and so its link) in order.
            self.nodes.append(Node(n, MailHost(binds=[str(REPO), str(share)], name=f"node{n}", dist=self.dist),
                                   share))
        keys = {(a.n, b.n): "ictl_" + secrets.token_urlsafe(32)
                for a in self.nodes for b in self.callers(a)}
        with ThreadPoolExecutor(self.setup_parallel) as pool:
            list(pool.map(lambda node: self._set_up(node, keys), self.nodes))
        with ThreadPoolExecutor(self.setup_parallel) as pool:
            list(pool.map(lambda pair: self.nodes[pair[0][1] - 1].daemon.ctl(
                "key", "import", f"from-node{pair[0][0]}", input=pair[1] + "\n"), keys.items()))
        return self

    def _set_up(self, node: Node, keys: dict[tuple[int, int], str]) -> None:
        host, share = node.host, node.share
        host.boot(timeout=120)
        install_project(host)
        host.start_dovecot(timeout=60)
        subprocess.run(["ip", "link", "set", host.link, "master", self.bridge], check=True)
        host.run(["ip", "addr", "add", f"{node.address}/16", "dev", "eth0"])
        shutil.copy(self.pki / "ca.pem", share / "ca.pem")
        with _SIGNING:
            issue_cert(self.pki, "ca", node.id, node.address, share)
        # Each peer key in its own owner-only file, apart from the settings.
        for other in self.callers(node):
            key_file = share / f"{other.id}.key"
            key_file.write_text(keys[node.n, other.n] + "\n")
            key_file.chmod(0o600)
        registry = "".join(
            f'\n[[nodes]]\nid = "{other.id}"\nurl = "https://{other.address}:{PORT}"\n'
            f'key_file = "{share / f"{other.id}.key"}"\nca = "{share / "ca.pem"}"\n'
            for other in self.callers(node))
        extra = (f'tls_cert = "{share / "server.pem"}"\ntls_key = "{share / "server.key"}"\n'
                 f"node_timeout = {self.node_timeout}\n" + registry)
        node.daemon = launch(host, share, node_id=node.id, workers=self.workers, timeout=120,
                             extra_config=extra, listen=("127.0.0.1:8143", f"{node.address}:{PORT}"))

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
