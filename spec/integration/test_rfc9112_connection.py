"""RFC 9112 section 9: connection management.

Persistence (keep-alive), pipelining, "close" from either side, the
per-connection request cap (--max-keepalive) and the timeouts
(--header-timeout, --idle-timeout, --body-timeout).
"""

import socket
import struct
import threading
import time

from conftest import module_server, request

capped = module_server("basic.lua", "--max-keepalive", "3")
timeouts = module_server("basic.lua", "--header-timeout", "0.5",
                         "--idle-timeout", "1", "--body-timeout", "0.5")


# -- 9.3 Persistence ----------------------------------------------------------

def test_9_3_http11_connection_persists_by_default(server):
    """RFC 9112 9.3: "If the received protocol is HTTP/1.1 (or later) ... the
    connection will persist after the current response" unless "close" is
    present."""
    with server.connect() as c:
        for i in range(5):
            c.send(request("GET", "/p/%d" % i))
            resp = c.read_response()
            assert resp.status == 200
            assert resp.body == b"/p/%d" % i
            assert "close" not in resp.connection_tokens()
        assert c.still_open()


def test_9_3_http10_closes_by_default(server):
    """RFC 9112 9.3: for HTTP/1.0 without the "keep-alive" connection option
    "the connection will close after the current response." """
    with server.connect() as c:
        c.send(request("GET", "/", version="HTTP/1.0"))
        resp = c.read_response()
        assert resp.status == 200
        assert resp.body == b"Hello world!"
        assert c.expect_closed(3)


def test_9_3_http10_keep_alive_persists(server):
    """RFC 9112 9.3: "If the received protocol is HTTP/1.0, the "keep-alive"
    connection option is present, ... and the recipient wishes to honor the
    HTTP/1.0 "keep-alive" mechanism, the connection will persist after the
    current response". The response says so (RFC 9112 C.2.2), or an HTTP/1.0
    client would wait for the close."""
    with server.connect() as c:
        for i in range(3):
            c.send(request("GET", "/p/%d" % i, version="HTTP/1.0",
                           headers=[("connection", "keep-alive")]))
            resp = c.read_response()
            assert resp.status == 200
            assert resp.body == b"/p/%d" % i
            assert "keep-alive" in resp.connection_tokens()
        assert c.still_open()


def test_9_3_http10_keep_alive_token_is_case_insensitive(server):
    """RFC 9110 7.6.1: "Connection options are case-insensitive." """
    with server.connect() as c:
        c.send(request("GET", "/p/a", version="HTTP/1.0", headers=[("Connection", "Keep-Alive")]))
        assert c.read_response().body == b"/p/a"
        c.send(request("GET", "/p/b", version="HTTP/1.0", headers=[("Connection", "Keep-Alive")]))
        assert c.read_response().body == b"/p/b"


# -- 9.6 Tear-down ------------------------------------------------------------

def test_9_6_client_close_is_honoured(server):
    """RFC 9112 9.6: "A server that receives a "close" connection option MUST
    initiate closure of the connection (see below) after it sends the final
    response to the request that contained the "close" connection option. The
    server SHOULD send a "close" connection option in its final response on
    that connection." """
    with server.connect() as c:
        c.send(request("GET", "/", headers=[("connection", "close")]))
        resp = c.read_response()
        assert resp.status == 200
        assert "close" in resp.connection_tokens()
        assert c.expect_closed(3)


def test_9_6_close_token_is_case_insensitive(server):
    """RFC 9110 7.6.1: "Connection options are case-insensitive." """
    with server.connect() as c:
        c.send(request("GET", "/", headers=[("Connection", "Close")]))
        assert c.read_response().status == 200
        assert c.expect_closed(3)


def test_9_6_close_among_other_options_is_honoured(server):
    """RFC 9110 7.6.1: "Connection = #connection-option"; close may be one of
    several options."""
    with server.connect() as c:
        c.send(request("GET", "/", headers=[("connection", "x-foo, close")]))
        assert c.read_response().status == 200
        assert c.expect_closed(3)


def test_9_6_no_request_is_processed_after_close(server):
    """RFC 9112 9.6: "The server MUST NOT process any further requests received
    on that connection." """
    with server.connect() as c:
        c.send(request("GET", "/p/first", headers=[("connection", "close")])
               + request("GET", "/p/second"))
        resp = c.read_response()
        assert resp.body == b"/p/first"
        rest = c.read_to_close()
        assert b"/p/second" not in rest
        assert rest == b""


