"""API keys (imapd_ctl.adapters.keys.KeyStore): hashed storage, authentication, CLI operations."""
import hashlib
import json
import os
import stat
import threading
import time

import pytest


from imapd_ctl.core.errors import BadInput, Forbidden, Unauthorized
from imapd_ctl.adapters.keys import KeyStore
from imapd_ctl.core.protocols import Principal
from imapd_ctl.transports.http import KNOWN, key_gate


@pytest.fixture
def path(tmp_path):
    return tmp_path / "state" / "keys.json"


@pytest.fixture
def store(path):
    return KeyStore(path)


def test_created_key_authenticates_with_email(store):
    key = store.create("panel", ["EMAIL"])
    principal = store.authenticate(key, "EMAIL")
    assert principal.name == "panel"
    assert principal.perms == ("EMAIL",)


def test_created_keys_are_random_and_long(store):
    a, b = store.create("a", ["EMAIL"]), store.create("b", ["EMAIL"])
    assert a != b
    assert len(a) >= 40 and a.isascii() and " " not in a


def test_key_file_is_0600_and_holds_only_a_hash(store, path):
    key = store.create("panel", ["EMAIL"])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert key not in text
    assert key[5:] not in text  # nor the random part without its prefix
    entry = json.loads(text)["keys"][0]
    assert entry["name"] == "panel" and entry["perms"] == ["EMAIL"]


def test_list_shows_names_and_perms_but_no_secrets(store):
    key = store.create("panel", ["EMAIL", "METRICS"])
    store.create("dns-only", ["METRICS"])
    entries = store.entries()
    assert [(e["name"], e["perms"]) for e in entries] == [("panel", ["EMAIL", "METRICS"]), ("dns-only", ["METRICS"])]
    for e in entries:
        assert set(e) == {"name", "perms", "created"}
    assert key not in json.dumps(entries)


def test_empty_store_lists_nothing_and_refuses_keys(store):
    assert store.entries() == []
    with pytest.raises(Unauthorized):
        store.authenticate("ictl_" + "x" * 43, "EMAIL")


def test_revoke_makes_the_key_unauthorized(store):
    key = store.create("panel", ["EMAIL"])
    keep = store.create("other", ["EMAIL"])
    assert store.revoke("panel") is True
    with pytest.raises(Unauthorized) as err:
        store.authenticate(key, "EMAIL")
    assert err.value.status == 401
    assert store.authenticate(keep, "EMAIL").name == "other"
    assert [e["name"] for e in store.entries()] == ["other"]


def test_revoke_unknown_name_returns_false(store):
    store.create("panel", ["EMAIL"])
    assert store.revoke("nobody") is False
    assert [e["name"] for e in store.entries()] == ["panel"]


def test_key_without_email_is_forbidden_naming_the_permission(store):
    key = store.create("dns", ["METRICS"])
    for _ in range(2):      # also once the key is remembered (it authenticated for METRICS)
        with pytest.raises(Forbidden) as err:
            store.authenticate(key, "EMAIL")
        assert err.value.status == 403
        assert "EMAIL" in err.value.message and "'dns'" in err.value.message
        assert key not in err.value.message
        assert store.authenticate(key, "METRICS").name == "dns"


def test_key_with_no_perms_is_forbidden(store):
    key = store.create("nothing", [])
    with pytest.raises(Forbidden, match="EMAIL"):
        store.authenticate(key, "EMAIL")


@pytest.mark.parametrize("secret", [None, "", 0, 1, b"key", ["key"], {"apikey": "key"}, "unknown-key-" * 4,
                                    "x" * 5000, "\udcff" * 40])
def test_missing_or_unknown_key_is_unauthorized(store, secret):
    store.create("panel", ["EMAIL"])
    with pytest.raises(Unauthorized) as err:
        store.authenticate(secret, "EMAIL")
    assert err.value.status == 401


def test_near_miss_keys_are_unauthorized(store):
    key = store.create("panel", ["EMAIL"])
    for wrong in (key[:-1], key + "x", key.upper(), key[:10] + "\n" + key[10:], key + "\x85",
                  "\u00a0" + key, key + "\x00"):
        with pytest.raises(Unauthorized):
            store.authenticate(wrong, "EMAIL")


