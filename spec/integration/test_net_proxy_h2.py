"""lariat.proxy and lariat.http to HTTP/2 upstreams (DESIGN §4b "Network"):
nginx over TLS with ALPN h2, lariat itself as an h2c upstream (prior
knowledge, `version = "2"`) and a python-h2 peer for GOAWAY and resets on
cue. Both client protocols (HTTP/1.1 and h2c) in front.

RFC 9113 §8.2.2: "An endpoint MUST NOT generate an HTTP/2 message containing
connection-specific header fields" -- the proxy drops them on the way up.
RFC 9113 §8.7: a stream refused (GOAWAY above its last-stream-id) "has not been
processed" and can be retried."""

import hashlib
import json
import os
import socket
import struct
import threading
import time

import httpx
import pytest

from conftest import LariatServer, app_path
from h2raw import CANCEL, H2Raw, RstStreamFrame
from netpeers import CA, H2Peer, Nginx, http_call, wait_for

SLOW = 3 if os.environ.get("LARIAT_SANITIZE") else 1


@pytest.fixture(scope="module")
def env():
    ca = CA()
    up = LariatServer(app_path("upstream.lua"), "--workers", "1").start()
    ng = Nginx(ca, upstream=up.port)
    peer, peer2 = H2Peer(), H2Peer()
    os.environ["LARIAT_TEST_UPSTREAM"] = "http://127.0.0.1:%d" % up.port
    os.environ["LARIAT_TEST_NGINX_TLS"] = "https://127.0.0.1:%d" % ng.tls_port
    os.environ["LARIAT_TEST_CA"] = ca.ca
    os.environ["LARIAT_TEST_H2PEER"] = "http://127.0.0.1:%d" % peer.port
    os.environ["LARIAT_TEST_H2PEER2"] = "http://127.0.0.1:%d" % peer2.port
    px = LariatServer(app_path("proxy_h2.lua"), "--workers", "1", "--max-body", "3000000").start()
    try:
        yield {"px": px, "up": up, "nginx": ng, "peer": peer, "peer2": peer2}
        px.check_healthy()
        up.check_healthy()
    finally:  # the peers go even when a server was found unhealthy
        ng.stop()
        peer.stop()
        peer2.stop()


def sha(b):
    return hashlib.sha256(b).hexdigest()


def h1(srv, path, data=None, headers=None):
    return http_call(srv, path, data=data, headers=headers)


def h2(srv, path, data=None, headers=None):
    """(status, httpx headers, body) over h2c with prior knowledge."""
    with httpx.Client(http1=False, http2=True, timeout=20) as c:
        r = c.request("POST" if data is not None else "GET", srv.url(path), content=data, headers=headers)
        assert r.http_version == "HTTP/2"
        return r.status_code, r.headers, r.content


CLIENTS = {"h1": h1, "h2": h2}


@pytest.mark.parametrize("client", ["h1", "h2"])
@pytest.mark.parametrize("name", ["0", "1", "2m"])
def test_get_through_to_nginx_over_h2(env, client, name):
    ng = env["nginx"]
    before = len(ng.access())
    for _ in range(2):
        st, _, body = CLIENTS[client](env["px"], "/n/files/" + name)
        assert st == 200 and sha(body) == sha(ng.files[name]), st
    assert wait_for(lambda: len(ng.access()) >= before + 2, 2)  # logged just after the response
    got = ng.access()[before:]
    assert [p for _, p, _ in got] == ["HTTP/2.0", "HTTP/2.0"], got


@pytest.mark.parametrize("client", ["h1", "h2"])
@pytest.mark.parametrize("size", [0, 1, 2 * 1024 * 1024])
def test_post_bodies_both_ways(env, client, size):
    """To lariat over h2c and through nginx over TLS h2, hash-compared."""
    data = os.urandom(size)
    for path in ("/c/echo", "/n/up/echo"):
        for _ in range(2):
            st, h, body = CLIENTS[client](env["px"], path, data=data)
            assert st == 200 and sha(body) == sha(data), (path, st, len(body))


def test_chunked_upload_streams_up_to_h2(env):
    """No content-length: DATA frames as the body arrives, END_STREAM at its end."""
    parts = [os.urandom(70000) for _ in range(5)]
    st, _, body = h1(env["px"], "/c/echo", data=iter(parts), headers={"transfer-encoding": "chunked"})
    assert st == 200 and sha(body) == sha(b"".join(parts))


