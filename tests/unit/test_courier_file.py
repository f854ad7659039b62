"""The Courier flavour's file handling, fast (no root, no systemd; /bin/sh only): in-place edits
of MAXDAEMONS / IMAP_ULIMITD that keep every other byte, exact read-back, validation by the
shell, detection, and which units apply() restarts."""
import os

import pytest
from hypothesis import given, settings as hsettings, strategies as st


from imapd_ctl.adapters import ports
from imapd_ctl.adapters.listening import UnitListening
from imapd_ctl.core.actions import MEM_MAX, MEM_MIN
from imapd_ctl.core.errors import ActionFailed, ConfigInvalid, ConfigWriteError
from imapd_ctl.adapters.flavours import BrokenConfig, NoFlavour, detect
from imapd_ctl.adapters.flavours.courier import flavour as courier_mod
from imapd_ctl.adapters.flavours.courier import Courier, edit, kib, managed_line, requested_bytes
from imapd_ctl.adapters.flavours.dovecot import Dovecot
from imapd_ctl.core.protocols import Applied
from imapd_ctl.core.settings import Settings
from imapd_ctl.operations import prose
import fakes

# Excerpts of Debian 12's /etc/courier/imapd and imapd-ssl (courier-imap 5.0.13), as shipped.
STOCK_IMAPD = b"""##VERSION: $Id: 3f8f4e0d5a4a0d3bd3e5fe9e1bd2a2ec49a1d4e5 $
#
# imapd created from imapd.dist by sysconftool
#
#  NOTE - do not use \\ to split long variable contents on multiple lines.
#  This will break the default imapd.rc script, which parses this file.
#
##NAME: ADDRESS:0
#
#  Address to listen on, can be set to a single IP address.
#
# ADDRESS=127.0.0.1

ADDRESS=0

##NAME: PORT:1
#
#  Port numbers that connections are accepted on.  The default is 143,
#  the standard IMAP port.

PORT=143

##NAME: MAXDAEMONS:0
#
#  Maximum number of IMAP servers started
#

MAXDAEMONS=40

##NAME: MAXPERIP:0
#
#  Maximum number of connections to accept from the same IP address

MAXPERIP=20

##NAME: PIDFILE:0
#
#  File where couriertcpd will save its process ID
#

PIDFILE=/run/courier/imapd.pid

##NAME: IMAP_ULIMITD:0
#
# IMAP_ULIMITD sets the maximum size of the data segment of the server
# process, in kilobytes.
#
# IMAP_ULIMITD=65536

IMAP_ULIMITD=131072

##NAME: MAILDIRPATH:0
#
MAILDIRPATH=Maildir
"""
STOCK_SSL = b"""##VERSION: $Id: e0e6b5b1c3c8a9ff7b8e5e4a1b0e3f2c1a9b8c7d $
#
# imapd-ssl created from imapd-ssl.dist by sysconftool
#
##NAME: SSLPORT:1
#
#  Options in the imapd-ssl configuration file AUGMENT the options in the
#  imapd configuration file.

SSLPORT=993

##NAME: SSLPIDFILE:0

SSLPIDFILE=/run/courier/imapd-ssl.pid

##NAME: TLS_PROTOCOL:0
TLS_STARTTLS_PROTOCOL="$TLS_PROTOCOL"

##NAME: TLS_CERTFILE:0
TLS_CERTFILE=/etc/courier/imapd.pem

##NAME: MAILDIRPATH:0
#
# MAILDIRPATH - directory name of the maildir directory.
#
MAILDIRPATH=Maildir
"""

VALUES = {"imap_mem_limit": 300_000_000, "imap_max_connections": 25,
          "imap_secure_mem_limit": 200_000_000, "imap_secure_max_connections": 15}


