"""examples/aggregate.lua (the README's Outbound example) and
examples/proxy.lua, run as a user would."""

import json
import os
import time
import urllib.request

from conftest import REPO, LariatServer, app_path
from netpeers import free_port

SLOW = 3 if os.environ.get("LARIAT_SANITIZE") else 1


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def start_with_env(app, env, *options):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return LariatServer(str(app), *options, "--workers", "1").start()
    finally:
        for k, v in old.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def test_aggregate_calls_both_upstreams_at_once():
    port = free_port()  # the example calls itself: its upstream is its own port, known beforehand
    srv = LariatServer(str(REPO / "examples" / "aggregate.lua"), "--workers", "1", listen=False)
    os.environ["UPSTREAM"] = "http://127.0.0.1:%d" % port
    try:
        srv.start(srv.argv()[:1] + ["--listen", "127.0.0.1:%d" % port] + srv.argv()[1:])
    finally:
        del os.environ["UPSTREAM"]
    try:
        for _ in range(2):
            t0 = time.monotonic()
            st, body = get(srv.url("/dashboard/7"))
            took = time.monotonic() - t0
            assert st == 200, body
            d = json.loads(body)
            assert d["user"]["name"] == "user 7" and len(d["orders"]) == 2
            assert took < 0.39 * SLOW, took  # concurrent, not 0.4 s in sequence
    finally:
        srv.check_healthy()


def test_proxy_example_gateway():
    up = LariatServer(app_path("upstream.lua"), "--workers", "1").start()
    url = "http://127.0.0.1:%d" % up.port
    gw = start_with_env(REPO / "examples" / "proxy.lua", {"API_UPSTREAM": url, "CANARY_UPSTREAM": url})
    try:
        st, body = get(gw.url("/api/v1/headers"))
        h = json.loads(body)
        assert st == 200 and h["x-gateway"] == "lariat" and h["x-forwarded-for"] == "127.0.0.1"
        assert "x-request-id" in h
        st, body = get(gw.url("/files/hello"))  # path unchanged → upstream 404
        assert st == 404
        st, body = get(gw.url("/beta/hello"), {"x-user-id": "10"})
        assert st == 200 and body == b"hello"
        st, body = get(gw.url("/healthz"))
        assert body == b"ok"
    finally:
        gw.check_healthy()
        up.check_healthy()