def test_9_6_handler_close_is_honoured(server):
    """RFC 9112 9.6: "A server that sends a "close" connection option MUST
    initiate closure of the connection (see below) after it sends the response
    containing the "close" connection option." (a handler returning
    connection: close, as in Cowboy)"""
    with server.connect() as c:
        c.send(request("GET", "/close") + request("GET", "/p/second"))
        resp = c.read_response()
        assert resp.status == 200
        assert resp.body == b"bye"
        assert "close" in resp.connection_tokens()
        assert c.read_to_close() == b""


def test_9_6_client_half_close_still_gets_response(server):
    """RFC 9112 9.6: "Servers SHOULD be prepared to receive an incomplete
    close from the client"; a request followed by FIN still gets its answer."""
    import socket as _socket
    with server.connect() as c:
        c.send(request("GET", "/"))
        c.sock.shutdown(_socket.SHUT_WR)
        resp = c.read_response()
        assert resp.status == 200
        assert resp.body == b"Hello world!"


# -- 9.3 max_keepalive (Cowboy's per-connection request cap) -----------------

def test_9_3_max_keepalive_closes_after_n_requests(capped):
    """RFC 9112 9.3: "A server MAY close the connection at any time"; with
    --max-keepalive 3 the third response carries connection: close and the
    socket is closed after it (RFC 9112 9.6: "A server that sends a "close"
    connection option MUST initiate closure of the connection")."""
    with capped.connect() as c:
        for i in range(3):
            c.send(request("GET", "/p/%d" % i))
            resp = c.read_response()
            assert resp.body == b"/p/%d" % i
            if i < 2:
                assert "close" not in resp.connection_tokens()
        assert "close" in resp.connection_tokens()
        assert c.expect_closed(3)


def test_9_3_max_keepalive_with_pipelined_requests(capped):
    """RFC 9112 9.6: "The server MUST NOT process any further requests
    received on that connection" after the response carrying close."""
    with capped.connect() as c:
        c.send(b"".join(request("GET", "/p/%d" % i) for i in range(5)))
        bodies = [c.read_response().body for _ in range(3)]
        assert bodies == [b"/p/0", b"/p/1", b"/p/2"]
        assert c.read_to_close() == b""


def test_9_3_default_max_keepalive_is_1000(server):
    """--max-keepalive defaults to 1000: 1001 pipelined requests get exactly
    1000 responses, the last with connection: close."""
    with server.connect(timeout=20) as c:
        c.send(request("GET", "/p/k") * 1001)
        for i in range(1000):
            resp = c.read_response()
            assert resp.body == b"/p/k"
        assert "close" in resp.connection_tokens()
        assert c.read_to_close() == b""


# -- 9.3.2 Pipelining --------------------------------------------------------

def test_9_3_2_pipelined_responses_in_request_order(server):
    """RFC 9112 9.3.2: "A server MAY process a sequence of pipelined requests
    in parallel if they all have safe methods, but it MUST send the
    corresponding responses in the same order that the requests were
    received." """
    with server.connect() as c:
        c.send(b"".join(request("GET", "/p/%d" % i) for i in range(20)))
        bodies = [c.read_response().body for _ in range(20)]
    assert bodies == [b"/p/%d" % i for i in range(20)]


def test_9_3_2_pipelined_order_kept_when_first_handler_sleeps(server):
    """RFC 9112 9.3.2: responses in request order even when the first one
    takes longer to produce."""
    with server.connect() as c:
        c.send(request("GET", "/sleep/300") + request("GET", "/p/fast")
               + request("GET", "/sleep/50") + request("GET", "/p/last"))
        bodies = [c.read_response().body for _ in range(4)]
    assert bodies == [b"slept 300", b"/p/fast", b"slept 50", b"/p/last"]


def test_9_3_2_pipelined_requests_split_at_odd_places(server):
    """RFC 9112 9.3.2: pipelined requests arrive in arbitrary segments."""
    data = b"".join(request("GET", "/p/%d" % i) for i in range(6))
    with server.connect() as c:
        for i in range(0, len(data), 7):
            c.send(data[i:i + 7])
        bodies = [c.read_response().body for _ in range(6)]
    assert bodies == [b"/p/%d" % i for i in range(6)]