def make(tmp_path, imapd=STOCK_IMAPD, ssl=STOCK_SSL, **courier):
    conf = tmp_path / "etc-courier"
    conf.mkdir(exist_ok=True)
    (conf / "imapd").write_bytes(imapd)
    if ssl is not None:
        (conf / "imapd-ssl").write_bytes(ssl)
    settings = Settings(state_dir=str(tmp_path / "state"), listen_timeout=1.0)
    settings.courier.config_dir = str(conf)
    for key, value in courier.items():
        setattr(settings.courier, key, value)
    return Courier(settings), conf


def write(flavour, values):
    files = flavour.plan(values)
    flavour.validate(files)
    for path, data in files.items():
        with open(path, "wb") as fh:
            fh.write(data)
    return files


def changed_lines(old: bytes, new: bytes) -> tuple[list[bytes], list[bytes]]:
    """(lines only in old, lines only in new), order kept, asserting everything else is equal
    byte for byte and in the same order."""
    old_lines, new_lines = old.splitlines(keepends=True), new.splitlines(keepends=True)
    kept_old = [l for l in old_lines if not managed_line(l)]
    kept_new = [l for l in new_lines if not managed_line(l)]
    # Appended lines are managed; a file without a final newline gets one before them.
    if kept_old and not kept_old[-1].endswith(b"\n") and len(kept_new) == len(kept_old):
        assert kept_new[-1] == kept_old[-1] + b"\n"
        kept_old[-1] += b"\n"
    assert kept_new == kept_old
    return ([l for l in old_lines if managed_line(l)], [l for l in new_lines if managed_line(l)])


# --- the mapping -------------------------------------------------------------------------

@pytest.mark.parametrize("nbytes, kib_", [
    (MEM_MIN, 1024), (MEM_MIN + 1, 1024), (MEM_MIN + 1023, 1024), (MEM_MIN + 1024, 1025),
    (300_000_000, 292968), (256 << 20, 262144), (MEM_MAX, 1 << 30)])
def test_bytes_map_to_kib_rounding_down(nbytes, kib_):
    assert kib(nbytes) == kib_
    assert kib_ * 1024 <= nbytes      # the limit in force never exceeds the request


# --- editing in place --------------------------------------------------------------------

def test_stock_files_change_only_in_the_managed_lines(tmp_path):
    flavour, conf = make(tmp_path)
    files = flavour.plan(VALUES)
    new_imapd, new_ssl = files[str(conf / "imapd")], files[str(conf / "imapd-ssl")]
    assert changed_lines(STOCK_IMAPD, new_imapd) == (
        [b"MAXDAEMONS=40\n", b"IMAP_ULIMITD=131072\n"],
        [b"MAXDAEMONS=25\n", b"IMAP_ULIMITD=292968 # imapd-ctl: imap_mem_limit=300000000 bytes\n"])
    # imapd-ssl had no lines of its own (it inherited imapd's): they are appended at the end.
    assert new_ssl == STOCK_SSL + (b"MAXDAEMONS=15 # imapd-ctl: imap_secure_max_connections\n"
                                   b"IMAP_ULIMITD=195312 # imapd-ctl: imap_secure_mem_limit=200000000 bytes\n")


def test_values_read_back_exactly_and_a_second_plan_changes_nothing(tmp_path):
    flavour, conf = make(tmp_path)
    assert flavour.current_values() == {           # stock: imapd's values serve both ports
        "imap_max_connections": 40, "imap_mem_limit": 131072 * 1024,
        "imap_secure_max_connections": 40, "imap_secure_mem_limit": 131072 * 1024}
    files = write(flavour, VALUES)
    assert flavour.current_values() == VALUES
    assert flavour.plan(VALUES) == files
    other = {**VALUES, "imap_secure_mem_limit": MEM_MAX, "imap_max_connections": 1}
    write(flavour, other)
    assert flavour.current_values() == other
    write(flavour, VALUES)
    assert (conf / "imapd").read_bytes() == files[str(conf / "imapd")]
    assert (conf / "imapd-ssl").read_bytes() == files[str(conf / "imapd-ssl")]


