"""Throw-away mail hosts for tests: a real systemd booted as PID 1 in namespaces.

A :class:`MailHost` is a small, isolated "machine" on this one:

* its own PID, mount, network, UTS (hostname ``mailhost<index>``) and cgroup namespaces;
* a copy-on-write view of its distribution's root: an overlay whose upper layer is a tmpfs,
  so whatever the test (or ``apt-get``, or Dovecot) writes inside vanishes at shutdown and
  never reaches this machine's files.  ``dist="bookworm"`` (the default) overlays this
  machine's own ``/`` (Debian 12); ``dist="trixie"`` overlays a Debian 13 root built once
  per machine with debootstrap and cached (tests/e2e/rootfs.py);
* its own ``/run``, ``/tmp``, ``/var/tmp`` (tmpfs) -- systemd empties ``/tmp`` at boot;
* a minimal private ``/dev`` (null, zero, full, random, urandom, tty, a new devpts
  instance, shm), so the VM's console and disks are not visible inside;
* a read-only ``/sys`` and ``/proc/sys`` (as systemd-nspawn does: udevd, sysctl and
  friends skip themselves instead of poking at the real machine);
* a cgroup of its own: the host runs in a fresh cgroup2 sub-tree that becomes the root of
  its cgroup namespace, so two hosts never share ``system.slice/dovecot.service``;
* one veth link to the caller's network namespace: ``imh<index>`` with
  ``198.18.<index>.1/24`` outside, ``eth0`` with ``198.18.<index>.2/24`` inside
  (198.18.0.0/15 is the benchmarking range; nothing else is ever used);
* optional bind mounts (``binds``) of paths of this machine at the same path inside,
  read-write, e.g. the repository (so ``.venv`` and the code are visible) and a shared
  directory for unix sockets.

systemd boots ``basic.target`` only (under a second here); start what the test needs::

    from mailhost import MailHost, machine_ready   # tests/ on sys.path (pytest does that)

    ok, why = machine_ready()
    with MailHost(1, binds=[REPO, shared_dir]) as host:   # boots
        host.start_dovecot()
        imaplib.IMAP4(host.address, 143)
        host.run(["systemctl", "status", "dovecot"])

Things to know:

* Only the root file system is overlaid: anything on another mount of this machine is
  empty inside unless bind-mounted.  Files changed on this machine after the boot may or
  may not show through the overlay (the kernel does not promise it): pass live files in
  through ``binds``.
* Commands run through ``nsenter`` (:meth:`MailHost.run`) are in the host's namespaces
  but not in its cgroups: ``systemctl stop`` does not see them.  Use ``systemd-run``
  inside for something systemd should own.
* Stopping Dovecot takes about 1 s (its own shutdown), so does the shutdown of a host
  where it runs.  Boot is about 0.2 s, ``start_dovecot`` about 0.05 s here.
* A caller killed with SIGKILL leaves its hosts running; the next boot with the same
  index deletes the stale ``imh<index>`` link, and empty cgroups of dead hosts are removed.

Everything here needs root. Only the standard library is used.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import rootfs

__all__ = ["MailHost", "MailHostError", "machine_ready"]

SYSTEMD = "/usr/lib/systemd/systemd"
WORK_PARENT = "/var/tmp"
WORK_PREFIX = "imapd-ctl-host-"
NET_PREFIX = "198.18"

# Environment of commands run inside a host (``MailHost.run``): nothing of the caller's
# environment leaks in; ``env=`` adds to / overrides this.
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}

# Runs inside ``unshare`` (as PID 1 of the new PID namespace, in the new mount, net, UTS
# and cgroup namespaces) and execs systemd in the chroot.  Arguments: work dir, hostname,
# bind paths...
_BOOT_SCRIPT = r"""
set -eu
D=$1; HN=$2; shift 2
T=$D/fs
M=$T/merged
mount -t tmpfs -o mode=0755 tmpfs "$T"
mkdir -p "$T/up" "$T/work" "$M"
mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$T/up,workdir=$T/work" "$M"
# A real mail host has no policy-rc.d; machine images built for containers ship one that
# exits 101, which would stop every package's postinst from starting its units inside.
# Removed from the overlay only (a whiteout in the tmpfs): this machine's file stays.
rm -f "$M/usr/sbin/policy-rc.d"

