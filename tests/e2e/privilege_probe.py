"""Run INSIDE the packaged imapd-ctl.service (as an extra ExecStartPost= of a runtime drop-in):
the same user, capabilities, sandbox and system call filter as the daemon, i.e. what a
compromised daemon could do. Tries what its job does not need and what it does; prints one
JSON object {check: outcome} on a line starting with PROBE, and always exits 0.

Outcomes are "ok" (it worked) or the error it met ("EROFS", "EACCES", the D-Bus error name).
Only the standard library and Debian's python3-gi (the daemon's own D-Bus binding).
"""
import errno
import json
import os
import shutil
import subprocess
import sys

from gi.repository import Gio, GLib

STATE = "/var/lib/imapd-ctl"


def outcome(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    except GLib.Error as exc:   # a D-Bus error: its name is the outcome
        return Gio.DBusError.get_remote_error(exc) or f"{type(exc).__name__}: {exc}"


def write(path):
    def attempt():
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.close(fd)
        if path.endswith(".imapd-ctl-probe"):
            os.unlink(path)     # our own probe files only
    return attempt


def read(path):
    def attempt():
        with open(path, "rb") as fh:
            if not fh.read(64):
                raise OSError(errno.ENODATA, "empty")      # what an InaccessiblePaths= file reads as
    return attempt


def run(argv):
    return lambda: subprocess.run(argv, capture_output=True, timeout=30, check=True)


def manager(method, signature, *args):
    def attempt():
        bus = Gio.bus_get_sync(Gio.BusType.SYSTEM, None)
        bus.call_sync("org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                      "org.freedesktop.systemd1.Manager", method, GLib.Variant(signature, args),
                      None, Gio.DBusCallFlags.NONE, 25000, None)
    return attempt


WRITABLE = (STATE, "/var/log/imapd-ctl", "/etc/dovecot/conf.d", "/run/imapd-ctl", "/tmp", "/var/tmp", "/dev/shm")


def executable_copies():
    """A copy of /usr/bin/true in each directory it can write: none may run."""
    made = {}
    for directory in WRITABLE:
        path = f"{directory}/true.imapd-ctl-probe"
        try:
            shutil.copy("/usr/bin/true", path)
            os.chmod(path, 0o755)
            made[directory] = path
        except OSError:
            pass
    return made


def main():
    copies = executable_copies()
    checks = {
        "identity": lambda: None,
        # Writing: its configuration paths and state yes, anything else no (even with
        # CAP_DAC_OVERRIDE: the file system is read-only to it there).
        "write /etc/passwd": write("/etc/passwd"),
        "write /etc/dovecot/dovecot.conf": write("/etc/dovecot/dovecot.conf"),
        "create /etc/systemd/system/x.service": write("/etc/systemd/system/x.service"),
        "create /etc/polkit-1/rules.d/00-x.rules": write("/etc/polkit-1/rules.d/00-x.rules"),
        "write /etc/imapd-ctl/imapd-ctl.toml": write("/etc/imapd-ctl/imapd-ctl.toml"),
        "create /usr/local/bin/x": write("/usr/local/bin/x"),
        "create in /etc/dovecot/conf.d": write("/etc/dovecot/conf.d/.x.imapd-ctl-probe"),
        "create in /var/lib/imapd-ctl": write(f"{STATE}/x.imapd-ctl-probe"),
        # Reading: what its job reads yes; the secrets CAP_DAC_OVERRIDE would open, no.
        "read /etc/dovecot/dovecot.conf": read("/etc/dovecot/dovecot.conf"),
        "read /etc/shadow": read("/etc/shadow"),
        # Executing: only what its job runs; nothing it can write.
        "exec /usr/bin/id": run(["/usr/bin/id"]),
        "exec /usr/bin/systemd-run": run(["/usr/bin/systemd-run", "--version"]),
        **{f"exec a file it wrote in {d}": run([path]) for d, path in copies.items()},
        "exec doveconf": run(["/usr/bin/doveconf", "-h", "service/imap/process_limit"]),
        "exec doveadm service status": run(["/usr/bin/doveadm", "service", "status", "imap"]),
        # systemd: no transient units (systemd-run), no other unit, no unit files, no reload.
        "StartTransientUnit (systemd-run)": manager(
            "StartTransientUnit", "(ssa(sv)a(sa(sv)))", "imapd-ctl-probe.service", "fail",
            [("ExecStart", GLib.Variant("a(sasb)", [("/usr/bin/touch", ["/usr/bin/touch", "/etc/probe"], False)]))],
            []),
        "StartUnit systemd-tmpfiles-clean.service": manager(
            "StartUnit", "(ss)", "systemd-tmpfiles-clean.service", "replace"),
        "StopUnit polkit.service": manager("StopUnit", "(ss)", "polkit.service", "replace"),
        "StopUnit imapd-ctl.socket": manager("StopUnit", "(ss)", "imapd-ctl.socket", "replace"),
        "EnableUnitFiles ssh.service": manager("EnableUnitFiles", "(asbb)", ["ssh.service"], False, True),
        "LinkUnitFiles from its state": manager("LinkUnitFiles", "(asbb)", [f"{STATE}/x.service"], False, True),
        "Reload the manager": manager("Reload", "()"),
        "start imapd-ctl-enable@ssh.service": manager(
            "StartUnit", "(ss)", "imapd-ctl-enable@ssh.service.service", "replace"),
    }
    result = {name: outcome(fn) for name, fn in checks.items()}
    result["identity"] = {"uid": os.getuid(), "euid": os.geteuid(),
                          "caps": [line.split()[1] for line in open("/proc/self/status")
                                   if line.startswith(("CapEff", "CapAmb", "CapBnd"))]}
    for path in copies.values():
        os.unlink(path)
    print("PROBE " + json.dumps(result), flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # noqa: BLE001 - never fail the unit's start; the test reads this
        print(f"PROBE-ERROR {exc!r}", flush=True)
    sys.exit(0)