def test_only_the_ssl_file_changes_for_secure_values(tmp_path):
    flavour, conf = make(tmp_path)
    write(flavour, VALUES)
    files = flavour.plan({**VALUES, "imap_secure_max_connections": 7})
    assert files[str(conf / "imapd")] == (conf / "imapd").read_bytes()
    assert b"MAXDAEMONS=7 # imapd-ctl: imap_secure_max_connections\n" in files[str(conf / "imapd-ssl")]


ODD = (b"# MAXDAEMONS=1 in a comment stays\n"
       b"##NAME: MAXDAEMONS:0\n"
       b"\n"
       b"   MAXDAEMONS=\"40\"   # admin's note\n"
       b"\texport IMAP_ULIMITD='65536'; export FOO\n"
       b"MAXPERIP=4   \n"
       b"  #IMAP_ULIMITD=1\n"
       b"IMAP_ULIMITDX=5\n"
       b"XMAXDAEMONS=9\n"
       b"TLS_PROTOCOL=\"TLS1_2:TLS1_3\"  # quoted\n"
       b"weird  spacing=\t\n")


def test_odd_lines_comments_quotes_and_export_are_kept(tmp_path):
    flavour, conf = make(tmp_path, imapd=ODD)
    new = flavour.plan(VALUES)[str(conf / "imapd")]
    assert changed_lines(ODD, new) == (
        [b"   MAXDAEMONS=\"40\"   # admin's note\n", b"\texport IMAP_ULIMITD='65536'; export FOO\n"],
        [b"   MAXDAEMONS=\"25\"   # admin's note\n",
         b"\texport IMAP_ULIMITD='292968'; export FOO # imapd-ctl: imap_mem_limit=300000000 bytes\n"])
    write(flavour, VALUES)
    assert flavour.current_values() == VALUES
    assert flavour.plan(VALUES)[str(conf / "imapd")] == new      # stable: one marker, not two


def test_every_assignment_of_a_managed_variable_is_set(tmp_path):
    text = STOCK_IMAPD + b"MAXDAEMONS=$((MAXDAEMONS * 2))\nIMAP_ULIMITD=${IMAP_ULIMITD:-1}\n"
    flavour, conf = make(tmp_path, imapd=text)
    new = flavour.plan(VALUES)[str(conf / "imapd")]
    assert new.count(b"MAXDAEMONS=25\n") == 2
    assert new.count(b"IMAP_ULIMITD=292968 # imapd-ctl: imap_mem_limit=300000000 bytes\n") == 2
    write(flavour, VALUES)
    assert flavour.current_values() == VALUES


def test_crlf_line_endings_and_a_missing_final_newline_are_kept(tmp_path):
    crlf = b"# a CRLF file\r\nMAXDAEMONS=40\r\nPORT=143\r\n"
    flavour, conf = make(tmp_path, imapd=crlf, ssl=b"SSLPORT=993")      # no final newline
    files = flavour.plan(VALUES)
    new_imapd, new_ssl = files[str(conf / "imapd")], files[str(conf / "imapd-ssl")]
    assert new_imapd == (b"# a CRLF file\r\nMAXDAEMONS=25\r\nPORT=143\r\n"
                         b"IMAP_ULIMITD=292968 # imapd-ctl: imap_mem_limit=300000000 bytes\n")
    assert new_ssl.startswith(b"SSLPORT=993\nMAXDAEMONS=15 # imapd-ctl: imap_secure_max_connections\n")
    # The shell reads MAXDAEMONS=25\r as "25\r": such a file cannot hold our values, and the
    # validator says so instead of writing it.
    with pytest.raises(ConfigInvalid, match=r"MAXDAEMONS would be '25\\r' instead of 25 .*CRLF"):
        flavour.validate(files)


