"""The protocol-neutral handler contract (DESIGN.md section 4), seen from real
clients: req fields and methods, routing, handler results, middleware, and
what a client sees when a handler fails.
"""

import subprocess

import httpx
import pytest

from conftest import module_server, request

mw = module_server("middleware.lua")


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url(""), timeout=10, trust_env=False) as c:
        yield c


# -- handler results ----------------------------------------------------------

def test_string_result_is_200_text_plain(client):
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == "Hello world!"


def test_curl_gets_hello_world(server):
    out = subprocess.run(["curl", "--noproxy", "*", "-sS", "--max-time", "10", server.url("/")],
                         capture_output=True, check=True)
    assert out.stdout == b"Hello world!"


def test_table_result_is_200_json(client):
    r = client.get("/json")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"hello": "world", "n": 42}


def test_status_headers_body_result(client):
    r = client.get("/status")
    assert r.status_code == 418
    assert r.headers["x-custom-header"] == "Mixed"
    assert r.text == "teapot"


def test_no_result_is_204(client):
    r = client.get("/empty")
    assert r.status_code == 204
    assert r.content == b""


def test_explicit_reply_then_nothing(client):
    r = client.get("/reply")
    assert r.status_code == 201
    assert r.headers["x-reply"] == "yes"
    assert r.text == "created"


def test_stream_reply_and_write(client):
    r = client.get("/stream")
    assert r.status_code == 200
    assert r.headers["transfer-encoding"] == "chunked"
    assert r.text == "chunk1\nchunk2\nchunk3\n"


def test_large_known_body(client):
    r = client.get("/big/5000000")
    assert r.status_code == 200
    assert r.headers["content-length"] == "5000000"
    assert r.content == b"a" * 5000000


def test_invalid_handler_result_is_500(server):
    with server.connect() as c:
        c.send(request("GET", "/bad-result") + request("GET", "/p/after"))
        assert c.read_response().status == 500
        assert c.read_response().body == b"/p/after"


def test_set_header_adds_a_response_header(client):
    for attempt in (1, 2):
        r = client.get("/set-header")
        assert r.status_code == 200
        assert r.headers["x-set"] == "yes"
        assert r.text == "ok"
        # the result's own content type stays (a literal route's preset one too)
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        r = client.get("/set-header-json")
        assert r.headers["x-set"] == "json"
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"ok": True}


# -- req fields ---------------------------------------------------------------

def test_req_fields(server):
    with server.connect() as c:
        c.send(request("GET", "/req?a=1&b=two", host="127.0.0.1:%d" % server.port,
                       headers=[("X-Mixed-Case", "Value")]))
        info = c.read_response().json()
    assert info["method"] == "GET"
    assert info["version"] == "HTTP/1.1"
    assert info["scheme"] == "http"
    assert info["host"] == "127.0.0.1"
    assert int(info["port"]) == server.port
    assert info["path"] == "/req"
    assert info["qs"] == "a=1&b=two"
    assert "127.0.0.1" in str(info["peer"])
    assert info["headers"]["x-mixed-case"] == "Value"
    assert all(k == k.lower() for k in info["headers"])


def test_req_version_http10(server):
    with server.connect() as c:
        c.send(request("GET", "/req", version="HTTP/1.0"))
        info = c.read_response().json()
    assert info["version"] == "HTTP/1.0"


def test_req_empty_query_string(client):
    info = client.get("/req").json()
    assert info["qs"] == ""
    assert info["path"] == "/req"


