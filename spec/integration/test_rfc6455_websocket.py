"""RFC 6455: the WebSocket protocol, from the opening handshake to the
closing one, with raw frames (spec/integration/wsclient.py) so every bit
the peer sends is the test's choice. Each test quotes what it checks."""

import json
import socket
import struct
import time

import pytest

from conftest import module_server
from wsclient import WS, accept_for, close_payload, frame

# channels are per worker: one worker, so connections share them
server = module_server("ws.lua", "--workers", "1")

TEXT, BINARY, CLOSE, PING, PONG, CONT = 1, 2, 8, 9, 10, 0


def echo_ok(ws, msg=b"still here"):
    ws.send(frame(TEXT, msg))
    assert ws.read_message() == (TEXT, msg)


def expect_close(ws, code):
    got, _ = ws.read_close()
    assert got == code
    assert ws.closed_by_server(), "the server closes the TCP connection after failing it"


# ---- §4.2 opening handshake ------------------------------------------------

def test_4_2_2_accept_is_sha1_of_key_and_guid(server):
    """"the server would append the string "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    ... take the SHA-1 hash of this concatenated value ... base64-encode"""
    with WS(server.port, "/plain") as ws:
        assert ws.status == 101
        assert ws.headers["sec-websocket-accept"] == accept_for(ws.key)
        assert ws.headers["upgrade"].lower() == "websocket"
        assert "upgrade" in ws.headers["connection"].lower()
        assert "sec-websocket-extensions" not in ws.headers
        echo_ok(ws)