def test_managed_last_line_without_newline_stays_without(tmp_path):
    text = b"# x\nIMAP_ULIMITD=1024\nMAXDAEMONS=40"
    flavour, conf = make(tmp_path, imapd=text)
    new = flavour.plan(VALUES)[str(conf / "imapd")]
    assert new == (b"# x\nIMAP_ULIMITD=292968 # imapd-ctl: imap_mem_limit=300000000 bytes\n"
                   b"MAXDAEMONS=25")


def test_empty_files_get_both_lines(tmp_path):
    flavour, conf = make(tmp_path, imapd=b"", ssl=b"")
    files = write(flavour, VALUES)
    assert files[str(conf / "imapd")] == (b"MAXDAEMONS=25 # imapd-ctl: imap_max_connections\n"
                                          b"IMAP_ULIMITD=292968 # imapd-ctl: imap_mem_limit=300000000 bytes\n")
    assert flavour.current_values() == VALUES


def test_missing_ssl_file_is_created_with_its_own_lines(tmp_path):
    flavour, conf = make(tmp_path, ssl=None)
    assert flavour.current_values()["imap_secure_max_connections"] == 40
    write(flavour, VALUES)
    assert flavour.current_values() == VALUES
    assert (conf / "imapd-ssl").read_bytes().count(b"\n") == 2


def test_missing_imapd_is_an_error(tmp_path):
    flavour, conf = make(tmp_path)
    (conf / "imapd").unlink()
    with pytest.raises(ActionFailed, match="imapd does not exist"):
        flavour.current_values()


_KEPT_LINE = st.text(alphabet=st.sampled_from(list("# \t=\"'$;ABCDIMLSTUXabc0123456789_-")), max_size=30).filter(
    lambda s: managed_line(s.encode() + b"\n") is None)


@hsettings(max_examples=200, deadline=None)
@given(before=st.lists(_KEPT_LINE, max_size=6), after=st.lists(_KEPT_LINE, max_size=6),
       eol=st.sampled_from([b"\n", b"\r\n"]), final_newline=st.booleans())
def test_property_other_lines_are_byte_identical(before, after, eol, final_newline):
    lines = [l.encode() + eol for l in before] + [b"MAXDAEMONS=40" + eol] + [l.encode() + eol for l in after]
    data = b"".join(lines)
    if not final_newline and data.endswith(eol):
        data = data[: -len(eol)]
    new = edit(data, "imapd", VALUES)
    managed_at = len(before)
    new_lines = new.splitlines(keepends=True)
    old_lines = data.splitlines(keepends=True)
    assert new_lines[:managed_at] == old_lines[:managed_at]
    # IMAP_ULIMITD is appended, so the managed line always ends with its own ending or a new "\n".
    old_end = old_lines[managed_at][len(b"MAXDAEMONS=40"):]
    assert new_lines[managed_at] == b"MAXDAEMONS=25" + (old_end or b"\n")
    tail = old_lines[managed_at + 1:]
    assert new_lines[-1] == b"IMAP_ULIMITD=292968 # imapd-ctl: imap_mem_limit=300000000 bytes\n"
    if tail and not tail[-1].endswith(b"\n"):
        tail[-1] += b"\n"
    assert new_lines[managed_at + 1:-1] == tail


# --- read-back ---------------------------------------------------------------------------

def test_hand_edited_value_is_reported_as_kib_times_1024(tmp_path):
    flavour, conf = make(tmp_path)
    write(flavour, VALUES)
    path = conf / "imapd"
    path.write_bytes(path.read_bytes().replace(b"IMAP_ULIMITD=292968 #", b"IMAP_ULIMITD=100000 #"))
    assert flavour.current_values()["imap_mem_limit"] == 100000 * 1024
    assert flavour.current_values()["imap_secure_mem_limit"] == VALUES["imap_secure_mem_limit"]


