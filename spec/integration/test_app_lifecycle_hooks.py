"""App lifecycle: app:on_start hooks (once per worker per app version, before
it serves, may wait; an error rejects the version), lariat.every/after timers
and lariat.spawn at load time (they belong to their version: a reload stops
them, so a job never doubles and old Lua states are freed), and
lariat.stopping()."""

import json
import os
import signal
import subprocess
import time

from conftest import LariatServer, SANITIZER_RE, SLOW, lariat_bin, request, wait_for


# {version}: a number; {hook}: Lua code run in on_start
APP = """
local lariat = require "lariat"
local app = lariat.app()
local V = %(version)d
local st = lariat.shared("st")
local ready = false
app:on_start(function()
  %(hook)s
  st:incr("starts" .. V, 1, 0)
  ready = true
end)
-- a job per worker: counts its ticks per version
lariat.every(0.02, function() st:incr("ticks" .. V, 1, 0) end)
-- a load-time task that never ends by itself; its to-be-closed variable
-- says when it is cancelled
lariat.spawn(function()
  local guard <close> = setmetatable({}, { __close = function() st:incr("closed" .. V, 1, 0) end })
  st:incr("spawned" .. V, 1, 0)
  while true do lariat.sleep(0.02) end
end)
app:get("/", function()
  return { v = V, ready = ready, stats = lariat.stats(), worker = lariat.worker_id() }
end)
app:get("/st", function()
  local t = {}
  for _, k in ipairs(st:keys()) do t[k] = st:get(k) end
  return t
end)
return app
"""


def write_app(path, version, hook=""):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(APP % {"version": version, "hook": hook})
    os.replace(tmp, path)


def get_json(srv, path="/"):
    with srv.connect() as c:
        c.send(request("GET", path))
        r = c.read_response()
        assert r.status == 200, r
        return json.loads(r.body)


def wait_log(srv, needle, timeout=5):
    return wait_for(lambda: needle in srv.log_text(), timeout, repr(needle))


def run_to_exit(app, *options, timeout=10):
    p = subprocess.run([lariat_bin(), "--listen", "127.0.0.1:0", *options, str(app)],
                       capture_output=True, text=True, timeout=timeout * SLOW)
    return p.returncode, p.stdout, p.stderr


def test_on_start_runs_once_per_worker_and_may_wait_before_the_first_request(tmp_path, start_server):
    """Every worker's hooks ended (after a sleep) before "listening" was
    printed: the very first request sees ready = true, and each worker ran
    them once."""
    app = tmp_path / "app.lua"
    write_app(app, 1, hook="lariat.sleep(0.3)")
    t0 = time.monotonic()
    srv = start_server(str(app), "--workers", "2")
    assert time.monotonic() - t0 >= 0.3
    for _ in range(10):
        r = get_json(srv)
        assert r["ready"] is True and r["v"] == 1
    assert get_json(srv, "/st")["starts1"] == 2


def test_an_on_start_error_at_startup_exits_2_with_the_message(tmp_path):
    """An error in a hook (after a wait) is a startup failure: exit status 2,
    the message on stderr, no listener announced. The second time too."""
    app = tmp_path / "app.lua"
    write_app(app, 1, hook='lariat.sleep(0.05); error("no database here")')
    for _ in range(2):
        rc, out, err = run_to_exit(app, "--workers", "2")
        assert rc == 2, (rc, err)
        assert "listening on" not in out
        assert "on_start: " in err and "app.lua" in err and "no database here" in err, err


def test_a_reload_serves_the_old_version_until_the_new_hooks_end(tmp_path, start_server):
    """During a reload the worker keeps serving v1 while v2's on_start sleeps;
    then v2 serves, and only after its hook ran."""
    app = tmp_path / "app.lua"
    write_app(app, 1)
    srv = start_server(str(app), "--workers", "1")
    assert get_json(srv)["v"] == 1
    write_app(app, 2, hook="lariat.sleep(0.8)")
    os.kill(srv.pid, signal.SIGHUP)
    wait_log(srv, "reloading the app")
    t0 = time.monotonic()
    seen_old = 0
    while True:
        r = get_json(srv)
        if r["v"] == 2:
            assert r["ready"] is True
            break
        seen_old += 1
        assert time.monotonic() - t0 < 5 * SLOW, "v2 never took over"
        time.sleep(0.05)
    assert seen_old >= 3  # v1 kept serving while the hook slept
    assert time.monotonic() - t0 >= 0.5


