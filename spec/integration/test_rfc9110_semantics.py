"""RFC 9110 over HTTP/1.1: HEAD, Date, Server, 100-continue, 404/405,
response header names and the fields only the core may write.
"""

import email.utils
import re

import pytest
import time
from datetime import datetime, timezone

from conftest import exchange, request

IMF_FIXDATE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
    r"\d{2}:\d{2}:\d{2} GMT$")


# -- 2.5 Protocol Version ---------------------------------------------------

def test_2_5_response_to_http11_is_http11(server):
    """RFC 9110 2.5: "A server SHOULD send a response version equal to the
    highest version to which the server is conformant that has a major version
    less than or equal to the one received in the request." """
    resp = exchange(server, request("GET", "/"))
    assert resp.version == "HTTP/1.1"
    assert resp.raw_head.startswith(b"HTTP/1.1 200 ")


# -- 5.1 Field Names --------------------------------------------------------

def test_5_1_response_field_names_are_lowercase_on_the_wire(server):
    """RFC 9110 5.1: "Field names are case-insensitive"; lariat writes them
    all lowercase, also those a handler set in mixed case."""
    resp = exchange(server, request("GET", "/status"))
    assert resp.status == 418
    assert resp.body == b"teapot"
    assert b"\r\nx-custom-header: Mixed\r\n" in resp.raw_head
    for name, _ in resp.headers:
        assert name == name.lower(), name


def test_5_1_core_generated_response_field_names_are_lowercase(server):
    """RFC 9110 5.1: lowercase names for responses the core writes (404)."""
    resp = exchange(server, request("GET", "/no/such/route"))
    assert resp.status == 404
    for name, _ in resp.headers:
        assert name == name.lower(), name


# -- 6.6.1 Date -------------------------------------------------------------

def _check_date(resp):
    value = resp.header("date")
    assert value is not None, "no date header in %r" % resp
    assert IMF_FIXDATE.match(value), value
    when = email.utils.parsedate_to_datetime(value)
    now = datetime.now(timezone.utc)
    assert abs((now - when).total_seconds()) < 5, (value, now)
    assert len(resp.header_all("date")) == 1


def test_6_6_1_date_in_2xx_response(server):
    """RFC 9110 6.6.1: "An origin server with a clock (as defined in Section
    5.6.7) MUST generate a Date header field in all 2xx (Successful), 3xx
    (Redirection), and 4xx (Client Error) responses" in the preferred format,
    RFC 9110 5.6.7: "IMF-fixdate = day-name "," SP date1 SP time-of-day SP
    GMT" """
    _check_date(exchange(server, request("GET", "/")))


def test_6_6_1_date_in_core_4xx_responses(server):
    """RFC 9110 6.6.1: Date also on the 4xx answers of the core (404 and
    400)."""
    _check_date(exchange(server, request("GET", "/no/such/route")))
    _check_date(exchange(server, b"GET / HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n"))


def test_6_6_1_date_on_streamed_response(server):
    """RFC 9110 6.6.1: Date on a streamed (chunked) 2xx response too."""
    _check_date(exchange(server, request("GET", "/stream")))


def test_6_6_1_date_advances(server):
    """RFC 9110 6.6.1: "the date and time at which the message was
    originated": a cached Date string is refreshed every second."""
    first = email.utils.parsedate_to_datetime(exchange(server, request("GET", "/")).header("date"))
    time.sleep(2.1)
    second = email.utils.parsedate_to_datetime(exchange(server, request("GET", "/")).header("date"))
    assert 1 <= (second - first).total_seconds() <= 4


# -- 8.6 Content-Length -----------------------------------------------------

def test_8_6_content_length_counts_utf8_bytes(server):
    """RFC 9110 8.6: "the Content-Length field value provides the framing
    information necessary for determining where the data (and message) ends"
    -- in octets (not characters), computed by the core."""
    resp = exchange(server, request("GET", "/utf8"))
    assert resp.body == "h\u00e9llo \u2713".encode("utf-8")
    assert resp.header("content-length") == "10"


