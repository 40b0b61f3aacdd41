"""Prometheus metrics: --metrics HOST:PORT serves the text exposition format
at GET /metrics on a listener of its own; lariat.metrics.handler() mounts the
same on a route; requests by route pattern, method and status class, latency
histograms, bytes, connections by protocol, WebSockets, Lua memory and
coroutines per worker, reloads, budget kills, and app metrics. Checked with
python3-prometheus-client's parser and scraped by a real Prometheus."""

import base64
import json
import os
import re
import signal
import socket
import subprocess
import urllib.parse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import LariatServer, SANITIZER_RE, SLOW, free_port, request, wait_for

METRICS_RE = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")

APP = """
local lariat = require "lariat"
local app = lariat.app()
local jobs = lariat.metrics.counter("app_jobs_total", "Jobs run.", { "kind" })
local depth = lariat.metrics.gauge("app_queue_depth", "Items waiting.")
local up = lariat.metrics.histogram("app_upstream_seconds", "Upstream time.", {}, { buckets = { 0.1, 1 } })
app:get("/", function() return "hello" end)
app:get("/users/:id", function(req) return { id = req.bindings.id } end)
app:post("/jobs/:kind", function(req)
  jobs:inc(1, { kind = req.bindings.kind })
  jobs:labels(req.bindings.kind):inc(2)
  depth:set(7); depth:dec(2)
  up:observe(0.5)
  return 201, {}, "queued"
end)
app:get("/spin", function() while true do end end)
app:get("/bad-metric", function() jobs:inc(-1, { kind = "x" }) end)
app:ws("/ws", function(ws) for msg in ws:each() do ws:send(msg) end end)
app:get("/metrics-route", lariat.metrics.handler())
return app %(suffix)s
"""


def write_app(path, suffix=""):
    path.write_text(APP % {"suffix": suffix})


class Server(LariatServer):
    @property
    def metrics_port(self):
        m = wait_for(lambda: METRICS_RE.search(self.stdout_text()), 5, "the metrics line")
        return int(m.group(1))

    def __exit__(self, *exc):
        self.stop()
        assert not SANITIZER_RE.search(self.stderr_text()), self.stderr_text()[-4000:]


def http(port, path, method="GET", body=b"", headers=None):
    with socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW) as s:
        s.sendall(request(method, path, headers=headers, body=body))
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
            head, _, rest = data.partition(b"\r\n\r\n")
            m = re.search(rb"content-length: (\d+)", head, re.I)
            if m and len(rest) >= int(m.group(1)):
                break
        head, _, rest = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), head.decode("latin-1"), rest


def scrape(port, path="/metrics"):
    status, head, body = http(port, path)
    assert status == 200, (status, body)
    assert "text/plain; version=0.0.4" in head
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def value(fams, family, sample, **labels):
    """the value of one sample (0 when absent)"""
    for s in fams[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return 0


@pytest.fixture
def srv(tmp_path):
    app = tmp_path / "app.lua"
    write_app(app)
    with Server(str(app), "--workers", "2", "--metrics", "127.0.0.1:0", "--cpu-budget", "0.2").start() as s:
        s.app_file = app
        yield s


def test_requests_by_route_method_and_class_with_latency(srv):
    for _ in range(2):  # the second scrape sees the counts grow from the first
        before = scrape(srv.metrics_port)
        base = lambda **kw: value(before, "lariat_http_requests", "lariat_http_requests_total", **kw)
        b_ok, b_user, b_post, b_404 = (base(route="/", method="GET", code="2xx"),
                                       base(route="/users/:id", method="GET", code="2xx"),
                                       base(route="/jobs/:kind", method="POST", code="2xx"),
                                       base(route="", method="GET", code="4xx"))
        for i in range(3):
            assert http(srv.port, "/")[0] == 200
            assert http(srv.port, "/users/%d" % i)[0] == 200
        assert http(srv.port, "/jobs/purge", "POST", b"x")[0] == 201
        assert http(srv.port, "/nope")[0] == 404
        # an h2c request counts under the same route
        out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", srv.url("/users/9")],
                             capture_output=True, timeout=10 * SLOW)
        assert out.returncode == 0
        f = scrape(srv.metrics_port)
        v = lambda **kw: value(f, "lariat_http_requests", "lariat_http_requests_total", **kw)
        assert v(route="/", method="GET", code="2xx") == b_ok + 3
        assert v(route="/users/:id", method="GET", code="2xx") == b_user + 4
        assert v(route="/jobs/:kind", method="POST", code="2xx") == b_post + 1
        assert v(route="", method="GET", code="4xx") == b_404 + 1
        assert value(f, "lariat_http_streams", "lariat_http_streams_total", protocol="http2") >= 1
        h = f["lariat_http_request_duration_seconds"]
        count = [s for s in h.samples if s.name.endswith("_count") and s.labels["route"] == "/users/:id"][0]
        inf = [s for s in h.samples if s.name.endswith("_bucket") and s.labels["route"] == "/users/:id"
               and s.labels["le"] == "+Inf"][0]
        assert count.value == inf.value == v(route="/users/:id", method="GET", code="2xx")
        assert value(f, "lariat_received_bytes", "lariat_received_bytes_total") > 0
        assert value(f, "lariat_http_response_bytes", "lariat_http_response_bytes_total") > 0
        assert value(f, "lariat_workers", "lariat_workers") == 2


PLAIN_APP = """
local app = require("lariat").app()
app:get("/", function() return "hello" end)
app:get("/users/:id", function(req) return req.bindings.id end)
return app
"""


