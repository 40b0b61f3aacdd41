"""Response compression (lariat.middleware.compress) and precompressed static
files, with real clients: curl --compressed, httpx (gzip and br; its Debian
version predates zstd), raw bytes decoded by Python's zlib, brotli
(python3-brotli) and zstandard (python3-zstandard).

RFC 9110 §12.5.3: "An Accept-Encoding header field with a combined
field-value that is empty implies that the user agent does not want any
content coding in response." / "If the representation has no content coding,
then it is acceptable by default unless specifically excluded by the
Accept-Encoding header field stating either "identity;q=0" or "*;q=0"".
RFC 9110 §8.8.3: a weak validator for a representation transformed by
content coding ("W/").
"""

import json
import subprocess
import zlib

import brotli
import httpx
import pytest
import zstandard

from conftest import SLOW, RawConn, module_server, request, exchange, wait_for

srv = module_server("compress.lua", "-w", "1")

CHROMIUM_AE = "gzip, deflate, br, zstd"  # Chromium 123+, Firefox 126+


def decoder(coding):
    """An incremental decoder: feed(bytes) -> bytes, done() -> bool."""
    if coding == "gzip":
        d = zlib.decompressobj(16 + 15)
        return d.decompress, lambda: d.eof
    if coding == "br":
        d = brotli.Decompressor()
        return d.process, d.is_finished
    if coding == "zstd":
        d = zstandard.ZstdDecompressor().decompressobj()
        return d.decompress, lambda: d.eof
    raise AssertionError("unknown coding %r" % coding)


def decode(coding, data):
    feed, done = decoder(coding)
    out = feed(data)
    assert done(), "%s stream not finished" % coding
    return out


def get(server, path, headers=(), method="GET"):
    return exchange(server, request(method, path, list(headers)), method=method)


def identity(server, path):
    resp = get(server, path)
    assert resp.header("content-encoding") is None
    return resp.body