def test_an_on_start_error_at_reload_keeps_the_old_version(tmp_path, start_server):
    """A failing hook rejects the reload with a log line naming the error;
    v1 serves on, its timer still ticks. The second time too; then a good
    reload is taken."""
    app = tmp_path / "app.lua"
    write_app(app, 1)
    srv = start_server(str(app), "--workers", "2")
    for attempt in range(2):
        write_app(app, 2 + attempt, hook='lariat.sleep(0.05); error("schema missing %d")' % attempt)
        os.kill(srv.pid, signal.SIGHUP)
        wait_for(lambda: srv.log_text().count("schema missing %d" % attempt) >= 2, 5, "rejection")
        wait_for(lambda: srv.log_text().count("reload rejected, still serving the previous version: on_start: ")
                 >= 2 * (attempt + 1), 5, "a rejection per worker")
        r = get_json(srv)
        assert r["v"] == 1 and r["ready"] is True
        # the rejected version's timers and tasks never ran or are gone
        wait_for(lambda: get_json(srv)["stats"]["versions"] == 1, 5, "rejected state freed")
        st = get_json(srv, "/st")
        assert "ticks%d" % (2 + attempt) not in st and "spawned%d" % (2 + attempt) not in st
    ticks = get_json(srv, "/st")["ticks1"]
    wait_for(lambda: get_json(srv, "/st")["ticks1"] > ticks, 3, "v1 ticks on")
    write_app(app, 9)
    os.kill(srv.pid, signal.SIGHUP)
    wait_for(lambda: get_json(srv)["v"] == 9, 5, "v9")


def test_a_reload_stops_the_old_versions_timers_and_tasks(tmp_path):
    """After each of two reloads, the old version's timer stops ticking, its
    load-time task is cancelled (its to-be-closed variable ran), the old Lua
    state is freed, and exactly one job per worker runs."""
    app = tmp_path / "app.lua"
    write_app(app, 1)
    srv = LariatServer(str(app), "--workers", "2").start()
    try:
        reload_twice_then_stop(srv, app)
    finally:
        srv.stop()
    assert not SANITIZER_RE.search(srv.stderr_text()), srv.stderr_text()[-4000:]


def reload_twice_then_stop(srv, app):
    wait_for(lambda: (lambda s: s.get("spawned1") == 2 and s.get("ticks1"))(get_json(srv, "/st")), 3,
             "v1 tasks and ticks")
    for v in (2, 3):
        write_app(app, v)
        os.kill(srv.pid, signal.SIGHUP)
        wait_for(lambda: srv.log_text().count("app reloaded (generation %d)" % (v - 1)) >= 2, 5, "reload")
        old = v - 1
        st = wait_for(lambda: (lambda s: s if s.get("closed%d" % old) == 2 else None)(get_json(srv, "/st")),
                      3, "old tasks cancelled")
        frozen = st["ticks%d" % old]
        wait_for(lambda: get_json(srv, "/st").get("spawned%d" % v) == 2, 3, "new tasks")
        time.sleep(0.2)
        st = get_json(srv, "/st")
        assert st["ticks%d" % old] == frozen, "the old timer ticks on after the reload"
        assert st.get("ticks%d" % v, 0) > 0
        # one version alive per worker, and only its one task (plus a timer
        # tick at most) waiting
        for _ in range(6):
            r = get_json(srv)
            assert r["stats"]["versions"] == 1, r
            assert 1 <= r["stats"]["tasks"] <= 2, r
    # SIGTERM: the endless task is told once (its sleep returns nil,
    # "stopping"), cancelled at its next wait: it does not hold the exit
    t0 = time.monotonic()
    assert srv.stop(timeout=10) == 0
    assert time.monotonic() - t0 < 2 * SLOW


