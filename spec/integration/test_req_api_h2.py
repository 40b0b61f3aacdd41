"""The protocol-neutral handler contract over HTTP/2: the same apps and the
same assertions as test_req_api.py, through httpx with h2c prior knowledge
(plain listener) and with h2 over TLS (ALPN), plus what differs only in the
framing (version, scheme, trailers, streaming without chunked coding).

The tests of test_req_api.py that take the `client` fixture are imported
here and run again with this module's `client`, parametrized by protocol.
"""

import subprocess

import httpx
import pytest

import test_req_api as h1
from conftest import module_server, tls_files

server = module_server("basic.lua", tls=True)
mw = module_server("middleware.lua", tls=True)

PROTOCOLS = ["h2c", "h2"]


def h2_client(srv, proto):
    if proto == "h2c":
        # http1=False: HTTP/2 with prior knowledge on a plain connection
        return httpx.Client(base_url=srv.url(""), http1=False, http2=True,
                            timeout=10, trust_env=False)
    return httpx.Client(base_url="https://127.0.0.1:%d" % srv.tls_port, http2=True,
                        verify=False, timeout=10, trust_env=False)


@pytest.fixture(params=PROTOCOLS)
def client(request, server):
    with h2_client(server, request.param) as c:
        yield c


# the protocol-neutral tests, run again over h2c and h2
for _name in dir(h1):
    _f = getattr(h1, _name)
    if (_name.startswith("test_") and callable(_f)
            and "client" in _f.__code__.co_varnames[:_f.__code__.co_argcount]
            and _name != "test_stream_reply_and_write"):  # asserts chunked coding
        globals()[_name] = _f


def test_every_request_went_over_http2(client):
    r = client.get("/req")
    assert r.http_version == "HTTP/2"
    assert r.json()["version"] == "HTTP/2"


def test_stream_reply_and_write_h2(client):
    r = client.get("/stream")
    assert r.status_code == 200
    assert "transfer-encoding" not in r.headers  # RFC 9113 §8.2.2
    assert r.text == "chunk1\nchunk2\nchunk3\n"


def test_req_fields_h2(client, server):
    r = client.get("/req?a=1&b=two", headers={"X-Mixed-Case": "Value"})
    info = r.json()
    tls = str(client.base_url).startswith("https")
    assert info["method"] == "GET"
    assert info["version"] == "HTTP/2"
    assert info["scheme"] == ("https" if tls else "http")
    assert info["host"] == "127.0.0.1"
    assert info["port"] == (server.tls_port if tls else server.port)  # from :authority
    assert info["path"] == "/req"
    assert info["qs"] == "a=1&b=two"
    assert info["peer"] == "127.0.0.1"
    assert info["headers"]["x-mixed-case"] == "Value"
    assert ":path" not in info["headers"] and ":authority" not in info["headers"]


def test_trailers_h2(client):
    r = client.get("/trailers", headers={"te": "trailers"})
    assert r.status_code == 200
    assert r.text  # the body arrives; httpx drops trailers, see test_rfc9113_frames


def test_head_has_no_body_and_keeps_content_length(client):
    r = client.head("/")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == "12"


def test_handler_connection_headers_never_reach_the_wire(client):
    r = client.get("/hop-headers")
    for name in ("connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection"):
        assert name not in r.headers


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_concurrent_streams_on_one_connection(server, proto):
    # 40 requests in flight at once on one connection. One asyncio client, not
    # a sync client shared by threads: httpcore 0.16 allocates stream ids and
    # encodes HEADERS outside its locks, so threads put HEADERS on the wire out
    # of id order (the server must answer GOAWAY PROTOCOL_ERROR, RFC 9113
    # 5.1.1), and two threads in SSL_read and SSL_write on one ssl object at
    # once corrupt TLS 1.3 records ("bad record mac" on the server).
    import asyncio

    async def run():
        if proto == "h2c":
            c = httpx.AsyncClient(base_url=server.url(""), http1=False, http2=True,
                                  timeout=10, trust_env=False)
        else:
            c = httpx.AsyncClient(base_url="https://127.0.0.1:%d" % server.tls_port,
                                  http2=True, verify=False, timeout=10, trust_env=False)
        async with c:
            return await asyncio.gather(*(c.get("/p/%d" % i) for i in range(40)))

    rs = asyncio.run(run())
    assert [r.text for r in rs] == ["/p/%d" % i for i in range(40)]
    assert {r.http_version for r in rs} == {"HTTP/2"}
    ids = [r.extensions["stream_id"] for r in rs]
    assert len(set(ids)) == 40  # one connection, 40 streams


