"""lariat.tcp.connect, sockets and lariat.dns.resolve against real peers
(DESIGN §4b "Network" and "Details the tests rely on")."""

import concurrent.futures
import hashlib
import json
import os
import socket
import struct
import time
import urllib.request

import pytest

from conftest import LariatServer, app_path
from netpeers import CA, Peer, Unanswered, wait_for

SLOW = 3 if os.environ.get("LARIAT_SANITIZE") else 1


@pytest.fixture(scope="module")
def srv():
    s = LariatServer(app_path("net.lua"), "--workers", "1").start()
    yield s
    s.check_healthy()


@pytest.fixture
def peers():
    started = []

    def make(*a, **kw):
        p = Peer(*a, **kw)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


def get(srv, path, timeout=10):
    with urllib.request.urlopen(srv.url(path), timeout=timeout) as r:
        return json.loads(r.read())


def test_line_roundtrip_and_pool_reuse(srv, peers):
    p = peers("echo")
    for i in range(3):
        r = get(srv, "/tcp/echo?port=%d&msg=m%d" % (p.port, i))
        assert r["line"] == "m%d" % i and r["sent"] == 3
        assert r["reused"] == (i > 0), r  # setkeepalive put it back, connect took it
    assert p.accepted == 1


def test_pooled_connection_closed_by_upstream_is_not_handed_out(srv, peers):
    p = peers("echo")
    assert get(srv, "/tcp/echo?port=%d&msg=a" % p.port)["line"] == "a"
    for n in (1, 2):  # the second time too
        p.close_all()  # the server drops its idle keep-alive connections
        r = get(srv, "/tcp/echo?port=%d&msg=b" % p.port)
        assert r["line"] == "b" and r["reused"] is False, r
        assert p.accepted == n + 1


def test_pool_keeps_at_most_size_per_origin(srv, peers):
    """setkeepalive(idle, size): past `size` idle connections to one origin the
    oldest is closed; the kept ones are reused by the next connects."""
    p = peers("echo")
    r = get(srv, "/tcp/many?port=%d&n=5&size=2" % p.port)
    assert r["reused"] == 0
    assert wait_for(lambda: p.closed_by_peer == 3, 5), p.closed_by_peer
    r = get(srv, "/tcp/many?port=%d&n=5&size=2" % p.port)  # the second time too
    assert r["reused"] == 2, r
    assert wait_for(lambda: p.accepted == 8, 5), p.accepted  # the peer's accept thread counts late
    assert wait_for(lambda: p.closed_by_peer == 6, 5), p.closed_by_peer


def test_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    srv = LariatServer(app_path("net.lua"), "--workers", "1").start()
    try:
        for _ in range(2):
            r = get(srv, "/tcp/connect?port=%d" % port)
            assert "connection refused" in r["err"]
    finally:
        srv.check_healthy()


def test_connect_timeout(srv):
    with Unanswered() as port:
        for _ in range(2):
            r = get(srv, "/tcp/connect?port=%d&ct=0.3" % port)
            assert r.get("err") == "timeout", r
            assert 0.25 <= r["took"] < 0.3 + SLOW, r


def test_read_timeout_keeps_serving(srv, peers):
    p = peers("silent")
    for _ in range(2):
        t0 = time.monotonic()
        r = get(srv, "/tcp/echo?port=%d&timeout=0.2" % p.port)
        assert r["err"] == "timeout" and r["partial"] == "", r
        assert time.monotonic() - t0 < 0.2 + SLOW
    assert get(srv, "/tcp/echo?port=%d&msg=x" % peers("echo").port)["line"] == "x"


def test_receive_all_until_close(srv, peers):
    payload = b"x" * 100000 + b"end"
    p = peers("burst", payload=payload)
    for _ in range(2):
        r = get(srv, "/tcp/all?port=%d" % p.port)
        assert r["data"] == payload.decode() and "err" not in r


def test_reset_by_peer_is_closed(srv, peers):
    p = peers("reset")
    for _ in range(2):
        r = get(srv, "/tcp/echo?port=%d" % p.port)
        assert r["err"] == "closed", r