def test_curl_compressed_gets_zstd_and_decodes(srv):
    """curl --compressed offers every coding it was built with (deflate,
    gzip, br, zstd), all at q=1: the server's order (zstd first) decides."""
    plain = identity(srv, "/json")
    out = subprocess.run(["curl", "-sS", "--compressed", "-D", "-", srv.url("/json")],
                         capture_output=True, timeout=20 * SLOW, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"content-encoding: zstd" in head.lower()
    assert b"vary: accept-encoding" in head.lower()
    assert body == plain
    for coding in ("gzip", "br", "zstd"):
        out = subprocess.run(["curl", "-sS", "--compressed", "-H", "accept-encoding: " + coding,
                              "-D", "-", srv.url("/json")],
                             capture_output=True, timeout=20 * SLOW, check=True).stdout
        head, _, body = out.partition(b"\r\n\r\n")
        assert ("content-encoding: " + coding).encode() in head.lower()
        assert body == plain


@pytest.mark.parametrize("http2", [False, True])
def test_httpx_decodes_br_over_h1_and_h2(srv, http2):
    """httpx sends "gzip, deflate, br" (br once brotli is installed)."""
    plain = json.loads(identity(srv, "/json"))
    with httpx.Client(http1=not http2, http2=http2, timeout=10 * SLOW, trust_env=False) as c:
        for path in ("/json", "/json-reply", "/stream"):
            r = c.get(srv.url(path))
            assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            assert r.headers["content-encoding"] == "br", path
            assert json.loads(r.content) == plain, path


@pytest.mark.parametrize("ae, coding", [
    (CHROMIUM_AE, "zstd"),                 # the browser's raw header
    ("gzip, deflate, br", "br"),          # Safari
    ("gzip", "gzip"),
    ("x-gzip", "gzip"),
    ("GZIP;Q=0.5", "gzip"),               # case-insensitive; an unnamed identity is not preferred
    ("br;q=0.5, gzip;q=0.8", "gzip"),     # q-values over the server's order
    ("zstd;q=0, *", "br"),                # q=0 excludes; * covers the rest
    ("*", "zstd"),
    ("*;q=0.1, gzip;q=0.2, br;q=0.2", "br"),
    ("identity;q=0.5, gzip", "gzip"),
    ("identity, gzip;q=0.5", None),       # identity rated above every coding
    ("gzip;q=0, br;q=0, zstd;q=0", None),
    ("*;q=0", None),
    ("deflate, compress", None),          # nothing offered
    ("", None),                           # empty: no content coding wanted
    (None, None),                         # no header: none either
])
def test_q_values_choose_the_coding(srv, ae, coding):
    plain = identity(srv, "/json")
    resp = get(srv, "/json", [("accept-encoding", ae)] if ae is not None else [])
    assert resp.status == 200
    assert resp.header("content-encoding") == coding
    assert resp.header("vary") == "accept-encoding"
    if coding is None:
        assert resp.body == plain
        assert resp.header("etag") == '"j1"'
    else:
        assert decode(coding, resp.body) == plain
        assert resp.header("etag") == 'W/"j1"'
        assert int(resp.header("content-length")) == len(resp.body) < len(plain) / 4


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_streamed_body_is_compressed_and_ends_before_the_trailers(srv, coding):
    plain = identity(srv, "/stream")
    with srv.connect() as c:
        c.send(request("GET", "/stream?trailers", [("accept-encoding", coding), ("te", "trailers")]))
        resp = c.read_response()
        assert resp.chunked and resp.header("content-encoding") == coding
        assert resp.header("etag") == 'W/"s1"' and resp.header("content-length") is None
        assert decode(coding, resp.body) == plain
        assert resp.trailer("x-checksum") == str(len(plain))
        # the connection stays usable: the coded stream ended inside the body
        c.send(request("GET", "/small", [("accept-encoding", coding)]))
        assert c.read_response().body == b"tiny"


def read_chunk(c):
    size = int(c.read_until(b"\r\n").split(b";")[0], 16)
    data = c.read_exact(size)
    assert c.read_exact(2) == b"\r\n"
    return data


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_sse_events_decode_one_by_one_while_the_stream_stays_open(srv, coding):
    """Each write is flushed through the encoder: event n decodes in full
    before the server sends event n+1 (which it does only after the client,
    having decoded event n, asks /sse/next), and the stream ends cleanly."""
    for _ in range(2):  # the second time too: a fresh encoder per stream
        with srv.connect(timeout=10 * SLOW) as c:
            c.send(request("GET", "/sse", [("accept-encoding", coding)]))
            head = c.read_until(b"\r\n\r\n").lower()
            assert b"content-encoding: " + coding.encode() in head
            assert b"content-type: text/event-stream" in head
            feed, done = decoder(coding)
            text = b""
            for n in (1, 2, 3):
                while b"id: %d\n" % n not in text or not text.endswith(b"\n\n"):
                    chunk = read_chunk(c)
                    assert chunk, "stream ended before event %d" % n
                    text += feed(chunk)
                event = text.split(b"\n\n")[n - 1]
                assert json.loads(event.split(b"data: ")[1])["n"] == n
                assert not done()
                assert get(srv, "/sse/next").body == b"ok"
            tail = b""
            while True:
                chunk = read_chunk(c)
                if not chunk:
                    break
                tail += feed(chunk)
            assert tail == b"" and done()


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_client_leaving_mid_stream_frees_the_stream(srv, coding):
    """A client that leaves after the first event: the handler, waiting,
    is cancelled (its to-be-closed variables run, the middleware's frees the
    encoder); the second time too; others are served. Under ASan, an
    encoder left unfreed would be reported at exit."""
    for _ in range(2):
        with srv.connect(timeout=10 * SLOW) as c:
            c.send(request("GET", "/sse", [("accept-encoding", coding)]))
            c.read_until(b"\r\n\r\n")
            read_chunk(c)
            assert get(srv, "/sse/active").body == b"1"
        wait_for(lambda: get(srv, "/sse/active").body == b"0", 5, "the SSE handler to end")
        assert get(srv, "/json", [("accept-encoding", coding)]).status == 200


def test_head_gets_the_headers_of_get(srv):
    resp = get(srv, "/json", [("accept-encoding", "br")], method="HEAD")
    assert resp.status == 200 and resp.body == b""
    assert resp.header("content-encoding") == "br"
    assert resp.header("vary") == "accept-encoding"
    assert resp.header("etag") == 'W/"j1"'
    resp = get(srv, "/stream", [("accept-encoding", "br")], method="HEAD")
    assert resp.header("content-encoding") == "br"


def test_304_carries_the_validator_of_the_compressed_200(srv):
    resp = get(srv, "/nm", [("accept-encoding", "gzip")])
    assert resp.status == 304
    assert resp.header("etag") == 'W/"j1"'
    assert resp.header("vary") == "accept-encoding"
    resp = get(srv, "/nm", [])
    assert resp.header("etag") == '"j1"'


@pytest.mark.parametrize("path", ["/small", "/png", "/encoded", "/no-transform"])
def test_left_alone(srv, path):
    """Too small, not compressible, already encoded (never twice),
    cache-control: no-transform."""
    plain = get(srv, path).body
    resp = get(srv, path, [("accept-encoding", CHROMIUM_AE)])
    assert resp.body == plain
    assert resp.header("content-encoding") == (None if path != "/encoded" else "gzip")
    if path == "/encoded":
        assert decode("gzip", resp.body) == identity(srv, "/json")


@pytest.mark.parametrize("ae, coding", [
    (CHROMIUM_AE, "br"),          # static files prefer the smallest: brotli at 11
    ("gzip, zstd", "zstd"),
    ("gzip", "gzip"),
    ("br;q=0.1, gzip", "gzip"),
    ("identity", None),
    (None, None),
])
def test_precompressed_siblings(srv, ae, coding):
    plain = identity(srv, "/static/app.js")
    resp = get(srv, "/static/app.js", [("accept-encoding", ae)] if ae else [])
    assert resp.status == 200
    assert resp.header("vary") == "accept-encoding"
    assert resp.header("content-encoding") == coding
    assert resp.header("content-type").startswith("text/javascript")
    if coding:
        assert len(resp.body) < len(plain) / 10
        assert decode(coding, resp.body) == plain
    else:
        assert resp.body == plain


def test_precompressed_order_option_range_and_missing_siblings(srv):
    plain = identity(srv, "/static/app.js")
    resp = get(srv, "/static-zg/app.js", [("accept-encoding", CHROMIUM_AE)])
    assert resp.header("content-encoding") == "zstd"
    assert decode("zstd", resp.body) == plain
    resp = get(srv, "/static-zg/app.js", [("accept-encoding", "br")])
    assert resp.header("content-encoding") is None and resp.body == plain
    # a range is served from the identity file
    resp = get(srv, "/static/app.js", [("accept-encoding", "br"), ("range", "bytes=0-7")])
    assert resp.status == 206 and resp.body == plain[:8]
    # only a .gz: a br-only client gets identity, a gzip one the .gz
    resp = get(srv, "/static/only-gz.css", [("accept-encoding", "br")])
    assert resp.header("content-encoding") is None and resp.header("vary") == "accept-encoding"
    resp = get(srv, "/static/only-gz.css", [("accept-encoding", CHROMIUM_AE)])
    assert resp.header("content-encoding") == "gzip"
    assert decode("gzip", resp.body) == plain


def test_precompressed_behind_the_middleware_is_not_compressed_twice(srv):
    plain = identity(srv, "/static/app.js")
    resp = get(srv, "/mixed/app.js", [("accept-encoding", CHROMIUM_AE)])
    assert resp.header("content-encoding") == "br"
    assert resp.body == get(srv, "/static/app.js", [("accept-encoding", "br")]).body
    assert decode("br", resp.body) == plain
    # no .br sibling: the middleware compresses the identity file itself
    resp = get(srv, "/mixed/only-gz.css", [("accept-encoding", "br")])
    assert resp.header("content-encoding") == "br"
    assert resp.header("vary") == "accept-encoding"
    assert decode("br", resp.body) == plain


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_sse_events_decode_one_by_one_over_h2c(srv, coding):
    """The same over HTTP/2 (httpx, prior knowledge): DATA frames carry each
    flushed event; the raw bytes are decoded here."""
    with httpx.Client(http1=False, http2=True, timeout=10 * SLOW, trust_env=False) as c:
        with c.stream("GET", srv.url("/sse"), headers={"accept-encoding": coding}) as r:
            assert r.http_version == "HTTP/2"
            assert r.headers["content-encoding"] == coding
            feed, done = decoder(coding)
            text, n = b"", 1
            for chunk in r.iter_raw():
                text += feed(chunk)
                if n <= 3 and b"id: %d\n" % n in text and text.endswith(b"\n\n"):
                    assert not done()
                    assert c.get(srv.url("/sse/next")).text == "ok"
                    n += 1
            assert n == 4 and done()
