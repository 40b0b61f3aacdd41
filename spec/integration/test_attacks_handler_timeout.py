"""Issue 9: "`lariat.sleep(1e9)` in a handler: the request never ends." Now
--handler-timeout bounds the time from the request head until the handler
starts its response (reply, stream_reply, WebSocket upgrade): at expiry the
handler is cancelled at its wait (to-be-closed variables run, it never
resumes) and the client gets 504, on HTTP/1.1 on a connection that stays
usable, on HTTP/2 on that stream only. A route's `timeout` (0: none) or
req:set_timeout(s) gives long polls their own bound; streams already
answering (SSE) are not cut by it."""

import os
import re
import socket
import time
import urllib.request

import pytest
from hyperframe.frame import DataFrame, HeadersFrame, RstStreamFrame

from conftest import RawConn, app_path, request
from h2raw import H2Raw
from test_attacks_lifecycle import fds, stats, wait_stats, wait_until
from wsclient import WS, frame

SLOW = 3 if os.environ.get("LARIAT_SANITIZE") else 1
TIMEOUT = 0.5  # --handler-timeout of these tests


@pytest.fixture
def srv(start_server):
    return start_server(app_path("handler_timeout.lua"), "--workers", "1", "--handler-timeout", str(TIMEOUT),
                        tls=True)


def served(srv):
    with RawConn(srv.port, timeout=5 * SLOW) as c:
        c.send(request("GET", "/"))
        return c.read_response().body == b"ok"


def timeouts_counted(srv):
    with urllib.request.urlopen(srv.url("/metrics"), timeout=5 * SLOW) as r:
        m = re.search(rb"^lariat_handler_timeouts_total (\d+)$", r.read(), re.M)
    return int(m.group(1))


def test_h1_handler_that_never_answers_gets_504_and_the_connection_lives_on(srv):
    """One connection, three hung handlers in a row: each 504 comes after
    about the timeout, the same connection then serves the next request, the
    to-be-closed variable ran, no handler is left and no fd leaks."""
    base_fds = fds(srv)
    counted0 = timeouts_counted(srv)
    with RawConn(srv.port, timeout=10 * SLOW) as c:
        for round_ in range(3):
            closed0 = stats(srv)["closed"]
            t0 = time.monotonic()
            c.send(request("GET", "/hang"))
            # meanwhile, other clients are served
            assert served(srv)
            r = c.read_response()
            took = time.monotonic() - t0
            assert r.status == 504, "round %d: %r" % (round_, r)
            assert r.header("connection") != "close"
            assert TIMEOUT * 0.8 <= took < TIMEOUT + 3 * SLOW, took
            wait_stats(srv, 2, "round %d: handler gone" % round_, handlers=0, closed=closed0 + 1)
            c.send(request("GET", "/"))
            assert c.read_response().body == b"ok"
    wait_until(lambda: fds(srv) <= base_fds or fds(srv), 2, "fds back")
    assert timeouts_counted(srv) == counted0 + 3
    wait_until(lambda: srv.log_text().count("GET /hang: handler timed out") == 3 or srv.log_text(), 2,
               "one log line per timeout, naming method and path")


def test_h1_many_clients_at_once_then_again(srv):
    """Twenty hung handlers at once, twice: all answered 504, all gone."""
    base_fds = fds(srv)
    for round_ in range(2):
        closed0 = stats(srv)["closed"]
        conns = [RawConn(srv.port, timeout=10 * SLOW) for _ in range(20)]
        for c in conns:
            c.send(request("GET", "/hang"))
        for c in conns:
            assert c.read_response().status == 504
            c.close()
        wait_stats(srv, 2, "round %d: handlers gone" % round_, handlers=0, closed=closed0 + 20)
        wait_until(lambda: fds(srv) <= base_fds or fds(srv), 2, "round %d: fds back" % round_)
        assert served(srv)


def test_h1_slow_upload_is_not_cut_but_a_hang_after_it_is(srv):
    """A body trickled over twice the timeout (each piece within
    --body-timeout) while the handler reads it: time waiting for the body
    does not count (it has bounds of its own; nginx's proxy_read_timeout
    starts once the body is in). The handler then hangs: 504, and the same
    connection serves the next request."""
    for round_ in range(2):
        closed0 = stats(srv)["closed"]
        with RawConn(srv.port, timeout=10 * SLOW) as c:
            c.send(b"POST /hang-body HTTP/1.1\r\nhost: x\r\ncontent-length: 20\r\n\r\n")
            t0 = time.monotonic()
            for i in range(5):
                time.sleep(TIMEOUT * 2 / 5)
                c.send(b"abcd")
            r = c.read_response()
            assert r.status == 504
            assert time.monotonic() - t0 >= TIMEOUT * 2  # not cut while the body came
            c.send(request("GET", "/"))
            assert c.read_response().body == b"ok"
        wait_stats(srv, 2, "round %d: handler gone" % round_, handlers=0, closed=closed0 + 1)


def test_h1_handler_not_reading_its_body_gets_504_and_the_body_is_read_away(srv):
    """POST /hang never reads the body: 504 at the timeout although the body
    is incomplete; the rest of it is then read and dropped (content-length
    framing) and the connection serves the next request."""
    for round_ in range(2):
        closed0 = stats(srv)["closed"]
        with RawConn(srv.port, timeout=10 * SLOW) as c:
            c.send(b"POST /hang HTTP/1.1\r\nhost: x\r\ncontent-length: 20\r\n\r\nabcde")
            assert c.read_response().status == 504
            c.send(b"fghijklmnopqrst")
            c.send(request("GET", "/"))
            assert c.read_response().body == b"ok"
        wait_stats(srv, 2, "round %d: handler gone" % round_, handlers=0, closed=closed0 + 1)


