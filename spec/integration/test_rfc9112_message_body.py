"""RFC 9112 sections 6 and 7: message body length, Transfer-Encoding, chunked.

Request bodies with Content-Length and chunked, the framing errors that must
be rejected (request smuggling, RFC 9112 11.2), the body size limit (413),
and how lariat frames its own responses (Content-Length, chunked, trailers,
close-delimited for HTTP/1.0).
"""

import os
import subprocess
import time

import pytest

from conftest import (assert_rejected, chunked, exchange, module_server,
                      request)

small = module_server("basic.lua", "--max-body", "1000")


def post(path, body, headers=None, version="HTTP/1.1"):
    headers = list(headers or [])
    return request("POST", path, headers=headers, body=body, version=version)


# -- 6.2 Content-Length -----------------------------------------------------

def test_6_2_content_length_body_is_read(server):
    """RFC 9112 6.2: "When a message does not have a Transfer-Encoding header
    field, a Content-Length header field can provide the anticipated size, as
    a decimal number of octets, for potential content." """
    resp = exchange(server, post("/echo", b"hello world", [
        ("content-type", "text/x-test"), ("content-length", "11")]))
    assert resp.status == 200
    assert resp.body == b"hello world"
    assert resp.header("content-type") == "text/x-test"


def test_6_2_zero_content_length_is_empty_body(server):
    """RFC 9112 6.2: Content-Length 0 means no content."""
    resp = exchange(server, post("/echo", b"", [("content-length", "0")]))
    assert resp.status == 200
    assert resp.body == b""


def test_6_3_request_without_length_has_no_body(server):
    """RFC 9112 6.3: "If this is a request message and none of the above are
    true, then the message body length is zero (no message body is
    present)." """
    with server.connect() as c:
        c.send(post("/echo", b"") + request("GET", "/p/next"))
        assert c.read_response().body == b""
        assert c.read_response().body == b"/p/next"


def test_6_2_body_split_across_many_writes_is_read(server):
    """RFC 9112 6.2: the body is exactly Content-Length octets, however the
    bytes arrive."""
    body = bytes(range(256)) * 4
    with server.connect() as c:
        c.send(request("POST", "/echo", headers=[("content-length", str(len(body)))]))
        for i in range(0, len(body), 100):
            c.send(body[i:i + 100])
            time.sleep(0.01)
        resp = c.read_response()
    assert resp.status == 200
    assert resp.body == body


def test_6_2_one_mebibyte_body_is_read(server):
    """RFC 9112 6.2: large bodies under the limit (8 MiB default) are read."""
    body = os.urandom(1 << 20)
    with server.connect(timeout=20) as c:
        c.send(post("/echo", body, [("content-length", str(len(body)))]))
        resp = c.read_response()
    assert resp.status == 200
    assert resp.header("content-length") == str(len(body))
    assert resp.body == body


@pytest.mark.parametrize("value", ["-1", "abc", "1a", "+5", "5 5",
                                   "18446744073709551616",
                                   "99999999999999999999999999"],
                         ids=["negative", "alpha", "trailing-alpha", "plus",
                              "inner-space", "uint64-overflow", "huge"])
def test_6_3_invalid_content_length_is_400_and_close(server, value):
    """RFC 9112 6.3: "If a message is received without Transfer-Encoding and
    with an invalid Content-Length header field, then the message framing is
    invalid and the recipient MUST treat it as an unrecoverable error ... If
    the unrecoverable error is in a request message, the server MUST respond
    with a 400 (Bad Request) status code and then close the connection." """
    assert_rejected(server, post("/echo", b"hello", [("content-length", value)]), 400)


def test_6_3_differing_duplicate_content_length_is_400_and_close(server):
    """RFC 9112 6.3: an invalid Content-Length (differing values) is an
    unrecoverable error: "the server MUST respond with a 400 (Bad Request)
    status code and then close the connection." """
    data = post("/echo", b"hello", [("content-length", "5"), ("content-length", "6")])
    assert_rejected(server, data, 400)


def test_6_3_differing_content_length_list_is_400_and_close(server):
    """RFC 9112 6.3: valid only if "all values in the list are the same";
    "5, 6" is not."""
    assert_rejected(server, post("/echo", b"hello", [("content-length", "5, 6")]), 400)


