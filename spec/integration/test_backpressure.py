"""Back-pressure (DESIGN.md section 3): "a handler that writes faster than the
peer reads is suspended until the connection drains; memory per stream stays
bounded."

flood.lua's /flood/800 writes 800 blocks of 64 KiB (50 MiB) in a loop. The
client asks for it and does not read; the server's VmRSS must stay far below
50 MiB over its baseline. Then the client reads everything and checks it.
"""

import os
import time

from conftest import RawConn, request

BLOCK = 65536
BLOCKS = 800                      # 50 MiB
MAX_GROWTH_KIB = 25 * 1024        # half of what an unbounded queue would hold


def _peak_rss_while(srv, seconds):
    peak = srv.rss_kib()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, srv.rss_kib())
        time.sleep(0.05)
    return peak


def _check_payload(body):
    assert len(body) == BLOCK * BLOCKS, len(body)
    for i in range(BLOCKS):
        start = i * BLOCK
        assert body[start:start + 8] == b"%08d" % i, (i, body[start:start + 8])
    assert body.count(b"x") == BLOCKS * (BLOCK - 8)


def test_slow_reader_keeps_server_memory_bounded(start_server):
    srv = start_server("flood.lua")
    with srv.connect() as warm:          # first request allocates the lazy stuff
        warm.send(request("GET", "/flood/4"))
        assert len(warm.read_response().body) == 4 * BLOCK
    base = srv.rss_kib()

    with RawConn(srv.port, timeout=30, rcvbuf=65536) as c:
        c.send(request("GET", "/flood/%d" % BLOCKS))
        peak = _peak_rss_while(srv, 2.5)
        growth = peak - base
        assert growth < MAX_GROWTH_KIB, (
            "server RSS grew by %d KiB while the client did not read "
            "(base %d KiB, peak %d KiB)" % (growth, base, peak))

        # the loop is not blocked by the stalled stream
        with srv.connect() as other:
            other.send(request("GET", "/"))
            assert other.read_response().body == b"Hello world!"

        cpu0 = srv.cpu_seconds()
        resp = c.read_response()
        assert resp.status == 200
        assert resp.chunked
        _check_payload(resp.body)
        # resuming the writer costs no busy loop: CPU, not the wall clock,
        # which a loaded machine stretches
        cpu = srv.cpu_seconds() - cpu0
        print("server CPU for the rest of the response: %.2f s" % cpu)
        assert cpu < (8 if os.environ.get("LARIAT_SANITIZE") else 2)
        # the connection is still usable after the big response
        c.send(request("GET", "/"))
        assert c.read_response().body == b"Hello world!"


def test_slow_reader_that_disconnects_frees_the_stream(start_server):
    """A stalled client that goes away: the suspended handler is cancelled,
    the server keeps serving, and memory does not keep the 50 MiB."""
    srv = start_server("flood.lua")
    with srv.connect() as warm:
        warm.send(request("GET", "/flood/4"))
        warm.read_response()
    base = srv.rss_kib()
    for _ in range(3):
        with RawConn(srv.port, timeout=10, rcvbuf=65536) as c:
            c.send(request("GET", "/flood/%d" % BLOCKS))
            c._fill()                    # the response has started
            time.sleep(0.3)
        # closed without reading
    time.sleep(0.5)
    with srv.connect() as other:
        other.send(request("GET", "/"))
        assert other.read_response().body == b"Hello world!"
    growth = _peak_rss_while(srv, 0.5) - base
    assert growth < MAX_GROWTH_KIB, "RSS grew by %d KiB" % growth


def test_many_streams_read_concurrently_are_complete(start_server):
    """Several flood streams interleaved on separate connections all arrive
    complete and in order."""
    srv = start_server("flood.lua")
    conns = [RawConn(srv.port, timeout=30) for _ in range(4)]
    try:
        for c in conns:
            c.send(request("GET", "/flood/64"))
        for c in conns:
            resp = c.read_response()
            assert len(resp.body) == 64 * BLOCK
            for i in range(64):
                assert resp.body[i * BLOCK:i * BLOCK + 8] == b"%08d" % i
    finally:
        for c in conns:
            c.close()