mount -t proc -o nosuid,nodev,noexec proc "$M/proc"
mount --bind "$M/proc/sys" "$M/proc/sys"
mount -o remount,bind,ro "$M/proc/sys"
# A sysfs mounted in the new network namespace shows that namespace's links; read-only
# like under systemd-nspawn.  The cgroup2 mount is made inside the cgroup namespace, so
# its root is this host's own cgroup.
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$M/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$M/sys/fs/cgroup"

mount -t tmpfs -o mode=0755,nosuid,size=16m tmpfs "$M/dev"
for n in null zero full random urandom tty; do
    touch "$M/dev/$n"
    mount --bind "/dev/$n" "$M/dev/$n"
done
touch "$M/dev/console"
mount --bind "$D/console.log" "$M/dev/console"
mkdir -p "$M/dev/pts" "$M/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$M/dev/pts"
ln -s pts/ptmx "$M/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$M/dev/shm"
ln -s /proc/self/fd "$M/dev/fd"
ln -s /proc/self/fd/0 "$M/dev/stdin"
ln -s /proc/self/fd/1 "$M/dev/stdout"
ln -s /proc/self/fd/2 "$M/dev/stderr"

mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$M/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$M/tmp"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$M/var/tmp"

for p in "$@"; do
    if [ -d "$p" ]; then
        mkdir -p "$M$p"
    else
        mkdir -p "$(dirname "$M$p")"
        touch "$M$p"
    fi
    mount --rbind "$p" "$M$p"
    # The host's unprivileged users (the daemon's, a test's) must reach a bound path even where it
    # sits below a private directory, e.g. a checkout in root's 0700 home: the directories above
    # it are made traversable in this host's overlay only (copied up to its tmpfs; this
    # machine's own directories keep their modes).
    d=$(dirname "$p")
    while [ "$d" != "/" ]; do
        mountpoint -q "$M$d" || chmod o+x "$M$d"
        d=$(dirname "$d")
    done
done

printf '%s\n' "$HN" > "$M/etc/hostname"
hostname "$HN"
ip link set lo up
echo "imapd-ctl-boot: exec systemd in $M" >&2
# No loading of kernel modules or setting of the clock from inside (ConditionCapability
# then skips systemd-modules-load and the like).
exec setpriv --bounding-set=-sys_module,-sys_time -- chroot "$M" /usr/bin/env -i container=other \
    "$SYSTEMD_BIN" --unit=basic.target --show-status=yes
"""


class MailHostError(RuntimeError):
    """A mail host failed to boot, or a command inside it failed."""


def _cgroup2_mount() -> str | None:
    """Mount point of the cgroup2 hierarchy in the caller's mount namespace."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                return left.split()[4].replace("\\040", " ")
    return None


def _own_cgroup2_path() -> str:
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return "/"


def machine_ready() -> tuple[bool, str]:
    """Can this machine boot a :class:`MailHost`?  Returns ``(ok, reason)``.

    For a clear ``pytest.skip(reason)`` where that is wanted; CI runs ``scripts/setup``
    first, so there everything must be present.
    """
    if os.geteuid() != 0:
        return False, "mail hosts need root (unshare, mount, veth)"
    for path in (SYSTEMD,):
        if not os.access(path, os.X_OK):
            return False, f"{path} missing (apt-get install systemd; see scripts/setup)"
    for tool in ("unshare", "nsenter", "ip", "doveconf", "chroot"):
        if shutil.which(tool) is None:
            return False, f"{tool} not found on PATH (see scripts/setup)"
    if _cgroup2_mount() is None:
        return False, "no cgroup2 hierarchy mounted (needed for the hosts' own cgroups)"
    return True, "ok"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise MailHostError(f"ip {' '.join(args)} failed (rc={r.returncode}): {r.stderr.strip()}")
    return r


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def _cgroup_procs(path: str) -> list[int]:
    """PIDs in a cgroup2 sub-tree (all levels)."""
    pids: list[int] = []
    for dirpath, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    pids += [int(x) for x in f.read().split()]
            except OSError:
                pass
    return pids