def test_6_3_both_content_length_and_transfer_encoding_is_400(server):
    """RFC 9112 6.3: "If a message is received with both a Transfer-Encoding
    and a Content-Length header field, the Transfer-Encoding overrides the
    Content-Length. Such a message might indicate an attempt to perform
    request smuggling (Section 11.2) or response splitting (Section 11.1) and
    ought to be handled as an error." lariat answers 400 and (RFC 9112 6.1)
    "the server MUST close the connection after responding to such a
    request". """
    data = post("/echo", chunked("hello"), [
        ("content-length", "5"), ("transfer-encoding", "chunked")])
    assert_rejected(server, data, 400)


def test_6_3_transfer_encoding_before_content_length_is_400(server):
    """RFC 9112 6.3: both fields in either order are an error."""
    data = post("/echo", chunked("hello"), [
        ("transfer-encoding", "chunked"), ("content-length", "5")])
    assert_rejected(server, data, 400)


def test_6_3_chunked_not_final_coding_is_400_and_close(server):
    """RFC 9112 6.3: "If a Transfer-Encoding header field is present in a
    request and the chunked transfer coding is not the final encoding, the
    message body length cannot be determined reliably; the server MUST respond
    with the 400 (Bad Request) status code and then close the connection." """
    assert_rejected(server, post("/echo", b"hello", [("transfer-encoding", "gzip")]), 400)


def test_6_3_chunked_then_other_coding_is_400_and_close(server):
    """RFC 9112 6.3: chunked must be the final coding ("chunked, gzip" is not)."""
    data = post("/echo", chunked("hello"), [("transfer-encoding", "chunked, gzip")])
    assert_rejected(server, data, 400)


def test_6_1_unknown_transfer_coding_is_501(server):
    """RFC 9112 6.1: "A server that receives a request message with a transfer
    coding it does not understand SHOULD respond with 501 (Not
    Implemented)." """
    data = post("/echo", chunked("hello"), [("transfer-encoding", "x-unknown, chunked")])
    assert_rejected(server, data, 501)


def test_6_1_transfer_encoding_in_http10_closes_connection(server):
    """RFC 9112 6.1: "A server or client that receives an HTTP/1.0 message
    containing a Transfer-Encoding header field MUST treat the message as if
    the framing is faulty, even if a Content-Length is present, and close the
    connection after processing the message." Faulty framing is a bad
    request: 400, then close; the request behind it is never answered, and
    the same holds with a Content-Length beside it, the second time too. """
    for extra in ([], [("content-length", "10")], []):
        with server.connect() as c:
            c.send(post("/echo", chunked("hello"), [
                ("transfer-encoding", "chunked"), ("connection", "keep-alive")] + extra,
                version="HTTP/1.0") + request("GET", "/p/smuggled"))
            resp = c.read_response()
            assert resp.status == 400, resp
            assert c.expect_closed(3), bytes(c.buf[:300])
    assert exchange(server, request("GET", "/p/after")).body == b"/p/after"


def test_6_1_transfer_encoding_is_case_insensitive(server):
    """RFC 9112 7: "All transfer-coding names are case-insensitive" """
    resp = exchange(server, post("/echo", chunked("hello"), [("Transfer-Encoding", "Chunked")]))
    assert resp.status == 200
    assert resp.body == b"hello"


# -- 7.1 Chunked Transfer Coding ------------------------------------------

def test_7_1_chunked_body_is_decoded(server):
    """RFC 9112 7.1: "The chunked transfer coding wraps content in order to
    transfer it as a series of chunks, each with its own size indicator,
    followed by an OPTIONAL trailer section containing trailer fields." """
    data = post("/echo", chunked("hello ", "chunked ", "world"), [("transfer-encoding", "chunked")])
    resp = exchange(server, data)
    assert resp.status == 200
    assert resp.body == b"hello chunked world"


def test_7_1_chunk_size_is_hex_any_case(server):
    """RFC 9112 7.1: "chunk-size = 1*HEXDIG"; HEXDIG is case-insensitive."""
    body = b"A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n"
    resp = exchange(server, post("/echo", body, [("transfer-encoding", "chunked")]))
    assert resp.status == 200
    assert resp.body == b"0123456789abcdefghij"