def test_9_3_2_pipelined_streamed_and_known_length_responses(server):
    """RFC 9112 9.3.2: a chunked (streamed) response followed by fixed-length
    ones on the same connection, in order."""
    with server.connect() as c:
        c.send(request("GET", "/stream") + request("GET", "/p/a")
               + request("GET", "/trailers", headers=[("te", "trailers")])
               + request("GET", "/p/b"))
        r = [c.read_response() for _ in range(4)]
    assert [x.body for x in r] == [b"chunk1\nchunk2\nchunk3\n", b"/p/a",
                                  b"hello trailers", b"/p/b"]
    assert r[2].trailer("x-checksum") == "abc123"


def test_9_3_2_bad_request_after_good_ones_in_a_pipeline(server):
    """RFC 9112 9.3.2: responses in order -- the good requests before a
    malformed one are answered first, then the 400, then the close."""
    with server.connect() as c:
        c.send(request("GET", "/sleep/100") + request("GET", "/p/b")
               + b"GET / HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n"
               + request("GET", "/p/never"))
        first, second, third = (c.read_response() for _ in range(3))
        assert first.body == b"slept 100"
        assert second.body == b"/p/b"
        assert third.status == 400
        assert c.read_to_close() == b""


def test_9_3_2_unread_pipelined_responses_do_not_grow_memory(server):
    """RFC 9112 9.3.2 with a client that sends many pipelined requests and
    reads nothing: the server stops reading requests while responses back up
    (back-pressure), so its memory stays bounded; then everything arrives in
    order."""
    n = 600                                     # 600 x 100 KB = 60 MB of responses
    data = b"".join(request("GET", "/big/100000") for _ in range(n))
    with server.connect(timeout=30) as c:
        base = server.rss_kib()
        sender = threading.Thread(target=c.send_lenient, args=(data,), daemon=True)
        sender.start()
        time.sleep(2.0)
        growth = server.rss_kib() - base
        assert growth < 25 * 1024, "RSS grew by %d KiB" % growth
        for i in range(n):
            resp = c.read_response()
            assert resp.status == 200 and len(resp.body) == 100000, i
        sender.join(10)


# -- 9.4 Concurrency ---------------------------------------------------------

def test_9_4_sleeping_handler_does_not_block_other_connections(server):
    """RFC 9112 9.4: clients may open several connections; a handler waiting
    (lariat.sleep yields) never delays another connection."""
    with server.connect() as slow, server.connect() as fast:
        slow.send(request("GET", "/sleep/1500"))
        time.sleep(0.1)
        t0 = time.monotonic()
        fast.send(request("GET", "/"))
        assert fast.read_response().body == b"Hello world!"
        assert time.monotonic() - t0 < 1.0
        assert slow.read_response().body == b"slept 1500"


def test_9_4_concurrent_sleeps_overlap(server):
    """RFC 9112 9.4: eight connections each sleeping 500 ms finish in about
    500 ms, not 4 s: every request runs in its own coroutine."""
    results = []

    def one(i):
        with server.connect() as c:
            c.send(request("GET", "/sleep/500"))
            results.append(c.read_response().body)

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [b"slept 500"] * 8
    assert time.monotonic() - t0 < 2.0


def test_9_4_many_concurrent_connections(server):
    """RFC 9112 9.4: 200 simultaneous connections are all served."""
    conns = [server.connect(timeout=10) for _ in range(200)]
    try:
        for i, c in enumerate(conns):
            c.send(request("GET", "/p/%d" % i))
        for i, c in enumerate(conns):
            assert c.read_response().body == b"/p/%d" % i
    finally:
        for c in conns:
            c.close()


# -- 8 Handling Incomplete Messages / 9.6 abrupt closes ------------------------

def _abort(server, data, wait=0.05):
    c = server.connect()
    c.send(data)
    time.sleep(wait)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()                                   # RST