def test_read_back_follows_the_shell_not_the_text(tmp_path):
    """A later line the editor does not manage wins in the shell, and queryUpdate says so."""
    flavour, conf = make(tmp_path)
    write(flavour, VALUES)
    with open(conf / "imapd-ssl", "ab") as fh:
        fh.write(b"if true; then MAXDAEMONS=7; IMAP_ULIMITD=4096; fi\n")
    got = flavour.current_values()
    assert got["imap_secure_max_connections"] == 7
    assert got["imap_secure_mem_limit"] == 4096 * 1024
    assert got["imap_max_connections"] == 25          # 143 reads imapd last


@pytest.mark.parametrize("line, mem", [(b"IMAP_ULIMITD=\n", MEM_MAX), (b"IMAP_ULIMITD=unlimited\n", MEM_MAX),
                                       (b"IMAP_ULIMITD=512\n", MEM_MIN), (b"unset IMAP_ULIMITD\n", MEM_MAX)])
def test_unlimited_or_tiny_memory_limits_read_back_in_range(tmp_path, line, mem):
    flavour, _ = make(tmp_path, imapd=STOCK_IMAPD + line)
    assert flavour.current_values()["imap_mem_limit"] == mem


def test_non_numeric_maxdaemons_reads_back_as_the_shipped_default(tmp_path):
    flavour, _ = make(tmp_path, imapd=STOCK_IMAPD + b"MAXDAEMONS=many\n")
    assert flavour.current_values()["imap_max_connections"] == 40


def test_marker_of_another_value_is_ignored(tmp_path):
    text = STOCK_IMAPD.replace(b"IMAP_ULIMITD=131072", b"IMAP_ULIMITD=131072 # imapd-ctl: imap_mem_limit=999999999 bytes")
    flavour, _ = make(tmp_path, imapd=text)
    assert requested_bytes(text) == 999999999
    assert flavour.current_values()["imap_mem_limit"] == 131072 * 1024


# --- validation --------------------------------------------------------------------------

def test_validate_accepts_the_plan_and_leaves_live_files_alone(tmp_path):
    flavour, conf = make(tmp_path)
    files = flavour.plan(VALUES)
    flavour.validate(files)
    assert (conf / "imapd").read_bytes() == STOCK_IMAPD
    assert (conf / "imapd-ssl").read_bytes() == STOCK_SSL
    assert os.listdir(tmp_path / "state" / "validation") == []   # no scratch dirs left behind


def test_syntax_error_is_refused_naming_the_live_file(tmp_path):
    flavour, conf = make(tmp_path, ssl=STOCK_SSL + b"if [ -n x ]; then\nFOO=1\n")
    with pytest.raises(ConfigInvalid) as exc:
        flavour.validate(flavour.plan(VALUES))
    message = exc.value.message
    assert str(conf / "imapd-ssl") in message and "would not be valid shell" in message
    assert str(tmp_path / "state") not in message            # the candidate's temp path is not shown
    assert "Syntax error" in message or "syntax error" in message


def test_a_later_override_is_refused(tmp_path):
    flavour, conf = make(tmp_path, ssl=STOCK_SSL + b"MAXDAEMONS=40\n[ -n x ] && MAXDAEMONS=3\n")
    with pytest.raises(ConfigInvalid, match=r"MAXDAEMONS would be '3' instead of 15 for port 993 \(.*imapd-ssl\)"):
        flavour.validate(flavour.plan(VALUES))


def test_a_file_that_exits_is_refused(tmp_path):
    flavour, conf = make(tmp_path, imapd=STOCK_IMAPD + b"exit 3\n")
    with pytest.raises(ConfigInvalid, match="could not source"):
        flavour.validate(flavour.plan(VALUES))


def test_sourcing_is_done_in_a_clean_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MAXDAEMONS", "999")
    flavour, _ = make(tmp_path, imapd=STOCK_IMAPD.replace(b"MAXDAEMONS=40\n", b""), ssl=b"")
    assert flavour.current_values()["imap_max_connections"] == 40   # unset -> default, not 999