def test_4_2_1_plain_get_on_a_websocket_route_is_426(server):
    """a request without upgrade: websocket gets no upgrade (426 Upgrade Required)"""
    with server.connect() as c:
        c.send("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert r.status == 426
        assert r.header("sec-websocket-version") == "13"


def test_4_4_unsupported_version_is_426_naming_13(server):
    """"If this version does not match a version understood by the server, the
    server MUST abort the WebSocket handshake ... and instead send an
    appropriate HTTP error code (such as 426 Upgrade Required) and a
    |Sec-WebSocket-Version| header field indicating the version(s)" """
    with server.connect() as c:
        c.send("GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n")
        r = c.read_response()
        assert r.status == 426
        assert r.header("sec-websocket-version") == "13"


@pytest.mark.parametrize("key", ["", "short", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZQ=!"])
def test_4_2_1_bad_key_is_400(server, key):
    """"A |Sec-WebSocket-Key| header field with a base64-encoded value that,
    when decoded, is 16 bytes in length." """
    with server.connect() as c:
        c.send("GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key)
        assert c.read_response().status == 400


def test_4_2_2_subprotocol_is_one_the_client_offered(server):
    """"the server ... selects one or none of the acceptable protocols and echoes
    that value in its handshake" — the server's preference order wins"""
    with WS(server.port, "/proto", protocols="superchat, chat") as ws:
        assert ws.headers["sec-websocket-protocol"] == "chat"
        assert ws.read_message() == (TEXT, b"chat")
    with WS(server.port, "/proto", protocols="mqtt") as ws:
        assert ws.status == 101
        assert "sec-websocket-protocol" not in ws.headers
        assert ws.read_message() == (TEXT, b"none")


def test_10_2_origin_check(server):
    """"servers ... MAY use the |Origin| header field" — a refused origin is 403"""
    with WS(server.port, "/origin", headers=["Origin: http://good.example"]) as ws:
        assert ws.status == 101
        assert ws.read_message() == (TEXT, b"welcome")
    with WS(server.port, "/origin", headers=["Origin: http://evil.example"]) as ws:
        assert ws.status == 403
    with WS(server.port, "/origin_fn", headers=["Origin: http://fn.example"]) as ws:
        assert ws.status == 101
    with WS(server.port, "/origin_fn") as ws:
        assert ws.status == 403


def test_middleware_can_refuse_the_upgrade(server):
    """a route middleware may answer the handshake with an HTTP error instead"""
    with WS(server.port, "/guarded") as ws:
        assert ws.status == 403
    with WS(server.port, "/guarded", headers=["X-Token: yes"]) as ws:
        assert ws.status == 101
        echo_ok(ws)


def test_frames_sent_with_the_handshake_are_not_lost(server):
    """a client may send frames right after its handshake, before reading the 101"""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    req = ("GET /plain HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    s.sendall(req + frame(TEXT, "early") + frame(TEXT, "bird"))
    data = b""
    while data.count(b"early") + data.count(b"bird") < 2:
        d = s.recv(4096)
        assert d
        data += d
    assert data.startswith(b"HTTP/1.1 101")
    assert data.index(b"early") < data.index(b"bird")
    s.close()


# ---- §5 framing -------------------------------------------------------------

def test_5_1_unmasked_client_frame_is_1002(server):
    """"The server MUST close the connection upon receiving a frame that is not
    masked ... a server MAY send a Close frame with a status code of 1002" """
    with WS(server.port) as ws:
        ws.send(frame(TEXT, "hi", mask=False))
        expect_close(ws, 1002)


@pytest.mark.parametrize("rsv", [1, 2, 4, 7])
def test_5_2_reserved_bits_without_extension_are_1002(server, rsv):
    """"MUST be 0 unless an extension is negotiated that defines meanings for
    non-zero values. If a nonzero value is received and none of the negotiated
    extensions defines the meaning of such a nonzero value, the receiving
    endpoint MUST _Fail the WebSocket Connection_." """
    with WS(server.port, "/plain") as ws:
        ws.send(frame(TEXT, "hi", rsv=rsv))
        expect_close(ws, 1002)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xF])
def test_5_2_reserved_opcodes_are_1002(server, opcode):
    """"If an unknown opcode is received, the receiving endpoint MUST _Fail the
    WebSocket Connection_." """
    with WS(server.port) as ws:
        ws.send(frame(opcode, "x"))
        expect_close(ws, 1002)


def test_5_4_fragments_are_reassembled_with_control_frames_in_between(server):
    """"Control frames MAY be injected in the middle of a fragmented message." """
    with WS(server.port, "/plain") as ws:
        ws.send(frame(TEXT, "Hel", fin=False) + frame(PING, "p1") + frame(CONT, "lo, ", fin=False)
                + frame(PONG, "unsolicited") + frame(CONT, "world"))
        assert ws.read_frame()[2:] == (PONG, b"p1")
        assert ws.read_message() == (TEXT, b"Hello, world")
        ws.send(frame(BINARY, b"\x00\xff", fin=False) + frame(CONT, b"", fin=False) + frame(CONT, b"\x01"))
        assert ws.read_message() == (BINARY, b"\x00\xff\x01")


def test_5_2_frames_split_at_every_byte_are_read_whole(server):
    """Frame boundaries are independent of TCP reads (RFC 6455 §5.2): headers
    and payloads cut at every byte, 16- and 64-bit lengths, masks split, a
    control frame in the middle; the server keeps its framing state only while
    a frame is incomplete, so each cut exercises that."""
    with WS(server.port, "/plain") as ws:
        wire = (frame(TEXT, "Hel", fin=False) + frame(PING, "p") + frame(CONT, "lo")
                + frame(BINARY, b"x" * 300) + frame(BINARY, b"y" * 70000))
        for i in range(len(wire) if len(wire) < 400 else 400):
            ws.send(wire[i:i + 1])
            if i % 50 == 0:
                time.sleep(0.01)  # let the server see a read end mid-frame
        ws.send(wire[400:])
        assert ws.read_frame()[2:] == (PONG, b"p")
        assert ws.read_message() == (TEXT, b"Hello")
        assert ws.read_message() == (BINARY, b"x" * 300)
        assert ws.read_message() == (BINARY, b"y" * 70000)


def test_5_4_continuation_without_a_start_is_1002(server):
    with WS(server.port) as ws:
        ws.send(frame(CONT, "orphan"))
        expect_close(ws, 1002)


def test_5_4_new_message_inside_a_fragmented_one_is_1002(server):
    """"The fragments of one message MUST NOT be interleaved between the
    fragments of another message" """
    with WS(server.port) as ws:
        ws.send(frame(TEXT, "a", fin=False) + frame(TEXT, "b"))
        expect_close(ws, 1002)


def test_5_5_control_frame_over_125_bytes_is_1002(server):
    """"All control frames MUST have a payload length of 125 bytes or less" """
    with WS(server.port) as ws:
        ws.send(frame(PING, b"x" * 126))
        expect_close(ws, 1002)


def test_5_5_fragmented_control_frame_is_1002(server):
    """"All control frames ... MUST NOT be fragmented." """
    with WS(server.port) as ws:
        ws.send(frame(PING, b"x", fin=False))
        expect_close(ws, 1002)


def test_5_5_2_ping_gets_a_pong_with_the_same_payload(server):
    """"Upon receipt of a Ping frame, an endpoint MUST send a Pong frame in
    response ... having identical "Application data"" """
    with WS(server.port) as ws:
        ws.send(frame(PING, b"\x00payload\xff"))
        assert ws.read_frame() == (True, 0, PONG, b"\x00payload\xff")
        ws.send(frame(PING))
        assert ws.read_frame() == (True, 0, PONG, b"")


def test_5_2_64bit_length_with_the_high_bit_is_1002(server):
    """"the most significant bit MUST be 0" """
    with WS(server.port) as ws:
        ws.send(bytes([0x81, 0xFF]) + struct.pack("!Q", 1 << 63) + b"\x00\x00\x00\x00")
        expect_close(ws, 1002)


# ---- §5.5.1 / §7 closing ----------------------------------------------------

def test_5_5_1_close_is_echoed_with_the_code_and_server_closes_tcp(server):
    """"it is RECOMMENDED that the server close the underlying TCP connection
    first"; "the endpoint typically echos the status code it received" """
    with WS(server.port) as ws:
        ws.send(frame(CLOSE, close_payload(1000, b"done")))
        assert ws.read_close()[0] == 1000
        assert ws.closed_by_server()
    with WS(server.port) as ws:
        ws.send(frame(CLOSE, close_payload(4321)))
        assert ws.read_close()[0] == 4321
        assert ws.closed_by_server()


def test_7_1_5_empty_close_gets_an_empty_close(server):
    """no status code in the close frame: "considered to be 1005" and none is echoed"""
    with WS(server.port) as ws:
        ws.send(frame(CLOSE))
        assert ws.read_close() == (None, b"")
        assert ws.closed_by_server()


def test_5_5_1_one_byte_close_payload_is_1002(server):
    with WS(server.port) as ws:
        ws.send(frame(CLOSE, b"\x03"))
        expect_close(ws, 1002)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_7_4_invalid_close_codes_are_1002(server, code):
    """§7.4.1/7.4.2: 1005, 1006 and 1015 "MUST NOT be set as a status code in a
    Close control frame"; 0-999 are not used; 1016-2999 are reserved"""
    with WS(server.port) as ws:
        ws.send(frame(CLOSE, close_payload(code)))
        expect_close(ws, 1002)


def test_5_5_1_close_reason_must_be_utf8(server):
    with WS(server.port) as ws:
        ws.send(frame(CLOSE, close_payload(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80")))
        expect_close(ws, 1007)


def test_7_handler_close_with_code_and_reason(server):
    """ws:close(4001, "bye") sends that close frame; after the client's reply the server closes TCP"""
    with WS(server.port, "/bye") as ws:
        code, reason = ws.read_close()
        assert (code, reason) == (4001, b"bye")
        ws.send(frame(CLOSE, close_payload(4001)))
        assert ws.closed_by_server()


def test_handler_end_closes_1000_and_error_closes_1011(server):
    with WS(server.port, "/done") as ws:
        assert ws.read_message() == (TEXT, b"done")
        assert ws.read_close()[0] == 1000
        ws.send(frame(CLOSE, close_payload(1000)))
        assert ws.closed_by_server()
    with WS(server.port, "/fail") as ws:
        assert ws.read_close()[0] == 1011
    deadline = time.monotonic() + 5  # the log line reaches the pipe reader a bit later
    while "boom" not in server.stderr_text():
        assert time.monotonic() < deadline, "the handler's error is logged"
        time.sleep(0.05)


def test_recv_reports_the_peers_close_code_and_reason(server):
    """ws:recv() → nil, "closed", code, reason"""
    with WS(server.port, "/closeinfo_watch") as watch:
        assert watch.read_message() == (TEXT, b"ready")
        with WS(server.port, "/closeinfo") as ws:
            ws.send(frame(CLOSE, close_payload(4444, b"see you")))
            assert ws.read_close()[0] == 4444
        assert watch.read_message() == (TEXT, b"nil closed 4444 see you")


def test_recv_timeout(server):
    with WS(server.port, "/timeout") as ws:
        assert ws.read_message() == (TEXT, b"nil timeout")
        echo_ok(ws)


# ---- §8.1 UTF-8 ---------------------------------------------------------------

@pytest.mark.parametrize("payload", [
    b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"abc\xe2\x82", b"\xce\xba\xe1\xbd",
])
def test_8_1_invalid_utf8_text_is_1007(server, payload):
    """"When an endpoint is to interpret a byte stream as UTF-8 but finds that
    the byte stream is not, in fact, a valid UTF-8 stream, that endpoint MUST
    _Fail the WebSocket Connection_." (1007, §7.4.1)"""
    with WS(server.port, "/plain") as ws:
        ws.send(frame(TEXT, payload))
        expect_close(ws, 1007)


def test_8_1_utf8_split_across_fragments(server):
    """a code point split between two fragments is valid; an invalid sequence
    is caught in the first fragment, before the message ends"""
    with WS(server.port, "/plain") as ws:
        ws.send(frame(TEXT, b"\xce", fin=False) + frame(CONT, b"\xba\xe1", fin=False) + frame(CONT, b"\xbd\xb9"))
        assert ws.read_message() == (TEXT, b"\xce\xba\xe1\xbd\xb9")
        ws.send(frame(TEXT, b"ok\xed\xa0\x80", fin=False))
        expect_close(ws, 1007)


def test_8_1_binary_is_not_checked(server):
    with WS(server.port, "/plain") as ws:
        ws.send(frame(BINARY, b"\xff\xfe"))
        assert ws.read_message() == (BINARY, b"\xff\xfe")


# ---- §10 limits ---------------------------------------------------------------

def test_10_4_message_over_max_message_is_1009(server):
    """§10.4 "implementations SHOULD impose implementation-specific limits on
    frame sizes and the total message size"; 1009 "a message that is too big" """
    with WS(server.port, "/small") as ws:
        ws.send(frame(BINARY, b"x" * 1024))
        assert ws.read_message() == (BINARY, b"x" * 1024)
        ws.send(frame(BINARY, b"x" * 1025))
        expect_close(ws, 1009)
    with WS(server.port, "/small") as ws:
        ws.send(frame(BINARY, b"x" * 600, fin=False) + frame(CONT, b"x" * 600))
        expect_close(ws, 1009)
    with WS(server.port, "/small") as ws:
        # a 4 GiB frame: refused with its first payload byte
        ws.send(bytes([0x82, 0xFF]) + struct.pack("!Q", 1 << 32) + b"\x01\x02\x03\x04" + b"x")
        expect_close(ws, 1009)


def test_ping_flood_is_1008_and_other_connections_are_untouched(server):
    with WS(server.port) as good:
        echo_ok(good)
        with WS(server.port) as bad:
            bad.send_lenient(b"".join(frame(PING, b"x") for _ in range(500)))
            while True:
                fin, rsv, op, data = bad.read_frame()
                if op == CLOSE:
                    break
                assert op == PONG
            assert struct.unpack("!H", data[:2])[0] == 1008
        echo_ok(good)


def test_send_waits_for_a_slow_reader(server):
    """ws:send yields while the output is above the high-water mark, nothing is lost"""
    with WS(server.port, "/big") as ws:
        time.sleep(0.3)  # let the server fill the socket and wait
        total = 0
        while True:
            op, data = ws.read_message()
            if data == b"end":
                break
            total += len(data)
        assert total == 64 * 64 * 1024


def test_server_pings_an_idle_peer_and_closes_a_dead_one(server):
    with WS(server.port, "/pinger") as ws:
        fin, rsv, op, data = ws.read_frame()
        assert op == PING
        ws.send(frame(PONG, data))
        assert ws.read_frame()[2] == PING  # still idle: pinged again
        # no answer this time: the server gives up
        code, _ = ws.read_close()
        assert code == 1001
        assert ws.closed_by_server()


# ---- lariat.channel ----------------------------------------------------------

def test_channel_broadcast_between_connections(server):
    with WS(server.port, "/room") as a, WS(server.port, "/room") as b:
        assert a.read_message() == (TEXT, b"joined 1")
        assert b.read_message() == (TEXT, b"joined 2")
        a.send(frame(TEXT, "hello from a"))
        assert a.read_message() == (TEXT, b"hello from a")
        assert b.read_message() == (TEXT, b"hello from a")
        b.send(frame(CLOSE, close_payload(1000)))
        assert b.read_close()[0] == 1000
        a.send(frame(TEXT, "anyone?"))
        assert a.read_message() == (TEXT, b"anyone?")


def test_req_is_available_to_the_handler(server):
    with WS(server.port, "/info?x=1") as ws:
        info = json.loads(ws.read_message()[1])
        assert info == {"path": "/info", "qs": "x=1", "ext": "", "version": "HTTP/1.1"}


def test_messages_before_a_bad_frame_are_still_answered(server):
    """a message, then a frame with RSV bits, then a ping, in one write: the
    message is echoed, then the connection is failed with 1002 (no pong)"""
    with WS(server.port, "/plain") as ws:
        ws.send(frame(TEXT, "first") + frame(TEXT, "bad", rsv=2) + frame(PING, "p"))
        assert ws.read_message() == (TEXT, b"first")
        expect_close(ws, 1002)