def test_8_client_gone_while_handler_sleeps(server):
    """RFC 9112 8: "A server that receives an incomplete request message,
    usually due to a canceled request ... MAY send an error response prior to
    closing the connection." Clients that vanish (RST) while their handler
    sleeps, reads a body or streams never disturb the server."""
    for _ in range(10):
        _abort(server, request("GET", "/sleep/200"))
        _abort(server, request("POST", "/read-stream", headers=[("content-length", "100")]) + b"abc")
        _abort(server, request("GET", "/stream"))
        _abort(server, b"GET /p/partial HTTP/1.1\r\nhost: x\r\nx-a: ")
        _abort(server, request("POST", "/echo", headers=[("content-length", "100000")]) + b"x" * 50000)
    time.sleep(0.5)                             # let the sleeps and timers fire
    with server.connect() as c:
        c.send(request("GET", "/p/alive"))
        assert c.read_response().body == b"/p/alive"


def test_8_client_half_close_mid_body(server):
    """RFC 9112 8: a body cut short by the client's FIN is incomplete; the
    handler does not get it as complete, and the server keeps serving."""
    with server.connect() as c:
        c.send(request("POST", "/echo", headers=[("content-length", "10")]) + b"abc")
        c.sock.shutdown(socket.SHUT_WR)
        try:
            resp = c.read_response()
        except Exception:
            resp = None                         # closed without an answer: fine
    if resp is not None:
        assert not (resp.status == 200 and resp.body == b"abc"), resp
    with server.connect() as c:
        c.send(request("GET", "/p/alive"))
        assert c.read_response().body == b"/p/alive"


# -- 9.5 Failures and Timeouts -----------------------------------------------

def test_9_5_incomplete_headers_get_408_and_close(timeouts):
    """RFC 9110 15.5.9: "The 408 (Request Timeout) status code indicates that
    the server did not receive a complete request message within the time that
    it was prepared to wait." (--header-timeout 0.5) and RFC 9112 9.5: "A
    client or server that wishes to time out SHOULD issue a graceful close on
    the connection." """
    with timeouts.connect(timeout=5) as c:
        t0 = time.monotonic()
        c.send(b"GET / HTTP/1.1\r\nhost: x\r\n")
        resp = c.read_response()
        elapsed = time.monotonic() - t0
        assert resp.status == 408
        assert 0.3 < elapsed < 3.0
        assert c.expect_closed(3)


def test_9_5_slowloris_trickle_still_times_out(timeouts):
    """RFC 9110 15.5.9: the header deadline covers the whole header section,
    so sending one byte at a time does not extend it (slowloris)."""
    data = request("GET", "/", headers=[("x-pad", "p" * 200)])[:-4]
    stop = threading.Event()
    with timeouts.connect(timeout=5) as c:
        def trickle():
            for i in range(len(data)):
                if stop.is_set() or not c.send_lenient(data[i:i + 1]):
                    return
                time.sleep(0.05)

        t = threading.Thread(target=trickle, daemon=True)
        t0 = time.monotonic()
        t.start()
        try:
            resp = c.read_response()
            elapsed = time.monotonic() - t0
        finally:
            stop.set()
            t.join(2)
    assert resp.status == 408
    assert elapsed < 3.0


def test_9_5_incomplete_second_request_gets_408(timeouts):
    """RFC 9110 15.5.9: the header timeout also covers the next request on a
    kept-alive connection once it has started arriving."""
    with timeouts.connect(timeout=5) as c:
        c.send(request("GET", "/p/first"))
        assert c.read_response().body == b"/p/first"
        t0 = time.monotonic()
        c.send(b"GET /p/second HTTP/1.1\r\nhost: x\r\n")
        resp = c.read_response()
        assert resp.status == 408
        assert time.monotonic() - t0 < 3.0
        assert c.expect_closed(3)


def test_9_5_idle_keepalive_connection_is_closed(timeouts):
    """RFC 9112 9.5: "Servers will usually have some timeout value beyond which
    they will no longer maintain an inactive connection." (--idle-timeout 1)"""
    with timeouts.connect(timeout=5) as c:
        c.send(request("GET", "/"))
        assert c.read_response().status == 200
        t0 = time.monotonic()
        assert c.still_open(0.4), "closed well before the idle timeout"
        assert c.expect_closed(4)
        assert 0.6 < time.monotonic() - t0 < 4.0


