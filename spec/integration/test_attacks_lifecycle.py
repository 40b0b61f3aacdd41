"""Issue 9, handler lifecycle: "A handler whose stream ends while it waits
(client hang-up, RST_STREAM from either side, GOAWAY, connection error,
timeout) is cancelled at that wait, at once: its pending operation is dropped,
its to-be-closed variables run (`lua_closethread`), its stream's resources and
fd are released; it never resumes." Plus the CPU budget ("works every time and
measures CPU") and SIGTERM ("SSE/streams told of shutdown").

Each fault is done several times against a server that already survived it
("the second time too"), and the bound asserted: live handlers back to 0,
to-be-closed variables run, fds closed, other clients served."""

import json
import os
import signal
import socket
import struct
import subprocess
import time

import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, RstStreamFrame

from conftest import LariatServer, RawConn, app_path, request
from h2raw import CANCEL, H2Raw
from wsclient import WS

SLOW = 3 if os.environ.get("LARIAT_SANITIZE") else 1
N_CLIENTS = 40


def fds(srv):
    return len(os.listdir("/proc/%d/fd" % srv.pid))


def stats(srv):
    with RawConn(srv.port, timeout=5 * SLOW) as c:
        c.send(request("GET", "/stats"))
        return json.loads(c.read_response().body)


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout * SLOW
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last is True:
            return
        time.sleep(0.05)
    raise AssertionError("%s: not within %.1f s (last: %r)" % (what, timeout * SLOW, last))


def wait_stats(srv, timeout, what, **want):
    def check():
        s = stats(srv)
        return True if all(s[k] == v for k, v in want.items()) else s
    wait_until(check, timeout, what)


@pytest.fixture
def srv(start_server):
    return start_server(app_path("attacks_lifecycle.lua"), "--workers", "1", "--cpu-budget", "0.5", tls=True)


def served(srv):
    with RawConn(srv.port, timeout=5 * SLOW) as c:
        c.send(request("GET", "/"))
        return c.read_response().body == b"ok"


# -- HTTP/1.1: the client hangs up ---------------------------------------------------------

@pytest.mark.parametrize("how", ["fin", "rst"])
def test_h1_clients_hanging_up_on_sleeping_handlers_cancel_them(srv, how):
    """Issue 9: "HTTP/1.1 clients that hang up on a sleeping handler leave their
    fds in CLOSE_WAIT for the handler's whole life". DESIGN §4b: "HTTP/1.1
    client gone = the connection reset, or read EOF before the response is
    complete ... it cancels the handler." """
    base_fds = fds(srv)
    for round_ in range(3):
        closed0 = stats(srv)["closed"]
        socks = []
        for _ in range(N_CLIENTS):
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(request("GET", "/sleep/300"))
            socks.append(s)
        wait_stats(srv, 5, "round %d: all handlers sleeping" % round_, handlers=N_CLIENTS)
        for s in socks:
            if how == "rst":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        wait_stats(srv, 2, "round %d: handlers cancelled" % round_, handlers=0, closed=closed0 + N_CLIENTS)
        wait_until(lambda: fds(srv) <= base_fds or fds(srv), 2, "round %d: fds closed" % round_)
        assert served(srv)


def test_h1_body_wait_and_channel_recv_are_cancelled_too(srv):
    """Issue 9: "This must hold for every wait that exists now ... (sleep, body
    read, write back-pressure, WebSocket recv/send, channel recv ...)"."""
    for round_ in range(2):
        closed0 = stats(srv)["closed"]
        socks = []
        for i in range(10):
            s = socket.create_connection(("127.0.0.1", srv.port))
            if i % 2:
                s.sendall(request("GET", "/channel"))
            else:  # a body announced and never sent
                s.sendall(b"POST /body HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc")
            socks.append(s)
        wait_stats(srv, 5, "round %d: all waiting" % round_, handlers=10, subscribers=5)
        for s in socks:
            s.close()
        wait_stats(srv, 2, "round %d: cancelled" % round_, handlers=0, closed=closed0 + 10, subscribers=0)
        assert served(srv)


def test_spawned_tasks_are_not_cancelled_with_the_request(srv):
    """Issue 9: "`lariat.spawn`ed tasks are separate and are not cancelled with
    the request." """
    for name in ("a", "b"):
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(request("GET", "/spawn/" + name))
        wait_stats(srv, 5, "handler sleeping", handlers=1)
        s.close()
        wait_stats(srv, 2, "handler cancelled", handlers=0)

        def done():
            with RawConn(srv.port) as c:
                c.send(request("GET", "/finished/" + name))
                return c.read_response().body == b"yes" or "no"
        wait_until(done, 3, "spawned task finished")


# -- HTTP/2: resets from either side, GOAWAY, connection loss ------------------------------

def h2_sleepers(c, n, first=1, path="/sleep/300"):
    for i in range(n):
        c.request(first + 2 * i, path)


@pytest.mark.parametrize("tls", [False, True])
def test_h2_resets_goaway_and_connection_loss_cancel_handlers(srv, tls):
    """Issue 9: cancelled on "RST_STREAM from either side, GOAWAY, connection
    error"; the second time too."""
    port = srv.tls_port if tls else srv.port
    for round_ in range(2):
        closed0 = stats(srv)["closed"]
        with H2Raw(port, tls=tls) as c:
            c.handshake()
            h2_sleepers(c, 10)
            wait_stats(srv, 5, "sleeping", handlers=10)
            # the client resets half of them
            for i in range(5):
                c.send_frame(RstStreamFrame(1 + 2 * i, error_code=CANCEL))
            wait_stats(srv, 2, "reset streams cancelled", handlers=5, closed=closed0 + 5)
            # the server resets one itself: content-length 1, then 2 bytes of
            # DATA (the MadeYouReset class, CVE-2025-8671)
            f = HeadersFrame(21, data=c.header_block([(":method", "POST"), (":scheme", "http"),
                                                      (":authority", "127.0.0.1"), (":path", "/body"),
                                                      ("content-length", "1")]))
            f.flags.add("END_HEADERS")
            c.send_frame(f)
            wait_stats(srv, 5, "body waiter", handlers=6)
            c.data(21, b"xy", end_stream=True)
            wait_stats(srv, 2, "server-reset stream cancelled", handlers=5, closed=closed0 + 6)
            c.send_frame(GoAwayFrame(0, last_stream_id=0, error_code=0))
        # the connection is gone: the other five go too
        wait_stats(srv, 2, "connection loss cancels the rest", handlers=0, closed=closed0 + 11)
        assert served(srv)