def test_peer_closing_mid_line_returns_partial(srv, peers):
    p = peers("burst", payload=b"no newline here")
    r = get(srv, "/tcp/echo?port=%d" % p.port)
    assert r["err"] == "closed" and r["partial"] == "no newline here", r


@pytest.mark.parametrize("payload,query,want", [
    (b"x" * (1 << 20) + b"\n", "", {"len": 1 << 20}),                     # the default: 1 MiB a line
    (b"x" * ((1 << 20) + 1) + b"\n", "", {"err": "line too long", "partial": 1 << 20}),
    (b"y" * 3000000, "", {"err": "line too long", "partial": 1 << 20}),  # and no newline at all
    (b"0123456789\n", "&max_line=10", {"len": 10}),
    (b"0123456789a\n", "&max_line=10", {"err": "line too long", "partial": 10}),
    (b"abcdefg\n", "&set_line=5", {"err": "line too long", "partial": 5}),
    (b"z" * 5000, "&pattern=*a&max_all=1000", {"err": "too large", "partial": 1000}),
    (b"z" * 5000, "&pattern=*a&set_all=4999", {"err": "too large", "partial": 4999}),
    (b"z" * 5000, "&pattern=*a&max_all=5000", {"len": 5000}),
], ids=["1MiB-line", "line-over-1MiB", "no-newline", "max_line-fits", "max_line-over", "setlimits-line",
        "max_all-over", "setlimits-all", "max_all-fits"])
def test_receive_line_and_all_are_bounded(srv, peers, payload, query, want):
    """A peer can't make receive("*l") / ("*a") buffer without end: past the limit,
    nil, "line too long" | "too large", and the first `limit` bytes; the socket is closed."""
    p = peers("burst", payload=payload)
    for _ in range(2):
        r = get(srv, "/tcp/limit?port=%d%s" % (p.port, query))
        for k, v in want.items():
            assert r.get(k) == v, r
        if "err" in want:
            assert r["after"] == "closed", r
    r = get(srv, "/tcp/echo?port=%d" % peers("echo").port)
    assert r["line"] == "hello"


