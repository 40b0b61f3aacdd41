"""Mistakes an app developer makes are loud: what the server answers and logs
for them (issue 12, item 5), and what --watch reloads for (item 4)."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import REPO, lariat_bin, request, exchange, LariatServer


def run_app(app, *args, timeout=10):
    return subprocess.run([lariat_bin(), "--listen", "127.0.0.1:0", *map(str, args), str(app)],
                          cwd=str(REPO), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)


def wait_for(cond, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


# -- mistakes at load: an error naming file and line, exit status 2 -----------

def test_error_inside_a_required_module_is_printed_whole(tmp_path):
    """It used to stop at "error loading module 'store' from file './store.lua':"."""
    (tmp_path / "store.lua").write_text("local M = {}\nfunction M.get(\nreturn M\n")
    app = tmp_path / "app.lua"
    app.write_text('local store = require "store"\nreturn require("lariat").app()\n')
    proc = run_app(app)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "error loading module 'store'" in err, err
    assert re.search(r"store\.lua:3: .*near 'return'", err), err


def test_a_reload_rejected_for_a_module_error_logs_the_whole_message(tmp_path, start_server):
    (tmp_path / "store.lua").write_text("return { v = 1 }\n")
    app = tmp_path / "app.lua"
    app.write_text('local store = require "store"\nlocal app = require("lariat").app()\n'
                   'app:get("/", function() return "v" .. store.v end)\nreturn app\n')
    srv = start_server(str(app), "--workers", "1")
    (tmp_path / "store.lua").write_text("return { v = 2 \n")
    for attempt in (1, 2):  # the second time too: still serving, still loud
        os.kill(srv.pid, signal.SIGHUP)
        assert wait_for(lambda: srv.log_text().count("rejected") >= attempt)
    log = srv.log_text()
    entry = log[log.index("rejected"):]
    assert re.search(r"store\.lua:2: '}' expected", entry), log
    assert exchange(srv, request("GET", "/")).body == b"v1"


@pytest.mark.parametrize("body,needles", [
    ('app:get("/users/:id", { constraints = { id = "integer" } }, function() end)',
     ['app.lua:3:', 'unknown constraint "integer"', 'pattern =']),
    ('app:get("/a", function() end)\napp:get("/a", function() end)',
     ["duplicate route: GET /a (", "app.lua:4)", "app.lua:3)"]),
])
def test_a_route_mistake_stops_the_server_from_starting(tmp_path, body, needles):
    app = tmp_path / "app.lua"
    app.write_text('local lariat = require "lariat"\nlocal app = lariat.app()\n%s\nreturn app\n' % body)
    proc = run_app(app)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    for needle in needles:
        assert needle in err, (needle, err)


# -- mistakes at run time: a 500 and a log line, JSON for JSON clients ---------

APP = r"""
local lariat = require "lariat"
local app = lariat.app()
app:get("/", function() return "ok" end)
app:get("/bad-status", function() return 999, {}, "x" end)
app:get("/bad-status/:id", function() return 42 end)
app:get("/boom", function() error("kaboom") end)
app:post("/json", function(req) return req:json() end)
app:post("/multi", function(req)
  for part in req:multipart{ max_parts = 1 } do part:body() end
  return "ok"
end)
app:get("/url", function() return { u = "http://example.com/a/b" } end)
return app
"""


@pytest.fixture
def errors_app(tmp_path, start_server):
    app = tmp_path / "errors.lua"
    app.write_text(APP)
    return start_server(str(app), "--workers", "1")


def get(srv, path, headers=(), method="GET", body=b""):
    hs = list(headers)
    if body:
        hs.append(("content-length", str(len(body))))
    return exchange(srv, request(method, path, hs, body), method=method)


ACCEPT_JSON = [("accept", "application/json")]


def test_a_status_outside_100_to_599_is_a_500_naming_the_route(errors_app):
    for attempt in (1, 2):
        r = get(errors_app, "/bad-status")
        assert r.status == 500
        r = get(errors_app, "/bad-status/7")
        assert r.status == 500
    # the line is written before the answer, but read through a pipe: wait for it
    wait_for(lambda: "returned status 42" in errors_app.log_text())
    log = errors_app.log_text()
    assert re.search(r"GET /bad-status: route GET /bad-status \(.*errors\.lua:5\) returned status 999", log), log
    assert re.search(r"route GET /bad-status/:id \(.*errors\.lua:6\) returned status 42", log), log
    assert get(errors_app, "/").status == 200


def test_lariat_errors_are_json_for_json_clients_and_text_otherwise(errors_app):
    cases = [("GET", "/nope", b"", 404, "not found"),
             ("DELETE", "/", b"", 405, "method not allowed"),
             ("GET", "/boom", b"", 500, "internal server error")]
    for method, path, body, status, msg in cases:
        r = get(errors_app, path, ACCEPT_JSON, method=method, body=body)
        assert r.status == status
        assert r.header("content-type") == "application/json", (path, r.header("content-type"))
        assert json.loads(r.body) == {"error": msg, "status": status}
        r = get(errors_app, path, [("accept", "text/html,*/*;q=0.8")], method=method, body=body)
        assert r.status == status
        assert r.header("content-type").startswith("text/plain"), path


def test_req_json_answers_a_malformed_body_with_a_json_400(errors_app):
    for attempt in (1, 2):
        r = get(errors_app, "/json", [("content-type", "application/json")], method="POST", body=b"{oops")
        assert r.status == 400
        assert r.header("content-type") == "application/json"
        v = json.loads(r.body)
        assert v["status"] == 400 and v["error"].startswith("malformed JSON: "), v
    r = get(errors_app, "/json", method="POST", body=b'{"a":1}')
    assert (r.status, json.loads(r.body)) == (200, {"a": 1})


def test_a_413_from_the_lua_layer_is_json_for_json_clients(errors_app):
    body = (b"--b\r\ncontent-disposition: form-data; name=\"a\"\r\n\r\n1\r\n"
            b"--b\r\ncontent-disposition: form-data; name=\"b\"\r\n\r\n2\r\n--b--\r\n")
    r = get(errors_app, "/multi", ACCEPT_JSON + [("content-type", "multipart/form-data; boundary=b")],
            method="POST", body=body)
    assert r.status == 413
    assert json.loads(r.body) == {"error": "too many multipart parts", "status": 413}


def test_json_leaves_slashes_alone(errors_app):
    assert get(errors_app, "/url").body == b'{"u":"http://example.com/a/b"}'


ON_ERROR_APP = r"""
local lariat = require "lariat"
local app = lariat.app()
app:get("/boom", function() error("kaboom") end)
app:get("/teapot", function() error(lariat.http_error(418, "short and stout")) end)
app:on_error(function(req, err)
  return err.status, { ["content-type"] = "application/json" },
    lariat.json.encode { error = err.message, kind = err.kind, route = err.route, path = req.path }
end)
return app
"""


def test_on_error_shapes_every_error_answer(tmp_path, start_server):
    app = tmp_path / "app.lua"
    app.write_text(ON_ERROR_APP)
    srv = start_server(str(app), "--workers", "1")
    for attempt in (1, 2):
        r = get(srv, "/boom")
        v = json.loads(r.body)
        assert r.status == 500 and v["kind"] == "error" and v["route"] == "/boom", v
        assert "kaboom" in v["error"]
        r = get(srv, "/teapot")
        assert (r.status, json.loads(r.body)["error"]) == (418, "short and stout")
        r = get(srv, "/missing")
        assert (r.status, json.loads(r.body)["kind"]) == (404, "not_found")
        assert wait_for(lambda: "kaboom" in srv.log_text()), srv.log_text()  # the traceback still goes to the log


# -- the access log: the core's --access-log is the one to use -----------------

def test_core_access_log_records_core_413_and_head(tmp_path, start_server):
    log = tmp_path / "access.log"
    app = tmp_path / "errors.lua"
    app.write_text(APP)
    srv = start_server(str(app), "--workers", "1", "--max-body", "10", "--access-log", str(log))
    assert get(srv, "/json", method="POST", body=b"x" * 100).status == 413
    assert get(srv, "/", method="HEAD").status == 200
    assert wait_for(lambda: log.exists() and log.read_text().count("\n") >= 2)
    lines = log.read_text().splitlines()
    assert re.search(r'"POST /json HTTP/1.1" 413 ', lines[0]), lines
    assert re.search(r'"HEAD / HTTP/1.1" 200 0 ', lines[1]), lines


# -- --watch: the app's Lua files, not what it writes -------------------------

WATCH_APP = r"""
local lariat = require "lariat"
local store = require "store"
local app = lariat.app()
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")
app:post("/write", function(req)
  local log = assert(io.open(here .. "/app.log", "a")); log:write("line\n"); log:close()
  local db = assert(io.open(here .. "/data.db", "a")); db:write("row"); db:close()
  local j = assert(io.open(here .. "/data.db-journal", "w")); j:write("j"); j:close()
  os.remove(here .. "/data.db-journal")
  return "written"
end)
app:get("/", function() return "%s " .. store.v end)
return app
"""


def reloads(srv):
    return srv.log_text().count("reloading the app (files changed)")


def test_watch_reloads_for_the_app_and_its_modules_not_for_its_logs_and_data(tmp_path):
    (tmp_path / "store.lua").write_text('return { v = "s1" }\n')
    app = tmp_path / "app.lua"
    app.write_text(WATCH_APP % "a1")
    # started from elsewhere: --watch and require work from the app's directory
    srv = LariatServer(str(app), "--watch", "--workers", "1", cwd="/").start()
    try:
        assert wait_for(lambda: "--watch: watching" in srv.log_text()), srv.log_text()
        for _ in range(10):
            assert get(srv, "/write", method="POST", body=b"x").body == b"written"
        (tmp_path / "notes.txt").write_text("not code")
        time.sleep(0.6)  # three debounce periods: a reload would have happened
        assert reloads(srv) == 0, srv.log_text()

        app.write_text(WATCH_APP % "a2")
        assert wait_for(lambda: get(srv, "/").body == b"a2 s1")
        tmp = tmp_path / "store.lua.tmp"  # the editor's way: write aside, rename over
        tmp.write_text('return { v = "s2" }\n')
        os.replace(tmp, tmp_path / "store.lua")
        assert wait_for(lambda: get(srv, "/").body == b"a2 s2")
        time.sleep(0.5)
        assert reloads(srv) == 2, srv.log_text()
        get(srv, "/write", method="POST", body=b"x")  # the second time too
        time.sleep(0.5)
        assert reloads(srv) == 2, srv.log_text()
        srv.check_healthy()
    finally:
        srv.stop()