def _remove_cgroup_tree(path: str) -> None:
    for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda t: -t[0].count("/")):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass


INDEX_LOCK_DIR = "/var/tmp/imapd-ctl-host-index"


def _claim_index(index: int | None) -> tuple[int, int]:
    """(lock fd, index): flock the index's lock file; None picks the first free index."""
    os.makedirs(INDEX_LOCK_DIR, exist_ok=True)
    for candidate in ([index] if index is not None else range(1, 251)):
        fd = os.open(f"{INDEX_LOCK_DIR}/{candidate}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd, candidate
        except BlockingIOError:
            os.close(fd)
    raise MailHostError(f"mail host index {index} is in use by another run" if index is not None
                        else "all 250 mail host indexes are in use")


class MailHost:
    """One booted throw-away mail host; see the module docstring.

    ``index`` (1..250) selects the addresses and names: ``imh<index>`` /
    ``198.18.<index>.1`` outside, ``eth0`` / ``198.18.<index>.2`` inside, hostname
    ``mailhost<index>`` (or ``name``).  Hosts with different indexes can run at once.
``dist`` ("bookworm" or "trixie", see :mod:`rootfs`) is the distribution it runs.

    Attributes after :meth:`boot`: ``pid`` (systemd, as seen from the caller),
    ``address`` (inside address), ``outer_address``, ``link`` (outer interface name),
    ``workdir``, ``log_path`` (unshare/boot-script/systemd stdout+stderr),
    ``console_path`` (a file bind-mounted as the host's ``/dev/console``; usually empty,
    the journal has the rest: :meth:`journal`), ``boot_seconds``.
    """

    def __init__(self, index: int | None = None, *, binds: list[str] = (), name: str | None = None,
                 dist: str = "bookworm"):
        if dist not in rootfs.DISTS:
            raise ValueError(f"dist must be one of {', '.join(rootfs.DISTS)}, not {dist!r}")
        if index is not None and (not isinstance(index, int) or not 1 <= index <= 250):
            raise ValueError(f"index must be an int in 1..250, not {index!r}")
        # An index is owned through a lock file for the host's life, so concurrent test runs
        # never take (and "clean up") each other's veth link; None takes the first free one.
        self._index_fd, index = _claim_index(index)
        self.index = index
        self.dist = dist
        self.name = name or f"mailhost{index}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}", self.name):
            raise ValueError(f"bad host name {self.name!r}")
        self.binds = [os.path.abspath(b) for b in binds]
        for b in self.binds:
            if not os.path.exists(b):
                raise FileNotFoundError(f"bind source {b} does not exist")
        self.link = f"imh{index}"
        self.address = f"{NET_PREFIX}.{index}.2"
        self.outer_address = f"{NET_PREFIX}.{index}.1"
        self.pid: int | None = None
        self.workdir: str | None = None
        self.log_path: str | None = None
        self.console_path: str | None = None
        self.boot_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._cgroup: str | None = None
        self._log_file = None

    # ------------------------------------------------------------------ lifecycle

    def boot(self, timeout: float = 30) -> "MailHost":
        """Boot systemd; return once ``systemctl is-system-running --wait`` says
        ``running`` or ``degraded``.  On failure, shut down what was started and raise
        :class:`MailHostError` with the boot log and what the journal had."""
        if self._proc is not None:
            raise MailHostError(f"{self.name} already booted")
        ok, why = machine_ready()
        if not ok:
            raise MailHostError(f"cannot boot a mail host here: {why}")
        lower = rootfs.root_path(self.dist)   # builds the cached root once per machine
        t0 = time.monotonic()
        deadline = t0 + timeout
        self._delete_stale()
        self.workdir = tempfile.mkdtemp(prefix=WORK_PREFIX, dir=WORK_PARENT)
        os.mkdir(os.path.join(self.workdir, "fs"))
        self.log_path = os.path.join(self.workdir, "boot.log")
        self.console_path = os.path.join(self.workdir, "console.log")
        open(self.console_path, "w").close()
        script = os.path.join(self.workdir, "boot.sh")
        with open(script, "w") as f:
            f.write(_BOOT_SCRIPT)
        cg_parent = _cgroup2_mount() + _own_cgroup2_path()
        self._cgroup = os.path.join(cg_parent, os.path.basename(self.workdir))
        os.mkdir(self._cgroup)
        self._log_file = open(self.log_path, "ab")
        try:
            # The launcher moves itself into the host's cgroup, then becomes unshare:
            # the new cgroup namespace is rooted there.  --kill-child: if unshare dies,
            # systemd (PID 1 of the namespace, hence everything in it) dies too.
            self._proc = subprocess.Popen(
                ["bash", "-c", 'echo $$ > "$1" && exec "${@:2}"', "imapd-ctl-launch",
                 os.path.join(self._cgroup, "cgroup.procs"),
                 "unshare", "--pid", "--fork", "--kill-child", "--mount",
                 "--propagation", "private", "--net", "--uts", "--cgroup",
                 "bash", script, self.workdir, self.name, *self.binds],
                stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
                env={**BASE_ENV, "SYSTEMD_BIN": SYSTEMD, "LOWER": lower},
            )
            self.pid = self._wait_child(deadline)
            self._setup_network()
            self._wait_running(deadline)
        except BaseException as e:
            diag = self._diagnostics()
            self.shutdown()
            if isinstance(e, MailHostError):
                raise MailHostError(f"{e}\n{diag}") from None
            raise
        self.boot_seconds = time.monotonic() - t0
        return self

    def shutdown(self, timeout: float = 20) -> None:
        """Power the host off (SIGRTMIN+4 to its systemd), wait for the ``unshare``
        process to exit (SIGKILL it if it overstays: that kills the whole PID
        namespace), then remove the veth link, the host's cgroup and the work dir.
        Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            deadline = time.monotonic() + timeout
            if self.pid is not None and proc.poll() is None:
                try:
                    os.kill(self.pid, signal.SIGRTMIN + 4)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._cgroup is not None:
            self._kill_cgroup(self._cgroup)
            self._cgroup = None
        if self.pid is not None:
            # The veth pair goes with the network namespace, asynchronously.
            end = time.monotonic() + 5
            while _link_exists(self.link) and time.monotonic() < end:
                time.sleep(0.02)
        if _link_exists(self.link):
            _ip("link", "del", self.link, check=False)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._index_fd is not None:
            os.close(self._index_fd)  # releases the index lock
            self._index_fd = None
        if self.workdir is not None:
            fs = os.path.join(self.workdir, "fs")
            if os.path.ismount(fs):  # never the case: the tmpfs lives in the host's mount ns
                raise MailHostError(f"{fs} is still mounted on the caller's side")
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> "MailHost":
        if self._proc is None:
            self.boot()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    @property
    def running(self) -> bool:
        """Booted and not shut down (nor dead)."""
        return self.pid is not None and self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        return f"<MailHost {self.name} {self.dist} {self.address} pid={self.pid}>"

    # ------------------------------------------------------------------ commands

    def run(self, argv: list[str], *, check: bool = True, input: str | None = None,
            timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` inside the host (``nsenter -t PID -a -r -w``: all its namespaces,
        its root and cwd), text mode, output captured.  The environment is
        :data:`BASE_ENV` updated with ``env``.  With ``check``, a non-zero exit raises
        :class:`MailHostError` naming argv, rc, stdout and stderr."""
        return self._nsenter(argv, check=check, input=input, timeout=timeout, env=env, text=True)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``systemctl --no-pager ARGS`` inside the host."""
        return self.run(["systemctl", "--no-pager", *args], check=check)

    def start_dovecot(self, timeout: float = 10) -> None:
        """``systemctl start dovecot``, wait (at most ``timeout`` s) until port 143
        listens inside, then check that a TCP connect from the caller reaches it."""
        self.systemctl("start", "dovecot")
        end = time.monotonic() + timeout
        while not self.listening(143):
            if time.monotonic() > end:
                st = self.systemctl("status", "dovecot", check=False)
                raise MailHostError(f"{self.name}: dovecot does not listen on 143 after "
                                    f"{timeout} s\n{st.stdout}{st.stderr}")
            time.sleep(0.05)
        with socket.create_connection((self.address, 143), timeout=5):
            pass

    def listening(self, port: int) -> bool:
        """Does anything listen on TCP ``port`` inside the host?"""
        r = self.run(["ss", "-ltnH", f"sport = :{int(port)}"])
        return bool(r.stdout.strip())

    def write_file(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        """Write a file inside the host (parents created), with ``mode``.  Goes through
        nsenter, so symlinks resolve inside the host, never onto this machine."""
        if isinstance(data, str):
            data = data.encode()
        self._nsenter(["sh", "-c", 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1" '
                       '&& chmod "$2" -- "$1"', "sh", str(path), format(mode, "o")],
                      input=data, check=True, timeout=60)

    def read_file(self, path: str) -> bytes:
        """Contents of a file inside the host."""
        return self._nsenter(["cat", "--", str(path)], check=True, timeout=60).stdout

    def last_pid(self) -> int:
        """The last process id given out in the host's own PID namespace: it grows by one for
        each process started there (this reading's own included); nothing outside moves it."""
        return int(self.read_file("/proc/sys/kernel/ns_last_pid"))

    def journal(self, *args: str) -> str:
        """``journalctl --no-pager ARGS`` inside the host (e.g. ``"-u", "dovecot"``)."""
        return self.run(["journalctl", "--no-pager", *args], check=False).stdout

    # ------------------------------------------------------------------ internals

    def _nsenter(self, argv, *, check, input=None, timeout, env=None, text=False):
        if self.pid is None or self._proc is None or self._proc.poll() is not None:
            raise MailHostError(f"{self.name} is not running")
        argv = [str(a) for a in argv]
        try:
            r = subprocess.run(
                ["nsenter", "-t", str(self.pid), "-a", "-r", "-w", "--", *argv],
                input=input, capture_output=True, text=text, timeout=timeout,
                env={**BASE_ENV, **(env or {})},
            )
        except subprocess.TimeoutExpired as e:
            raise MailHostError(f"{self.name}: {argv} timed out after {timeout} s\n"
                                f"stdout: {e.stdout!r}\nstderr: {e.stderr!r}") from None
        if check and r.returncode != 0:
            raise MailHostError(f"{self.name}: {argv} failed, rc={r.returncode}\n"
                                f"stdout: {r.stdout!r}\nstderr: {r.stderr!r}")
        return r

    def _delete_stale(self) -> None:
        """Leftovers of a crashed run: our veth name, empty cgroups of old hosts."""
        if _link_exists(self.link):
            _ip("link", "del", self.link, check=False)
        parent = (_cgroup2_mount() or "/nonexistent") + _own_cgroup2_path()
        try:
            names = os.listdir(parent)
        except OSError:
            return
        for n in names:
            p = os.path.join(parent, n)
            # A host being booted by another process has its work dir already: spare it.
            if (n.startswith(WORK_PREFIX) and os.path.isdir(p) and not _cgroup_procs(p)
                    and not os.path.exists(os.path.join(WORK_PARENT, n))):
                try:
                    _remove_cgroup_tree(p)
                except OSError:
                    pass

    def _wait_child(self, deadline: float) -> int:
        """PID of unshare's child (the boot script, which execs systemd)."""
        upid = self._proc.pid
        while True:
            if self._proc.poll() is not None:
                raise MailHostError(f"{self.name}: unshare exited with {self._proc.returncode}")
            try:
                with open(f"/proc/{upid}/task/{upid}/children") as f:
                    kids = f.read().split()
            except FileNotFoundError:
                kids = []
            # The launcher bash execs unshare in place and has no children of its own, so
            # a child of the process named "unshare" is the namespace's PID 1.
            if kids:
                with open(f"/proc/{upid}/comm") as f:
                    if f.read().strip() == "unshare":
                        return int(kids[0])
            if time.monotonic() > deadline:
                raise MailHostError(f"{self.name}: unshare did not fork in time")
            time.sleep(0.005)

    def _setup_network(self) -> None:
        pid = str(self.pid)
        _ip("link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns", pid)
        _ip("addr", "add", f"{self.outer_address}/24", "dev", self.link)
        _ip("link", "set", self.link, "up")
        for args in (["addr", "add", f"{self.address}/24", "dev", "eth0"],
                     ["link", "set", "eth0", "up"],
                     ["link", "set", "lo", "up"]):
            r = subprocess.run(["nsenter", "-t", pid, "-n", "ip", *args],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise MailHostError(f"{self.name}: ip {' '.join(args)} inside failed: "
                                    f"{r.stderr.strip()}")

    def _wait_running(self, deadline: float) -> None:
        # First wait for the exec of systemd (the boot script mounts, then execs): until
        # then, nsenter -r would give the real machine's root.
        while not self._systemd_execd():
            if self._proc.poll() is not None:
                raise MailHostError(f"{self.name}: boot script/systemd exited with "
                                    f"{self._proc.returncode}")
            if time.monotonic() > deadline:
                raise MailHostError(f"{self.name}: systemd was not exec'd in time")
            time.sleep(0.005)
        last = ""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MailHostError(f"{self.name}: not running after boot timeout; "
                                    f"last is-system-running: {last!r}")
            try:
                r = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                             timeout=left)
            except MailHostError as e:
                if self._proc is None or self._proc.poll() is not None:
                    raise
                last = str(e)
                continue
            state = r.stdout.strip()
            last = (state + " " + r.stderr.strip()).strip()
            if state in ("running", "degraded"):
                return
            if state in ("maintenance", "stopping"):
                raise MailHostError(f"{self.name}: system state {state!r}")
            # "offline" or no bus: systemd has not yet made /run/systemd/system or its
            # private socket.
            time.sleep(0.02)

    def _systemd_execd(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/comm") as f:
                return f.read().strip() == "systemd"
        except (FileNotFoundError, ProcessLookupError):
            return False

    def _diagnostics(self) -> str:
        out = []
        if self._proc is not None and self._proc.poll() is None and self._systemd_execd():
            try:
                out.append("--- failed units ---\n" +
                           self.systemctl("--failed", check=False).stdout)
                out.append("--- journal (tail) ---\n" + self.run(
                    ["journalctl", "--no-pager", "-b", "-n", "80"], check=False,
                    timeout=10).stdout)
            except Exception as e:  # noqa: BLE001 - diagnostics only
                out.append(f"(journal unavailable: {e})")
        for label, path in (("boot log", self.log_path), ("console", self.console_path)):
            if path and os.path.exists(path):
                with open(path, errors="replace") as f:
                    out.append(f"--- {label} {path} ---\n" + f.read()[-6000:])
        return "\n".join(out)

    @staticmethod
    def _kill_cgroup(path: str) -> None:
        if not os.path.isdir(path):
            return
        end = time.monotonic() + 5
        while _cgroup_procs(path) and time.monotonic() < end:
            try:
                with open(os.path.join(path, "cgroup.kill"), "w") as f:
                    f.write("1")
            except OSError:
                for pid in _cgroup_procs(path):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.02)
        end = time.monotonic() + 5
        while True:
            try:
                _remove_cgroup_tree(path)
                return
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.02)
