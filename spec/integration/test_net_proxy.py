"""lariat.proxy: a reverse proxy in front of nginx and lariat (DESIGN §4b
"Network", "Details the tests rely on": path mapping, x-forwarded-*,
hop-by-hop headers, --max-body, 502/504)."""

import hashlib
import json
import os
import socket
import struct
import time
import urllib.request

import pytest

from conftest import LariatServer, app_path
from netpeers import CA, Nginx, Peer, http_call, wait_for

SLOW = 3 if os.environ.get("LARIAT_SANITIZE") else 1


@pytest.fixture(scope="module")
def env():
    ca = CA()
    ng = Nginx(ca)
    up = LariatServer(app_path("upstream.lua"), "--workers", "1").start()
    silent = Peer("silent")
    os.environ["LARIAT_TEST_UPSTREAM"] = "http://127.0.0.1:%d" % up.port
    os.environ["LARIAT_TEST_NGINX"] = "http://127.0.0.1:%d" % ng.port
    os.environ["LARIAT_TEST_SILENT"] = "http://127.0.0.1:%d" % silent.port
    px = LariatServer(app_path("proxy.lua"), "--workers", "1", "--max-body", "3000000").start()
    yield {"px": px, "up": up, "nginx": ng, "silent": silent}
    px.check_healthy()
    up.check_healthy()
    ng.stop()
    silent.stop()


call = http_call


def sha(b):
    return hashlib.sha256(b).hexdigest()


@pytest.mark.parametrize("name", ["0", "1", "2m"])
def test_get_through_to_nginx(env, name):
    for _ in range(2):
        st, h, body = call(env["px"], "/files/" + name)
        assert st == 200 and sha(body) == sha(env["nginx"].files[name]), (st, h)


@pytest.mark.parametrize("size", [0, 1, 2 * 1024 * 1024])
def test_post_bodies_both_ways(env, size):
    data = os.urandom(size)
    for _ in range(2):
        st, h, body = call(env["px"], "/up/echo", data=data)
        assert st == 200 and sha(body) == sha(data), (st, len(body))
        assert h["x-method"] == "POST"


def test_chunked_upload_streams_up(env):
    """A body without content-length goes up chunked, as it arrives."""
    parts = [os.urandom(70000) for _ in range(5)]

    def gen():
        for p in parts:
            yield p
    req = urllib.request.Request(env["px"].url("/up/echo"), data=gen(), method="POST",
                                 headers={"transfer-encoding": "chunked"})
    with urllib.request.urlopen(req, timeout=20) as r:
        assert sha(r.read()) == sha(b"".join(parts))


def raw(srv, data):
    c = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    c.sendall(data)
    buf = b""
    while True:
        try:
            d = c.recv(65536)
        except ConnectionResetError:
            break
        if not d:
            break
        buf += d
    c.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    return int(head.split()[1]), head, body


def test_forwarded_headers_and_hop_by_hop(env):
    st, _, body = raw(env["px"], b"GET /up/headers HTTP/1.1\r\nhost: front.example\r\n"
                      b"x-forwarded-for: 1.2.3.4\r\nconnection: close, x-secret\r\nx-secret: 1\r\n"
                      b"keep-alive: timeout=5\r\nte: trailers\r\nx-kept: ok\r\n\r\n")
    assert st == 200
    got = json.loads(body)
    assert got["x-forwarded-for"] == "1.2.3.4, 127.0.0.1"
    assert got["x-forwarded-proto"] == "http"
    assert got["x-forwarded-host"] == "front.example"
    assert got["x-kept"] == "ok"
    for hop in ("x-secret", "keep-alive", "te", "upgrade", "proxy-connection"):
        assert hop not in got, hop
    assert got["host"] == "127.0.0.1:%d" % env["up"].port


def test_path_mapping(env):
    st, _, body = call(env["px"], "/path/a/b%20c?x=1&y=2")
    assert body == b"GET /path/a/b c?x=1&y=2" or body == b"GET /path/a/b%20c?x=1&y=2", body
    st, _, body = call(env["px"], "/m/a/b?x=1")
    assert body == b"GET /path/base/a/b?x=1", body
    st, _, body = call(env["px"], "/m/?q")
    assert body == b"GET /path/base/?q", body
    for _ in range(2):  # the same options table serves every request
        st, _, body = call(env["px"], "/exact?z=1")
        assert body == b"GET /path/fixed?z=1", body
        st, _, body = call(env["px"], "/m/c")
        assert body == b"GET /path/base/c?", body


