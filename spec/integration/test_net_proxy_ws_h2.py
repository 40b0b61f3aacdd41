"""lariat.proxy and WebSockets of HTTP/2 clients: RFC 8441 §4 "the CONNECT
method ... with the :protocol pseudo-header" on a proxy route becomes an
RFC 6455 §4.1 handshake with the HTTP/1.1 upstream ("|Upgrade| header field
whose value MUST include the "websocket" keyword", a "Sec-WebSocket-Key"
of ours, whose "Sec-WebSocket-Accept" is checked), then the stream's DATA is
relayed to the upstream socket and back under flow control both ways. RFC 8441
§5: "the response ... a 2xx"; §6: END_STREAM is the TCP FIN, RST_STREAM the
RST. Upstreams: lariat's own WebSocket handlers, directly and through Debian
nginx."""

import json
import os
import signal
import socket
import struct
import time

import pytest

from conftest import LariatServer, app_path
from netpeers import CA, Nginx, http_call, wait_for
from wsclient import H2WS, close_payload, frame

SLOW = 3 if os.environ.get("LARIAT_SANITIZE") else 1
TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10


@pytest.fixture(scope="module")
def env():
    up = LariatServer(app_path("upstream.lua"), "--workers", "1").start()
    ng = Nginx(CA(), upstream=up.port)
    os.environ["LARIAT_TEST_UPSTREAM"] = "http://127.0.0.1:%d" % up.port
    os.environ["LARIAT_TEST_NGINX"] = "http://127.0.0.1:%d" % ng.port
    px = LariatServer(app_path("proxy_ws.lua"), "--workers", "1").start()
    try:
        yield {"px": px, "up": up, "nginx": ng}
        px.check_healthy()
        up.check_healthy()
    finally:
        ng.stop()


def fds(srv):
    return len(os.listdir("/proc/%d/fd" % srv.pid))


def handlers(srv):
    """live handlers of the proxy besides the /stats request asking"""
    return json.loads(http_call(srv, "/stats")[2])["handlers"] - 1


def upstream_open(env):
    return int(http_call(env["up"], "/wsopen")[2])


def read_message(ws):
    """(opcode, payload) of the next message, fragments joined"""
    fin, rsv, op, data = ws.read_frame()
    parts = [data]
    while not fin:
        fin, _, _, more = ws.read_frame()
        parts.append(more)
    return op, b"".join(parts)


@pytest.mark.parametrize("route", ["/ws/echo", "/ngws/echo"])
def test_echo_through_the_proxy(env, route):
    """text, binary, 1 MB (more than every window on the way), ping, close:
    the bytes are the client's and the upstream's, untouched"""
    px = env["px"]
    for _ in range(2):
        with H2WS(px.port, route) as ws:
            assert ws.status == 200, ws.headers
            assert "sec-websocket-accept" not in ws.headers and "upgrade" not in ws.headers
            ws.send(frame(TEXT, "over h2, then h1"))
            assert read_message(ws) == (TEXT, b"over h2, then h1")
            ws.send(frame(BINARY, b"\x00\x01\x02"))
            assert read_message(ws) == (BINARY, b"\x00\x01\x02")
            big = os.urandom(1 << 20)
            ws.send(frame(BINARY, big))
            assert read_message(ws) == (BINARY, big)
            ws.send(frame(PING, b"p"))
            assert read_message(ws) == (PONG, b"p")
            ws.send(frame(CLOSE, close_payload(1000)))
            assert ws.read_close() == 1000
            assert ws.wait_end()  # the upstream closed its TCP side: END_STREAM
            assert ws.reset in (None, 0)
    assert wait_for(lambda: handlers(px) == 0, 5 * SLOW)


def test_many_messages_before_reading(env):
    """the client sends 8 MB of messages before it looks at a reply: the
    windows on the way (the client's stream, the upstream socket, the reply
    stream) open only as each drains, and nothing is lost or reordered"""
    with H2WS(env["px"].port, "/ws/echo") as ws:
        msgs = [os.urandom(1 << 20) for _ in range(8)]
        for m in msgs:
            ws.send(frame(BINARY, m))
        for m in msgs:
            assert read_message(ws) == (BINARY, m)