def test_7_1_chunks_arriving_slowly_are_streamed_to_read_body(server):
    """RFC 9112 7.1: each chunk is delivered as it arrives; read_body
    returns them and "fin" after the last chunk."""
    with server.connect() as c:
        c.send(request("POST", "/read-stream", headers=[("transfer-encoding", "chunked")]))
        for part in (b"first-", b"second-", b"third"):
            c.send(b"%x\r\n%s\r\n" % (len(part), part))
            time.sleep(0.1)
        c.send(b"0\r\n\r\n")
        resp = c.read_response()
    assert resp.status == 200
    assert resp.body == b"first-second-third"


def test_7_1_1_chunk_extensions_are_ignored(server):
    """RFC 9112 7.1.1: "A recipient MUST ignore unrecognized chunk
    extensions." """
    body = b"5;name=value\r\nhello\r\n6;x;y=\"q\"\r\n world\r\n0;last\r\n\r\n"
    resp = exchange(server, post("/echo", body, [("transfer-encoding", "chunked")]))
    assert resp.status == 200
    assert resp.body == b"hello world"


def test_7_1_2_request_trailer_section_is_consumed(server):
    """RFC 9112 7.1.2: "A trailer section is a sequence of trailer fields
    ... following the last chunk"; the connection goes on with the next
    request after it."""
    body = chunked("hello", trailers=b"x-checksum: 1234\r\nx-other: y\r\n")
    with server.connect() as c:
        c.send(post("/echo", body, [("transfer-encoding", "chunked")]) + request("GET", "/p/next"))
        first = c.read_response()
        second = c.read_response()
    assert first.status == 200 and first.body == b"hello"
    assert second.status == 200 and second.body == b"/p/next"


@pytest.mark.parametrize("body", [
    b"zz\r\nhello\r\n0\r\n\r\n",
    b"\r\nhello\r\n0\r\n\r\n",
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"5 x\r\nhello\r\n0\r\n\r\n",
    b"ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
], ids=["non-hex", "empty", "negative", "garbage-after-size", "overflow"])
def test_7_1_bad_chunk_size_is_400_and_close(server, body):
    """RFC 9112 7.1: "chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF";
    "chunk-size = 1*HEXDIG". A chunk size that doesn't parse is a framing
    error: 400 and close (RFC 9112 6.3, the length cannot be determined)."""
    assert_rejected(server, post("/echo", body, [("transfer-encoding", "chunked")]), 400)


def test_7_1_chunk_data_longer_than_size_is_400_and_close(server):
    """RFC 9112 7.1: chunk-data is exactly chunk-size octets followed by CRLF;
    anything else there is a framing error."""
    body = b"3\r\nhello\r\n0\r\n\r\n"
    assert_rejected(server, post("/echo", body, [("transfer-encoding", "chunked")]), 400)


# -- 413: body limit (RFC 9110 15.5.14) -------------------------------------

def test_413_content_length_over_limit_is_rejected_before_reading(small):
    """RFC 9110 15.5.14: "The 413 (Content Too Large) status code indicates
    that the server is refusing to process a request because the request
    content is larger than the server is willing or able to process. The
    server MAY terminate the request, if the protocol version in use allows it;
    otherwise, the server MUST close the connection." With --max-body 1000, a
    declared length of 5000 is answered before any body byte is sent."""
    with small.connect(timeout=3) as c:
        t0 = time.monotonic()
        c.send(post("/echo", b"", [("content-length", "5000")]))
        resp = c.read_response()
        assert resp.status == 413
        assert time.monotonic() - t0 < 2.5
        assert c.expect_closed(3)


def test_413_default_limit_is_8_mib(server):
    """The default --max-body is 8 MiB: a declared 8 MiB + 1 is refused at
    once, exactly 8 MiB is accepted (the handler asks for it: 100 Continue)."""
    with server.connect(timeout=3) as c:
        c.send(post("/echo", b"", [("content-length", str(8 * 1024 * 1024 + 1))]))
        assert c.read_response().status == 413
    with server.connect(timeout=3) as c:
        c.send(post("/echo", b"", [("content-length", str(8 * 1024 * 1024)),
                                   ("expect", "100-continue")]))
        assert c.read_response(skip_interim=False).status == 100