def test_metrics_flag_alone_labels_routes_from_the_first_request(tmp_path):
    # an app that never touches lariat.metrics: --metrics alone must label routes
    # (it was on only after the apps had loaded: every request counted as route="")
    app = tmp_path / "plain.lua"
    app.write_text(PLAIN_APP)
    with Server(str(app), "--metrics", "127.0.0.1:0").start() as s:
        for round_ in (1, 2):  # the second time too
            for i in range(3):
                assert http(s.port, "/users/%d" % i)[0] == 200
            assert http(s.port, "/")[0] == 200
            f = scrape(s.metrics_port)
            v = lambda **kw: value(f, "lariat_http_requests", "lariat_http_requests_total", **kw)
            assert v(route="/users/:id", method="GET", code="2xx") == 3 * round_
            assert v(route="/", method="GET", code="2xx") == round_
            assert v(route="", method="GET", code="2xx") == 0


def test_app_metrics_summed_across_workers_and_the_route_handler(srv):
    for _ in range(4):
        assert http(srv.port, "/jobs/mail", "POST", b"x")[0] == 201
    f = scrape(srv.metrics_port)
    assert value(f, "app_jobs", "app_jobs_total", kind="mail") == 12  # 4 requests x (1 + 2), any worker
    assert value(f, "app_queue_depth", "app_queue_depth") == 5
    assert value(f, "app_upstream_seconds", "app_upstream_seconds_count") >= 4
    assert value(f, "app_upstream_seconds", "app_upstream_seconds_bucket", le="0.1") == 0
    # misuse raises (a 500), and the counter is unchanged
    assert http(srv.port, "/bad-metric")[0] == 500
    wait_for(lambda: "a counter only goes up" in srv.log_text(), 5, "the error in the log")
    # the same text on a route of the app; /metrics is not on the public port
    g = scrape(srv.port, "/metrics-route")
    assert value(g, "app_jobs", "app_jobs_total", kind="mail") == 12
    assert http(srv.port, "/metrics")[0] == 404
    assert http(srv.metrics_port, "/")[0] == 404


def test_gauges_connections_websockets_lua(srv):
    key = base64.b64encode(os.urandom(16)).decode()
    ws = socket.create_connection(("127.0.0.1", srv.port), timeout=5 * SLOW)
    ws.sendall(("GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
                "sec-websocket-key: %s\r\nsec-websocket-version: 13\r\n\r\n" % key).encode())
    assert b" 101 " in ws.recv(4096)
    idle = socket.create_connection(("127.0.0.1", srv.port), timeout=5 * SLOW)
    idle.sendall(request("GET", "/"))
    idle.recv(4096)  # a keep-alive HTTP/1.1 connection stays open
    f = wait_for(lambda: (lambda f: f if value(f, "lariat_websockets", "lariat_websockets") == 1
                          and value(f, "lariat_connections", "lariat_connections", protocol="http1") >= 1
                          else None)(scrape(srv.metrics_port)), 5, "the gauges to see both connections")
    assert value(f, "lariat_lua_handlers", "lariat_lua_handlers") + \
        value(f, "lariat_lua_handlers", "lariat_lua_handlers", worker="1") >= 1  # the ws handler
    for w in ("0", "1"):
        assert value(f, "lariat_lua_memory_bytes", "lariat_lua_memory_bytes", worker=w) > 10000
        assert value(f, "lariat_lua_app_versions", "lariat_lua_app_versions", worker=w) == 1
    ws.close()
    idle.close()
    wait_for(lambda: value(scrape(srv.metrics_port), "lariat_websockets", "lariat_websockets") == 0, 5,
             "the WebSocket gauge to drop")


def test_reloads_and_budget_kills_are_counted(srv):
    os.kill(srv.pid, signal.SIGHUP)
    wait_for(lambda: value(scrape(srv.metrics_port), "lariat_reloads", "lariat_reloads_total", outcome="ok") == 2,
             5, "2 workers reloaded")
    srv.app_file.write_text("error('broken')")
    os.kill(srv.pid, signal.SIGHUP)
    wait_for(lambda: value(scrape(srv.metrics_port), "lariat_reloads", "lariat_reloads_total",
                           outcome="rejected") == 1, 5, "a rejected reload")
    for n in (1, 2):  # the second time too
        assert http(srv.port, "/spin")[0] == 503
        assert value(scrape(srv.metrics_port), "lariat_budget_kills", "lariat_budget_kills_total") == n


def test_a_real_prometheus_scrapes_it(srv, tmp_path):
    for _ in range(5):
        http(srv.port, "/users/1")
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                   "scrape_configs:\n  - job_name: lariat\n    static_configs:\n"
                   "      - targets: ['127.0.0.1:%d']\n" % srv.metrics_port)
    prom = subprocess.Popen(["prometheus", "--config.file=%s" % cfg, "--storage.tsdb.path=%s" % (tmp_path / "data"),
                             "--web.listen-address=127.0.0.1:%d" % port, "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def query(q):
            url = "http://127.0.0.1:%d/api/v1/query?query=%s" % (port, urllib.parse.quote(q))
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    res = json.load(r)["data"]["result"]
            except OSError:
                assert prom.poll() is None, prom.stderr.read().decode()[-2000:]
                return None
            return res or None
        q = 'lariat_http_requests_total{route="/users/:id",method="GET",code="2xx"}'
        res = wait_for(lambda: query(q), 40, "Prometheus to scrape lariat")
        assert float(res[0]["value"][1]) == 5
        up = wait_for(lambda: query('up{job="lariat"}'), 10, "up")
        assert up[0]["value"][1] == "1"
        http(srv.port, "/users/2")
        wait_for(lambda: (lambda r: r and float(r[0]["value"][1]) == 6)(query(q)), 20, "the next scrape")
    finally:
        prom.terminate()
        prom.wait(10)