def test_8_6_no_content_length_in_204(server):
    """RFC 9110 8.6: "A server MUST NOT send a Content-Length header field in
    any response with a status code of 1xx (Informational) or 204 (No
    Content)." (a handler that returns nothing gets 204)"""
    with server.connect() as c:
        c.send(request("GET", "/empty") + request("GET", "/p/after"))
        resp = c.read_response()
        assert resp.status == 204
        assert resp.header("content-length") is None
        assert resp.header("transfer-encoding") is None
        assert c.read_response().body == b"/p/after"


def test_8_6_handler_content_length_is_replaced_by_core(server):
    """RFC 9110 8.6: the Content-Length must be the real length; a wrong value
    set by the handler never reaches the wire, and neither do the hop-by-hop
    fields transfer-encoding, keep-alive and upgrade (RFC 9110 7.6.1: such
    fields are "connection-specific" and belong to the connection)."""
    with server.connect() as c:
        c.send(request("GET", "/hop-headers") + request("GET", "/p/after"))
        resp = c.read_response()
        assert resp.status == 200
        assert resp.header_all("content-length") == ["4"]
        assert resp.body == b"body"
        assert resp.header("transfer-encoding") is None
        assert resp.header("keep-alive") is None
        assert resp.header("upgrade") is None
        assert c.read_response().body == b"/p/after"


def test_7_6_1_handler_cannot_emit_connection_options(server):
    """RFC 9110 7.6.1: "the Connection header field ... allows the sender to
    list desired control options for the current connection"; that is the
    core's business: a handler's connection: upgrade does not reach the wire
    and the connection stays usable."""
    with server.connect() as c:
        c.send(request("GET", "/conn-upgrade") + request("GET", "/p/after"))
        resp = c.read_response()
        assert resp.status == 200
        assert "upgrade" not in resp.connection_tokens()
        assert resp.body == b"body"
        assert c.read_response().body == b"/p/after"


@pytest.mark.parametrize("path", ["/inject-value", "/inject-name"])
def test_5_5_handler_cannot_inject_header_lines(server, path):
    """RFC 9110 5.5: "Field values containing CR, LF, or NUL characters are
    invalid and dangerous, due to the varying ways that implementations might
    parse and interpret those characters" -- a handler's CR LF never reaches
    the wire (response splitting, RFC 9112 11.1)."""
    with server.connect() as c:
        c.send(request("GET", path) + request("GET", "/p/after"))
        resp = c.read_response()
        assert resp.header("x-injected") is None
        assert b"x-injected" not in resp.raw_head
        after = c.read_response()
        assert after.body == b"/p/after"


@pytest.mark.parametrize("status", [204, 304])
def test_15_no_content_in_204_and_304(server, status):
    """RFC 9110 15.3.5: "A 204 response is terminated by the end of the header
    section; it cannot contain content or trailers." RFC 9110 15.4.5: "A 304
    response is terminated by the end of the header section; it cannot contain
    content or trailers." A body the handler returned anyway is dropped."""
    with server.connect() as c:
        c.send(request("GET", "/no-content/%d" % status) + request("GET", "/p/after"))
        resp = c.read_response()
        assert resp.status == status
        assert resp.header("transfer-encoding") is None
        after = c.read_response()
        assert after.status == 200 and after.body == b"/p/after", after


# -- 9.3.2 HEAD ---------------------------------------------------------------

def test_9_3_2_head_has_no_body_but_the_same_headers(server):
    """RFC 9110 9.3.2: "The HEAD method is identical to GET except that the
    server MUST NOT send content in the response." and "The server SHOULD send
    the same header fields in response to a HEAD request as it would have sent
    if the request method had been GET." """
    get = exchange(server, request("GET", "/big/100"))
    with server.connect() as c:
        c.send(request("HEAD", "/big/100") + request("GET", "/p/after"))
        head = c.read_response("HEAD")
        after = c.read_response()
    assert head.status == 200
    assert head.header("content-length") == get.header("content-length") == "100"
    assert head.header("content-type") == get.header("content-type")
    assert after.status == 200 and after.body == b"/p/after"


def test_9_3_2_head_of_streamed_response_has_no_body(server):
    """RFC 9110 9.3.2: no content for HEAD, even when the handler streams."""
    with server.connect() as c:
        c.send(request("HEAD", "/stream") + request("GET", "/p/after"))
        head = c.read_response("HEAD")
        after = c.read_response()
    assert head.status == 200
    assert after.status == 200 and after.body == b"/p/after", after


