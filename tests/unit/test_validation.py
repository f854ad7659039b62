"""Validation scratch trees (adapters/flavours/validation.py): private, no copies of live files
(private keys above all), gone however validation ends, and leftovers removed."""
import os
import stat
from pathlib import Path

import pytest

from imapd_ctl.adapters.flavours import validation

KEY = b"-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def live(tmp_path):
    """A small live configuration directory: a main file, conf.d, a private key."""
    conf = tmp_path / "etc-dovecot"
    (conf / "conf.d").mkdir(parents=True)
    (conf / "private").mkdir(mode=0o700)
    (conf / "dovecot.conf").write_text("!include conf.d/*.conf\n")
    (conf / "conf.d" / "10-master.conf").write_text("# admin\n")
    (conf / "conf.d" / "99-imapd-ctl.conf").write_text("# old drop-in\n")
    (conf / "private" / "dovecot.key").write_bytes(KEY)
    return conf


def regular_files(tree: Path) -> list[str]:
    return sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file() and not p.is_symlink())


def test_the_tree_links_live_files_and_holds_only_the_candidate(tmp_path, live):
    state = tmp_path / "state"
    dropin = str(live / "conf.d" / "99-imapd-ctl.conf")
    with validation.candidate_tree(state, live, {dropin: b"# new drop-in\n"}) as tree:
        assert regular_files(tree) == ["conf.d/99-imapd-ctl.conf"]     # no key, no copy
        assert (tree / "conf.d" / "99-imapd-ctl.conf").read_bytes() == b"# new drop-in\n"
        assert os.readlink(tree / "private") == str(live / "private")
        assert os.readlink(tree / "conf.d" / "10-master.conf") == str(live / "conf.d" / "10-master.conf")
        assert (tree / "dovecot.conf").read_text() == "!include conf.d/*.conf\n"
        assert tree.parent == state / "validation"
        assert stat.S_IMODE(os.stat(tree.parent).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(tree).st_mode) == 0o700
        assert KEY not in b"".join(p.read_bytes() for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    assert list((state / "validation").iterdir()) == []
    assert (live / "conf.d" / "99-imapd-ctl.conf").read_text() == "# old drop-in\n"   # live untouched


def test_a_removed_candidate_is_absent_and_a_new_directory_is_made(tmp_path, live):
    files = {str(live / "conf.d" / "99-imapd-ctl.conf"): None, str(live / "new.d" / "x.conf"): b"x\n"}
    with validation.candidate_tree(tmp_path / "state", live, files) as tree:
        assert not (tree / "conf.d" / "99-imapd-ctl.conf").exists()
        assert (tree / "conf.d" / "10-master.conf").is_symlink()
        assert (tree / "new.d" / "x.conf").read_bytes() == b"x\n"


@pytest.mark.parametrize("failure", [RuntimeError, OSError, KeyboardInterrupt])
def test_the_tree_is_removed_on_every_failure(tmp_path, live, failure):
    state = tmp_path / "state"
    with pytest.raises(failure):
        with validation.candidate_tree(state, live, {str(live / "conf.d" / "99-imapd-ctl.conf"): b"x"}):
            raise failure("validation failed")
    assert list((state / "validation").iterdir()) == []
    assert (live / "private" / "dovecot.key").read_bytes() == KEY   # symlinks unlinked, never followed


def test_leftovers_of_a_killed_worker_and_old_copies_are_removed(tmp_path, live):
    state = tmp_path / "state"
    killed = validation.private_dir(state) / "tree-killed"
    (killed / "conf.d").mkdir(parents=True)
    os.symlink(live / "private", killed / "private")
    old_copy = state / "validate-abc123" / "conf" / "private"
    old_copy.mkdir(parents=True)
    (old_copy / "dovecot.key").write_bytes(KEY)
    (state / "keys.json").write_text("{}")
    removed = validation.remove_stale(state)
    assert sorted(removed) == sorted([str(killed), str(state / "validate-abc123")])
    assert sorted(p.name for p in state.iterdir()) == ["keys.json", "validation"]
    assert (live / "private" / "dovecot.key").read_bytes() == KEY


def test_each_validation_first_removes_what_a_killed_one_left(tmp_path, live):
    state = tmp_path / "state"
    (validation.private_dir(state) / "tree-killed").mkdir()
    with validation.scratch(state) as path:
        assert [p.name for p in (state / "validation").iterdir()] == [path.name]


def test_the_private_directory_is_made_private_and_never_a_symlink(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "validation").mkdir(mode=0o755)
    os.chmod(state / "validation", 0o755)
    assert stat.S_IMODE(os.stat(validation.private_dir(state)).st_mode) == 0o700
    other = tmp_path / "elsewhere"
    other.mkdir()
    os.rmdir(state / "validation")
    os.symlink(other, state / "validation")
    with pytest.raises(NotADirectoryError):
        validation.private_dir(state)