def test_validate_without_room_for_the_candidate_changes_nothing(tmp_path):
    flavour, conf = make(tmp_path)
    (tmp_path / "state").write_text("not a directory")
    with pytest.raises(ConfigWriteError, match="cannot prepare the candidate .* nothing was changed"):
        flavour.validate(flavour.plan(VALUES))
    assert (conf / "imapd").read_bytes() == STOCK_IMAPD


def test_validate_of_one_file_uses_the_other_live_file(tmp_path):
    flavour, conf = make(tmp_path)
    files = flavour.plan(VALUES)
    flavour.validate({str(conf / "imapd-ssl"): files[str(conf / "imapd-ssl")]})


# --- units: apply / verify / detection ---------------------------------------------------

BOTH = ("courier-imap.service", "courier-imap-ssl.service")


def courier_systemd(states=None, loaded=BOTH):
    """The shared fake (tests/unit/fakes.py) with both Courier units installed by default."""
    return fakes.FakeSystemd(states, loaded=loaded)


def restarts(sd):
    return [c for c in sd.calls if c[0] == "restart"]


RUNNING = {"courier-imap.service": "active", "courier-imap-ssl.service": "active"}


def test_apply_restarts_what_reads_the_changed_files(tmp_path):
    flavour, conf = make(tmp_path)
    imapd, ssl = str(conf / "imapd"), str(conf / "imapd-ssl")
    sd = courier_systemd(RUNNING)
    assert flavour.apply(sd, [imapd, ssl], BOTH) == Applied(restarted=BOTH)
    assert flavour.apply(sd, [imapd], BOTH) == Applied(restarted=BOTH)
    assert flavour.apply(sd, [ssl], BOTH) == Applied(restarted=("courier-imap-ssl.service",))
    assert prose.applied(Applied(restarted=BOTH)) == "restarted courier-imap.service, courier-imap-ssl.service"
    assert restarts(sd) == [("restart", u) for u in ("courier-imap.service", "courier-imap-ssl.service") * 2] + [
        ("restart", "courier-imap-ssl.service")]
    sd = courier_systemd({"courier-imap.service": "active"})
    done = flavour.apply(sd, [imapd], ["courier-imap.service"])
    assert done == Applied(restarted=("courier-imap.service",), idle=("courier-imap-ssl.service",))
    assert prose.applied(done) == ("restarted courier-imap.service; courier-imap-ssl.service is not "
                                   "running; the new limits apply when it starts")
    assert restarts(sd) == [("restart", "courier-imap.service")]
    assert prose.applied(Applied(idle=BOTH)) == ("courier-imap.service, courier-imap-ssl.service are not running; "
                                                 "the new limits apply when they start")
    assert prose.applied(Applied(), "courier") == "no Courier unit reads the changed files"
    assert flavour.apply(sd, [str(conf / "other")], BOTH) == Applied()


def test_undo_brings_back_a_unit_the_change_took_down(tmp_path):
    flavour, conf = make(tmp_path)
    imapd = str(conf / "imapd")

    sd = courier_systemd(dict(RUNNING))

    def fails(unit):
        sd.states[unit] = "failed"
        raise ActionFailed(f"restart {unit} failed")

    sd.faults["restart"] = fails
    serving = [u for u in BOTH if sd.active_state(u) == "active"]     # what the transaction notes
    with pytest.raises(ActionFailed):
        flavour.apply(sd, [imapd], serving)           # the change: the 143 daemon does not come back
    del sd.faults["restart"]
    assert sd.states["courier-imap.service"] == "failed"
    # the undo passes what served before the change: both come back
    assert flavour.apply(sd, [imapd], serving) == Applied(restarted=BOTH)
    # Only the undo does that: once the operator stops a unit, later changes leave it stopped.
    sd.states["courier-imap.service"] = "inactive"
    serving = [u for u in BOTH if sd.active_state(u) == "active"]
    done = flavour.apply(sd, [imapd], serving)
    assert done == Applied(restarted=("courier-imap-ssl.service",), idle=("courier-imap.service",))
    assert prose.applied(done) == ("restarted courier-imap-ssl.service; courier-imap.service is not "
                                   "running; the new limits apply when it starts")


