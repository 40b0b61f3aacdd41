"""The HTTP/1.1 client's response parsing (RFC 9112 §4-§7) against raw bytes
from a Python peer: a response split at every byte, status-line variants,
framing by content-length / chunked / close, interim responses, bodiless
responses, and what is refused (obs-fold, bad fields, smuggling-prone
framing, an endless head) as nil, "invalid response"."""

import hashlib
import json
import os

import pytest

from conftest import LariatServer, app_path
from netpeers import HttpPeer, http_call, wait_for

SLOW = 3 if os.environ.get("LARIAT_SANITIZE") else 1
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture(scope="module")
def srv():
    s = LariatServer(app_path("net.lua"), "--workers", "1").start()
    yield s
    s.check_healthy()


def fetch(srv, peer, path="/", **q):
    """(status, x- headers as seen by the handler, body) of one lariat.http.request to peer"""
    st, h, body = http_call(srv, "/http/raw", url="http://127.0.0.1:%d%s" % (peer.port, path), wait=30 * SLOW, **q)
    if st != 200:
        return st, h.get("x-err"), body
    return int(h["x-status"]), {"version": h["x-version"], "headers": json.loads(h["x-headers"])}, body


def sha(b):
    return hashlib.sha256(b).hexdigest()


def test_a_response_split_at_every_byte(srv):
    """RFC 9112 §7.1: chunk extensions are ignored, trailers are not headers;
    RFC 9110 §5.3: a repeated field keeps each value (an array in res.headers)."""
    resp = (b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nTransfer-Encoding: chunked\r\n"
            b"set-cookie: b=2, c=3\r\nX-Case:MiXed  \r\n\r\n"
            b"5;ext=1;q=\"x\"\r\nHello\r\n7 ; x\r\n world!\r\n0\r\nX-Trail: t\r\n\r\n")
    peer = HttpPeer(lambda n: resp, split=1, gap=0.001)
    try:
        for _ in range(2):  # the second time on the same connection
            st, got, body = fetch(srv, peer)
            assert st == 200 and body == b"Hello world!", (st, got, body)
            hd = got["headers"]
            assert hd["set-cookie"] == ["a=1", "b=2, c=3"] and hd["x-case"] == "MiXed", hd
            assert "x-trail" not in hd
        assert peer.accepted == 1
    finally:
        peer.stop()


# each is answered as "invalid response", its connection closed, never pooled
INVALID = {
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\nok",
    "space before the colon": b"HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 2\r\n\r\nok",
    "CTL in a value": b"HTTP/1.1 200 OK\r\nX-A: 1\x01\r\nContent-Length: 2\r\n\r\nok",
    "CR in a value": b"HTTP/1.1 200 OK\r\nX-A: 1\r2\r\nContent-Length: 2\r\n\r\nok",
    "content-length and chunked": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"2\r\nok\r\n0\r\n\r\n"),
    "two content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    "bad content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 2a\r\n\r\nok",
    "bad chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    "chunk longer than its size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nok\r\n0\r\n\r\n",
    "HTTP/2 status line": b"HTTP/2 200\r\nContent-Length: 2\r\n\r\nok",
    "two-digit status": b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok",
    "not HTTP": b"SSH-2.0-OpenSSH_9.2p1\r\n",
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_an_invalid_response_is_an_error(srv, name):
    peer = HttpPeer(lambda n: INVALID[name] if n % 2 else OK)
    try:
        for _ in range(2):  # the second time too; a good answer in between
            st, err, _ = fetch(srv, peer)
            assert (st, err) == (502, "invalid response")
            st, _, body = fetch(srv, peer)
            assert st == 200 and body == b"ok"
        # the bad ones' connections were closed by lariat; the good one pooled
        assert wait_for(lambda: peer.closed_by_peer >= 1, 5 * SLOW), peer.closed_by_peer
        assert peer.accepted == 3
    finally:
        peer.stop()


def test_an_endless_head_is_bounded(srv):
    """A head past 64 KiB, or past 100 fields, fails without being held whole."""
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (4 << 20) + b"\r\n\r\n"
    many = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-F%d: v\r\n" % i for i in range(300)) + b"\r\n"
    answers = [big, OK, many, OK]
    peer = HttpPeer(lambda n: answers[(n - 1) % 4])
    try:
        rss = None
        for _ in range(2):
            for want in ("invalid response", None, "invalid response", None):
                st, err, body = fetch(srv, peer)
                if want:
                    assert (st, err) == (502, want)
                else:
                    assert st == 200 and body == b"ok"
            if rss is None:
                rss = srv.rss_kib()
        assert srv.rss_kib() < rss + 2048  # the 4 MiB line was never buffered
    finally:
        peer.stop()


