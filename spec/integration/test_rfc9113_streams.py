"""RFC 9113 (HTTP/2) streams and HTTP semantics with raw frames: malformed
requests (§8.1.1, §8.2, §8.3), padding (§6.1), RST_STREAM from the client
cancelling the handler, trailers, HEAD, header limits, and write
back-pressure on a stream whose window is closed."""

import time

import pytest
from hyperframe.frame import DataFrame, HeadersFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame

from conftest import module_server
from h2raw import CANCEL, PROTOCOL_ERROR, H2Raw, connection_error, stream_error

server = module_server("h2.lua", tls=True)

BASE = [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1"), (":path", "/")]


@pytest.fixture(params=["h2c", "h2"])
def conn(request, server):
    tls = request.param == "h2"
    with H2Raw(server.tls_port if tls else server.port, tls=tls) as c:
        c.handshake()
        yield c


def send_headers(conn, sid, fields, end_stream=True):
    f = HeadersFrame(sid, data=conn.header_block(fields))
    f.flags.add("END_HEADERS")
    if end_stream:
        f.flags.add("END_STREAM")
    conn.send_frame(f)


# -- 8.2 HTTP fields ----------------------------------------------------------------

def test_8_2_uppercase_field_name_is_malformed(conn):
    """§8.2: "A request or response containing uppercase characters in field
    names MUST be treated as malformed" and §8.1.1: "Malformed requests or
    responses that are detected MUST be treated as a stream error of type
    PROTOCOL_ERROR." """
    send_headers(conn, 1, BASE + [("X-Upper", "1")])
    stream_error(conn, 1, PROTOCOL_ERROR)


@pytest.mark.parametrize("field", [("connection", "keep-alive"), ("transfer-encoding", "chunked"),
                                   ("keep-alive", "5"), ("upgrade", "h2c"),
                                   ("proxy-connection", "x"), ("te", "gzip")])
def test_8_2_2_connection_specific_field_is_malformed(conn, field):
    """§8.2.2: "An endpoint MUST NOT generate an HTTP/2 message containing
    connection-specific header fields. ... Any message containing
    connection-specific header fields MUST be treated as malformed" (te is
    allowed with the value "trailers" only)."""
    send_headers(conn, 1, BASE + [field])
    stream_error(conn, 1, PROTOCOL_ERROR)


def test_8_2_2_te_trailers_is_allowed(conn):
    send_headers(conn, 1, BASE + [("te", "trailers")])
    assert conn.response(1)[0] == 200


def test_8_2_1_field_value_with_newline_is_malformed(conn):
    """§8.2.1: "A field value MUST NOT contain the zero value (ASCII NUL), line
    feed (ASCII LF, 0x0a), or carriage return (ASCII CR, 0x0d) at any position." """
    send_headers(conn, 1, BASE + [("x-bad", "a\nb")])
    stream_error(conn, 1, PROTOCOL_ERROR)


# -- 8.3 pseudo-header fields ----------------------------------------------------------

@pytest.mark.parametrize("fields", [
    [(":method", "GET"), (":scheme", "http"), (":authority", "x")],            # no :path
    [(":method", "GET"), (":authority", "x"), (":path", "/")],                 # no :scheme
    [(":scheme", "http"), (":authority", "x"), (":path", "/")],                # no :method
    BASE + [(":unknown", "1")],                                                # undefined pseudo
    BASE + [(":path", "/again")],                                              # repeated
    [(":method", "GET"), ("x-a", "1"), (":scheme", "http"), (":path", "/")],   # after a regular field
    BASE[:3] + [(":path", "")],                                                # empty :path
    BASE + [(":status", "200")],                                               # response pseudo
], ids=["no-path", "no-scheme", "no-method", "unknown", "repeated", "after-regular",
        "empty-path", "status-in-request"])
def test_8_3_invalid_pseudo_headers_are_malformed(conn, fields):
    """§8.3: "Pseudo-header fields ... MUST NOT appear in a trailer section ...
    All pseudo-header fields MUST appear in a field block before all regular
    field lines. ... All HTTP/2 requests MUST include exactly one valid value
    for the :method, :scheme, and :path pseudo-header fields" — otherwise the
    request is malformed (§8.1.1)."""
    send_headers(conn, 1, fields)
    stream_error(conn, 1, PROTOCOL_ERROR)


def test_8_1_1_content_length_mismatch_is_malformed(conn):
    """§8.1.1: "A request or response is also malformed if the value of a
    content-length header field does not equal the sum of the DATA frame
    payload lengths that form the content." """
    send_headers(conn, 1, [(":method", "POST")] + BASE[1:3] + [(":path", "/count"),
                                                                ("content-length", "10")],
                 end_stream=False)
    conn.data(1, b"12345", end_stream=True)
    stream_error(conn, 1, PROTOCOL_ERROR)


def test_8_3_1_host_comes_from_authority(conn):
    """§8.3.1: ":authority ... conveys the authority portion" — req.host and
    req.port come from it."""
    send_headers(conn, 1, [(":method", "GET"), (":scheme", "http"), (":authority", "example.com:8443"),
                           (":path", "/seen/none")])
    assert conn.response(1)[0] == 200


# -- 6.1 DATA padding ----------------------------------------------------------------

def test_6_1_padded_data_is_accepted(conn):
    send_headers(conn, 1, [(":method", "POST")] + BASE[1:3] + [(":path", "/count")], end_stream=False)
    f = DataFrame(1, data=b"abcdef", pad_length=10, flags=["PADDED", "END_STREAM"])
    conn.send_frame(f)
    assert conn.response(1)[2] == b"count 6"


def test_6_1_padding_longer_than_payload_is_protocol_error(conn):
    """§6.1: "If the length of the padding is the length of the frame payload or
    greater, the recipient MUST treat this as a connection error of type
    PROTOCOL_ERROR." """
    send_headers(conn, 1, [(":method", "POST")] + BASE[1:3] + [(":path", "/count")], end_stream=False)
    conn.send(b"\x00\x00\x03\x00\x09\x00\x00\x00\x01" + b"\x05ab")  # DATA, PADDED, pad 5 > 2
    connection_error(conn, PROTOCOL_ERROR)


# -- 8.1 responses -------------------------------------------------------------------------

def test_trailers_are_a_final_headers_frame(conn):
    """§8.1: a response is "optionally, one HEADERS frame ... containing the
    trailer section" after the DATA; connection fields never reach the wire."""
    send_headers(conn, 1, BASE[:3] + [(":path", "/trailers"), ("te", "trailers")])
    status, headers, body, trailers = conn.response(1)
    assert status == 200 and body == b"body"
    assert trailers == {"x-checksum": "abc"}


def test_head_response_has_no_data(conn):
    send_headers(conn, 1, [(":method", "HEAD")] + BASE[1:])
    status, headers, body, _ = conn.response(1)
    assert status == 200 and body == b"" and headers["content-length"] == "12"


def test_handler_protocol_headers_never_reach_the_wire(conn):
    """Issue 4: connection, transfer-encoding, keep-alive, upgrade and
    proxy-connection from a handler are dropped; names are lowercase."""
    send_headers(conn, 1, BASE[:3] + [(":path", "/headers")])
    status, headers, body, _ = conn.response(1)
    assert status == 200 and body == b"ok"
    for name in ("connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection"):
        assert name not in headers
    assert headers["x-mixed"] == "Case"


def test_header_list_over_the_limit_is_431(conn):
    """Issue 4: a header list above 64 KiB is answered 431, the connection lives on."""
    from hyperframe.frame import ContinuationFrame
    big = [("x-big-%d" % i, "v" * 4000) for i in range(20)]  # ~80 KiB
    block = conn.header_block(BASE + big)
    pieces = [block[i:i + 16000] for i in range(0, len(block), 16000)]
    conn.send_frame(HeadersFrame(1, data=pieces[0], flags=["END_STREAM"]))
    for i, p in enumerate(pieces[1:], 1):
        conn.send_frame(ContinuationFrame(1, data=p, flags=["END_HEADERS"] if i == len(pieces) - 1 else []))
    assert conn.response(1)[0] == 431
    assert conn.ping_ok()


def test_content_length_over_max_body_is_413(start_server):
    srv = start_server("h2.lua", "--max-body", "1000")
    with H2Raw(srv.port) as c:
        c.handshake()
        send_headers(c, 1, [(":method", "POST")] + BASE[1:3] + [(":path", "/count"),
                                                                 ("content-length", "5000")],
                     end_stream=False)
        assert c.response(1)[0] == 413


def test_streamed_body_over_max_body_stops_the_handler(start_server):
    srv = start_server("h2.lua", "--max-body", "1000")
    with H2Raw(srv.port) as c:
        c.handshake()
        send_headers(c, 1, [(":method", "POST")] + BASE[1:3] + [(":path", "/count")], end_stream=False)
        c.data(1, b"x" * 800)
        c.data(1, b"x" * 800)
        status, _, body, _ = c.response(1)
        assert status == 413


# -- RST_STREAM from the client cancels the handler ------------------------------------------

def _seen(conn, sid, name):
    send_headers(conn, sid, BASE[:3] + [(":path", "/seen/" + name)])
    return conn.response(sid)[2].decode()


def test_client_reset_cancels_a_streaming_handler(server):
    """Issue 9: "A handler whose stream ends while it waits (client hang-up,
    RST_STREAM from either side, ...) is cancelled at that wait, at once: ...
    its to-be-closed variables run"."""
    with H2Raw(server.port) as c:
        c.handshake()
        send_headers(c, 1, BASE[:3] + [(":path", "/probe/write/w1")])
        c.wait_for(lambda f: isinstance(f, DataFrame) and f.stream_id == 1)
        c.send_frame(RstStreamFrame(1, error_code=CANCEL))
        deadline = time.monotonic() + 3
        sid = 3
        while time.monotonic() < deadline:
            seen = _seen(c, sid, "w1")
            sid += 2
            if seen != "nothing yet":
                break
            time.sleep(0.05)
        assert seen == "cancelled"


def test_client_reset_cancels_a_body_wait(server):
    with H2Raw(server.port) as c:
        c.handshake()
        send_headers(c, 1, [(":method", "POST")] + BASE[1:3] + [(":path", "/probe/read/r1")],
                     end_stream=False)
        time.sleep(0.2)
        t0 = time.monotonic()
        c.send_frame(RstStreamFrame(1, error_code=CANCEL))
        sid = 3
        while True:
            seen = _seen(c, sid, "r1")
            sid += 2
            if seen != "nothing yet" or time.monotonic() - t0 > 3:
                break
            time.sleep(0.05)
        assert seen == "cancelled"
        assert time.monotonic() - t0 < 2  # not the 5 s timeout


# -- back-pressure ------------------------------------------------------------------------------

def test_writer_waits_for_the_stream_window_then_finishes(server):
    """Issue 4: "req:write() yields when the stream's window ... is full": with
    a 1 KiB window the handler is suspended; as the client opens the window
    everything arrives, in order."""
    with H2Raw(server.port) as c:
        s = c.handshake(settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1024})
        send_headers(c, 1, BASE[:3] + [(":path", "/blocks/64")])  # 1 MiB
        got = c.quiet(0.3)
        assert sum(len(f.data) for f in got if isinstance(f, DataFrame)) == 1024  # the window, no more
        c.send_frame(WindowUpdateFrame(1, window_increment=(1 << 20)))
        c.send_frame(WindowUpdateFrame(0, window_increment=(1 << 20)))
        early = [f for f in got if f.stream_id == 1]
        status, _, body, _ = c.response(1, timeout=10, pre=early)
        assert len(body) == 64 * 16384 and set(body) == {ord("b")}
