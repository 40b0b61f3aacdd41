"""RFC 9112 sections 2, 3 and 5: message parsing, request line, field syntax.

Raw bytes on a socket; every rejection is checked to close the offending
connection while a connection opened earlier keeps working (assert_rejected).
"""

import pytest

from conftest import assert_rejected, request, exchange


# -- 2.2 Message Parsing ----------------------------------------------------

def test_2_2_empty_line_before_request_line_is_ignored(server):
    """RFC 9112 2.2: "In the interest of robustness, a server that is expecting
    to receive and parse a request-line SHOULD ignore at least one empty line
    (CRLF) received prior to the request-line." """
    resp = exchange(server, b"\r\n" + request("GET", "/"))
    assert resp.status == 200
    assert resp.body == b"Hello world!"


def test_2_2_bare_cr_in_field_value_is_400(server):
    """RFC 9112 2.2: "A recipient of such a bare CR MUST consider that element
    to be invalid or replace each bare CR with SP before processing the element
    or forwarding the message." lariat rejects it."""
    assert_rejected(server, b"GET / HTTP/1.1\r\nhost: x\r\nx-a: a\rb\r\n\r\n", 400)


def test_2_2_bare_cr_in_request_line_is_400(server):
    """RFC 9112 2.2: "A sender MUST NOT generate a bare CR (a CR character not
    immediately followed by LF) within any protocol elements other than the
    content." """
    assert_rejected(server, b"GET /\r HTTP/1.1\r\nhost: x\r\n\r\n", 400)


def test_2_2_bare_cr_as_line_terminator_is_400(server):
    """RFC 9112 2.2: a bare CR is not a line terminator; the element is invalid."""
    assert_rejected(server, b"GET / HTTP/1.1\rhost: x\r\n\r\n", 400)


# -- 3 Request Line ---------------------------------------------------------

@pytest.mark.parametrize("line", [
    b"GET / HTTP/1.1 extra",
    b"GET",
    b"/ HTTP/1.1",
    b"GET / HTTP/1.x",
    b"GET / FOO/1.1",
    b"GET / http/1.1",
], ids=["trailing-token", "method-only", "no-method",
        "bad-version-digit", "bad-protocol-name", "lowercase-http"])
def test_3_malformed_request_line_is_400(server, line):
    """RFC 9112 3: "Recipients of an invalid request-line SHOULD respond with
    either a 400 (Bad Request) error or a 301 (Moved Permanently) redirect with
    the request-target properly encoded." """
    assert_rejected(server, line + b"\r\nhost: x\r\n\r\n", 400)


def test_2_3_request_line_without_version_is_rejected(server):
    """RFC 9112 2.3: "HTTP-version = HTTP-name "/" DIGIT "." DIGIT"; a request
    line without it is either malformed (400) or an HTTP/0.9 request, which
    lariat does not support (RFC 9110 15.6.6: "The 505 (HTTP Version Not
    Supported) status code indicates that the server does not support, or
    refuses to support, the major version of HTTP that was used in the request
    message.")"""
    assert_rejected(server, b"GET /\r\nhost: x\r\n\r\n", (400, 505))


def test_3_1_method_is_case_sensitive(server):
    """RFC 9110 9.1: "The method token is case-sensitive"; "get" is not GET and
    must not reach the GET handler."""
    resp = exchange(server, b"get /p/x HTTP/1.1\r\nhost: x\r\n\r\n")
    assert resp.status in (400, 405, 501), resp


def test_3_1_invalid_character_in_method_is_400(server):
    """RFC 9112 3.1: "method = token"; "(" is not a tchar."""
    assert_rejected(server, b"G(ET / HTTP/1.1\r\nhost: x\r\n\r\n", 400)


def test_3_2_whitespace_in_request_target_is_400(server):
    """RFC 9112 3.2: "A recipient SHOULD NOT attempt to autocorrect and then
    process the request without a redirect, since the invalid request-line
    might be deliberately crafted to bypass security filters along the request
    chain." (whitespace is not allowed in the request-target)"""
    assert_rejected(server, b"GET /a b HTTP/1.1\r\nhost: x\r\n\r\n", 400)


@pytest.mark.parametrize("target", [b"/a\x00b", b"/a\x01b", b"/a\x7fb"],
                         ids=["nul", "soh", "del"])
