"""ports: real sockets of this test process and of children in cgroups of their own (no
fakes; creating cgroups needs root, as CI runs)."""
import contextlib
import os
import socket
import subprocess
import sys
import uuid

from imapd_ctl.adapters import ports


def _own_cgroup() -> str:
    with open("/proc/self/cgroup") as fh:
        return next(line[3:].strip() for line in fh if line.startswith("0::"))


def _ours(unit: str) -> str:      # control_group(unit): this process's cgroup is "the unit's"
    return _own_cgroup()


def _listener(family=socket.AF_INET6, address="::1"):
    sock = socket.socket(family)
    sock.bind((address, 0))
    sock.listen()
    return sock, sock.getsockname()[1]


@contextlib.contextmanager
def _child_in(cgroup: str):
    """A child listening on a port of its own, moved into `cgroup` (made here, below the
    cgroup2 root) before it opens its socket: (cgroup path, port)."""
    top = os.path.join(ports._cgroup2_root(), cgroup.lstrip("/"))
    os.makedirs(top)
    child = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys, time\n"
        "sys.stdin.readline()\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True); time.sleep(30)\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        with open(os.path.join(top, "cgroup.procs"), "w") as fh:
            fh.write(str(child.pid))
        child.stdin.write("go\n")
        child.stdin.flush()
        yield child, int(child.stdout.readline())
    finally:
        child.kill()
        child.wait()
        os.rmdir(top)


def test_own_listening_socket_is_found_then_asked_for_by_cookie_and_a_closed_one_is_not():
    for family, address in ((socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "0.0.0.0")):
        sock, port = _listener(family, address)
        try:
            assert ports.unit_listens(os.getpid(), port, "x.service", _ours)
            known = ports._known[(os.getpid(), port)]
            assert known.listener.inode == os.fstat(sock.fileno()).st_ino
            assert ports.still_listening(known) is True
            asked = []
            assert ports.unit_listens(os.getpid(), port, "x.service", lambda u: asked.append(u) or "")
            assert asked == []                     # the known socket answered: no cgroup needed
        finally:
            sock.close()
        assert ports.still_listening(known) is False
        assert not ports.unit_listens(os.getpid(), port, "x.service", _ours)
        assert (os.getpid(), port) not in ports._known


def test_a_new_socket_on_the_same_port_is_found_anew():
    sock, port = _listener(socket.AF_INET, "127.0.0.1")
    assert ports.unit_listens(os.getpid(), port, "x.service", _ours)
    first = ports._known[(os.getpid(), port)]
    sock.close()
    again = socket.socket()
    again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    again.bind(("127.0.0.1", port))
    again.listen()
    try:
        assert ports.unit_listens(os.getpid(), port, "x.service", _ours)
        assert ports._known[(os.getpid(), port)].listener.cookie != first.listener.cookie
    finally:
        again.close()


def test_a_connected_but_not_listening_socket_does_not_count():
    sock, port = _listener()
    client = socket.create_connection(("::1", port))
    peer, _ = sock.accept()
    sock.close()
    try:
        assert not ports.unit_listens(os.getpid(), port, "x.service", _ours)
    finally:
        client.close()
        peer.close()


def test_a_process_in_a_cgroup_below_the_units_counts_and_one_beside_it_does_not():
    unit = f"/imapd-ctl-test-{uuid.uuid4().hex[:8]}"
    os.makedirs(os.path.join(ports._cgroup2_root(), unit.lstrip("/")))
    try:
        with _child_in(f"{unit}/worker") as (child, port):
            for control_group, listens in ((f"{unit}-other", False), (_own_cgroup(), _own_cgroup() == "/"),
                                           (unit, True)):
                ports._known.clear()          # the socket known for this main pid answers first
                assert ports.unit_listens(child.pid, port, "x.service", lambda _: control_group) is listens
    finally:
        os.rmdir(os.path.join(ports._cgroup2_root(), unit.lstrip("/")))


def test_no_process_or_no_cgroup():
    sock, port = _listener()
    try:
        assert not ports.unit_listens(0, port, "x.service", _ours)
        assert not ports.unit_listens(os.getpid(), port, "x.service", lambda _: "")   # no cgroup
        assert not ports.unit_listens(os.getpid(), port, "x.service", lambda _: "/no/such/cgroup")
    finally:
        sock.close()
    assert ports.cgroup_ids("/no/such/cgroup") == set()


def test_connections_counts_accepted_and_queued_on_the_port():
    """A real listener on loopback: one connection accepted, two left in the listen queue; the
    clients' own sockets (other local ports) are not counted."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as server:
        port = server.getsockname()[1]
        assert ports.connections(port) == (0, 0)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        accepted, _ = server.accept()
        try:
            assert ports.connections(port) == (1, 2)
        finally:
            accepted.close()
            for c in clients:
                c.close()