def test_verify_checks_files_and_listening_ports(tmp_path, monkeypatch):
    flavour, conf = make(tmp_path)
    write(flavour, VALUES)
    sd = courier_systemd(RUNNING)
    applied = flavour.apply(sd, [str(conf / "imapd")], BOTH)
    listening = set()
    monkeypatch.setattr(ports, "unit_listens",
                        lambda pid, port, *_: (pid, port) in listening)
    listening |= {(sd.pids["courier-imap.service"], 143), (sd.pids["courier-imap-ssl.service"], 993)}
    flavour.verify(UnitListening(sd), VALUES, applied)
    with pytest.raises(ActionFailed, match="reads back as"):
        flavour.verify(UnitListening(sd), {**VALUES, "imap_max_connections": 26}, applied)
    listening.discard((sd.pids["courier-imap-ssl.service"], 993))
    applied = flavour.apply(sd, [str(conf / "imapd-ssl")], BOTH)      # new MainPID, not listening
    with pytest.raises(ActionFailed, match="courier-imap-ssl.service is active and does not listen on port 993"):
        flavour.verify(UnitListening(sd), VALUES, applied)
    applied = flavour.apply(sd, [str(conf / "imapd-ssl")], BOTH)
    sd.states["courier-imap-ssl.service"] = "failed"      # died after its restart: no waiting for the port
    with pytest.raises(ActionFailed, match="courier-imap-ssl.service is failed, no longer serving"):
        flavour.verify(UnitListening(sd), VALUES, applied)
    # a unit it restarted is waited for even when it is not (yet) active; others only if active
    sd.states["courier-imap-ssl.service"] = "inactive"
    flavour.verify(UnitListening(sd), VALUES, Applied())                 # not restarted, not running: not checked
    with pytest.raises(ActionFailed, match="courier-imap-ssl.service is inactive, no longer serving"):
        flavour.verify(UnitListening(sd), VALUES, Applied(restarted=("courier-imap-ssl.service",)))


def test_ssl_unit_is_left_out_when_systemd_does_not_know_it(tmp_path):
    flavour, conf = make(tmp_path)
    settings = Settings(state_dir=str(tmp_path / "state"))
    settings.courier.config_dir = str(conf)
    settings.flavour = "courier"
    sd = courier_systemd(loaded=("courier-imap.service",))
    assert detect(settings, sd).units == ("courier-imap.service",)
    assert detect(settings, sd).secure_unit is None          # nothing for simap to act on
    assert detect(settings, courier_systemd()).units == ("courier-imap.service", "courier-imap-ssl.service")
    assert detect(settings, courier_systemd()).secure_unit == "courier-imap-ssl.service"
    settings.ssl_port = 1993      # the SSL daemon's port when SSLPORT is not read from the files
    assert Courier(settings).unit_ports() == {"courier-imap.service": 143, "courier-imap-ssl.service": 1993}
    # discovery happens in detection: the constructor takes the units and never calls systemd
    assert Courier(settings, ("courier-imap.service",)).units == ("courier-imap.service",)
    assert Courier(settings).units == BOTH