# -- WebSocket -------------------------------------------------------------------------------

def test_ws_handler_waiting_on_a_channel_is_cancelled_when_the_client_leaves(srv):
    """Issue 9 (brief): "channel-recv and ws handlers cancelled too"."""
    for round_ in range(3):
        closed0 = stats(srv)["closed"]
        clients = []
        for _ in range(5):
            ws = WS(srv.port, "/ws-channel")
            assert ws.status == 101
            clients.append(ws)
        for ws in clients:
            assert ws.read_message()[1] == b"subscribed"
        wait_stats(srv, 5, "subscribed", handlers=5, subscribers=5)
        for ws in clients:
            ws.sock.close()
        wait_stats(srv, 2, "round %d: ws handlers cancelled" % round_, handlers=0, subscribers=0,
                   closed=closed0 + 5)


# -- the CPU budget ------------------------------------------------------------------------

def test_runaway_loop_is_stopped_every_time_on_one_worker(srv):
    """Issue 9: "CPU budget fires once per recycled coroutine ... Two
    `GET /loop` hang a worker at 100 % CPU for good." Five in a row on one
    worker: each is stopped (503), and the worker serves others after each."""
    for i in range(5):
        cpu0 = srv.cpu_seconds()
        with RawConn(srv.port, timeout=30 * SLOW) as c:
            c.send(request("GET", "/loop"))
            assert c.read_response().status == 503, "runaway #%d" % (i + 1)
        # CPU, not the wall clock: a loaded machine stretches the latter
        assert srv.cpu_seconds() - cpu0 < 3 * SLOW
        assert served(srv)
    # the log comes through a pipe read by another thread: wait for the fifth line
    deadline = time.monotonic() + 10
    while srv.log_text().count("CPU budget exceeded") < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.log_text().count("CPU budget exceeded") == 5


def test_a_handler_blocked_in_c_uses_no_cpu_and_is_not_stopped(start_server):
    """Issue 9: "a handler blocked in a C call (a slow `os.execute` ...) is
    killed although it used no CPU": with a 1000 ms budget, os.execute("sleep
    1.5") is not stopped (twice)."""
    srv = start_server(app_path("attacks_lifecycle.lua"), "--workers", "1", "--cpu-budget", "1")
    for _ in range(2):
        with RawConn(srv.port, timeout=10 * SLOW) as c:
            c.send(request("GET", "/exec"))
            r = c.read_response()
            assert r.status == 200 and r.body == b"done"
    assert "CPU budget exceeded" not in srv.log_text()


def test_many_short_handlers_in_one_loop_turn_are_not_charged_for_each_other(start_server):
    """Issue 9: "The budget counts wall-clock time, from a stale `uv_now()`: 1000
    concurrent requests of ~1.5 ms CPU each got one killed". 100 connections
    each asking for ~2 ms of CPU, with a 100 ms budget: a loop turn serves
    them all (~200 ms), yet no handler ran 100 ms itself."""
    srv = start_server(app_path("attacks_lifecycle.lua"), "--workers", "1", "--cpu-budget", "0.1")
    for _ in range(2):
        out = subprocess.run(["h2load", "--h1", "-n", "300", "-c", "100", srv.url("/work")],
                             capture_output=True, text=True, timeout=120).stdout
        assert "300 succeeded" in out and "status codes: 300 2xx" in out, out
    assert "CPU budget exceeded" not in srv.log_text()


# -- SIGTERM ---------------------------------------------------------------------------------

def test_sigterm_tells_open_event_streams_and_exits_promptly():
    """Issue 9: "SIGTERM: SSE and other streamed responses are never told; the
    server waits the full `--drain-timeout` ... SSE/streams told of shutdown
    (their waits return `nil, "stopping"`, the drain ends as soon as they
    finish)"."""
    srv = LariatServer(app_path("attacks_lifecycle.lua"), "--workers", "1", "--drain-timeout", "30").start()
    try:
        conns = [RawConn(srv.port, timeout=10 * SLOW) for _ in range(6)]
        for c in conns:
            c.send(request("GET", "/sse"))
            c.read_until(b"data: hello\n\n")
        waiters = [RawConn(srv.port, timeout=10 * SLOW) for _ in range(4)]
        for c in waiters:
            c.send(request("GET", "/channel-stop"))
        wait_stats(srv, 5, "all waiting", handlers=10, waiting=10)
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        for c in waiters:
            assert c.read_response().body == b"stopping"
            c.close()
        for c in conns:
            rest = c.read_to_close()
            assert b"event: bye\ndata: stopping\n\n" in rest
            assert rest.endswith(b"0\r\n\r\n")  # a complete chunked response, not a cut
            c.close()
        assert srv.proc.wait(10 * SLOW) == 0
        assert time.monotonic() - t0 < 3 * SLOW
        assert "drain timeout" not in srv.stderr_text() + srv.stdout_text()
    finally:
        srv.stop()