def test_9_5_request_within_idle_timeout_is_served(timeouts):
    """RFC 9112 9.5: a connection that is used before the idle timeout stays
    open; the timer restarts with each request."""
    with timeouts.connect(timeout=5) as c:
        for i in range(3):
            c.send(request("GET", "/p/%d" % i))
            assert c.read_response().body == b"/p/%d" % i
            time.sleep(0.6)  # < 1 s idle timeout, > 0.5 s header timeout
        c.send(request("GET", "/p/last"))
        assert c.read_response().body == b"/p/last"


def test_9_5_idle_timeout_does_not_cut_a_slow_handler(timeouts):
    """RFC 9112 9.5 speaks of an *inactive* connection: a handler that takes
    1.5 s (idle timeout 1 s, header timeout 0.5 s) still gets its answer
    through."""
    with timeouts.connect(timeout=5) as c:
        c.send(request("GET", "/sleep/1500"))
        resp = c.read_response()
        assert resp.body == b"slept 1500"
        c.send(request("GET", "/p/after"))
        assert c.read_response().body == b"/p/after"


def test_9_5_idle_timeout_does_not_cut_a_slow_stream(timeouts):
    """RFC 9112 9.5: a response that is still being streamed (0.7 s between
    writes, 2.1 s in all) is not an inactive connection."""
    with timeouts.connect(timeout=5) as c:
        c.send(request("GET", "/slow-stream"))
        resp = c.read_response()
        assert resp.body == b"slow1\nslow2\nslow3\n"
        c.send(request("GET", "/p/after"))
        assert c.read_response().body == b"/p/after"


def test_9_5_silent_new_connection_is_closed(timeouts):
    """RFC 9112 9.5: a connection that never sends a request is not kept
    forever (whichever of header/idle timeout applies, both are short here)."""
    with timeouts.connect(timeout=5) as c:
        t0 = time.monotonic()
        c.read_to_close()  # a 408 before the close is acceptable
        assert c.eof
        assert time.monotonic() - t0 < 4.0


def test_9_5_stalled_body_read_returns_timeout(timeouts):
    """RFC 9112 8: "A server that receives an incomplete request message,
    usually due to a canceled request or a triggered timeout exception, MAY
    send an error response prior to closing the connection." With
    --body-timeout 0.5 the handler's read_body returns nil, "timeout" and the
    handler answers with that."""
    with timeouts.connect(timeout=5) as c:
        t0 = time.monotonic()
        c.send(request("POST", "/read-stream", headers=[("content-length", "10")]) + b"abc")
        resp = c.read_response()
        elapsed = time.monotonic() - t0
    assert resp.status == 200
    assert resp.body.startswith(b"timeout after "), resp.body
    assert resp.body.endswith(b"timeout"), resp.body
    assert 0.3 < elapsed < 3.0


def test_9_5_stalled_whole_body_read_returns_timeout(timeouts):
    """req:body() on a stalled body returns nil, "timeout" (Lua's nil, message
    convention) after --body-timeout 0.5."""
    with timeouts.connect(timeout=5) as c:
        t0 = time.monotonic()
        c.send(request("POST", "/body-or-error", headers=[("content-length", "10")]) + b"abc")
        resp = c.read_response()
        elapsed = time.monotonic() - t0
    assert resp.status == 200
    assert resp.body == b"body=nil err=timeout"
    assert 0.3 < elapsed < 3.0


def test_9_5_slow_body_within_timeout_is_read(timeouts):
    """The body read timeout (--body-timeout 0.5) is per read: a body that
    keeps arriving every 0.15 s is read completely."""
    with timeouts.connect(timeout=5) as c:
        c.send(request("POST", "/read-stream", headers=[("content-length", "12")]))
        for part in (b"abcd", b"efgh", b"ijkl"):
            time.sleep(0.15)
            c.send(part)
        resp = c.read_response()
    assert resp.status == 200
    assert resp.body == b"abcdefghijkl"


def test_9_5_read_body_timeout_argument(server):
    """req:read_body{timeout = 0.3} overrides the server's body timeout (10 s
    here): the stalled read returns nil, "timeout" after 0.3 s."""
    with server.connect(timeout=5) as c:
        t0 = time.monotonic()
        c.send(request("POST", "/read-timeout", headers=[("content-length", "10")]) + b"abc")
        resp = c.read_response()
        elapsed = time.monotonic() - t0
    assert resp.status == 200
    assert resp.body.startswith(b"timeout after "), resp.body
    assert resp.body.endswith(b"timeout"), resp.body
    assert elapsed < 3.0