def test_3_2_control_byte_in_request_target_is_400(server, target):
    """RFC 9112 3.2: the request-target is a URI reference; control
    characters are not allowed in it, so the request-line is invalid."""
    assert_rejected(server, b"GET " + target + b" HTTP/1.1\r\nhost: x\r\n\r\n", 400)


def test_3_request_line_over_8k_is_414(server):
    """RFC 9112 3: "A server that receives a request-target longer than any URI
    it wishes to parse MUST respond with a 414 (URI Too Long) status code."
    lariat's limit for the request line is 8 KiB."""
    target = b"/files/" + b"a" * 9000
    assert_rejected(server, b"GET " + target + b" HTTP/1.1\r\nhost: x\r\n\r\n", 414)


def test_3_request_line_under_8k_is_accepted(server):
    """RFC 9112 3: "It is RECOMMENDED that all HTTP senders and recipients
    support, at a minimum, request-line lengths of 8000 octets." """
    target = "/files/" + "a" * 7900
    resp = exchange(server, request("GET", target))
    assert resp.status == 200
    assert resp.body == b"file " + target.encode()


def test_3_2_2_absolute_form_is_accepted(server):
    """RFC 9112 3.2.2: "A server MUST accept the absolute-form in requests even
    though most HTTP/1.1 clients will only send the absolute-form to a
    proxy." """
    resp = exchange(server, request("GET", "http://127.0.0.1/p/absolute"))
    assert resp.status == 200
    assert resp.body == b"/p/absolute"


def test_3_2_2_absolute_form_host_wins_over_host_header(server):
    """RFC 9112 3.2.2: "When an origin server receives a request with an
    absolute-form of request-target, the origin server MUST ignore the
    received Host header field (if any) and instead use the host information
    of the request-target." """
    resp = exchange(server, request("GET", "http://example.com/req?x=1", host="other.example"))
    assert resp.status == 200
    info = resp.json()
    assert info["host"] == "example.com"
    assert info["path"] == "/req"
    assert info["qs"] == "x=1"


def test_3_2_4_asterisk_form_options(server):
    """RFC 9112 3.2.4: "The asterisk-form of request-target is only used for a
    server-wide OPTIONS request" -- it is answered with a success status."""
    resp = exchange(server, b"OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n")
    assert 200 <= resp.status < 300, resp


# -- 3.2 Host ---------------------------------------------------------------

def test_3_2_missing_host_in_http11_is_400(server):
    """RFC 9112 3.2: "A server MUST respond with a 400 (Bad Request) status code
    to any HTTP/1.1 request message that lacks a Host header field ..." """
    assert_rejected(server, request("GET", "/", host=None), 400, closes=False)


def test_3_2_duplicate_host_is_400(server):
    """RFC 9112 3.2: "... and to any request message that contains more than one
    Host header field line ..." """
    data = request("GET", "/", headers=[("host", "127.0.0.1")])
    assert_rejected(server, data, 400, closes=False)


def test_3_2_duplicate_host_with_different_values_is_400(server):
    """RFC 9112 3.2: "... more than one Host header field line ..." """
    data = request("GET", "/", headers=[("Host", "evil.example")])
    assert_rejected(server, data, 400, closes=False)


@pytest.mark.parametrize("value", ["exa mple.com", "host/path", "user@host",
                                   "host:abc", "[::1", "host:80:80"],
                         ids=["space", "slash", "userinfo", "alpha-port",
                              "open-bracket", "two-ports"])
def test_3_2_invalid_host_value_is_400(server, value):
    """RFC 9112 3.2: "A server MUST respond with a 400 (Bad Request) status code
    to any HTTP/1.1 request message that lacks a Host header field and to any
    request message that contains more than one Host header field line or a
    Host header field with an invalid field value." (RFC 9110 7.2: "Host =
    uri-host [ ":" port ]")"""
    assert_rejected(server, request("GET", "/", host=value), 400, closes=False)


@pytest.mark.parametrize("value", ["example.com", "example.com:8080", "127.0.0.1:1",
                                   "[::1]:8080", "xn--bcher-kva.example"])
def test_3_2_valid_host_values_are_accepted(server, value):
    """RFC 9110 7.2: reg-name, IPv4 and IP-literal hosts with or without a
    port are valid."""
    resp = exchange(server, request("GET", "/", host=value))
    assert resp.status == 200


def test_3_2_http10_without_host_is_accepted(server):
    """RFC 9112 3.2: the Host requirement applies to "HTTP/1.1 request
    message[s]"; an HTTP/1.0 request without Host is served."""
    resp = exchange(server, request("GET", "/", host=None, version="HTTP/1.0"))
    assert resp.status == 200
    assert resp.body == b"Hello world!"