def test_big_upload_is_echoed(client):
    body = bytes(range(256)) * 4096  # 1 MiB: several windows' worth
    r = client.post("/echo", content=body)
    assert r.status_code == 200 and r.content == body


# -- middleware over h2 ---------------------------------------------------------

@pytest.mark.parametrize("proto", PROTOCOLS)
def test_middleware_over_h2(mw, proto):
    with h2_client(mw, proto) as c:
        r = c.get("/plain")
        assert r.status_code == 200 and r.text == "handler after outer,inner"
        r = c.get("/block")
        assert r.status_code == 403


# -- real clients ---------------------------------------------------------------

def test_curl_http2_over_tls(server):
    out = subprocess.run(
        ["curl", "--noproxy", "*", "-sSk", "--http2", "--max-time", "10",
         "-w", "\n%{http_version}", "https://127.0.0.1:%d/" % server.tls_port],
        capture_output=True, check=True)
    assert out.stdout == b"Hello world!\n2"


def test_curl_http2_prior_knowledge(server):
    out = subprocess.run(
        ["curl", "--noproxy", "*", "-sS", "--http2-prior-knowledge", "--max-time", "10",
         "-w", "\n%{http_version}", server.url("/")],
        capture_output=True, check=True)
    assert out.stdout == b"Hello world!\n2"


def test_curl_h2c_upgrade_answers_the_first_request_as_stream_1(server):
    """RFC 7540 §3.2: the upgrading request is answered on stream 1."""
    out = subprocess.run(
        ["curl", "--noproxy", "*", "-sS", "--http2", "--max-time", "10",
         "-w", "\n%{http_version}", server.url("/req")],
        capture_output=True, check=True)
    body, _, version = out.stdout.rpartition(b"\n")
    assert version == b"2"
    assert b'"version":"HTTP/2"' in body


def test_curl_tls_http11_when_asked(server):
    out = subprocess.run(
        ["curl", "--noproxy", "*", "-sSk", "--http1.1", "--max-time", "10",
         "-w", "\n%{http_version}", "https://127.0.0.1:%d/req" % server.tls_port],
        capture_output=True, check=True)
    body, _, version = out.stdout.rpartition(b"\n")
    assert version == b"1.1"
    assert b'"scheme":"https"' in body


def test_nghttp_gets_hello(server):
    out = subprocess.run(["nghttp", "-n", "-s", server.url("/")], capture_output=True,
                         timeout=10)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(["nghttp", server.url("/")], capture_output=True, timeout=10)
    assert out.stdout == b"Hello world!"
    out = subprocess.run(["nghttp", "-u", server.url("/req")], capture_output=True, timeout=10)
    assert b'"version":"HTTP/2"' in out.stdout  # -u: the h2c Upgrade


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_h2load_all_requests_succeed(server, scheme):
    port = server.port if scheme == "http" else server.tls_port
    out = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "10",
                          "%s://127.0.0.1:%d/" % (scheme, port)],
                         capture_output=True, timeout=30, text=True)
    assert "2000 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout
    assert "status codes: 2000 2xx" in out.stdout


def test_tls_garbage_handshake_closes_cleanly(server):
    import socket
    s = socket.create_connection(("127.0.0.1", server.tls_port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")  # plaintext on the TLS port
    data = b""
    try:
        while True:
            got = s.recv(4096)
            if not got:
                break
            data += got
    except ConnectionResetError:
        pass
    s.close()
    assert b"HTTP/1.1" not in data
    # and the server still serves
    assert httpx.get(server.url("/"), trust_env=False).text == "Hello world!"


def test_sni_and_alpn(server):
    import ssl
    import socket
    ctx = ssl.create_default_context(cafile=tls_files()[0])
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", server.tls_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            assert s.selected_alpn_protocol() == "h2"
            assert s.version() in ("TLSv1.2", "TLSv1.3")