def test_9_3_2_head_http10_then_close_has_no_body(server):
    """RFC 9110 9.3.2: nothing follows the header section of a HEAD response."""
    with server.connect() as c:
        c.send(request("HEAD", "/", version="HTTP/1.0"))
        head = c.read_response("HEAD")
        assert head.status == 200
        assert head.header("content-length") == "12"
        assert c.read_to_close() == b""


# -- 10.1.1 Expect: 100-continue ---------------------------------------------

def test_10_1_1_100_continue_when_handler_reads_body(server):
    """RFC 9110 10.1.1: an origin server MUST "send an immediate 100
    (Continue) response to encourage the client to send the request content"
    unless it can answer from the headers alone. lariat sends it when the
    handler starts reading the body."""
    with server.connect() as c:
        c.send(request("POST", "/echo", headers=[
            ("content-length", "5"), ("expect", "100-continue")]))
        interim = c.read_response(skip_interim=False)
        assert interim.status == 100
        assert interim.raw_head.startswith(b"HTTP/1.1 100 Continue\r\n")
        c.send(b"hello")
        resp = c.read_response()
        assert resp.status == 200
        assert resp.body == b"hello"
        c.send(request("GET", "/p/after"))
        assert c.read_response().body == b"/p/after"


def test_10_1_1_100_continue_waits_for_the_handler_to_read(server):
    """RFC 9110 10.1.1 (Cowboy's reading of it): 100 is sent only when the
    handler asks for the body; /read-after/500 sleeps 0.5 s first."""
    with server.connect() as c:
        t0 = time.monotonic()
        c.send(request("POST", "/read-after/500", headers=[
            ("content-length", "3"), ("expect", "100-continue")]))
        interim = c.read_response(skip_interim=False)
        elapsed = time.monotonic() - t0
        assert interim.status == 100
        assert elapsed >= 0.4, elapsed
        c.send(b"abc")
        resp = c.read_response()
    assert resp.status == 200
    assert resp.body == b"read 3"


def test_10_1_1_final_status_without_100_when_handler_does_not_read(server):
    """RFC 9110 10.1.1: the server may "send an immediate response with a
    final status code"; a handler that replies without reading the body means
    no 100 is sent."""
    with server.connect() as c:
        c.send(request("POST", "/noread", headers=[
            ("content-length", "5"), ("expect", "100-continue")]))
        resp = c.read_response(skip_interim=False)
    assert resp.status == 200
    assert resp.body == b"ignored body"


def test_10_1_1_100_continue_with_chunked_body(server):
    """RFC 9110 10.1.1: "indicates a request content will follow" also holds
    for a chunked body."""
    with server.connect() as c:
        c.send(request("POST", "/echo", headers=[
            ("transfer-encoding", "chunked"), ("expect", "100-continue")]))
        assert c.read_response(skip_interim=False).status == 100
        c.send(b"5\r\nhello\r\n0\r\n\r\n")
        resp = c.read_response()
    assert resp.status == 200 and resp.body == b"hello"


def test_10_1_1_no_100_after_the_final_response(server):
    """RFC 9110 15.2: a 1xx is interim, it precedes the final response; after
    a handler answered without reading, the body the client sends anyway is
    skipped silently (or the connection is closed) -- never a late 100."""
    with server.connect() as c:
        c.send(request("POST", "/noread", headers=[
            ("content-length", "5"), ("expect", "100-continue")]))
        resp = c.read_response(skip_interim=False)
        assert resp.status == 200
        c.send_lenient(b"hello" + request("GET", "/p/after"))
        rest = c.read_response(skip_interim=False) if not c.expect_closed(0.5) else None
    if rest is not None:
        assert rest.status == 200 and rest.body == b"/p/after", rest


def test_10_1_1_no_route_gets_404_without_100(server):
    """RFC 9110 10.1.1: a final status known from the request line alone is
    sent instead of 100."""
    with server.connect() as c:
        c.send(request("POST", "/no/such/route", headers=[
            ("content-length", "5"), ("expect", "100-continue")]))
        resp = c.read_response(skip_interim=False)
    assert resp.status == 404


