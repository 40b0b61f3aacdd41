"""RFC 9113 (HTTP/2) connection-level behaviour, with raw frames: preface,
SETTINGS, PING, frame sizes, flow-control windows, CONTINUATION, GOAWAY,
and the flood guards. Each test quotes the sentence it checks."""

import socket
import time

import pytest
from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame,
                              PriorityFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

from conftest import SANITIZER_RE, LariatServer, app_path, module_server
from h2raw import (COMPRESSION_ERROR, ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, NO_ERROR,
                   PREFACE, PROTOCOL_ERROR, STREAM_CLOSED, H2Raw, connection_error,
                   stream_error)

server = module_server("h2.lua", tls=True)


@pytest.fixture(params=["h2c", "h2"])
def conn(request, server):
    tls = request.param == "h2"
    with H2Raw(server.tls_port if tls else server.port, tls=tls) as c:
        c.handshake()
        yield c


# -- 3.4 HTTP/2 connection preface ------------------------------------------------

def test_3_4_invalid_preface_is_a_connection_error(server):
    """§3.4: "Clients and servers MUST treat an invalid connection preface as a
    connection error of type PROTOCOL_ERROR." """
    with H2Raw(server.port) as c:
        c.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + SettingsFrame(0).serialize())
        f = c.wait_for(lambda f: isinstance(f, GoAwayFrame), timeout=3)
        assert f is None or f.error_code == PROTOCOL_ERROR
        assert c.expect_closed(3)


def test_3_4_server_preface_is_a_settings_frame(server):
    """§3.4: "The server connection preface consists of a potentially empty
    SETTINGS frame ... that MUST be the first frame the server sends." """
    with H2Raw(server.port) as c:
        c.send(PREFACE + SettingsFrame(0).serialize())
        first = c.read_frame()
        assert isinstance(first, SettingsFrame) and "ACK" not in first.flags
        # the advertised limits (issue 4): 100 streams, 64 KiB header list
        assert first.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 100
        assert first.settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == 65536


# -- 4.2 Frame size ----------------------------------------------------------------

def test_4_2_frame_larger_than_max_frame_size_is_frame_size_error(conn):
    """§4.2: "An endpoint MUST send an error code of FRAME_SIZE_ERROR if a frame
    exceeds the size defined in SETTINGS_MAX_FRAME_SIZE" (here in a frame that
    could alter the whole connection's state: a HEADERS frame)."""
    conn.request(1, "/", end_stream=False)
    conn.send(b"\x00\x40\x01\x00\x00\x00\x00\x00\x01" + b"a" * 16385)  # DATA, 16385 bytes
    connection_error(conn, FRAME_SIZE_ERROR)


# -- 5.1 Stream states ---------------------------------------------------------------

def test_5_1_data_on_an_idle_stream_is_a_connection_error(conn):
    """§5.1 idle: "Receiving any frame other than HEADERS or PRIORITY on a stream
    in this state MUST be treated as a connection error of type PROTOCOL_ERROR." """
    conn.data(1, b"x")
    connection_error(conn, PROTOCOL_ERROR)


def test_5_1_data_on_a_closed_stream_is_stream_closed(conn):
    """§5.1 half-closed (remote): "If an endpoint receives additional frames,
    other than WINDOW_UPDATE, PRIORITY, or RST_STREAM, for a stream that is in
    this state, it MUST respond with a stream error of type STREAM_CLOSED." """
    conn.request(1, "/")
    assert conn.response(1)[0] == 200
    conn.data(1, b"late")
    f = conn.wait_for(lambda f: isinstance(f, (RstStreamFrame, GoAwayFrame)))
    assert f is not None and f.error_code == STREAM_CLOSED


def test_6_1_data_after_end_stream_is_a_stream_error(conn):
    """§6.1: "If a DATA frame is received whose stream is not in the "open" or
    "half-closed (local)" state, the recipient MUST respond with a stream error
    (Section 5.4.2) of type STREAM_CLOSED." A stream error: the connection
    lives on, whatever came after the stream closed."""
    for sid in (1, 3, 5):
        conn.request(sid, "/")
        assert conn.response(sid)[0] == 200
    conn.data(1, b"late")
    stream_error(conn, 1, STREAM_CLOSED)
    conn.request(7, "/")
    assert conn.response(7)[0] == 200


