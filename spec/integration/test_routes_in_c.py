"""Wildcard routes matched in C (bindings/direct.c) and lariat.proxy run
without Lua per request: the same answers as the Lua router gives, path_info
included; routes with middleware, a `before` hook or a timeout of their own
still run their Lua (README "Outbound", DESIGN §4b)."""

import json
import os
import time

import pytest

from conftest import LariatServer, app_path
from netpeers import http_call as call

SLOW = 3 if os.environ.get("LARIAT_SANITIZE") else 1


@pytest.fixture(scope="module")
def env():
    up = LariatServer(app_path("upstream.lua"), "--workers", "1").start()
    os.environ["LARIAT_TEST_UPSTREAM"] = "http://127.0.0.1:%d" % up.port
    srv = LariatServer(app_path("proxy_route.lua"), "--workers", "1").start()
    yield {"srv": srv, "up": up}
    srv.check_healthy()
    up.check_healthy()


def counts(srv):
    st, _, body = call(srv, "/counts")
    assert st == 200
    return json.loads(body)


def routed(env, paths, method=None):
    """(answers, requests C routed, middleware runs, before runs) for the paths"""
    srv = env["srv"]
    c0 = counts(srv)
    got = [call(srv, p, method=method) for p in paths]
    c1 = counts(srv)
    # /counts is a literal route C finds too: the second one counts itself
    return got, c1["direct"] - c0["direct"] - 1, c1["mw"] - c0["mw"], c1["before"] - c0["before"]


def test_proxy_route_runs_in_c(env):
    for _ in range(2):
        got, direct, mw, before = routed(env, ["/c/a/b?x=1", "/c/", "/c"])
        assert [(st, body) for st, _, body in got] == [
            (200, b"GET /path/a/b?x=1"), (200, b"GET /path/?"), (200, b"GET /path/?")]
        assert (direct, mw, before) == (3, 0, 0)


def test_post_through_the_c_route(env):
    data = os.urandom(300000)
    for _ in range(2):
        c0 = counts(env["srv"])
        st, h, body = call(env["srv"], "/e/echo", data=data)
        direct = counts(env["srv"])["direct"] - c0["direct"] - 1
        assert st == 200 and body == data and h["x-method"] == "POST"
        assert direct == 1


def test_middleware_and_before_still_run_lua(env):
    for _ in range(2):
        got, direct, mw, before = routed(env, ["/mw/x?q=1", "/b/y"])
        assert [(st, body) for st, _, body in got] == [(200, b"GET /path/x?q=1"), (200, b"GET /path/y?")]
        # /mw/*: the router in Lua (its middleware); /b/*: routed in C, its handler is Lua
        assert (direct, mw, before) == (1, 1, 1)


def test_route_timeout_is_lua_and_still_holds(env):
    for _ in range(2):
        t0 = time.monotonic()
        got, direct, _, _ = routed(env, ["/t/slow?s=3"])
        assert got[0][0] == 504 and time.monotonic() - t0 < 0.3 + 2 * SLOW
        assert direct == 0


@pytest.mark.parametrize("path,want,in_c", [
    ("/w/a/b", b"info=a/b", True),
    ("/w/a/b/", b"info=a/b", True),       # a trailing slash is not part of path_info
    ("/w", b"info=", True),
    ("/w/", b"info=", True),
    ("/w/a%20b", b"info=a b", False),     # percent-decoding: the Lua router's
    ("/w//a", b"info=a", False),          # doubled slash: canonicalised in Lua
    ("/w/a/../b", b"info=b", False),
    ("/k", b"k itself", True),            # the literal route, not the wildcard's
    ("/k/", b"k itself", False),          # canonical /k: the router's literal again
    ("/k/z", b"k/z", True),
    ("/any/q", b"GET q", True),
])
def test_wildcard_answers_match_the_router(env, path, want, in_c):
    for _ in range(2):
        got, direct, _, _ = routed(env, [path])
        st, _, body = got[0]
        assert (st, body) == (200, want), path
        assert direct == (1 if in_c else 0), path