def test_hop_by_hop_request_headers_are_hidden_from_handlers(server):
    """connection, keep-alive and transfer-encoding belong to the core; the
    handler never sees them."""
    with server.connect() as c:
        c.send(request("POST", "/req", headers=[
            ("connection", "keep-alive"), ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"), ("x-visible", "1")],
            body=b"3\r\nabc\r\n0\r\n\r\n"))
        info = c.read_response().json()
    assert info["headers"]["x-visible"] == "1"
    for hidden in ("connection", "keep-alive", "transfer-encoding"):
        assert hidden not in info["headers"], hidden


def test_header_with_default(client):
    assert client.get("/header", headers={"X-Test": "given"}).text == "given"
    assert client.get("/header").text == "default-value"


def test_query(client):
    r = client.get("/query?a=1&b=hello%20world&c=x+y")
    assert r.json() == {"a": "1", "b": "hello world", "c": "x y"}


def test_cookies(client):
    r = client.get("/cookies", headers={"cookie": "a=1; b=two"})
    assert r.json() == {"a": "1", "b": "two"}


def test_body(client):
    r = client.post("/echo", content=b"payload", headers={"content-type": "text/x-a"})
    assert r.status_code == 200
    assert r.content == b"payload"
    assert r.headers["content-type"] == "text/x-a"


def test_read_body_streams_a_large_body(client):
    body = bytes(range(256)) * 1000
    r = client.post("/read-stream", content=body)
    assert r.status_code == 200
    assert r.content == body


# -- routing ------------------------------------------------------------------

def test_bindings(client):
    assert client.get("/users/42").json() == {"id": "42"}
    assert client.get("/users/7/posts/hello").json() == {"id": "7", "post": "hello"}


def test_wildcard(client):
    assert client.get("/files/a/b/c.txt").text == "file /files/a/b/c.txt"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_method_routes(client, method):
    r = client.request(method, "/methods")
    assert r.status_code == 200
    assert r.text == method


def test_route_with_method_list(client):
    assert client.get("/multi").text == "multi GET"
    assert client.post("/multi").text == "multi POST"
    r = client.delete("/multi")
    assert r.status_code == 405
    assert {"GET", "POST"} <= {m.strip() for m in r.headers["allow"].split(",")}


def test_no_route_is_404(client):
    assert client.get("/nothing/here").status_code == 404


def test_wrong_method_is_405_with_allow(client):
    r = client.put("/only-get")
    assert r.status_code == 405
    assert "GET" in [m.strip() for m in r.headers["allow"].split(",")]


# -- errors -------------------------------------------------------------------

def test_handler_error_is_500_and_connection_lives_on(server):
    """An error in a handler -> 500 to that request only, no traceback to the
    client, the connection goes on."""
    with server.connect() as c:
        c.send(request("GET", "/error"))
        resp = c.read_response()
        assert resp.status == 500
        assert b"boom-secret-detail" not in resp.raw_head + resp.body
        assert b"traceback" not in resp.body.lower()
        assert b".lua" not in resp.body
        c.send(request("GET", "/p/after"))
        after = c.read_response()
        assert after.status == 200 and after.body == b"/p/after"


def test_handler_error_goes_to_the_log(server):
    """The traceback goes to the log (stdout or stderr of the server)."""
    with server.connect() as c:
        c.send(request("GET", "/error"))
        assert c.read_response().status == 500
    import time
    deadline = time.monotonic() + 3
    while "boom-secret-detail" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "boom-secret-detail" in server.log_text()


def test_error_after_streaming_began_truncates_and_closes(server):
    """Once the status line is out a 500 is impossible: the connection is
    closed so the client sees a truncated body, never a complete one."""
    with server.connect() as c:
        c.send(request("GET", "/stream-error") + request("GET", "/p/after"))
        head = c.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        rest = c.read_to_close()
    assert b"partial-data" in rest
    assert not rest.endswith(b"0\r\n\r\n"), rest
    assert b"/p/after" not in rest


def test_curl_reports_truncated_stream(server):
    out = subprocess.run(["curl", "--noproxy", "*", "-sS", "--max-time", "10", server.url("/stream-error")],
                         capture_output=True)
    assert out.returncode != 0
    assert b"partial-data" in out.stdout


# -- middleware ---------------------------------------------------------------

def test_middleware_runs_before_handler_in_order(mw):
    r = httpx.get(mw.url("/plain"), timeout=10, trust_env=False)
    assert r.status_code == 200
    assert r.text == "handler after outer,inner"
    assert r.headers["x-outer"] == "1"


def test_middleware_acts_after_next(mw):
    r = httpx.get(mw.url("/after"), timeout=10, trust_env=False)
    assert r.status_code == 200
    assert r.headers["x-after"] == "inner"
    assert r.text == "handler+after"


def test_middleware_changes_the_result(mw):
    r = httpx.get(mw.url("/change"), timeout=10, trust_env=False)
    assert r.status_code == 202
    assert r.headers["x-changed"] == "yes"
    assert r.text == "changed: original"


def test_middleware_short_circuits(mw):
    r = httpx.get(mw.url("/block"), timeout=10, trust_env=False)
    assert r.status_code == 403
    assert r.text == "blocked by middleware"


def test_middleware_error_is_500_and_connection_lives_on(mw):
    with mw.connect() as c:
        c.send(request("GET", "/mw-error"))
        resp = c.read_response()
        assert resp.status == 500
        assert b"middleware-boom-detail" not in resp.body
        c.send(request("GET", "/ok"))
        assert c.read_response().body == b"still fine"
