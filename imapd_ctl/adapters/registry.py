"""The cluster's registry: the [[nodes]] of the settings, and one file per node in a drop-in
directory (`nodes_dir`, default /etc/imapd-ctl/nodes.d) that an operator (`imapd-ctl node
add|remove`) or a configuration-management run keeps with plain files:

    /etc/imapd-ctl/nodes.d/node2.toml     url = "https://...:2443"   ca = "/path/ca.pem"
                                          (key_file = "..." or key = "..."; neither: node2.key beside it)
    /etc/imapd-ctl/nodes.d/node2.key      the key node2 issued for this node, mode 0600

The directory is read again whenever it changed (one stat per call), so a node added or removed
counts from the next call without a restart. A file that cannot be used is skipped and logged;
an id also in the settings keeps the settings' entry.
"""
from __future__ import annotations

import logging
import os
import threading
import tomllib
from typing import Callable

from imapd_ctl.adapters.files import atomic_remove, atomic_write
from imapd_ctl.core.settings import Node, node_from

log = logging.getLogger(__name__)

SUFFIX = ".toml"
KEY_SUFFIX = ".key"


def read_node(path: str) -> Node:
    """The node one drop-in file describes; ValueError naming the file and what is wrong."""
    node_id = os.path.basename(path)[:-len(SUFFIX)]
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    if data.get("id", node_id) != node_id:
        raise ValueError(f"{path}: id {data['id']!r} differs from the file's name ({node_id})")
    entry = {**data, "id": node_id}
    if "key" not in entry and "key_file" not in entry:
        entry["key_file"] = os.path.join(os.path.dirname(path), node_id + KEY_SUFFIX)
    return node_from(entry, path)


class Registry:
    """Every node: `listed` (the settings' [[nodes]]) then the directory's, by id."""

    def __init__(self, listed: list[Node], directory: str, stat: Callable[[str], os.stat_result] = os.stat):
        self.listed = list(listed)
        self.directory = directory
        self._stat = stat
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._found: list[Node] = []

    def nodes(self) -> list[Node]:
        return self.listed + self._dropins()

    def source(self, node_id: str) -> str:
        """Where a node is described: "settings", its drop-in file, or ""."""
        if any(n.id == node_id for n in self.listed):
            return "settings"
        path = os.path.join(self.directory, node_id + SUFFIX)
        return path if any(n.id == node_id for n in self._dropins()) else ""

    def _dropins(self) -> list[Node]:
        try:
            st = self._stat(self.directory)
        except OSError:
            return []
        seen = (st.st_mtime_ns, st.st_ino)
        with self._lock:
            if seen != self._seen:
                self._found, self._seen = self._read(), seen
            return self._found

    def _read(self) -> list[Node]:
        taken = {n.id for n in self.listed}
        found = []
        for name in sorted(os.listdir(self.directory)):
            if not name.endswith(SUFFIX) or name.startswith("."):
                continue
            path = os.path.join(self.directory, name)
            try:
                node = read_node(path)
            except (OSError, ValueError) as exc:
                log.warning("cluster registry: %s is skipped: %s", path, exc)
                continue
            if node.id in taken:
                log.warning("cluster registry: %s is skipped: node %s is also in the settings' [[nodes]]",
                            path, node.id)
                continue
            found.append(node)
        return found


def add(directory: str, node_id: str, url: str, ca: str, key: str) -> tuple[str, str]:
    """Write node_id's drop-in (validated as the daemon will read it) and its key (0600);
    (the file, the key file). The key is written first: a node is never listed without it."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, node_id + SUFFIX)
    key_path = os.path.join(directory, node_id + KEY_SUFFIX)
    node_from({"id": node_id, "url": url, "ca": ca, "key_file": key_path}, "node add")   # refuses bad values
    text = f"# imapd-ctl node add {node_id}\nurl = {_quote(url)}\nca = {_quote(ca)}\n"
    atomic_write(key_path, key.strip().encode() + b"\n", default_mode=0o600)
    os.chmod(key_path, 0o600)
    atomic_write(path, text.encode(), default_mode=0o644)
    return path, key_path


def remove(directory: str, node_id: str) -> list[str]:
    """Remove node_id's drop-in and the key beside it; the paths removed."""
    gone = []
    for path in (os.path.join(directory, node_id + SUFFIX), os.path.join(directory, node_id + KEY_SUFFIX)):
        if os.path.lexists(path):
            atomic_remove(path)
            gone.append(path)
    return gone


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