def test_413_other_connections_are_not_disturbed(small):
    """RFC 9110 15.5.14: the 413 answer concerns that request only."""
    assert_rejected(small, post("/echo", b"x" * 5000, [("content-length", "5000")]), 413)


def test_413_expect_100_continue_over_limit_gets_413_without_100(small):
    """RFC 9110 10.1.1: an origin server MUST "either send an immediate
    response with a final status code, if that status can be determined by
    examining just the request-line and header fields, or send an immediate
    100 (Continue) response". The limit is known from the headers: 413, no
    100."""
    with small.connect(timeout=3) as c:
        c.send(post("/echo", b"", [("content-length", "5000"), ("expect", "100-continue")]))
        resp = c.read_response()
    assert resp.status == 413
    assert resp.interim == []


def test_413_chunked_body_over_limit_is_413(small):
    """RFC 9110 15.5.14: a chunked body that grows past --max-body 1000 is
    refused with 413 and the connection is closed."""
    body = chunked(*(["x" * 100] * 20))
    with small.connect() as c:
        c.send_lenient(post("/echo", body, [("transfer-encoding", "chunked")]))
        resp = c.read_response()
        assert resp.status == 413
        assert c.expect_closed(3)


def test_413_body_exactly_at_limit_is_accepted(small):
    """--max-body 1000 allows a body of exactly 1000 bytes."""
    body = b"y" * 1000
    resp = exchange(small, post("/echo", body, [("content-length", "1000")]))
    assert resp.status == 200
    assert resp.body == body


def test_413_chunked_body_exactly_at_limit_is_accepted(small):
    """--max-body 1000 allows a chunked body of exactly 1000 bytes."""
    body = chunked(*(["z" * 100] * 10))
    resp = exchange(small, post("/echo", body, [("transfer-encoding", "chunked")]))
    assert resp.status == 200
    assert resp.body == b"z" * 1000


# -- 11.2 Request smuggling: unread bodies ----------------------------------

def test_11_2_unread_body_is_never_parsed_as_a_request(server):
    """RFC 9112 6.3: "A server MUST read the entire request message body or
    close the connection after sending its response; otherwise, the remaining
    data on a persistent connection would be misinterpreted as the next
    request." The handler of /noread never reads its body, which looks like a
    request."""
    smuggled = b"GET /p/smuggled HTTP/1.1\r\nhost: x\r\n\r\n"
    with server.connect() as c:
        c.send(post("/noread", smuggled, [("content-length", str(len(smuggled)))])
               + request("GET", "/p/next"))
        first = c.read_response()
        assert first.status == 200 and first.body == b"ignored body"
        rest = []
        try:
            rest.append(c.read_response())
        except Exception:
            pass  # closing after the response is allowed
        rest_bytes = b"".join(r.body for r in rest) + bytes(c.buf)
    assert b"smuggled" not in rest_bytes
    for r in rest:
        assert r.body == b"/p/next"


def test_6_3_pipelined_requests_with_bodies(server):
    """RFC 9112 6.3: each body ends where its framing says; the next request
    starts right after it."""
    data = (post("/echo", b"one", [("content-length", "3")])
            + post("/echo", chunked("two", "-2"), [("transfer-encoding", "chunked")])
            + post("/echo", b"three", [("content-length", "5")]))
    with server.connect() as c:
        c.send(data)
        bodies = [c.read_response().body for _ in range(3)]
    assert bodies == [b"one", b"two-2", b"three"]


# -- Response framing ---------------------------------------------------------

def test_6_2_known_body_is_sent_with_content_length(server):
    """RFC 9110 8.6: "a server MAY send a Content-Length header field in a
    response"; lariat always does when the body is known, and never also
    Transfer-Encoding (RFC 9112 6.2: "A sender MUST NOT send a Content-Length
    header field in any message that contains a Transfer-Encoding header
    field.")"""
    resp = exchange(server, request("GET", "/"))
    assert resp.header("content-length") == "12"
    assert resp.header("transfer-encoding") is None
    assert resp.body == b"Hello world!"


