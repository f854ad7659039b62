"""Validation trees on a real host (issue 12 item 7): what doveconf validates holds no private
key and no copy of the live files, lives in the private <state>/validation, and is gone after
every validation; a worker killed mid-validation leaves its tree until the next start, which
removes it (and old-style validate-* copies).

A spy stands in for doveconf (`[dovecot] doveconf`): while a candidate is validated it records
what the tree holds, then runs the real doveconf, or, when told to, SIGKILLs the worker that
called it (its parent), exactly in the middle of a validation.
"""
from __future__ import annotations


import pytest

from daemon import launch

pytestmark = pytest.mark.mailhost

SPY = "/usr/local/sbin/doveconf-spy"
SEEN = "/run/doveconf-spy.seen"
KILL = "/run/doveconf-spy.kill"
TREES = "/var/lib/imapd-ctl/validation"
SPY_SCRIPT = f"""#!/bin/sh
# doveconf -n -c TREE/dovecot.conf: a validation. Record the tree, then run (or kill the worker).
if [ "$1" = -n ] && [ "$2" = -c ]; then
    tree=$(dirname "$3")
    {{
        echo "tree $tree"
        (cd "$tree" && find . -type f | sed 's/^/file /')
        (cd "$tree" && find . -type l -printf 'link %p %l\\n')
        grep -rl -- "PRIVATE KEY" "$tree" 2>/dev/null | sed 's/^/key /'
    }} > {SEEN}
    if [ -e {KILL} ]; then
        rm -f {KILL}
        kill -9 "$PPID"
        sleep 5
    fi
fi
exec /usr/bin/doveconf "$@"
"""


def seen(host) -> dict:
    lines = host.read_file(SEEN).decode().splitlines()
    return {"tree": next(l.split(" ", 1)[1] for l in lines if l.startswith("tree ")),
            "files": sorted(l.split(" ", 1)[1] for l in lines if l.startswith("file ")),
            "links": dict(l.split(" ", 2)[1:] for l in lines if l.startswith("link ")),
            "keys": [l.split(" ", 1)[1] for l in lines if l.startswith("key ")]}


def trees(host) -> list[str]:
    return host.run(["sh", "-c", f"ls -A {TREES} 2>/dev/null; ls -d /var/lib/imapd-ctl/validate-* 2>/dev/null"],
                    check=False).stdout.split()


@pytest.fixture(scope="module")
def spied(mailhost):
    mailhost.write_file(SPY, SPY_SCRIPT, mode=0o755)
    d = launch(mailhost, mailhost.share, extra_config=f'\n[dovecot]\ndoveconf = "{SPY}"\n')
    yield d
    d.stop()


def test_the_tree_holds_the_candidate_only_and_is_gone_after(spied):
    host = spied.host
    assert host.run(["grep", "-l", "PRIVATE KEY", "/etc/dovecot/private/dovecot.key"]).returncode == 0
    status, payload = spied.call("update", {"imap_max_connections": 61, "imap_secure_max_connections": 39})
    assert status == 0, payload
    got = seen(host)
    assert got["tree"].startswith(f"{TREES}/tree-")
    assert got["files"] == ["./conf.d/99-imapd-ctl.conf"]        # no copy of any live file
    assert got["keys"] == []                                      # the private key stayed put
    assert got["links"]["./private"] == "/etc/dovecot/private"    # read where it lives
    assert got["links"]["./dovecot.conf"] == "/etc/dovecot/dovecot.conf"
    assert got["links"]["./conf.d/10-master.conf"] == "/etc/dovecot/conf.d/10-master.conf"
    mode = host.run(["stat", "-c", "%a %U", TREES]).stdout.split()
    assert mode == ["700", "root"]
    assert trees(host) == []
    assert "process_limit = 100" in host.read_file("/etc/dovecot/conf.d/99-imapd-ctl.conf").decode()


def test_a_worker_killed_mid_validation_leaves_nothing_after_the_next_start(spied):
    host = spied.host
    host.write_file(KILL, "")
    before = host.read_file("/etc/dovecot/conf.d/99-imapd-ctl.conf")
    try:
        status, payload = spied.call("update", {"imap_max_connections": 62})
    except OSError:
        status, payload = None, "connection lost"         # the worker died under the call
    assert status != 0, payload
    left = trees(host)
    assert len(left) == 1 and left[0].startswith("tree-"), left                     # the kill left one
    assert host.read_file("/etc/dovecot/conf.d/99-imapd-ctl.conf") == before         # nothing applied
    old_copy = "/var/lib/imapd-ctl/validate-0123abcd/conf/private"   # what versions up to 0.1.0 left
    host.run(["mkdir", "-p", old_copy])
    host.run(["cp", "/etc/dovecot/private/dovecot.key", old_copy])
    spied.stop()
    spied.start()
    assert trees(host) == []
    log = host.run(["journalctl", "--no-pager", "-o", "cat", "-u", "imapd-ctl-test.service"]).stdout
    assert "removed a validation tree left behind: /var/lib/imapd-ctl/validate-0123abcd" in log
    assert f"removed a validation tree left behind: {TREES}/tree-" in log
    assert spied.call("update", {"imap_max_connections": 62})[0] == 0
    assert trees(host) == []
    assert seen(host)["keys"] == [] and seen(host)["files"] == ["./conf.d/99-imapd-ctl.conf"]