@pytest.mark.parametrize("path,up", [
    ("/m/x/", "/path/base/x"), ("/m//x", "/path/base/x"), ("/m/./x", "/path/base/x"),
    ("/m/%41", "/path/base/A"), ("/m/a/../b", "/path/base/b"), ("/up/../m/z", "/path/base/z"),
    ("/m/a/b/", "/path/base/a/b"),
])
def test_path_info_is_the_canonical_rest(env, path, up):
    """path_info after percent-decoding, dot segments and doubled or trailing
    slashes (lariat.path), whether C's quick check or the Lua one decides."""
    for _ in range(2):
        st, _, body = call(env["px"], path)
        assert st == 200 and body == ("GET %s?" % up).encode(), (path, st, body)


def test_header_edits(env):
    st, _, body = call(env["px"], "/edit/headers")
    got = json.loads(body)
    assert got["x-added"] == "by before" and got["x-path"] == "/edit/headers"


def test_refused_is_502_with_a_log_line(env):
    for _ in range(2):
        st, _, _ = call(env["px"], "/dead/x")
        assert st == 502
    assert wait_for(lambda: "127.0.0.1:1/x" in env["px"].log_text(), 2)


def test_timeout_is_504_with_a_log_line(env):
    for _ in range(2):
        t0 = time.monotonic()
        st, _, _ = call(env["px"], "/t/slow?s=3")
        assert st == 504 and time.monotonic() - t0 < 0.3 + SLOW
    assert wait_for(lambda: "/slow?s=3: timeout (504)" in env["px"].log_text(), 2)
    st, _, body = call(env["px"], "/up/hello")
    assert body == b"hello"


def test_max_body_applies_to_proxied_bodies(env):
    st, _, _ = raw(env["px"], b"POST /up/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3000001\r\n\r\n")
    assert st == 413
    # chunked: the limit is found while streaming up
    c = socket.create_connection(("127.0.0.1", env["px"].port), timeout=10)
    c.sendall(b"POST /up/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (100000, b"a" * 100000)
    got = b""
    try:
        for _ in range(40):
            c.sendall(chunk)
        c.settimeout(5)
        got = c.recv(4096)
    except OSError:
        pass
    c.close()
    assert got == b"" or got.startswith(b"HTTP/1.1 413"), got[:100]
    st, _, body = call(env["px"], "/up/hello")
    assert body == b"hello"


def test_slow_client_large_response(env):
    """The client reads slowly: the proxy holds back (bounded memory), nothing is lost."""
    c = socket.create_connection(("127.0.0.1", env["px"].port), timeout=20)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    c.sendall(b"GET /files/2m HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    time.sleep(0.5)
    buf = b""
    while True:
        d = c.recv(65536)
        if not d:
            break
        buf += d
    c.close()
    head, body = buf.split(b"\r\n\r\n", 1)
    if b"chunked" in head.lower():
        out, rest = b"", body
        while True:
            line, rest = rest.split(b"\r\n", 1)
            n = int(line, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    assert sha(body) == sha(env["nginx"].files["2m"])


def test_client_leaving_closes_the_upstream(env):
    p = env["silent"]
    base_acc, base_closed = p.accepted, p.closed_by_peer
    for n in (1, 2):
        c = socket.create_connection(("127.0.0.1", env["px"].port))
        c.sendall(b"GET /silent HTTP/1.1\r\nhost: x\r\n\r\n")
        assert wait_for(lambda: p.accepted == base_acc + n, 5)
        time.sleep(0.05)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        assert wait_for(lambda: p.closed_by_peer == base_closed + n, 1.0 * SLOW)


def test_websocket_is_tunnelled(env):
    from wsclient import WS, frame
    for _ in range(2):
        with WS(env["px"].port, "/wsup/echo") as ws:
            assert ws.status == 101 and "sec-websocket-accept" in ws.headers
            for m in (b"one", b"x" * 100000):
                ws.send(frame(2, m))
                assert ws.read_message() == (2, m)
            ws.send(frame(8, struct.pack("!H", 1000)))
            assert ws.read_close()[0] == 1000
    st, _, body = call(env["px"], "/up/hello")
    assert body == b"hello"