def test_import_accepts_a_40_char_key(store):
    secret = "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0"
    assert len(secret) == 40
    store.import_key("legacy", secret, ["EMAIL"])
    assert store.authenticate(secret, "EMAIL").name == "legacy"


@pytest.mark.parametrize("secret", [
    "short", "x" * 31, "abcd efgh ijkl mnop qrst uvwx yz01 2345", "ä" * 40, "key\t" + "x" * 40,
    "x" * 1025, "",
])
def test_import_rejects_bad_keys(store, path, secret):
    with pytest.raises(BadInput) as err:
        store.import_key("legacy", secret, ["EMAIL"])
    assert err.value.status == 400
    assert not path.exists()


def test_duplicate_name_is_refused(store):
    first = store.create("panel", ["EMAIL"])
    with pytest.raises(BadInput, match="panel"):
        store.create("panel", ["EMAIL"])
    with pytest.raises(BadInput, match="panel"):
        store.import_key("panel", "k" * 40, ["EMAIL"])
    assert len(store.entries()) == 1
    assert store.authenticate(first, "EMAIL").name == "panel"


def test_same_secret_twice_is_refused(store):
    store.import_key("a", "s" * 40, ["EMAIL"])
    with pytest.raises(BadInput):
        store.import_key("b", "s" * 40, ["METRICS"])


@pytest.mark.parametrize("name", ["", "-x", "a b", "a\nb", "x" * 65, "ä"])
def test_bad_names_are_refused(store, name):
    with pytest.raises(BadInput):
        store.create(name, ["EMAIL"])


@pytest.mark.parametrize("perm", ["email", "FOO", "WEB", ""])
def test_a_permission_this_daemon_does_not_know_is_refused_naming_the_known_ones(store, perm):
    with pytest.raises(BadInput, match="is not one of this daemon's: EMAIL .*METRICS .*no key was made"):
        store.create("panel", ["EMAIL", perm])
    assert store.entries() == []


def test_another_worker_sees_keys_created_and_revoked_by_the_cli(path):
    worker = KeyStore(path)
    cli = KeyStore(path)
    assert worker.entries() == []                      # no file yet
    first = cli.create("panel", ["EMAIL"])
    assert worker.authenticate(first, "EMAIL").name == "panel"
    second = cli.create("panel2", ["EMAIL"])           # file already loaded by the worker
    assert worker.authenticate(second, "EMAIL").name == "panel2"
    cli.revoke("panel")
    with pytest.raises(Unauthorized):
        worker.authenticate(first, "EMAIL")
    assert worker.authenticate(second, "EMAIL").name == "panel2"


BODY = ["Zm9vYmFyYmF6cXV4" * 4, "MTIzNDU2Nzg5MGFi" * 4, "c2VjcmV0Lz0r"]
BLOCK = "-----BEGIN INTERWORX API KEY-----\n" + "\n".join(BODY) + "\n-----END INTERWORX API KEY-----"


@pytest.mark.parametrize("sent", [
    BLOCK, BLOCK + "\n", BLOCK + "\r\n", BLOCK.replace("\n", "\r\n"), "\n  " + BLOCK + "\n\n",
    BLOCK.replace("\n", " "), "".join(BODY), " " + "".join(BODY) + "\n",
])
def test_an_interworx_block_is_one_key_however_it_is_wrapped(store, sent):
    store.import_key("iworx", BLOCK + "\n", ["EMAIL"])
    assert store.authenticate(sent, "EMAIL").name == "iworx"


def test_surrounding_whitespace_of_a_key_is_not_part_of_it(store):
    key = store.create("panel", ["EMAIL"])
    for sent in (key + "\n", key + "\r\n", " " + key, "\t" + key + " \n"):
        assert store.authenticate(sent, "EMAIL").name == "panel"


def test_only_a_hash_of_the_canonical_key_is_stored(store, path):
    store.import_key("iworx", BLOCK, ["EMAIL"])
    stored = path.read_text()
    assert all(line not in stored for line in BODY) and "INTERWORX" not in stored
    assert json.loads(stored)["keys"][0]["sha256"] == hashlib.sha256("".join(BODY).encode()).hexdigest()