def test_10_1_1_expect_in_http10_is_ignored(server):
    """RFC 9110 10.1.1: "A server that receives a 100-continue expectation in
    an HTTP/1.0 request MUST ignore that expectation." """
    with server.connect() as c:
        c.send(request("POST", "/echo", version="HTTP/1.0", body=b"hello", headers=[
            ("content-length", "5"), ("expect", "100-continue")]))
        resp = c.read_response(skip_interim=False)
        rest = c.read_to_close()
    assert resp.status == 200
    assert resp.body == b"hello"
    assert b"100 Continue" not in resp.raw_head + rest


def test_10_1_1_body_sent_without_waiting_for_100(server):
    """RFC 9110 10.1.1: "a client ... MAY proceed to send the content even if
    it has not yet received a 100" -- the server then must not get confused:
    one final response, the connection goes on."""
    with server.connect() as c:
        c.send(request("POST", "/echo", body=b"hello", headers=[
            ("content-length", "5"), ("expect", "100-continue")]) + request("GET", "/p/after"))
        resp = c.read_response()
        after = c.read_response()
    assert resp.status == 200 and resp.body == b"hello"
    assert after.status == 200 and after.body == b"/p/after"


def test_10_1_1_curl_expect_100_upload(server, tmp_path):
    """RFC 9110 10.1.1 with a real client: curl sends Expect: 100-continue for
    large uploads and waits for the 100."""
    import subprocess
    data = b"q" * 200000
    src = tmp_path / "up.bin"
    src.write_bytes(data)
    out = subprocess.run(
        ["curl", "--noproxy", "*", "-sS", "-v", "--max-time", "20", "--expect100-timeout", "10",
         "-H", "expect: 100-continue", "--data-binary", "@%s" % src,
         server.url("/echo")], capture_output=True, check=True)
    assert out.stdout == data
    assert b"HTTP/1.1 100 Continue" in out.stderr


# -- 10.2.4 Server -----------------------------------------------------------

def test_10_2_4_server_header_is_lariat(server):
    """RFC 9110 10.2.4: "The "Server" header field contains information about
    the software used by the origin server to handle the request." """
    resp = exchange(server, request("GET", "/"))
    assert resp.header_all("server") == ["lariat"]


def test_10_2_4_handler_can_override_server(server):
    """RFC 9110 10.2.4: the handler's own server field replaces lariat's."""
    resp = exchange(server, request("GET", "/server-header"))
    assert resp.header_all("server") == ["custom/1.0"]


def test_10_2_4_handler_server_in_any_case_replaces_lariat(server):
    """RFC 9110 5.1: field names are case-insensitive, so a handler's "Server"
    is the same field as "server": one server line on the wire."""
    resp = exchange(server, request("GET", "/server-mixed-case"))
    assert resp.header_all("server") == ["mixed/1.0"]


# -- 15 Status codes from the router ----------------------------------------

def test_15_5_5_no_route_is_404(server):
    """RFC 9110 15.5.5: "The 404 (Not Found) status code indicates that the
    origin server did not find a current representation for the target
    resource" -- and the connection goes on."""
    with server.connect() as c:
        c.send(request("GET", "/no/such/route") + request("GET", "/p/after"))
        assert c.read_response().status == 404
        assert c.read_response().body == b"/p/after"


def test_15_5_6_wrong_method_is_405_with_allow(server):
    """RFC 9110 15.5.6: "The origin server MUST generate an Allow header field
    in a 405 response containing a list of the target resource's currently
    supported methods." """
    with server.connect() as c:
        c.send(request("POST", "/only-get", headers=[("content-length", "0")])
               + request("GET", "/p/after"))
        resp = c.read_response()
        assert resp.status == 405
        allow = [m.strip() for m in (resp.header("allow") or "").split(",")]
        assert "GET" in allow
        assert "POST" not in allow
        assert c.read_response().body == b"/p/after"


def test_15_5_6_allow_lists_every_routed_method(server):
    """RFC 9110 15.5.6: Allow lists all supported methods of /multi (GET and
    POST)."""
    resp = exchange(server, request("PUT", "/multi", headers=[("content-length", "0")]))
    assert resp.status == 405
    allow = {m.strip() for m in (resp.header("allow") or "").split(",")}
    assert {"GET", "POST"} <= allow
    assert "PUT" not in allow