# answer, status, body, version, whether the connection is reused after it
FRAMING = {
    "no reason phrase": (b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", 200, b"ok", "HTTP/1.1", True),
    "empty reason phrase": (b"HTTP/1.1 201 \r\nContent-Length: 2\r\n\r\nok", 201, b"ok", "HTTP/1.1", True),
    "odd status, obs-text reason": (b"HTTP/1.1 599 caf\xe9\r\nContent-Length: 2\r\n\r\nok", 599, b"ok", "HTTP/1.1",
                                    True),
    "bare LF line ends": (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", 200, b"ok", "HTTP/1.1", True),
    "1xx skipped": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok", "HTTP/1.1", True),
    "HTTP/1.0 until the close": ((b"HTTP/1.0 200 OK\r\n\r\nuntil the close", True), 200, b"until the close",
                                 "HTTP/1.0", False),
    "HTTP/1.0 keep-alive": (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", 200,
                            b"ok", "HTTP/1.0", True),
    "HTTP/1.1 until the close": ((b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the close", True), 200,
                                 b"until the close", "HTTP/1.1", False),
    "connection: close with a length": ((b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                                         True), 200, b"ok", "HTTP/1.1", False),
    "unknown coding: until the close": ((b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, x-odd\r\n\r\n2\r\nok",
                                         True), 200, b"2\r\nok", "HTTP/1.1", False),
}


@pytest.mark.parametrize("name", sorted(FRAMING))
def test_status_lines_and_framing(srv, name):
    answer, status, body, version, reused = FRAMING[name]
    peer = HttpPeer(lambda n: answer)
    try:
        for _ in range(2):
            st, got, b = fetch(srv, peer)
            assert (st, b, got["version"]) == (status, body, version), got
            assert "link" not in got["headers"]
        assert peer.accepted == (1 if reused else 2)
    finally:
        peer.stop()


def test_no_body_after_head_204_and_304(srv):
    """RFC 9110 §6.4.1: no content in a response to HEAD, nor in 204 and 304,
    whatever content-length says; the connection goes on."""
    answers = {1: b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n",
               2: b"HTTP/1.1 204 No Content\r\n\r\n",
               3: b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 12\r\n\r\n"}
    peer = HttpPeer(lambda n: answers[(n - 1) % 3 + 1])
    try:
        for _ in range(2):
            for method, status in (("HEAD", 200), ("GET", 204), ("GET", 304)):
                st, got, b = fetch(srv, peer, m=method)
                assert (st, b) == (status, b""), (method, got)
        assert peer.accepted == 1
    finally:
        peer.stop()


def chunked(body):
    out, i, sizes = [], 0, (1, 1000, 65536, 7)
    while i < len(body):
        n = sizes[len(out) % len(sizes)]
        out.append(b"%x;n=%d\r\n%s\r\n" % (len(body[i:i + n]), len(out), body[i:i + n]))
        i += n
    return b"".join(out) + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
@pytest.mark.parametrize("size", [0, 1, 2 << 20])
def test_bodies_by_each_framing(srv, framing, size):
    body = os.urandom(size)
    if framing == "length":
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + body
    elif framing == "chunked":
        answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body)
    else:
        answer = (b"HTTP/1.1 200 OK\r\n\r\n" + body, True)
    peer = HttpPeer(lambda n: answer)
    try:
        for stream in ("0", "1", "0"):
            st, got, b = fetch(srv, peer, stream=stream, max_body=str(4 << 20))
            assert st == 200 and sha(b) == sha(body), (framing, size, stream, got)
    finally:
        peer.stop()


def test_max_body_while_reading_chunks(srv):
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"x" * 5000)
    peer = HttpPeer(lambda n: answer if n % 2 else OK)
    try:
        for _ in range(2):
            st, err, _ = fetch(srv, peer, max_body="4096")
            assert (st, err) == (502, "body too big")
            st, _, b = fetch(srv, peer)
            assert (st, b) == (200, b"ok")
    finally:
        peer.stop()