TIMERS = """
local lariat = require "lariat"
local app = lariat.app()
local st = { running = 0, max_running = 0, ticks = 0, once = 0, self_cancel = 0 }
-- overrunning ticks: every 0.05 s, each takes 0.2 s
local slow = lariat.every(0.05, function()
  st.running = st.running + 1
  if st.running > st.max_running then st.max_running = st.running end
  st.ticks = st.ticks + 1
  lariat.sleep(0.2)
  st.running = st.running - 1
end)
lariat.after(0.01, function() st.once = st.once + 1 end)
lariat.every(0.01, function(t)
  st.self_cancel = st.self_cancel + 1
  if st.self_cancel == 3 then t:cancel() end
end)
app:get("/st", function() return st end)
app:get("/stop-slow", function() return { was = slow:cancel(), active = slow:active() } end)
-- a timer made in a handler and not kept anywhere: never collected while active
app:get("/anon", function()
  st.anon = 0
  lariat.every(0.01, function() st.anon = st.anon + 1 end)
  return "ok"
end)
app:get("/gc", function() collectgarbage(); collectgarbage(); return "ok" end)
app:get("/bad", function()
  local ok, err = pcall(lariat.every, 0, function() end)
  return { ok = ok, err = tostring(err) }
end)
return app
"""


def test_timers_tick_without_overlap_cancel_and_survive_gc(tmp_path, start_server):
    app = tmp_path / "timers.lua"
    app.write_text(TIMERS)
    srv = start_server(str(app), "--workers", "1")
    time.sleep(1.0)
    st = get_json(srv, "/st")
    assert st["max_running"] == 1, st          # a tick that overruns delays the next
    assert 2 <= st["ticks"] <= 6, st           # ~ every 0.2 s, not every 0.05 s
    assert st["once"] == 1 and st["self_cancel"] == 3, st
    r = get_json(srv, "/stop-slow")
    assert r == {"was": True, "active": False}
    time.sleep(0.3)
    n = get_json(srv, "/st")["ticks"]
    time.sleep(0.4)
    assert get_json(srv, "/st")["ticks"] == n  # cancelled: no more ticks
    assert get_json(srv, "/stop-slow") == {"was": False, "active": False}
    with srv.connect() as c:
        c.send(request("GET", "/anon"))
        assert c.read_response().body == b"ok"
        c.send(request("GET", "/gc"))
        assert c.read_response().body == b"ok"
    a = get_json(srv, "/st")["anon"]
    wait_for(lambda: get_json(srv, "/st")["anon"] > a + 5, 3, "anonymous timer ticks after a full GC")
    r = get_json(srv, "/bad")
    assert r["ok"] is False and "interval" in r["err"], r


STOPPING = """
local lariat = require "lariat"
local app = lariat.app()
lariat.every(0.01, function() end)
app:get("/feed", function(req)
  req:stream_reply(200, { ["content-type"] = "text/plain" })
  local n = 0
  while not lariat.stopping() do
    n = n + 1
    req:write("tick\\n")
    lariat.sleep(0.05)
  end
  req:write("bye " .. tostring(lariat.stopping()) .. "\\n")
end)
return app
"""


def test_a_handler_sees_stopping_and_timers_do_not_hold_the_exit(tmp_path):
    """A streaming handler polls lariat.stopping() and ends its response on
    SIGTERM; a running timer does not keep the server alive: exit 0 promptly."""
    app = tmp_path / "stop.lua"
    app.write_text(STOPPING)
    srv = LariatServer(str(app), "--workers", "1").start()
    try:
        with srv.connect(timeout=5 * SLOW) as c:
            c.send(request("GET", "/feed"))
            c.read_until(b"tick\n")
            t0 = time.monotonic()
            os.kill(srv.pid, signal.SIGTERM)
            rest = c.read_until(b"0\r\n\r\n")
            assert b"bye true\n" in rest
        srv.proc.wait(5 * SLOW)
        assert srv.proc.returncode == 0
        assert time.monotonic() - t0 < 3 * SLOW
    finally:
        srv.stop()
