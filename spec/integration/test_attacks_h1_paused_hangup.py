"""HTTP/1.1 hang-up while reading is paused. DESIGN §4b: "HTTP/1.1 client
gone = the connection reset, or read EOF before the response is complete
... it cancels the handler." When lariat stops reading a connection
(pipelined input queued behind a running handler, a body the handler does
not read), the FIN or RST sits behind unread input; nginx still sees it
(EPOLLRDHUP, ngx_http_test_reading). So does lariat now: the handler is
cancelled within about a second, and nothing more is read or buffered."""

import os
import socket
import struct
import time

import pytest

from conftest import RawConn, app_path, request
from test_attacks_lifecycle import fds, stats, wait_stats, wait_until

SLOW = 3 if os.environ.get("LARIAT_SANITIZE") else 1


@pytest.fixture
def srv(start_server):
    # no handler timeout: only the hang-up can end these handlers
    return start_server(app_path("handler_timeout.lua"), "--workers", "1", "--handler-timeout", "0")


def queues(local_port, remote_port):
    """(tx_queue, rx_queue) of the IPv4 socket local_port -> remote_port, from /proc/net/tcp"""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            p = line.split()
            if int(p[1].split(":")[1], 16) == local_port and int(p[2].split(":")[1], 16) == remote_port:
                tx, rx = p[4].split(":")
                return int(tx, 16), int(rx, 16)
    return None


def fill_until_paused(s, srv_port, piece):
    """Send `piece` repeatedly until lariat stops reading: input stays in its
    socket's receive queue. Then wait until all we sent reached it, so a FIN
    or RST sent next arrives. Returns the bytes left unread."""
    me = s.getsockname()[1]
    for _ in range(200):
        s.sendall(piece)
        deadline = time.monotonic() + 0.5 * SLOW
        while time.monotonic() < deadline:
            q = queues(srv_port, me)
            if q is not None and q[1] == 0:
                break
            time.sleep(0.02)
        else:
            break  # lariat does not read any more
    else:
        raise AssertionError("lariat never stopped reading")
    wait_until(lambda: queues(me, srv_port)[0] == 0 or queues(me, srv_port), 5, "our output delivered")
    rx = queues(srv_port, me)[1]
    assert rx > 0
    return rx


PIPELINED = request("GET", "/") * 300  # ~10 KB of pipelined requests


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("paused_by", ["pipelined", "body"])
def test_hang_up_while_reading_is_paused_cancels_the_handler(srv, how, paused_by):
    base_fds = fds(srv)
    for round_ in range(2):
        closed0 = stats(srv)["closed"]
        s = socket.create_connection(("127.0.0.1", srv.port))
        if paused_by == "pipelined":
            s.sendall(request("GET", "/hang"))
            wait_stats(srv, 5, "handler waiting", handlers=1)
            fill_until_paused(s, srv.port, PIPELINED)
        else:
            s.sendall(b"POST /hang HTTP/1.1\r\nhost: x\r\ncontent-length: 8000000\r\n\r\n")
            wait_stats(srv, 5, "handler waiting", handlers=1)
            fill_until_paused(s, srv.port, b"x" * 16384)
        assert stats(srv)["handlers"] == 1  # nothing noticed yet
        t0 = time.monotonic()
        if how == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        else:
            s.shutdown(socket.SHUT_WR)
        wait_stats(srv, 3, "round %d: handler cancelled" % round_, handlers=0, closed=closed0 + 1)
        assert time.monotonic() - t0 < 3 * SLOW
        if how == "fin":
            s.close()
        wait_until(lambda: fds(srv) <= base_fds or fds(srv), 3, "round %d: fds closed" % round_)
        with RawConn(srv.port, timeout=5 * SLOW) as c:
            c.send(request("GET", "/"))
            assert c.read_response().body == b"ok"


def test_paused_connection_whose_client_stays_is_not_cut(srv):
    """The probe only reacts to a hang-up: a client that keeps its side open
    while lariat pauses keeps its handler (it is still there 2.5 s later)."""
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(request("GET", "/hang"))
    wait_stats(srv, 5, "handler waiting", handlers=1)
    fill_until_paused(s, srv.port, PIPELINED)
    time.sleep(2.5)  # two probes at least; the absence of a cancel is what is checked
    assert stats(srv)["handlers"] == 1
    s.close()
    wait_stats(srv, 3, "handler cancelled at the close", handlers=0)