def test_5_4_2_frames_in_flight_after_our_rst_stream_are_ignored(conn):
    """§5.1 closed: "An endpoint MUST ignore frames that it receives on closed
    streams after it has sent a RST_STREAM frame." The server answers a POST
    to a GET-only path before its body, resets the rest (§8.1), then the body
    and trailers the client had already sent arrive: no error, and the
    trailers' header block still counts for HPACK (§4.3). (The reset comes
    with the body's first DATA: until then the stream stays half-closed.)"""
    conn.request(1, "/", method="POST", end_stream=False)
    assert conn.response(1)[0] != 200
    conn.data(1, b"x" * 100)
    assert conn.expect_rst(1).error_code == NO_ERROR
    conn.data(1, b"x" * 100)
    trailer = [("x-trailer", "indexed")]  # the encoder indexes it, the next request refers to it
    f = HeadersFrame(1, data=conn.header_block(trailer))
    f.flags.add("END_HEADERS")
    f.flags.add("END_STREAM")
    conn.send_frame(f)
    conn.request(3, "/", extra=trailer)
    assert conn.response(3)[0] == 200
    assert not [f for f in conn.frames if isinstance(f, (RstStreamFrame, GoAwayFrame)) and f.error_code != NO_ERROR]


def test_5_1_1_even_stream_id_from_client_is_protocol_error(conn):
    """§5.1.1: "Streams initiated by a client MUST use odd-numbered stream
    identifiers ... An endpoint that receives an unexpected stream identifier
    MUST respond with a connection error of type PROTOCOL_ERROR." """
    conn.request(2, "/")
    connection_error(conn, PROTOCOL_ERROR)


def test_5_1_1_decreasing_stream_id_is_protocol_error(conn):
    """§5.1.1: "The identifier of a newly established stream MUST be numerically
    greater than all streams that the initiating endpoint has opened." """
    conn.request(5, "/")
    assert conn.response(5)[0] == 200
    conn.request(3, "/")
    connection_error(conn, PROTOCOL_ERROR)


# -- 5.4 Error handling / 6.4 RST_STREAM ---------------------------------------------------

def test_6_4_rst_stream_on_idle_stream_is_protocol_error(conn):
    """§6.4: "If a RST_STREAM frame identifying an idle stream is received, the
    recipient MUST treat this as a connection error of type PROTOCOL_ERROR." """
    conn.send_frame(RstStreamFrame(1, error_code=0x8))
    connection_error(conn, PROTOCOL_ERROR)


# -- 6.5 SETTINGS ------------------------------------------------------------------