def test_handler_shortens_its_own_bound(srv):
    """req:set_timeout(0.2) in the handler: 504 after that, not the server's."""
    for _ in range(2):
        with RawConn(srv.port, timeout=10 * SLOW) as c:
            c.send(request("GET", "/short"))
            assert c.read_response().status == 504


@pytest.mark.parametrize("path", ["/poll/none/1", "/poll-literal", "/poll/long/1", "/poll/mw/1", "/poll/set/1"])
def test_long_poll_routes_with_their_own_timeout_are_not_cut(srv, path):
    """`app:get(path, {timeout = 0}, fn)`, `{timeout = 30}`, the same behind a
    middleware, and req:set_timeout(0): a 1 s wait (twice the server's
    timeout) ends with the handler's own answer. The timers run on one loop,
    so the order is the same however loaded the machine is."""
    with RawConn(srv.port, timeout=10 * SLOW) as c:
        c.send(request("GET", path))
        r = c.read_response()
        assert (r.status, r.body) == (200, b"polled")


def test_sse_already_answering_is_not_cut(srv):
    """An event stream that runs 1 s after its head: every event arrives,
    the stream ends by itself."""
    for _ in range(2):
        with RawConn(srv.port, timeout=10 * SLOW) as c:
            c.send(request("GET", "/sse/1"))
            r = c.read_response()
            assert r.status == 200
            assert r.body.startswith(b"data: 1\n\n") and r.body.endswith(b"data: 10\n\ndata: end\n\n")


def test_websocket_is_not_cut(srv):
    """After the upgrade the handler is answering: a WebSocket idle past the
    handler timeout still echoes."""
    ws = WS(srv.port, "/ws")
    assert ws.status == 101
    time.sleep(TIMEOUT * 2)  # the bound would have fired by now (its absence is what is checked)
    ws.send(frame(1, b"still here"))
    assert ws.read_message() == (1, b"still here")
    ws.sock.close()


def h2_responses(c, sids):
    """{sid: (status, body)} once every stream in sids ended; fails on
    RST_STREAM, GOAWAY or EOF"""
    want, heads, bodies, done = set(sids), {}, {}, {}
    while set(done) != want:
        f = c.read_frame()
        assert f is not None, "EOF before all responses (%r of %r)" % (sorted(done), sorted(want))
        assert not isinstance(f, RstStreamFrame), "RST_STREAM %r on %d" % (f.error_code, f.stream_id)
        if f.stream_id not in want:
            continue
        if isinstance(f, HeadersFrame):
            heads[f.stream_id] = int(f.fields[":status"])
        elif isinstance(f, DataFrame):
            bodies[f.stream_id] = bodies.get(f.stream_id, b"") + f.data
        if "END_STREAM" in f.flags:
            done[f.stream_id] = (heads.get(f.stream_id), bodies.get(f.stream_id, b""))
    return done


@pytest.mark.parametrize("tls", [False, True])
def test_h2_only_the_hung_stream_gets_504(srv, tls):
    """HTTP/2: five hung streams and a long poll on one connection, twice on
    the same connection: the hung ones get 504 (no RST, no GOAWAY), the poll
    its answer, and the connection serves a new stream after."""
    port = srv.tls_port if tls else srv.port
    with H2Raw(port, tls=tls, timeout=10 * SLOW) as c:
        c.handshake()
        sid = 1
        for round_ in range(2):
            closed0 = stats(srv)["closed"]
            hung = []
            for _ in range(5):
                c.request(sid, "/hang")
                hung.append(sid)
                sid += 2
            poll = sid
            c.request(poll, "/poll/none/1")
            sid += 2
            got = h2_responses(c, hung + [poll])
            assert all(got[h][0] == 504 for h in hung), (round_, got)
            assert got[poll] == (200, b"polled")
            c.request(sid, "/")
            assert c.response(sid)[2] == b"ok"
            sid += 2
            wait_stats(srv, 2, "round %d: handlers gone" % round_, handlers=0, closed=closed0 + 6)
        assert not [f for f in c.frames if isinstance(f, RstStreamFrame)]


def test_h2_hung_stream_with_unfinished_body(srv):
    """HTTP/2 stream whose body never ends and whose handler never reads it:
    504 on that stream; the connection goes on."""
    with H2Raw(srv.port, timeout=10 * SLOW) as c:
        c.handshake()
        for round_, sid in enumerate((1, 3)):
            closed0 = stats(srv)["closed"]
            c.request(sid, "/hang", method="POST", end_stream=False)
            c.data(sid, b"abc")
            assert c.response(sid)[0] == 504
            wait_stats(srv, 2, "round %d: handler gone" % round_, handlers=0, closed=closed0 + 1)
        c.request(5, "/")
        assert c.response(5)[2] == b"ok"


def test_zero_disables_the_bound(start_server):
    """--handler-timeout 0: no bound (a handler that answers after 1 s does)."""
    srv = start_server(app_path("handler_timeout.lua"), "--workers", "1", "--handler-timeout", "0")
    with RawConn(srv.port, timeout=10 * SLOW) as c:
        c.send(request("GET", "/sse/0.3"))
        assert c.read_response().status == 200
        c.send(request("GET", "/poll/set/0.8"))  # sets 0 itself; proves nothing more than 200
        assert c.read_response().status == 200
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(request("GET", "/hang"))
    s.settimeout(1.0)
    with pytest.raises(socket.timeout):
        s.recv(100)
    s.close()
    wait_stats(srv, 2, "hung handler cancelled by the hang-up", handlers=0)