def test_connection_specific_headers_dropped_forwarded_added(env):
    c = socket.create_connection(("127.0.0.1", env["px"].port), timeout=10)
    c.sendall(b"GET /c/headers HTTP/1.1\r\nhost: front.example\r\nx-forwarded-for: 1.2.3.4\r\n"
              b"connection: keep-alive, x-secret\r\nx-secret: 1\r\nkeep-alive: timeout=5\r\n"
              b"te: trailers\r\nproxy-connection: x\r\nx-kept: ok\r\n\r\n")
    resp = read_h1_response(c)
    c.close()
    assert resp[0] == 200, resp
    got = json.loads(resp[2])
    assert got["x-forwarded-for"] == "1.2.3.4, 127.0.0.1"
    assert got["x-forwarded-proto"] == "http" and got["x-forwarded-host"] == "front.example"
    assert got["x-kept"] == "ok"
    for hop in ("x-secret", "keep-alive", "proxy-connection", "connection"):
        assert hop not in got, hop
    assert got["te"] == "trailers"  # the proxy's own (§8.2.2 allows this one): it takes trailers


def read_h1_response(c):
    """(status, [(name, value)], body) of one HTTP/1.1 response on socket c (chunked decoded;
    the trailer fields are appended to the header list)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        assert d, buf
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = [tuple(x.strip() for x in l.split(":", 1)) for l in lines[1:]]
    names = dict((k.lower(), v) for k, v in fields)

    def more():
        d = c.recv(65536)
        assert d, "closed mid-body"
        return d
    if names.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += more()
            line, rest = rest.split(b"\r\n", 1)
            n = int(line.split(b";")[0], 16)
            if n == 0:
                while b"\r\n\r\n" not in b"\r\n" + rest:
                    rest += more()
                tl = (b"\r\n" + rest).split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
                fields += [tuple(x.strip() for x in l.split(":", 1)) for l in tl if l]
                return status, fields, body
            while len(rest) < n + 2:
                rest += more()
            body, rest = body + rest[:n], rest[n + 2:]
    n = int(names.get("content-length", "0"))
    while len(rest) < n:
        rest += more()
    return status, fields, rest[:n]


def test_trailers_pass_through(env):
    """An h2 upstream's trailers reach an h2 client, and an HTTP/1.1 client that sent
    TE: trailers (RFC 9110 §6.5.1) in the last chunk."""
    for path, body in (("/n/trail/1", b"z"), ("/c/trailers", b"body")):
        with H2Raw(env["px"].port) as c:
            c.handshake()
            c.request(1, path)
            st, _, got, trailers = c.response(1, timeout=10)
            assert st == 200 and got == body and trailers.get("x-trail") == "done", (path, trailers)
        s = socket.create_connection(("127.0.0.1", env["px"].port), timeout=10)
        s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nhost: x\r\nte: trailers\r\n\r\n")
        st, fields, got = read_h1_response(s)
        s.close()
        assert st == 200 and got == body and ("x-trail", "done") in fields, (path, fields)


def test_trailers_from_an_http11_upstream(env):
    """RFC 9112 §7.1.2: the trailer section of a chunked response from an
    HTTP/1.1 upstream reaches an h2 client (HEADERS after the DATA) and an
    HTTP/1.1 client that sent TE: trailers (RFC 9110 §10.1.4), whose TE goes up
    with it; one that did not send TE gets the body without them, twice each"""
    for _ in range(2):
        with H2Raw(env["px"].port) as c:
            c.handshake()
            c.request(1, "/h1/trailers")
            st, _, got, trailers = c.response(1, timeout=10)
            assert st == 200 and got == b"body" and trailers.get("x-trail") == "done", trailers
        for te, want in ((b"te: trailers\r\n", True), (b"", False)):
            s = socket.create_connection(("127.0.0.1", env["px"].port), timeout=10)
            s.sendall(b"GET /h1/trailers HTTP/1.1\r\nhost: x\r\n" + te + b"\r\n")
            st, fields, got = read_h1_response(s)
            s.close()
            assert st == 200 and got == b"body", fields
            assert (("x-trail", "done") in fields) == want, fields


@pytest.mark.parametrize("path", ["/n/cookies/1", "/h1/cookies", "/c/cookies"])
def test_each_set_cookie_is_its_own_field(env, path):
    """RFC 6265 §3: set-cookie values can't be comma-joined; both client protocols get each one."""
    s = socket.create_connection(("127.0.0.1", env["px"].port), timeout=10)
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nhost: x\r\n\r\n")
    st, fields, _ = read_h1_response(s)
    s.close()
    cookies = [v for k, v in fields if k.lower() == "set-cookie"]
    assert st == 200 and len(cookies) == 2, fields
    st, headers, _ = h2(env["px"], path)
    assert st == 200 and headers.get_list("set-cookie") == cookies