def test_6_5_settings_is_acknowledged(conn):
    """§6.5.3: "Upon receiving and applying ... the recipient MUST immediately
    emit a SETTINGS frame with the ACK flag set." """
    s = SettingsFrame(0)
    s.settings = {SettingsFrame.INITIAL_WINDOW_SIZE: 100000}
    conn.send_frame(s)
    f = conn.wait_for(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
    assert f is not None


def test_6_5_settings_ack_with_payload_is_frame_size_error(conn):
    """§6.5: "Receipt of a SETTINGS frame with the ACK flag set and a length
    field value other than 0 MUST be treated as a connection error of type
    FRAME_SIZE_ERROR." """
    conn.send(b"\x00\x00\x06\x04\x01\x00\x00\x00\x00" + b"\x00\x03\x00\x00\x00\x64")
    connection_error(conn, FRAME_SIZE_ERROR)


def test_6_5_2_initial_window_size_too_large_is_flow_control_error(conn):
    """§6.5.2: "Values above the maximum flow-control window size of 2^31-1 MUST
    be treated as a connection error of type FLOW_CONTROL_ERROR." """
    conn.send(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"\x00\x04\x80\x00\x00\x00")
    connection_error(conn, FLOW_CONTROL_ERROR)


# -- 6.7 PING ----------------------------------------------------------------------

def test_6_7_ping_is_answered_with_the_same_payload(conn):
    """§6.7: "Receivers of a PING frame that does not include an ACK flag MUST
    send a PING frame with the ACK flag set in response, with an identical
    frame payload." """
    conn.send_frame(PingFrame(0, opaque_data=b"12345678"))
    f = conn.wait_for(lambda f: isinstance(f, PingFrame))
    assert "ACK" in f.flags and f.opaque_data == b"12345678"


def test_6_7_ping_on_a_stream_is_protocol_error(conn):
    """§6.7: "If a PING frame is received with a Stream Identifier field value
    other than 0x00, the recipient MUST respond with a connection error of type
    PROTOCOL_ERROR." """
    conn.send(b"\x00\x00\x08\x06\x00\x00\x00\x00\x01" + b"\x00" * 8)
    connection_error(conn, PROTOCOL_ERROR)


# -- 6.9 WINDOW_UPDATE -----------------------------------------------------------------

def test_6_9_zero_window_increment_is_protocol_error(conn):
    """§6.9: "A receiver MUST treat the receipt of a WINDOW_UPDATE frame with a
    flow-control window increment of 0 as a stream error of type PROTOCOL_ERROR;
    errors on the connection flow-control window MUST be treated as a
    connection error." """
    conn.send(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + b"\x00\x00\x00\x00")
    connection_error(conn, PROTOCOL_ERROR)


def test_6_9_1_window_overflow_is_flow_control_error(conn):
    """§6.9.1: "If a sender receives a WINDOW_UPDATE that causes a flow-control
    window to exceed this maximum, it MUST terminate either the stream or the
    connection, as appropriate." """
    conn.send_frame(WindowUpdateFrame(0, window_increment=0x7FFFFFFF))
    connection_error(conn, FLOW_CONTROL_ERROR)


def test_6_9_request_body_window_opens_only_as_the_handler_reads(server):
    """Flow control driven by the handler (issue 4): a handler that hasn't read
    yet keeps its stream window closed; WINDOW_UPDATE follows its reads."""
    with H2Raw(server.port) as c:
        c.handshake()
        window = c.server_settings[SettingsFrame.INITIAL_WINDOW_SIZE]
        c.request(1, "/hold/600", method="POST", end_stream=False)
        sent = 0
        while sent < window:
            n = min(16384, window - sent)
            c.data(1, b"u" * n)
            sent += n
        early = [f for f in c.quiet(0.3) if isinstance(f, WindowUpdateFrame) and f.stream_id == 1]
        assert early == [], "the stream window reopened before the handler read"
        f = c.wait_for(lambda f: isinstance(f, WindowUpdateFrame) and f.stream_id == 1, timeout=3)
        assert f is not None and f.window_increment > 0
        c.data(1, b"tail", end_stream=True)
        status, _, body, _ = c.response(1)
        assert status == 200 and body == b"got %d" % (window + 4)


# -- 6.10 CONTINUATION -------------------------------------------------------------------

def test_6_10_continuation_reassembles_a_header_block(conn):
    """§6.10: "Any number of CONTINUATION frames can be sent, as long as the
    preceding frame is on the same stream and is a HEADERS ... frame without
    the END_HEADERS flag set." """
    block = conn.header_block([(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                               (":path", "/"), ("x-pad", "p" * 100)])
    h = HeadersFrame(1, data=block[:10], flags=["END_STREAM"])
    conn.send_frame(h)
    conn.send_frame(ContinuationFrame(1, data=block[10:50]))
    conn.send_frame(ContinuationFrame(1, data=block[50:], flags=["END_HEADERS"]))
    assert conn.response(1)[2] == b"Hello world!"


def test_6_10_other_frame_inside_a_header_block_is_protocol_error(conn):
    """§6.10: "A receiver MUST treat the receipt of any other type of frame or a
    frame on a different stream as a connection error of type PROTOCOL_ERROR." """
    block = conn.header_block([(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                               (":path", "/")])
    conn.send_frame(HeadersFrame(1, data=block[:5], flags=["END_STREAM"]))
    conn.send_frame(PingFrame(0, opaque_data=b"x" * 8))
    connection_error(conn, PROTOCOL_ERROR)


def test_6_10_continuation_flood_is_cut(conn):
    """CONTINUATION flood guard (CVE-2024-27316 class): an endless header block
    of CONTINUATION frames ends the connection instead of growing memory."""
    conn.send_frame(HeadersFrame(1, data=conn.header_block([(":method", "GET")]),
                                 flags=["END_STREAM"]))
    for _ in range(200):
        if not conn.send_lenient(ContinuationFrame(1, data=b"\x40\x01a\x01b").serialize()):
            break
    f = conn.wait_for(lambda f: isinstance(f, GoAwayFrame), timeout=3)
    assert f is None or f.error_code in (ENHANCE_YOUR_CALM, COMPRESSION_ERROR, PROTOCOL_ERROR)
    assert conn.expect_closed(3)


# -- 6.8 GOAWAY / graceful shutdown ------------------------------------------------------------

def test_6_8_shutdown_sends_goaway_and_finishes_in_flight_streams():
    """§6.8: "GOAWAY allows an endpoint to gracefully stop accepting new streams
    while still finishing processing of previously established streams." """
    srv = LariatServer(app_path("h2.lua")).start()
    with srv, H2Raw(srv.port) as c:
        c.handshake()
        c.request(1, "/slow/400")
        time.sleep(0.1)
        srv.proc.send_signal(15)
        g = c.expect_goaway()
        assert g.error_code == NO_ERROR and g.last_stream_id == 1
        status, _, body, _ = c.response(1)
        assert status == 200 and body == b"slow done"
        assert c.expect_closed(3)
        assert srv.proc.wait(5) == 0
        assert not SANITIZER_RE.search(srv.stderr_text()), srv.stderr_text()


def test_idle_connection_gets_goaway_after_the_idle_timeout(start_server):
    srv = start_server("h2.lua", "--idle-timeout", "0.3")
    with H2Raw(srv.port) as c:
        c.handshake()
        g = c.expect_goaway(timeout=3)
        assert g.error_code == NO_ERROR
        assert c.expect_closed(3)


# -- flood guards (issue 4) ------------------------------------------------------------------

def test_rapid_reset_gets_enhance_your_calm(conn):
    """CVE-2023-44487: a client opening and resetting streams in a loop gets
    GOAWAY ENHANCE_YOUR_CALM."""
    sid = 1
    batch = b""
    for _ in range(600):
        batch += HeadersFrame(sid, data=conn.header_block(
            [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/slow/1000")]),
            flags=["END_HEADERS", "END_STREAM"]).serialize()
        batch += RstStreamFrame(sid, error_code=0x8).serialize()
        sid += 2
    conn.send_lenient(batch)
    f = conn.expect_goaway(timeout=5)
    assert f.error_code == ENHANCE_YOUR_CALM
    assert conn.expect_closed(3)


def test_ping_flood_gets_enhance_your_calm(conn):
    """PING/SETTINGS flood guard: the answers would cost more than the frames."""
    conn.send_lenient(b"".join(PingFrame(0, opaque_data=b"%08d" % i).serialize() for i in range(3000)))
    f = conn.expect_goaway(timeout=5)
    assert f.error_code == ENHANCE_YOUR_CALM


def test_empty_data_frame_flood_gets_enhance_your_calm(conn):
    conn.request(1, "/count", method="POST", end_stream=False)
    conn.send_lenient(b"".join(DataFrame(1, data=b"").serialize() for _ in range(3000)))
    f = conn.expect_goaway(timeout=5)
    assert f.error_code == ENHANCE_YOUR_CALM


def test_other_connections_are_unaffected_by_a_flood(server):
    with H2Raw(server.port) as bad, H2Raw(server.port) as good:
        bad.handshake()
        good.handshake()
        bad.send_lenient(b"".join(PingFrame(0, opaque_data=b"x" * 8).serialize() for _ in range(3000)))
        assert bad.expect_goaway(timeout=5).error_code == ENHANCE_YOUR_CALM
        good.request(1, "/")
        assert good.response(1)[2] == b"Hello world!"
