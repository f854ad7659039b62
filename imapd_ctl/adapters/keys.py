"""API keys: random, shown once, stored only as SHA-256 hashes with their permissions.

A key is compared in its canonical form (`canonical`): without the whitespace around it, and an
InterWorx key block (the key's lines between `-----BEGIN INTERWORX API KEY-----` and
`-----END INTERWORX API KEY-----`, as panels hold and send it) reduced to its body without
line breaks. So the block with any line endings, indentation or trailing newline, and its body
on one line (an HTTP header cannot carry line breaks), are the same key, on every transport.

A plain (unsalted, fast) hash is enough because every key is high-entropy: created keys carry
256 random bits and imported keys must be at least 32 characters. A slow password hash would
put ~100 ms on every request for no gain against brute force of such keys.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from imapd_ctl.adapters.files import atomic_write
from imapd_ctl.adapters.filewatch import FileWatch
from imapd_ctl.core.actions import PERMISSIONS
from imapd_ctl.core.errors import BadInput, Forbidden, Unauthorized
from imapd_ctl.core.protocols import Principal

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", re.ASCII)
IMPORT_MIN_LEN = 32
KEY_MAX_LEN = 1024                 # the canonical key
RAW_MAX_LEN = 4 * KEY_MAX_LEN      # as sent: a block's armour, line breaks, padding
KNOWN_MAX = 64                     # keys remembered per worker (each as sent) between loads
BLOCK_BEGIN = "-----BEGIN INTERWORX API KEY-----"
BLOCK_END = "-----END INTERWORX API KEY-----"
_SPACE = " \t\r\n"                # ASCII whitespace only: U+0085 or U+00A0 stay part of a key
_LINE_BREAKS = re.compile(r"[ \t\r\n]+")


def canonical(secret: str) -> str:
    """The key as stored and compared: surrounding ASCII whitespace dropped; an InterWorx key
    block reduced to its body with its whitespace (line breaks) removed."""
    text = secret.strip(_SPACE)
    if text.startswith(BLOCK_BEGIN) and text.endswith(BLOCK_END) and len(text) >= len(BLOCK_BEGIN + BLOCK_END):
        return _LINE_BREAKS.sub("", text[len(BLOCK_BEGIN):len(text) - len(BLOCK_END)])
    return text


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    """What changes when the file is replaced or rewritten."""
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class KeyStore:
    """The key file (JSON, mode 0600).

    Readers (every worker) never lock: a change replaces the file by rename (write a temp
    file, fsync, rename, fsync the directory), so a reader sees the old or the new file whole.
    A worker holds the file it loaded open, so that inode cannot be reused: a replaced file
    always has another inode, and every change is seen by the next request, without a
    restart. Changes (the CLI's create, import, revoke) are serialised across processes by
    flock on `keys.json.lock`, and each reads the file afresh under that lock: no change is
    lost, and a revoke that says "revoked" removed the key for good."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._held: Any = None          # the loaded file, kept open (see above)
        self._stamp: tuple[int, ...] | None = None
        self._watch = FileWatch(self.path)
        self._seen, self._covered = 1, 0   # the first call looks at the file
        self._loading = threading.Lock()
        self._by_digest: dict[str, dict[str, Any]] = {}
        # Keys as sent that authenticated since the file was loaded -> who they are: a panel's
        # poll is not hashed again (SHA-256 through OpenSSL cost it ~0.02 of its req/s ratio,
        # bench/isrunning.py). A new dict with each key set: a request that read the old set
        # can only add to the old dict.
        self._known: dict[str, Principal] = {}
        self._entries: list[dict[str, Any]] = []

    # -- reading ---------------------------------------------------------------
    def _load(self, *, fresh: bool = False) -> None:
        """Every request: the file is looked at only when its directory's inotify queue says
        it may have changed (adapters.filewatch: no system call that releases the GIL).
        Changes seen are counted (`_seen`); a load covers those counted before it began
        (`_covered`). A request that knows of a change no finished load covers waits for the
        load under way, or makes one: it never reads a key set that is being replaced or
        predates what it knows."""
        if self._watch.changed():
            self._seen += 1         # two threads may count one; a load still covers both
        if self._covered >= self._seen and not fresh:
            return
        with self._loading:
            seen = self._seen
            if self._covered >= seen and not fresh:
                return              # loaded while this thread waited
            self._look(fresh)
            self._covered = seen

    def _look(self, fresh: bool) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._forget()
            return
        if _stamp(st) == self._stamp and not fresh:
            return
        try:
            held = open(self.path, "rb")
        except FileNotFoundError:
            self._forget()
            return
        with contextlib.ExitStack() as undo:
            undo.callback(held.close)
            st = os.fstat(held.fileno())
            entries = json.loads(held.read())["keys"]
            undo.pop_all()
        self._forget()
        self._held, self._entries = held, entries
        self._by_digest, self._known = {e["sha256"]: e for e in entries}, {}
        self._stamp = _stamp(st)

    def _forget(self) -> None:
        if self._held is not None:
            self._held.close()
        self._held, self._stamp, self._entries = None, None, []
        self._by_digest, self._known = {}, {}

    def entries(self) -> list[dict[str, Any]]:
        self._load()
        return [{k: e[k] for k in ("name", "perms", "created")} for e in self._entries]

    def authenticate(self, secret: Any, required: str) -> Principal:
        """Return who is calling, or raise Unauthorized (no/unknown key) or Forbidden."""
        if not isinstance(secret, str) or not secret:
            raise Unauthorized("an API key is required (HTTP: 'Authorization: Bearer KEY'; "
                               "XML-RPC, SOAP: the key string or {'apikey': KEY} as first argument)")
        self._load()
        # `_known` before `_by_digest` (a load sets them in the other order): a key found in
        # a set since replaced can only be remembered in that set's dict, never in the new one.
        known = self._known
        who = known.get(secret)
        if who is None:
            # Looking up the hash (not the key) leaks nothing useful through timing.
            key = canonical(secret) if len(secret) <= RAW_MAX_LEN else ""
            entry = self._by_digest.get(_digest(key)) if key and len(key) <= KEY_MAX_LEN else None
            if entry is None:
                raise Unauthorized("unknown API key")
            who = Principal(entry["name"], tuple(entry["perms"]))
            if len(known) >= KNOWN_MAX:
                known.clear()
            known[secret] = who
        if required not in who.perms:
            raise Forbidden(f"key {who.name!r} lacks the {required} permission "
                            f"(it has: {', '.join(who.perms) or 'none'})")
        return who

    # -- changing (CLI) --------------------------------------------------------
    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Hold the store's change lock, with the file read afresh under it."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)   # the holder is another short key command
            self._load(fresh=True)
            yield
        finally:
            os.close(fd)                     # releases the lock

    def _save(self, entries: list[dict[str, Any]]) -> None:
        data = json.dumps({"keys": entries}, indent=1, sort_keys=True).encode() + b"\n"
        atomic_write(self.path, data, default_mode=0o600)   # temp, fsync, rename, fsync dir
        self._forget()
        self._seen += 1

    @staticmethod
    def _check(name: str, perms: list[str]) -> None:
        if not NAME_RE.fullmatch(name):
            raise BadInput(f"key name: must match {NAME_RE.pattern}, got {name!r}")
        for p in perms:
            if p not in PERMISSIONS:
                raise BadInput(f"permission: {p!r} is not one of this daemon's: "
                               + "; ".join(f"{name} ({what})" for name, what in PERMISSIONS.items())
                               + "; no key was made")

    def add(self, name: str, secret: str, perms: list[str]) -> None:
        self._check(name, perms)
        digest = _digest(secret)
        with self._changing():
            if any(e["name"] == name for e in self._entries):
                raise BadInput(f"key name: a key named {name!r} exists; revoke it first")
            if digest in self._by_digest:
                raise BadInput("key: this key is already stored")
            entry = {"name": name, "sha256": digest, "perms": sorted(set(perms)),
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self._save(self._entries + [entry])

    def create(self, name: str, perms: list[str]) -> str:
        secret = "ictl_" + secrets.token_urlsafe(32)
        self.add(name, secret, perms)
        return secret

    def import_key(self, name: str, secret: str, perms: list[str]) -> None:
        """Store a key given as is, or as an InterWorx key block (see `canonical`)."""
        secret = canonical(secret) if len(secret) <= RAW_MAX_LEN else secret
        if len(secret) < IMPORT_MIN_LEN or len(secret) > KEY_MAX_LEN or not secret.isascii() \
                or not secret.isprintable() or " " in secret:
            raise BadInput(f"key: must be {IMPORT_MIN_LEN} to {KEY_MAX_LEN} printable ASCII "
                           f"characters without spaces, or an InterWorx key block ({BLOCK_BEGIN}, "
                           f"the key's lines, {BLOCK_END})")
        self.add(name, secret, perms)

    def revoke(self, name: str) -> bool:
        """True once the key is gone from the file (False: there was no such key)."""
        with self._changing():
            kept = [e for e in self._entries if e["name"] != name]
            if len(kept) == len(self._entries):
                return False
            self._save(kept)
            return True