def test_7_1_streamed_response_is_chunked(server):
    """RFC 9112 7.1: "The chunked coding allows each chunk to be sent ... the
    sender [need not know] the size of the content"; a stream_reply to an
    HTTP/1.1 client is chunked and has no Content-Length."""
    with server.connect() as c:
        c.send(request("GET", "/stream"))
        resp = c.read_response()
        assert resp.status == 200
        assert resp.chunked
        assert resp.header("content-length") is None
        assert resp.body == b"chunk1\nchunk2\nchunk3\n"
        # the connection stays usable after the terminating chunk
        c.send(request("GET", "/p/after"))
        assert c.read_response().body == b"/p/after"


def test_7_1_stream_without_writes_is_an_empty_chunked_body(server):
    """RFC 9112 7.1: a chunked body may consist of the last-chunk alone."""
    with server.connect() as c:
        c.send(request("GET", "/stream-empty") + request("GET", "/p/after"))
        resp = c.read_response()
        assert resp.status == 200
        assert resp.body == b""
        assert c.read_response().body == b"/p/after"


def test_6_1_streamed_response_to_http10_is_close_delimited(server):
    """RFC 9112 6.1: "A server MUST NOT send a response containing
    Transfer-Encoding unless the corresponding request indicates HTTP/1.1 (or
    later minor revisions)." The body ends when the connection closes, even
    though the client asked for keep-alive."""
    with server.connect() as c:
        c.send(request("GET", "/stream", version="HTTP/1.0",
                       headers=[("connection", "keep-alive")]))
        resp = c.read_response()
        assert resp.status == 200
        assert resp.header("transfer-encoding") is None
        assert resp.header("content-length") is None
        assert resp.body == b"chunk1\nchunk2\nchunk3\n"
        assert c.eof


def test_7_1_2_trailers_sent_when_client_accepts_them(server):
    """RFC 9110 10.1.4: "The "trailers" keyword indicates that the sender will
    not discard trailer fields"; with te: trailers, req:trailers{} puts its
    fields in the chunked trailer section (RFC 9112 7.1.2)."""
    with server.connect() as c:
        c.send(request("GET", "/trailers", headers=[("te", "trailers")]))
        resp = c.read_response()
        assert resp.chunked
        assert resp.body == b"hello trailers"
        assert resp.trailer("x-checksum") == "abc123"
        c.send(request("GET", "/p/after"))
        assert c.read_response().body == b"/p/after"


def test_7_1_2_no_trailers_without_te_trailers(server):
    """RFC 9110 10.1.4: without "te: trailers" the client may discard trailer
    fields; lariat (like Cowboy) does not send them, the body is complete."""
    with server.connect() as c:
        c.send(request("GET", "/trailers"))
        resp = c.read_response()
        assert resp.chunked
        assert resp.body == b"hello trailers"
        assert resp.trailers == []
        c.send(request("GET", "/p/after"))
        assert c.read_response().body == b"/p/after"


def test_7_1_2_no_trailers_in_close_delimited_http10_body(server):
    """RFC 9112 6.1: no chunked coding (hence no trailer section) for HTTP/1.0;
    req:trailers{} must not leak into the close-delimited body."""
    with server.connect() as c:
        c.send(request("GET", "/trailers", version="HTTP/1.0", headers=[("te", "trailers")]))
        resp = c.read_response()
    assert resp.status == 200
    assert resp.body == b"hello trailers"


def test_7_1_curl_chunked_upload_round_trips(server, tmp_path):
    """RFC 9112 7.1 with a real client: curl uploads a file chunked."""
    data = os.urandom(300000)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    out = subprocess.run(
        ["curl", "--noproxy", "*", "-sS", "-v", "--max-time", "20",
         "-H", "transfer-encoding: chunked",
         "-H", "content-type: application/x-test", "--data-binary", "@%s" % src,
         server.url("/echo")],
        capture_output=True, check=True)
    assert out.stdout == data, out.stderr.decode()[-3000:]


def test_7_1_curl_reads_streamed_response(server):
    """RFC 9112 7.1 with a real client: curl decodes the chunked stream."""
    out = subprocess.run(["curl", "--noproxy", "*", "-sS", "--max-time", "10", server.url("/stream")],
                         capture_output=True, check=True)
    assert out.stdout == b"chunk1\nchunk2\nchunk3\n"