@pytest.mark.parametrize("block", [
    "-----BEGIN INTERWORX API KEY-----\n-----END INTERWORX API KEY-----",
    "-----BEGIN INTERWORX API KEY-----\nshort\n-----END INTERWORX API KEY-----",
    "-----BEGIN INTERWORX API KEY-----\n" + "x" * 40 + "\nEND",
])
def test_a_broken_block_is_refused_naming_the_forms(store, path, block):
    with pytest.raises(BadInput, match="INTERWORX API KEY"):
        store.import_key("iworx", block, ["EMAIL"])
    assert not path.exists()


def _create(path, name, out):
    out.put((name, KeyStore(path).create(name, ["EMAIL"])))


def _revoke(path, name, out):
    out.put((name, KeyStore(path).revoke(name)))


def test_concurrent_changes_in_processes_lose_nothing(path):
    """Creates racing revokes, in real processes: every printed key is stored, every revoke
    that answered True removed its key (the e2e twin runs the CLI against the daemon)."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    for name in ("old1", "old2", "old3"):
        KeyStore(path).create(name, ["EMAIL"])
    out = ctx.Queue()
    procs = [ctx.Process(target=_create, args=(path, f"k{i}", out)) for i in range(12)]
    procs += [ctx.Process(target=_revoke, args=(path, name, out)) for name in ("old1", "old2", "old3", "k0", "k1")]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    created = {name: value for name, value in results if isinstance(value, str)}
    revoked = {name for name, value in results if value is True}
    assert len(created) == 12 and {"old1", "old2", "old3"} <= revoked
    reader = KeyStore(path)
    for name, key in created.items():
        if name in revoked:
            with pytest.raises(Unauthorized):
                reader.authenticate(key, "EMAIL")
        else:
            assert reader.authenticate(key, "EMAIL").name == name
    assert {e["name"] for e in reader.entries()} == set(created) - revoked


def test_a_reader_sees_every_change_at_once(path):
    """A worker's store sees each change of another process's store on its next call, even
    changes that follow each other within the file system's timestamp granularity and leave
    the file the same size."""
    worker, cli = KeyStore(path), KeyStore(path)
    cli.create("seed", ["EMAIL"])
    for _ in range(30):
        key = cli.create("same", ["EMAIL"])
        assert worker.authenticate(key, "EMAIL").name == "same"
        assert cli.revoke("same")
        with pytest.raises(Unauthorized):
            worker.authenticate(key, "EMAIL")


def test_a_request_during_another_ones_load_waits_for_it(path, monkeypatch):
    """Two first requests at once (a worker's threads): the second must not read the key set
    while the first is still loading it (it answered 401 to a valid key)."""
    key = KeyStore(path).create("panel", ["EMAIL"])
    worker = KeyStore(path)
    real_look, loading = worker._look, threading.Event()

    def slow_look(fresh):
        loading.set()
        time.sleep(0.3)                  # the load under way when the second request comes
        real_look(fresh)
    monkeypatch.setattr(worker, "_look", slow_look)
    first = threading.Thread(target=worker.authenticate, args=(key, "EMAIL"))
    first.start()
    assert loading.wait(5)
    assert worker.authenticate(key, "EMAIL").name == "panel"
    first.join()



def test_the_servers_gate_says_who_may_call_which_keys_are_ours_and_nothing_else(store):
    """transports.http.key_gate: asked by the server's loop for each request's Authorization
    header; its answer travels with the request (dispatch then does not look the key up again)."""
    panel, web = store.create("panel", ["EMAIL"]), store.create("web", ["METRICS"])
    gate = key_gate(store)
    assert gate(f"Bearer {panel}") == Principal("panel", ("EMAIL",))
    assert gate(f"Bearer {web}") == KNOWN
    for header in (None, "", f"Basic {panel}", "Bearer nope", f"Bearer {panel}x", "Bearer "):
        assert gate(header) is None
    store.revoke("panel")
    assert gate(f"Bearer {panel}") is None
