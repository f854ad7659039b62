"""ports: real sockets of this test process and of a child (no fakes)."""
import os
import socket
import subprocess
import sys
import time

from imapd_ctl.adapters import ports


def _listener():
    sock = socket.socket(socket.AF_INET6)
    sock.bind(("::1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def test_own_listening_socket_is_found_and_a_closed_one_is_not():
    sock, port = _listener()
    try:
        assert ports.unit_listens(os.getpid(), port)
        assert ports._diag_listening(port) == ports._proc_listening(os.getpid(), port) != set()
    finally:
        sock.close()
    assert not ports.unit_listens(os.getpid(), port)


def test_a_connected_but_not_listening_socket_does_not_count():
    sock, port = _listener()
    client = socket.create_connection(("::1", port))
    peer, _ = sock.accept()
    sock.close()
    try:
        assert not ports.unit_listens(os.getpid(), port)
    finally:
        client.close()
        peer.close()


def test_a_descendant_holding_the_socket_counts_but_an_unrelated_process_does_not():
    child = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True); time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        assert ports.unit_listens(os.getpid(), port)       # via psutil's children()
        assert ports.unit_listens(child.pid, port)
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            time.sleep(0.05)
            assert not ports.unit_listens(other.pid, port)  # listening, but not this process's
        finally:
            other.kill()
            other.wait()
    finally:
        child.kill()
        child.wait()


def test_no_such_process():
    assert not ports.unit_listens(0, 143)
    assert not ports.unit_listens(2**22 + 12345, 143)


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