def test_http_get_repeated_header_is_an_array(env):
    url = "https://127.0.0.1:%d/cookies/1" % env["nginx"].tls_port
    st, _, body = http_call(env["px"], "/get", url=url)
    got = json.loads(body)
    assert st == 200 and got["version"] == "HTTP/2"
    assert got["headers"]["set-cookie"] == ["a=1; Path=/", "b=2, c=3"], got["headers"]
    assert isinstance(got["headers"]["content-type"], str)


def test_slow_upstream_streams_down_as_it_comes(env):
    s = socket.create_connection(("127.0.0.1", env["px"].port), timeout=10)
    t0 = time.monotonic()
    s.sendall(b"GET /c/chunked?n=4&gap=0.3 HTTP/1.1\r\nhost: x\r\n\r\n")
    first = s.recv(65536)
    t_first = time.monotonic() - t0
    st, _, body = read_h1_response_from(s, first)
    total = time.monotonic() - t0
    s.close()
    assert st == 200 and body == b"chunk1\nchunk2\nchunk3\nchunk4\n"
    assert total >= 0.9 and t_first < total - 0.5, (t_first, total)


def read_h1_response_from(s, first):
    class Pre:
        def __init__(self):
            self.buf = first

        def recv(self, n):
            if self.buf:
                b, self.buf = self.buf, b""
                return b
            return s.recv(n)
    return read_h1_response(Pre())


def test_slow_client_large_response(env):
    """The client reads slowly: upstream DATA is consumed only as the client drains."""
    for client in ("h1", "h2"):
        if client == "h1":
            c = socket.create_connection(("127.0.0.1", env["px"].port), timeout=20)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            c.sendall(b"GET /n/files/2m HTTP/1.1\r\nhost: x\r\n\r\n")
            time.sleep(0.5)
            st, _, body = read_h1_response(c)
            c.close()
        else:
            with H2Raw(env["px"].port, timeout=20) as c:
                c.handshake()
                c.request(1, "/n/files/2m")
                time.sleep(0.5)  # only the initial 64 KiB window: the proxy must wait for ours
                st, _, body, _ = c.response(1, timeout=20)
        assert st == 200 and sha(body) == sha(env["nginx"].files["2m"]), client


def test_timeout_is_504_and_the_session_lives_on(env):
    for _ in range(2):
        t0 = time.monotonic()
        st, _, _ = h1(env["px"], "/ct/slow?s=3")
        assert st == 504 and time.monotonic() - t0 < 0.3 + SLOW
    assert wait_for(lambda: "/slow?s=3: timeout (504)" in env["px"].log_text(), 2)
    for client in ("h1", "h2"):
        st, _, body = CLIENTS[client](env["px"], "/c/hello")
        assert body == b"hello"


def test_refused_is_502_with_a_log_line(env):
    for client in ("h1", "h2"):
        st, _, _ = CLIENTS[client](env["px"], "/dead/x")
        assert st == 502
    assert wait_for(lambda: "127.0.0.1:1/x: connection refused (502)" in env["px"].log_text(), 2)


def test_client_leaving_cancels_the_upstream_stream(env):
    """The client goes: RST_STREAM(CANCEL) to the upstream within 1 s, the connection stays."""
    p = env["peer"]
    for n in range(1, 3):
        base = len(p.resets)
        c = socket.create_connection(("127.0.0.1", env["px"].port))
        c.sendall(b"GET /p/hang HTTP/1.1\r\nhost: x\r\n\r\n")
        time.sleep(0.2)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        t0 = time.monotonic()
        c.close()
        assert wait_for(lambda: len(p.resets) > base, 1.0 * SLOW), p.resets
        assert p.resets[-1][1] == CANCEL and time.monotonic() - t0 < 1.0 * SLOW
        # the same from an h2 client resetting its stream
        base = len(p.resets)
        with H2Raw(env["px"].port) as h:
            h.handshake()
            h.request(1, "/p/hang")
            time.sleep(0.2)
            h.send_frame(RstStreamFrame(1, error_code=CANCEL))
            assert wait_for(lambda: len(p.resets) > base, 1.0 * SLOW), p.resets
            assert p.resets[-1][1] == CANCEL
            assert h.ping_ok()
    assert p.accepted == 1  # one upstream connection throughout
    st, _, body = h1(env["px"], "/p/after")
    assert body == b"ok /after"