def _detect_settings(tmp_path, flavour="auto", doveconf=True, courier_dir=True, protocols="imap pop3"):
    tmp_path = tmp_path / f"{flavour}-{doveconf}-{courier_dir}"
    tmp_path.mkdir(exist_ok=True)
    settings = Settings(state_dir=str(tmp_path / "state"), flavour=flavour)
    tool = tmp_path / "doveconf"
    if doveconf:   # a stand-in answering `doveconf -h protocols`
        tool.write_text(f"#!/bin/sh\necho '{protocols}'\n")
        tool.chmod(0o755)
    settings.dovecot.doveconf = str(tool)
    conf = tmp_path / "courier"
    conf.mkdir(exist_ok=True)
    if courier_dir:
        (conf / "imapd").write_bytes(STOCK_IMAPD)
    settings.courier.config_dir = str(conf)
    return settings


def test_detection_order(tmp_path):
    both = courier_systemd(loaded=("dovecot.service", "courier-imap.service", "courier-imap-ssl.service"))
    assert isinstance(detect(_detect_settings(tmp_path), both), Dovecot)
    assert isinstance(detect(_detect_settings(tmp_path, doveconf=False), both), Courier)
    # dovecot-core without imap among its protocols (e.g. kept for Postfix SASL) is not an IMAP server
    assert isinstance(detect(_detect_settings(tmp_path, protocols="pop3"), both), Courier)
    assert isinstance(detect(_detect_settings(tmp_path), courier_systemd()), Courier)
    assert isinstance(detect(_detect_settings(tmp_path, flavour="courier"), both), Courier)
    assert isinstance(detect(_detect_settings(tmp_path, flavour="dovecot", doveconf=False), courier_systemd()), Dovecot)
    with pytest.raises(NoFlavour) as exc:
        detect(_detect_settings(tmp_path, courier_dir=False), courier_systemd(loaded=("courier-imap.service",)))
    assert "Dovecot (dovecot.service with" in exc.value.message
    assert f"Courier (courier-imap.service with {tmp_path / 'auto-True-False' / 'courier'})" in exc.value.message
    with pytest.raises(NoFlavour):
        detect(_detect_settings(tmp_path), courier_systemd(loaded=()))


def test_an_installed_dovecot_whose_config_does_not_load_is_said_so_not_missing(tmp_path):
    settings = _detect_settings(tmp_path)
    with open(settings.dovecot.doveconf, "w") as tool:     # as doveconf answers a broken conf.d file
        tool.write("#!/bin/sh\necho \"doveconf: Fatal: Error in configuration file "
                   "/etc/dovecot/conf.d/99-admin.conf line 3: Garbage after '{'\" >&2\nexit 89\n")
    both = courier_systemd(loaded=("dovecot.service", "courier-imap.service", "courier-imap-ssl.service"))
    with pytest.raises(BrokenConfig) as exc:
        detect(settings, both)
    assert exc.value.message == (
        "Dovecot is installed (dovecot.service) but its configuration does not load: doveconf: Fatal: Error in "
        "configuration file /etc/dovecot/conf.d/99-admin.conf line 3: Garbage after '{'. Fix that file "
        "(`doveconf -n` shows the error), then try again")
    assert exc.value.status == 500 and "no supported IMAP server" not in exc.value.message


def test_default_config_dirs_are_debian_then_rhel(monkeypatch, tmp_path):
    debian, rhel = tmp_path / "courier", tmp_path / "courier-imap"
    rhel.mkdir()
    (rhel / "imapd").write_text("MAXDAEMONS=40\n")
    monkeypatch.setattr(courier_mod, "CONFIG_DIRS", (str(debian), str(rhel)))
    assert courier_mod.find_config_dir("") == str(rhel)
    debian.mkdir()
    (debian / "imapd").write_text("MAXDAEMONS=40\n")
    assert courier_mod.find_config_dir("") == str(debian)
    assert courier_mod.find_config_dir(str(tmp_path / "nowhere")) is None
    settings = Settings(state_dir=str(tmp_path / "state"))
    with pytest.raises(NoFlavour, match=r"courier/imapd or .*courier-imap/imapd"):
        (debian / "imapd").unlink()
        (rhel / "imapd").unlink()
        detect(settings, courier_systemd(loaded=("courier-imap.service",)))
