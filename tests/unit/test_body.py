"""The body limit in front of every transport (transports.body) and the envelope on odd paths.
The body cases drive the middleware with a stream that counts what is read from it: nothing
beyond the limit may be read, whatever the framing. The real servers (the venv's and Debian's
modules) are tested in tests/e2e/test_e2e_bodies.py."""
import io
import json

import pytest

from imapd_ctl.transports.body import bounded
from imapd_ctl.transports.http import MAX_BODY

LIMIT = 1000


class CountingStream(io.RawIOBase):
    """An endless body (or `size` bytes), counting the bytes handed out."""

    def __init__(self, size: int | None = None):
        self.size, self.taken = size, 0

    def read(self, n: int = -1) -> bytes:
        assert n is not None and n >= 0, "the middleware must never read without a bound"
        if self.size is not None:
            n = min(n, self.size - self.taken)
        self.taken += n
        return b"x" * n


def run(environ: dict) -> tuple[str, dict | bytes, dict]:
    seen: dict = {}

    def app(env, start_response):
        seen["body"] = env["wsgi.input"].read()
        seen["length"] = env["CONTENT_LENGTH"]
        start_response("200 OK", [])
        return [b"app"]

    status: list[str] = []
    reply = b"".join(bounded(app, LIMIT)({**environ}, lambda s, h: status.append(s)))
    return status[0], (json.loads(reply) if reply != b"app" else reply), seen


@pytest.mark.parametrize("headers, size, expect, most_read", [
    ({"CONTENT_LENGTH": str(512 << 20)}, None, 413, 0),                 # refused unread
    ({"CONTENT_LENGTH": str(LIMIT + 1)}, LIMIT + 1, 413, 0),
    ({"HTTP_TRANSFER_ENCODING": "chunked"}, None, 413, LIMIT + 1),       # endless chunked
    ({"HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_LENGTH": "5"}, None, 413, LIMIT + 1),
    ({}, None, 413, LIMIT + 1),                                          # no length at all
    ({"CONTENT_LENGTH": "600"}, 200, 400, 600),                          # ends early
    ({"CONTENT_LENGTH": "\u00b9\u00b2"}, None, 400, 0),                      # not ASCII digits
    ({"CONTENT_LENGTH": str(LIMIT)}, None, 200, LIMIT),                  # exactly the limit
    ({"HTTP_TRANSFER_ENCODING": "chunked"}, LIMIT, 200, LIMIT + 1),
])
def test_nothing_beyond_the_limit_is_read(headers, size, expect, most_read):
    stream = CountingStream(size)
    status, reply, seen = run({"wsgi.input": stream, **headers})
    assert status.startswith(str(expect)), (status, reply)
    assert stream.taken <= most_read
    if expect == 200:
        assert len(seen["body"]) == int(seen["length"]) == min(LIMIT, size or LIMIT)
    else:
        assert reply["status"] == expect and isinstance(reply["payload"], str) and "app" not in seen


def test_a_broken_body_is_a_400_envelope():
    class Broken(io.RawIOBase):
        def read(self, n: int = -1) -> bytes:
            raise ValueError("Invalid chunk size")
    status, reply, _ = run({"wsgi.input": Broken(), "HTTP_TRANSFER_ENCODING": "chunked"})
    assert status.startswith("400") and "could not be read" in reply["payload"]


@pytest.mark.parametrize("method, path, expect", [
    ("POST", "/nodeworx/mail/imap//restart", 404), ("POST", "//nodeworx/mail/imap/restart", 404),
    ("POST", "/nodeworx/mail/imap/restart/", 404), ("GET", "/healthz/", 404),
    ("GET", "//healthz", 404), ("POST", "/xmlrpc/", 404), ("GET", "/xmlrpc", 405),
    ("POST", "/nodeworx//mail/imap/isRunning", 404), ("PUT", "/nodeworx/mail/imap/isRunning", 405),
])
def test_odd_paths_answer_the_envelope(env, method, path, expect):
    reply = env.client.open(path, method=method, headers=env.auth())
    assert reply.status_code == expect and reply.mimetype == "application/json", reply.data
    assert json.loads(reply.data)["status"] == expect


def test_the_app_is_behind_the_limit(env):
    reply = env.client.post("/xmlrpc", data=b"<" * (MAX_BODY + 1), content_type="text/xml")
    assert reply.status_code == 413 and json.loads(reply.data)["status"] == 413