def test_methods_of_a_wildcard(env):
    srv = env["srv"]
    for _ in range(2):
        st, _, body = call(srv, "/w/p", data=b"")
        assert (st, body) == (201, b"posted p")
        st, h, body = call(srv, "/w/p", method="HEAD")  # HEAD: GET's route
        assert st == 200 and body == b""
        st, h, _ = call(srv, "/w/p", method="DELETE")  # no route: the Lua router's 405
        assert st == 405 and "GET" in h["allow"] and "POST" in h["allow"]
        st, _, body = call(srv, "/any/q", method="PATCH")
        assert (st, body) == (200, b"PATCH q")


RELOAD_APP = """
local lariat = require "lariat"
local app = lariat.app()
app:get("/p/*", lariat.proxy(os.getenv("LARIAT_TEST_UPSTREAM") .. "/", { headers = { ["x-v"] = "%s" } }))
app:get("/stats", function() return lariat.stats() end)
return app
"""


def test_reload_new_proxy_routes_take_over_old_exchanges_finish(env, tmp_path, start_server):
    """A proxied request under way at a reload finishes on the route that
    took it (its upstream worked out by the old version); new requests take
    the new route; the old version is freed once its exchange ends."""
    import signal
    from conftest import request
    app = tmp_path / "app.lua"

    def write(version):
        tmp = str(app) + ".tmp"
        with open(tmp, "w") as f:
            f.write(RELOAD_APP % version)
        os.replace(tmp, app)

    def stats():
        return json.loads(call(srv, "/stats")[2])

    write("v1")
    srv = start_server(str(app), "--workers", "1")
    for n in (2, 3):
        with srv.connect(timeout=30) as c:
            c.send(request("GET", "/p/slow?s=%d&tag=old" % (2 * SLOW)))
            time.sleep(0.3)
            write("v%d" % n)
            before = srv.log_text().count("app reloaded")
            os.kill(srv.pid, signal.SIGHUP)
            deadline = time.monotonic() + 20
            while srv.log_text().count("app reloaded") == before and time.monotonic() < deadline:
                time.sleep(0.02)
            st, _, body = call(srv, "/p/headers")
            assert st == 200 and json.loads(body)["x-v"] == "v%d" % n
            assert stats()["versions"] == 2  # the old one holds its exchange
            assert c.read_response().body == b"slow old"
        deadline = time.monotonic() + 10 * SLOW
        while time.monotonic() < deadline and stats()["versions"] != 1:
            time.sleep(0.05)
        assert stats()["versions"] == 1


def test_c_proxy_route_is_logged_and_counted(env, tmp_path, start_server):
    """--access-log and --metrics see a proxied request C ran like any other:
    one log line, counted under its route pattern."""
    import re
    log = tmp_path / "access.log"
    app = tmp_path / "app.lua"
    # metrics.handler() turns counting on while the app loads (with --metrics alone the
    # routes get their labels only from the next reload: the listener starts after the load)
    app.write_text('require("lariat").metrics.handler()\n'
                   'return dofile(%r)\n' % app_path("proxy_route.lua"))
    srv = start_server(str(app), "--workers", "1", "--access-log", str(log), "--metrics", "127.0.0.1:0")
    m = None
    deadline = time.monotonic() + 5
    while m is None and time.monotonic() < deadline:
        m = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", srv.stdout_text())
        time.sleep(0.02)
    assert m, srv.stdout_text()
    port = int(m.group(1))

    def served():
        import urllib.request
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
            text = r.read().decode()
        got = re.search(r'lariat_http_requests_total\{route="/c/\*",method="GET",code="2xx"\} (\d+)', text)
        return int(got.group(1)) if got else 0

    for n in (1, 2):
        c0 = counts(srv)["direct"]
        st, _, body = call(srv, "/c/logged?n=%d" % n)
        assert (st, body) == (200, b"GET /path/logged?n=%d" % n)
        assert counts(srv)["direct"] == c0 + 2  # this request and the second /counts
        deadline = time.monotonic() + 5 * SLOW
        while served() != n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert served() == n
        deadline = time.monotonic() + 5 * SLOW
        while time.monotonic() < deadline and (not log.exists() or
                                               log.read_text().count('"GET /c/logged?n=%d HTTP/1.1" 200 ' % n) != 1):
            time.sleep(0.05)
        assert log.read_text().count('"GET /c/logged?n=%d HTTP/1.1" 200 ' % n) == 1
