"""RFC 9113 stream states after the server already answered: the races
h2spec strict hit now and then (issue 9), made deterministic. The app answers
GET / at once, before the request ends; each test waits for that complete
response, then sends what h2spec sends, and expects what §5.1 asks for."""

import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, RstStreamFrame, WindowUpdateFrame

from conftest import module_server
from h2raw import FLOW_CONTROL_ERROR, PROTOCOL_ERROR, STREAM_CLOSED, H2Raw

server = module_server("conformance.lua", tls=True)

GET = [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1"), (":path", "/")]


@pytest.fixture(params=["h2c", "h2"])
def port(request, server):
    return (server.tls_port, True) if request.param == "h2" else (server.port, False)


def answered_early(port, sid=1):
    """a connection whose stream sid got its whole response while the
    request is still open (HEADERS without END_STREAM)"""
    conn = H2Raw(port[0], tls=port[1])
    conn.handshake()
    conn.send_frame(HeadersFrame(sid, data=conn.header_block(GET), flags=["END_HEADERS"]))
    status, _, body, _ = conn.response(sid)
    assert status == 200 and body == b"Hello world!"
    return conn


def error_seen(conn, sid, code):
    """§5.4: a stream error (RST_STREAM) or a connection error (GOAWAY) with code"""
    f = conn.wait_for(lambda f: isinstance(f, GoAwayFrame) or
                      (isinstance(f, RstStreamFrame) and f.stream_id == sid))
    assert f is not None, "closed without an error"
    assert f.error_code == code, f
    return f


def test_5_1_headers_after_the_clients_own_rst_stream_is_stream_closed(port):
    """§5.1 closed: "An endpoint that receives any frame other than PRIORITY
    after receiving a RST_STREAM MUST treat that as a stream error of type
    STREAM_CLOSED" -- also when the server had already answered (h2spec 5.1/9)."""
    for _ in range(3):
        with answered_early(port) as conn:
            conn.send_frame(RstStreamFrame(1, error_code=0x8))
            conn.send_frame(HeadersFrame(1, data=conn.header_block(GET), flags=["END_HEADERS", "END_STREAM"]))
            error_seen(conn, 1, STREAM_CLOSED)


def test_5_1_data_after_the_clients_own_rst_stream_is_stream_closed(port):
    for _ in range(3):
        with answered_early(port) as conn:
            conn.send_frame(RstStreamFrame(1, error_code=0x8))
            conn.send_frame(DataFrame(1, data=b"x" * 7, flags=["END_STREAM"]))
            error_seen(conn, 1, STREAM_CLOSED)


def test_6_9_1_window_overflow_after_the_response_is_flow_control_error(port):
    """§6.9.1: "If a sender receives a WINDOW_UPDATE that causes a
    flow-control window to exceed this maximum, it MUST terminate either the
    stream or the connection" -- the stream is half-closed (local), not gone
    (h2spec 6.9.1/3)."""
    with answered_early(port) as conn:
        for sid in (1, 3, 5):
            if sid > 1:
                conn.send_frame(HeadersFrame(sid, data=conn.header_block(GET), flags=["END_HEADERS"]))
                assert conn.response(sid)[0] == 200
            conn.send_frame(WindowUpdateFrame(sid, window_increment=2 ** 31 - 1))
            conn.send_frame(WindowUpdateFrame(sid, window_increment=2 ** 31 - 1))
            assert conn.expect_rst(sid).error_code == FLOW_CONTROL_ERROR
        assert conn.ping_ok()


def test_6_9_zero_increment_after_the_response_is_protocol_error(port):
    """§6.9: "A receiver MUST treat the receipt of a WINDOW_UPDATE frame with a
    flow-control window increment of 0 as a stream error of type
    PROTOCOL_ERROR" (h2spec 6.9/2)."""
    for _ in range(3):
        with answered_early(port) as conn:
            conn.send_frame(WindowUpdateFrame(1, window_increment=0))
            error_seen(conn, 1, PROTOCOL_ERROR)


def test_8_1_second_headers_without_end_stream_is_protocol_error(port):
    """§8.1: a HEADERS frame after the header section that does not carry
    END_STREAM makes the request malformed (h2spec 8.1/1)."""
    for _ in range(3):
        with answered_early(port) as conn:
            conn.send_frame(HeadersFrame(1, data=conn.header_block([("x-more", "1")]), flags=["END_HEADERS"]))
            error_seen(conn, 1, PROTOCOL_ERROR)


def test_8_3_pseudo_header_in_trailers_is_protocol_error(port):
    """§8.3: "Pseudo-header fields MUST NOT appear in a trailer section"
    (h2spec 8.1.2.1/3)."""
    for _ in range(3):
        with answered_early(port) as conn:
            conn.send_frame(HeadersFrame(1, data=conn.header_block([(":method", "GET")]),
                                         flags=["END_HEADERS", "END_STREAM"]))
            error_seen(conn, 1, PROTOCOL_ERROR)


def test_a_body_after_the_response_is_stopped_with_no_error(port):
    """§8.1: the server "MAY request that the client abort transmission of a
    request without error by sending a RST_STREAM with an error code of
    NO_ERROR after sending a complete response" -- once a body comes."""
    with answered_early(port) as conn:
        conn.send_frame(DataFrame(1, data=b"x" * 100))
        assert conn.expect_rst(1).error_code == 0
        conn.send_frame(DataFrame(1, data=b"x" * 100))  # in flight: ignored
        assert conn.ping_ok()



def test_6_8_goaway_then_close_reads_as_a_clean_close(server):
    """After a GOAWAY the server ends the connection; the client, still
    sending (h2spec generic/3.8: a PING right after its own GOAWAY), must see
    the GOAWAY and a clean end (FIN), not a reset: closing with unread input
    sends RST, so the server shuts its write side and drops input for a while
    (a lingering close)."""
    import threading
    import time
    from hyperframe.frame import PingFrame
    for _ in range(3):
        conn = H2Raw(server.port)
        try:
            conn.handshake()
            conn.send_frame(GoAwayFrame(0, last_stream_id=0, error_code=0))
            stop = threading.Event()
            ping = PingFrame(0, opaque_data=b"h2spec\0\0").serialize() * 64

            def flood():
                deadline = time.monotonic() + 1.0
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        conn.sock.sendall(ping)
                    except OSError:
                        return

            t = threading.Thread(target=flood)
            t.start()
            try:
                conn.sock.settimeout(5)
                while True:
                    d = conn.sock.recv(1 << 16)  # ConnectionResetError: the close was a reset
                    if not d:
                        break
            finally:
                stop.set()
                t.join()
        finally:
            conn.close()
