"""The one HTTP framer (imapd_ctl.server.framing), without sockets: a head parses exactly or
is refused, and a chunked body decodes the same however its bytes are split on arrival."""
import pytest
from hypothesis import given, strategies as st

from imapd_ctl.server.framing import Chunked, Limits, Refused, head_end, parse_head

LIMITS = Limits()


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, at = b"", 0
    for size in sizes:
        if at >= len(body):
            break
        piece = body[at:at + size]
        out += b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n"
        at += len(piece)
    if at < len(body):
        out += b"%x\r\n" % (len(body) - at) + body[at:] + b"\r\n"
    return out + b"0\r\nX-Trailer: y\r\n\r\n"


@given(body=st.binary(max_size=3000), sizes=st.lists(st.integers(1, 700), max_size=8),
       cuts=st.lists(st.integers(1, 400), max_size=30))
def test_a_chunked_body_decodes_the_same_however_it_arrives(body, sizes, cuts):
    wire = chunked(body, sizes) + b"GET /next"          # what follows is left in the buffer
    decoder, buf, at = Chunked(64 * 1024, LIMITS), bytearray(), 0
    for cut in cuts + [len(wire)]:
        buf += wire[at:at + cut]
        at += cut
        used = decoder.feed(buf)
        del buf[:used]
        if decoder.done:
            break
    buf += wire[at:]
    assert decoder.done and bytes(decoder.body) == body and bytes(buf) == b"GET /next"


def test_a_chunked_body_over_the_limit_is_refused_before_it_is_kept():
    decoder = Chunked(10, LIMITS)
    with pytest.raises(Refused) as err:
        decoder.feed(b"b\r\n")                            # 11 announced: refused from the size line
    assert err.value.status == 413 and len(decoder.body) == 0


def test_a_head_is_framed_by_its_blank_line_and_parsed():
    raw = b"POST /x?a=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-Two: a\r\nx-two: b\r\n\r\nabc"
    end = head_end(raw, LIMITS)
    head = parse_head(raw[:end], LIMITS)
    assert (head.method, head.path, head.query, head.version, head.length) == ("POST", "/x", "a=1", (1, 1), 3)
    assert head.headers[-2:] == [("X-TWO", "a"), ("X-TWO", "b")] and head.keep_alive
    assert head_end(b"GET / HTTP/1.1\r\nHost: h\r\n", LIMITS) is None            # more must come
    with pytest.raises(Refused) as err:
        head_end(b"G" * (LIMITS.line + 3), LIMITS)
    assert err.value.status == 414