@pytest.mark.parametrize("size", [0, 1, 2 * 1024 * 1024])
def test_bulk_bytes_both_ways(srv, peers, size):
    p = peers("raw")
    body = os.urandom(size)
    req = urllib.request.Request(srv.url("/tcp/bulk?port=%d" % p.port), data=body, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        back = r.read()
        assert r.headers["x-sent"] == str(size)
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(body).hexdigest()


def test_from_a_spawned_task(srv, peers):
    p = peers("echo")
    for _ in range(2):
        assert get(srv, "/tcp/spawned?port=%d" % p.port)["line"] == "from task"


def test_from_a_websocket_handler(srv, peers):
    from wsclient import WS, frame
    p = peers("echo")
    with WS(srv.port, "/ws/echo?port=%d" % p.port) as ws:
        assert ws.status == 101
        for m in (b"one", b"two"):
            ws.send(frame(1, m))
            assert ws.read_message() == (1, m)


def test_dns_resolve_localhost_and_literals(srv):
    r = get(srv, "/dns?name=localhost")
    assert "127.0.0.1" in r["addrs"] or "::1" in r["addrs"], r
    assert get(srv, "/dns?name=127.0.0.1")["addrs"] == ["127.0.0.1"]
    assert get(srv, "/dns?name=::1")["addrs"] == ["::1"]


def test_connect_by_name_uses_etc_hosts(srv, peers):
    p = peers("echo")
    assert get(srv, "/tcp/echo?host=localhost&port=%d&msg=n" % p.port)["line"] == "n"


def rst_request(srv, path):
    """Send a request, then reset the connection (the client is gone)."""
    c = socket.create_connection(("127.0.0.1", srv.port))
    c.sendall(("GET %s HTTP/1.1\r\nhost: x\r\n\r\n" % path).encode())
    return c


def test_cancellation_closes_the_upstream_socket(srv, peers):
    p = peers("silent")
    for n in (1, 2):  # the second time too
        c = rst_request(srv, "/tcp/hang?port=%d" % p.port)
        assert wait_for(lambda: p.accepted == n, 5)
        time.sleep(0.05)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        t0 = time.monotonic()
        assert wait_for(lambda: p.closed_by_peer == n, 1.0 * SLOW), "upstream never saw the close"
        assert time.monotonic() - t0 < 1.0 * SLOW
    assert wait_for(lambda: get(srv, "/stats")["handlers"] == 1, 2)  # only /stats itself


def test_fifty_slow_calls_on_one_worker_and_a_fast_route(srv, peers):
    p = peers("slow", delay=1.0)
    with concurrent.futures.ThreadPoolExecutor(51) as ex:
        t0 = time.monotonic()
        futs = [ex.submit(get, srv, "/tcp/echo?port=%d&msg=s%d&nopool=1" % (p.port, i)) for i in range(50)]
        assert wait_for(lambda: p.accepted == 50, 5 * SLOW)
        f0 = time.monotonic()
        with urllib.request.urlopen(srv.url("/fast"), timeout=5) as r:
            assert r.read() == b"fast"
        assert time.monotonic() - f0 < 0.3 * SLOW  # the worker is not blocked
        results = [f.result() for f in futs]
        took = time.monotonic() - t0
    assert [r["line"] for r in results] == ["s%d" % i for i in range(50)]
    assert took < 1.0 + 1.5 * SLOW, took  # together, not one after another


@pytest.fixture(scope="module")
def ca():
    return CA()


def tls_peer(peers, ca, sans, expired=False, name="peer"):
    cert, key = ca.leaf(name, sans, expired=expired)
    return peers("echo", ssl_ctx=ca.server_ctx(cert, key))


def test_tls_verified_with_private_ca(srv, peers, ca):
    p = tls_peer(peers, ca, "DNS:localhost,IP:127.0.0.1")
    for host in ("localhost", "127.0.0.1"):  # a name, then an IP SAN
        r = get(srv, "/tcp/echo?host=%s&port=%d&tls=1&ca=%s&msg=t" % (host, p.port, ca.ca))
        assert r.get("line") == "t", r


def test_tls_pool_reuse(srv, peers, ca):
    p = tls_peer(peers, ca, "DNS:localhost")
    for i in range(2):
        r = get(srv, "/tcp/echo?host=localhost&port=%d&tls=1&ca=%s&msg=t" % (p.port, ca.ca))
        assert r.get("line") == "t" and r["reused"] == (i > 0), r


@pytest.mark.parametrize("case", ["wrong_ca", "wrong_name", "expired", "wrong_ip"])
def test_tls_verification_failures(srv, peers, ca, case):
    sans = {"wrong_ip": "IP:127.0.0.2", "wrong_name": "DNS:otherhost.test"}.get(case, "DNS:localhost")
    p = tls_peer(peers, ca, sans, expired=case == "expired", name=case)
    q = "/tcp/connect?host=localhost&port=%d&tls=1" % p.port
    if case != "wrong_ca":
        q += "&ca=" + ca.ca
    if case == "wrong_ip":
        q = q.replace("host=localhost", "host=127.0.0.1")
    for _ in range(2):
        r = get(srv, q)
        assert r.get("err", "").startswith("certificate"), (case, r)
    # verify=false connects anyway
    assert get(srv, q + "&verify=0").get("ok") is True


def test_outbound_cap(peers):
    p = peers("silent")
    e = peers("echo")
    srv = LariatServer(app_path("net.lua"), "--workers", "1", "--max-outbound", "2").start()
    try:
        held = [rst_request(srv, "/tcp/hang?port=%d" % p.port) for _ in range(2)]
        assert wait_for(lambda: p.accepted == 2, 5)
        r = get(srv, "/tcp/connect?port=%d" % e.port)
        assert r.get("err") == "too many outbound connections", r
        for c in held:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        assert wait_for(lambda: p.closed_by_peer == 2, 2 * SLOW)
        assert get(srv, "/tcp/connect?port=%d" % e.port).get("ok") is True
        # idle pooled connections don't block new ones: the oldest idle one is closed
        assert get(srv, "/tcp/echo?port=%d&msg=1" % e.port)["line"] == "1"
        e2 = peers("echo")
        assert get(srv, "/tcp/echo?port=%d&msg=2" % e2.port)["line"] == "2"
        assert get(srv, "/tcp/echo?port=%d&msg=3" % peers("echo").port)["line"] == "3"
    finally:
        srv.check_healthy()