def test_3_2_empty_host_is_accepted(server):
    """RFC 9112 3.2: "If the authority component is missing or undefined for
    the target URI, then a client MUST send a Host header field with an empty
    field value." """
    resp = exchange(server, b"GET / HTTP/1.1\r\nhost:\r\n\r\n")
    assert resp.status == 200


# -- 5 Field Syntax ---------------------------------------------------------

def test_5_field_names_are_case_insensitive(server):
    """RFC 9112 5 / RFC 9110 5.1: "Field names are case-insensitive." """
    resp = exchange(server, b"GET /header HTTP/1.1\r\nHOST: x\r\nX-TEST: Yes\r\n\r\n")
    assert resp.status == 200
    assert resp.body == b"Yes"


def test_5_1_whitespace_between_field_name_and_colon_is_400(server):
    """RFC 9112 5.1: "A server MUST reject, with a response status code of 400
    (Bad Request), any received request message that contains whitespace
    between a header field name and colon." """
    assert_rejected(server, b"GET / HTTP/1.1\r\nhost: x\r\nx-a : 1\r\n\r\n", 400)


def test_5_1_whitespace_before_host_colon_is_400(server):
    """RFC 9112 5.1: "No whitespace is allowed between the field name and
    colon." """
    assert_rejected(server, b"GET / HTTP/1.1\r\nhost : x\r\n\r\n", 400)


def test_5_field_line_without_colon_is_400(server):
    """RFC 9112 5: "field-line = field-name ":" OWS field-value OWS"; a line
    without a colon is a malformed header."""
    assert_rejected(server, b"GET / HTTP/1.1\r\nhost: x\r\nnocolon\r\n\r\n", 400)


@pytest.mark.parametrize("name", [b"x(a", b"x a", b"x\x00a", b""],
                         ids=["paren", "space", "nul", "empty"])
def test_5_invalid_field_name_is_400(server, name):
    """RFC 9110 5.1: "field-name = token"; a name with a non-tchar (or no
    name at all) is malformed."""
    assert_rejected(server, b"GET / HTTP/1.1\r\nhost: x\r\n" + name + b": v\r\n\r\n", 400)


def test_5_2_obs_fold_is_400(server):
    """RFC 9112 5.2: "A server that receives an obs-fold in a request message
    that is not within a "message/http" container MUST either reject the
    message by sending a 400 (Bad Request), preferably with a representation
    explaining that obsolete line folding is unacceptable, or replace each
    received obs-fold with one or more SP octets prior to interpreting the
    field value or forwarding the message downstream." lariat rejects."""
    assert_rejected(server, b"GET / HTTP/1.1\r\nhost: x\r\nx-a: one\r\n two\r\n\r\n", 400)


def test_5_2_obs_fold_with_tab_is_400(server):
    """RFC 9112 5.2: "obs-fold = OWS CRLF RWS"; RWS may start with HTAB."""
    assert_rejected(server, b"GET / HTTP/1.1\r\nhost: x\r\nx-a: one\r\n\ttwo\r\n\r\n", 400)


def test_5_nul_in_field_value_is_400(server):
    """RFC 9110 5.5: "Field values containing CR, LF, or NUL characters are
    invalid and dangerous ... a recipient of CR, LF, or NUL within a field
    value MUST either reject the message or replace each of those characters
    with SP before further processing or forwarding of that message."
    lariat rejects."""
    assert_rejected(server, b"GET / HTTP/1.1\r\nhost: x\r\nx-a: a\x00b\r\n\r\n", 400)


@pytest.mark.parametrize("byte", [b"\x01", b"\x1f", b"\x7f"], ids=["soh", "us", "del"])
def test_5_control_byte_in_field_value_is_400(server, byte):
    """RFC 9110 5.5: "Field values containing other CTL characters are also
    invalid"; lariat rejects them with 400."""
    assert_rejected(server, b"GET / HTTP/1.1\r\nhost: x\r\nx-a: a" + byte + b"b\r\n\r\n", 400)


def test_5_tab_in_field_value_is_accepted(server):
    """RFC 9110 5.5: "field-content = field-vchar [ 1*( SP / HTAB / field-vchar )
    field-vchar ]" -- HTAB inside a value is valid."""
    resp = exchange(server, b"GET /header HTTP/1.1\r\nhost: x\r\nx-test: a\tb\r\n\r\n")
    assert resp.status == 200
    assert resp.body == b"a\tb"


