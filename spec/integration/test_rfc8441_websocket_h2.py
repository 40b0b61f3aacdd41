"""RFC 8441: WebSocket over HTTP/2 — SETTINGS_ENABLE_CONNECT_PROTOCOL and the
extended CONNECT with :protocol websocket, then RFC 6455 frames in DATA
frames of that stream, with the same handlers as over HTTP/1.1. The HTTP/2
side is python h2 over h2c (prior knowledge); the frames are raw."""

import os
import signal
import socket
import struct
import zlib

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from conftest import LariatServer, app_path, module_server
from wsclient import H2WS, close_payload, frame

server = module_server("ws.lua", "--workers", "1")

TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10


def test_3_server_sends_settings_enable_connect_protocol(server):
    """§3: "a server ... SETTINGS_ENABLE_CONNECT_PROTOCOL ... value of 1" """
    with H2WS(server.port, "/plain") as ws:
        assert ws.remote_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1


def test_5_extended_connect_echo(server):
    """§5: a 2xx to the extended CONNECT, then the stream carries WebSocket frames
    (masked from the client, as over HTTP/1.1); no sec-websocket-accept"""
    with H2WS(server.port, "/plain") as ws:
        assert ws.status == 200
        assert "sec-websocket-accept" not in ws.headers
        ws.send(frame(TEXT, "over h2"))
        assert ws.read_frame() == (True, 0, TEXT, b"over h2")
        ws.send(frame(BINARY, b"\x00" * 70000))
        assert ws.read_frame() == (True, 0, BINARY, b"\x00" * 70000)
        ws.send(frame(PING, b"p"))
        assert ws.read_frame() == (True, 0, PONG, b"p")
        ws.send(frame(CLOSE, close_payload(1000)))
        assert ws.read_close() == 1000
        # the server ends its side (END_STREAM), and the stream (RST_STREAM
        # NO_ERROR, like the TCP close that follows the handshake over HTTP/1.1)
        assert ws.wait_end()
        assert ws.ended and ws.reset in (None, 0)


def test_5_same_handler_options_subprotocol_and_deflate(server):
    with H2WS(server.port, "/proto", headers=[("sec-websocket-protocol", "chat")]) as ws:
        assert ws.headers["sec-websocket-protocol"] == "chat"
        assert ws.read_frame()[3] == b"chat"
    with H2WS(server.port, "/echo", headers=[("sec-websocket-extensions", "permessage-deflate")]) as ws:
        assert ws.headers["sec-websocket-extensions"] == "permessage-deflate"
        msg = b"compressed over h2 " * 50
        ws.send(frame(TEXT, msg))
        fin, rsv, op, data = ws.read_frame()
        assert rsv == 4
        assert zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff") == msg


def test_protocol_errors_close_the_stream_not_the_connection(server):
    """a bad frame fails that WebSocket (1002 and END_STREAM); the connection
    and its other streams go on"""
    with H2WS(server.port, "/plain") as ws:
        ws.send(frame(TEXT, "x", mask=False))
        assert ws.read_close() == 1002
        assert ws.wait_end()
        # the same connection still answers a second WebSocket
        ws.sid = 3
        ws.status = None
        ws.reset = None
        ws.ended = False
        ws.data = b""
        ws.conn.send_headers(3, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                                 (":path", "/plain"), (":authority", "127.0.0.1"), ("sec-websocket-version", "13")])
        ws.sock.sendall(ws.conn.data_to_send())
        while ws.status is None:
            ws._pump()
        assert ws.status == 200
        ws.send(frame(TEXT, "again"))
        assert ws.read_frame()[3] == b"again"


def test_message_limit_over_h2(server):
    with H2WS(server.port, "/small") as ws:
        ws.send(frame(BINARY, b"x" * 2000))
        assert ws.read_close() == 1009


def test_plain_connect_without_protocol_is_not_a_websocket(server):
    """a GET on a ws route over h2 (no extended CONNECT) is told to upgrade"""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":path", "/echo"), (":authority", "x")],
                      end_stream=True)
    sock.sendall(conn.data_to_send())
    status = None
    while status is None:
        for ev in conn.receive_data(sock.recv(65536)):
            if isinstance(ev, h2.events.ResponseReceived):
                status = int(dict(ev.headers)[":status"])
        sock.sendall(conn.data_to_send())
    assert status == 426
    sock.close()


def test_send_waits_for_the_stream_window(server):
    """ws:send over h2 yields on the stream's back-pressure; nothing is lost"""
    with H2WS(server.port, "/big") as ws:
        total = 0
        while True:
            fin, rsv, op, data = ws.read_frame()
            if data == b"end":
                break
            total += len(data)
        assert total == 64 * 64 * 1024


def test_sigterm_closes_a_websocket_over_h2_with_1001():
    """Stopping the server: GOAWAY for the connection and, like on HTTP/1.1
    (RFC 6455 §7.4.1 1001 "going away"), a close frame on each WebSocket stream."""
    srv = LariatServer(app_path("ws.lua"), "--workers", "1").start()
    try:
        with H2WS(srv.port, "/echo") as ws:
            assert ws.status == 200
            os.kill(srv.pid, signal.SIGTERM)
            # python-h2 refuses frames after a GOAWAY, so read the rest raw: the
            # close frame (1001 and its reason) travels in a DATA frame after it
            raw = b""
            ws.sock.settimeout(5)
            while b"\x03\xe9server shutting down" not in raw:
                chunk = ws.sock.recv(65536)
                if not chunk:
                    break
                raw += chunk
            assert b"\x03\xe9server shutting down" in raw
        assert srv.proc.wait(5) == 0
    finally:
        srv.stop()