def test_a_client_that_does_not_read_holds_the_upstream_back(env):
    """the upstream sends 4 MiB at once to a client that reads nothing: the
    stream's window (64 KiB) closes and the proxy stops reading the upstream
    socket; what it holds stays bounded, and all of it arrives once read"""
    px = env["px"]
    for _ in range(2):
        with H2WS(px.port, "/ws/flood") as ws:
            assert ws.status == 200
            out = lambda: json.loads(http_call(px, "/stats")[2])["output"]
            assert wait_for(lambda: out() > 0, 5 * SLOW)  # the proxy is stuck on the window
            time.sleep(0.3)  # the upstream would go on sending if nothing held it back
            assert out() < 1 << 20, out()
            total = 0
            while True:
                op, data = read_message(ws)
                if data == b"end":
                    break
                total += len(data)
            assert total == 64 * 65536


def test_subprotocol_goes_up_and_its_choice_comes_back(env):
    with H2WS(env["px"].port, "/ws/proto", headers=[("sec-websocket-protocol", "chat")]) as ws:
        assert ws.status == 200 and ws.headers.get("sec-websocket-protocol") == "chat"
        assert read_message(ws) == (TEXT, b"chat")


@pytest.mark.parametrize("how", ["rst", "tcp", "end"])
def test_client_leaves_upstream_sees_the_close(env, how):
    """RST_STREAM(CANCEL), the whole connection gone, or END_STREAM (RFC 8441
    §6: the TCP FIN's twin): the upstream connection closes at once (its
    handler ends within 1 s), the second time too; descriptors and handlers
    come back"""
    px = env["px"]
    before = fds(px)
    for _ in range(2):
        ws = H2WS(px.port, "/ws/count")
        assert ws.status == 200
        ws.send(frame(TEXT, "hi"))
        assert read_message(ws) == (TEXT, b"hi")
        assert upstream_open(env) == 1
        t0 = time.monotonic()
        if how == "rst":
            ws.rst()
        elif how == "end":
            ws.end()
        else:
            ws.close()
        assert wait_for(lambda: upstream_open(env) == 0, 1.0 * SLOW), "the upstream never saw the close"
        assert time.monotonic() - t0 < 1.0 * SLOW
        if how == "end":
            assert ws.wait_end() and ws.reset in (None, 0)  # the upstream closed: so does our stream
        ws.close()
    assert wait_for(lambda: handlers(px) == 0, 5 * SLOW)
    assert wait_for(lambda: fds(px) <= before, 5 * SLOW), (fds(px), before)


def test_upstream_closes_the_stream_ends(env):
    """the upstream says goodbye and closes its socket: the client gets its
    frames, then END_STREAM (no reset); twice"""
    px = env["px"]
    for route in ("/ws/bye", "/ngws/bye", "/ws/bye"):
        with H2WS(px.port, route) as ws:
            assert ws.status == 200
            assert read_message(ws) == (TEXT, b"bye")
            assert ws.read_close() == 1000
            ws.send(frame(CLOSE, close_payload(1000)))
            assert ws.wait_end() and ws.ended
            assert ws.reset in (None, 0)
    assert wait_for(lambda: handlers(px) == 0, 5 * SLOW)


def test_upstream_that_does_not_switch(env):
    """a refusal (404 here) reaches the client with its status; a 2xx that is
    no 101 would say "switched" to an HTTP/2 client: 502 instead"""
    px = env["px"]
    for _ in range(2):
        with H2WS(px.port, "/ws/nothing-here") as ws:
            assert ws.status == 404
            assert ws.wait_end()
        with H2WS(px.port, "/plain/hello") as ws:
            assert ws.status == 502
            assert ws.wait_end()
    assert "bad upgrade (502)" in px.log_text()
    # the same routes still serve a WebSocket
    with H2WS(px.port, "/ws/echo") as ws:
        ws.send(frame(TEXT, "still"))
        assert read_message(ws) == (TEXT, b"still")


def test_sigterm_ends_the_tunnelled_streams(env):
    """Stopping the proxy: like its HTTP/1.1 tunnels, a tunnelled stream ends
    once what was queued is out, the upstream connection closes, and the
    process exits"""
    srv = LariatServer(app_path("proxy_ws.lua"), "--workers", "1").start()
    try:
        with H2WS(srv.port, "/ws/count") as ws:
            ws.send(frame(TEXT, "before"))
            assert read_message(ws) == (TEXT, b"before")
            assert upstream_open(env) == 1
            os.kill(srv.pid, signal.SIGTERM)
            # python-h2 refuses frames after a GOAWAY: read the rest raw, until EOF
            ws.sock.settimeout(10 * SLOW)
            while ws.sock.recv(65536):
                pass
        assert srv.proc.wait(10 * SLOW) == 0
        assert wait_for(lambda: upstream_open(env) == 0, 1.0 * SLOW)
    finally:
        srv.stop()