def test_5_obs_text_in_field_value_is_accepted(server):
    """RFC 9110 5.5: "field-vchar = VCHAR / obs-text"; bytes 0x80-0xFF (UTF-8
    here) are valid in a value and reach the handler unchanged."""
    resp = exchange(server, b"GET /header HTTP/1.1\r\nhost: x\r\nx-test: caf\xc3\xa9\r\n\r\n")
    assert resp.status == 200
    assert resp.body == b"caf\xc3\xa9"


def test_5_leading_and_trailing_whitespace_is_not_part_of_value(server):
    """RFC 9112 5: "A field line value might be preceded and/or followed by
    optional whitespace (OWS) ... the field line value does not include that
    leading or trailing whitespace" """
    resp = exchange(server, b"GET /header HTTP/1.1\r\nhost: x\r\nx-test: \t value \t\r\n\r\n")
    assert resp.status == 200
    assert resp.body == b"value"


# -- Header size limits (RFC 6585 431) ---------------------------------------

def _with_fields(n_extra, size=8):
    headers = [("x-f%d" % i, "v" * size) for i in range(n_extra)]
    return request("GET", "/", headers=headers)


def test_431_header_section_over_64k_is_431(server):
    """RFC 6585 5: "The 431 status code indicates that the server is unwilling
    to process the request because its header fields are too large." lariat's
    limit is 64 KiB for the whole header section."""
    assert_rejected(server, _with_fields(10, size=7000), 431)


def test_431_single_huge_field_is_431(server):
    """RFC 6585 5: "It can be used both when the set of request header fields
    in total is too large, and when a single header field is at fault." """
    assert_rejected(server, _with_fields(1, size=70000), 431)


def test_431_more_than_100_fields_is_431(server):
    """RFC 6585 5: header fields "too large"; lariat allows at most 100 fields
    (host + 100 others = 101 is one too many)."""
    assert_rejected(server, _with_fields(100), 431)


def test_431_exactly_100_fields_is_accepted(server):
    """lariat's field limit is 100: host + 99 others is served."""
    resp = exchange(server, _with_fields(99))
    assert resp.status == 200
    assert resp.body == b"Hello world!"


def test_431_large_header_section_under_limit_is_accepted(server):
    """lariat's header section limit is 64 KiB: 60 000 bytes of fields pass."""
    resp = exchange(server, _with_fields(10, size=6000))
    assert resp.status == 200
    assert resp.body == b"Hello world!"


# -- Robustness: mutated requests ---------------------------------------------

BASES = [
    b"POST /echo?a=1 HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: text/plain\r\n"
    b"transfer-encoding: chunked\r\nx-a: b\r\n\r\n5;e=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\nhello"
    b"GET /p/x HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"
    b"HEAD /big/10 HTTP/1.1\r\nhost: x\r\nte: trailers\r\n\r\n",
]


def _mutations(seed=9112, count=1000):
    import random
    rng = random.Random(seed)
    base = BASES[seed % len(BASES)]
    alphabet = b"\r\n\x00 \t:;-0123456789abcdefGHTP/\x7f\x80\xff"
    for _ in range(count):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(4)
            i = rng.randrange(len(data))
            if op == 0:
                data[i] = rng.choice(alphabet)
            elif op == 1:
                data.insert(i, rng.choice(alphabet))
            elif op == 2 and len(data) > 1:
                del data[i]
            else:
                data[i:i] = data[rng.randrange(len(data)):][:rng.randint(1, 20)]
        yield bytes(data)


def test_2_2_mutated_requests_get_an_answer_or_a_close(server):
    """RFC 9112 2.2: "a recipient ... MUST parse" messages by the grammar and
    reject what does not fit. 2000 seeded mutations of pipelined requests: each one
    gets well-formed responses (or none) followed by a close; the server
    survives all of them (under ASan too)."""
    import itertools
    import socket
    import re as _re
    for data in itertools.chain(_mutations(9112), _mutations(9113)):
        with server.connect(timeout=5) as c:
            c.send_lenient(data)
            try:
                c.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            out = c.read_to_close()
        if out:
            assert _re.match(rb"HTTP/1\.1 [1-5]\d\d ", out), (data, out[:200])
    with server.connect() as c:
        c.send(request("GET", "/p/alive"))
        assert c.read_response().body == b"/p/alive"