def test_50_concurrent_streams_share_one_upstream_connection(env):
    """From a cold start too: 50 clients at once through the proxy, one h2 connection up."""
    p = env["peer2"]
    results = []
    with httpx.Client(http1=False, http2=True, timeout=30) as hc:  # its 25 streams on one connection

        def one(i):
            if i % 2:
                results.append(h1(env["px"], "/p2/slow?s=0.5")[2])
            else:
                results.append(hc.get(env["px"].url("/p2/slow?s=0.5")).content)
        t0 = time.monotonic()
        ts = [threading.Thread(target=one, args=(i,)) for i in range(50)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        took = time.monotonic() - t0
    assert results == [b"ok /slow"] * 50
    assert p.accepted == 1, p.accepted
    assert took < 0.5 + 6 * SLOW, took  # one after the other would take 25 s
    st, _, body = h1(env["px"], "/stats")
    assert json.loads(body)["handlers"] == 1


def test_http_get_concurrent_first_requests_share_one_connection(env):
    p = H2Peer()
    try:
        url = "http://127.0.0.1:%d/slow?s=0.3" % p.port
        st, _, body = http_call(env["px"], "/many", n=20, url=url, version="2")
        assert st == 200 and json.loads(body) == ["200 HTTP/2"] * 20, body
        assert p.accepted == 1
        # TLS + ALPN: the same, against nginx (a fresh origin name for it: localhost)
        ng = env["nginx"]
        before = len(ng.access())
        url = "https://localhost:%d/files/1" % ng.tls_port
        st, _, body = http_call(env["px"], "/many", n=20, url=url)
        assert json.loads(body) == ["200 HTTP/2"] * 20, body
        assert wait_for(lambda: len(ng.access()) >= before + 20, 2)
        conns = set(c for c, _, _ in ng.access()[before:])
        assert len(conns) == 1, conns
    finally:
        p.stop()


def test_h2_upstream_at_its_stream_limit_gets_another_connection(env):
    """RFC 9113 §5.1.2: an endpoint "MUST NOT exceed the limit set by its
    peer" (SETTINGS_MAX_CONCURRENT_STREAMS; the peer here fails the whole
    connection if it does). A request that finds every session to its origin
    full opens one more connection, as h2o's client does (httpclient.c
    find_h2conn skips a full connection and connects); nginx's HTTP/2
    upstreams (grpc_pass) carry one stream per connection and never wait for
    a stream either. --max-outbound bounds it."""
    p = H2Peer(max_streams=2)
    try:
        st, _, body = http_call(env["px"], "/get", url="http://127.0.0.1:%d/warm" % p.port, version="2")
        assert st == 200 and p.accepted == 1  # its SETTINGS are known from here on
        url = "http://127.0.0.1:%d/slow?s=0.5" % p.port
        for _ in range(2):
            st, _, body = http_call(env["px"], "/many", n=4, url=url, version="2")
            assert st == 200 and json.loads(body) == ["200 HTTP/2"] * 4, body
            assert p.accepted == 2 and p.peak == 2, (p.accepted, p.peak)  # 2 + 2; the second round reuses both
    finally:
        p.stop()


def test_goaway_refused_streams_are_retried_on_a_new_connection(env):
    p = H2Peer(goaway_after=6)
    try:
        url = "http://127.0.0.1:%d/slow?s=0.3" % p.port
        st, _, body = http_call(env["px"], "/many", n=10, url=url, version="2")
        assert st == 200 and json.loads(body) == ["200 HTTP/2"] * 10, body
        assert p.accepted == 2 and p.served == 10
    finally:
        p.stop()


def test_idle_h2_session_closes_after_keepalive_timeout(env):
    p = H2Peer()
    try:
        st, _, body = http_call(env["px"], "/stats")
        base = json.loads(body)["outbound"]
        for n in (1, 2):
            url = "http://127.0.0.1:%d/x" % p.port
            st, _, body = http_call(env["px"], "/get", url=url, version="2", ka=0.3)
            assert st == 200 and json.loads(body)["version"] == "HTTP/2"
            assert p.accepted == n
            assert wait_for(lambda: p.open == 0, 3 * SLOW)
            st, _, body = http_call(env["px"], "/stats")
            assert json.loads(body)["outbound"] == base
    finally:
        p.stop()
