-- lariat: the module handlers `require`.
--
--   lariat.app()                      a new app (lariat.app)
--   lariat.load_app(v, filename)      called by C with APP.lua's result → dispatch
--   lariat.sleep(s), lariat.now()     yield for s seconds / loop time in seconds
--                                     (sleep returns nil, "stopping" on SIGTERM)
--   lariat.stats()                    { handlers=, waiting=, connections=, versions=, tasks= } of this worker
--   lariat.spawn(fn, ...)             run fn in a coroutine of its own
--   lariat.every(s, fn)/after(s, fn)  timers of this worker → timer:cancel()
--   lariat.stopping()                 true once the server drains (SIGTERM)
--   lariat.metrics.counter/gauge/histogram/handler  Prometheus metrics
--   lariat.channel(name)              pub/sub across every worker (chat rooms)
--   lariat.json.encode/decode/null    JSON (decode returns nil, msg on error)
--   lariat.log.debug/info/warn/error  log lines through the server's log
--   lariat.http_error(status, msg[, headers])  an error value C answers as is
--   lariat.static(dir, opts)          static files handler/middleware
--   lariat.middleware.access_log/request_id/cors/gzip/basic_auth(opts)
--   lariat.limits                     bounds of the request helpers
-- Not loaded here: require "lariat.test" (a client for testing an app from
-- busted, spawning the server; see lariat/test.lua).
-- Request helpers (req:query(), req:form(), …) live in lariat.request and are
-- installed into the C req methods when the core is found.
local app = require "lariat.app"
local http_error = require "lariat.http_error"
local runtime = require "lariat.runtime"

local lariat = {
  _VERSION = "lariat 0.1",
  json = require "lariat.json",
  log = require "lariat.log",
  limits = require "lariat.limits",
  url = require "lariat.url",
  metrics = require "lariat.metrics",
}

function lariat.app()
  return app.new()
end

function lariat.http_error(status, message, headers)
  return http_error.new(status, message, headers)
end

local function core_or_fail(what)
  local core = runtime.core()
  if not core then error(what .. " needs the lariat server (lariat.core is not loaded)", 3) end
  return core
end

-- SQL NULL and JSON null are one value: a row read from a database encodes as is.
lariat.null = lariat.json.null

-- sqlite.open(path[, {timeout=30, busy_timeout=5, cache=64, readonly=false}]) → db | nil, err
--   db:query(sql, ...) → rows | nil, err   (? parameters; rows.changes, rows.last_insert_id)
--   db:exec(script) → true | nil, err;  db:transaction(function(tx) … end) → fn's results | nil, err
-- Queries run on the database's own thread; the handler waits without blocking the worker.
lariat.sqlite = {}
function lariat.sqlite.open(path, opts)
  return core_or_fail("lariat.sqlite").sqlite_open(path, opts)
end

-- redis.connect(url[, {timeout=seconds}]) → r: a handle on this worker's client for url
--   (redis://[user:password@]host[:port][/db][?timeout=s]); r:call(cmd, ...), r:get(k), … any
--   command as a method; r:pipeline(fn) → {replies}; r:subscribe(ch, ...) → sub; sub:recv([t])
lariat.redis = {}
function lariat.redis.connect(url, opts)
  return core_or_fail("lariat.redis").redis_connect(url, opts)
end

-- pg.connect(url_or_conninfo[, {pool=10, timeout=30}]) → db: a handle on this worker's pool
--   db:query(sql, ...) ($1 parameters), db:exec(script), db:transaction(fn), db:listen(channel) → sub
lariat.pg = {}
function lariat.pg.connect(url, opts)
  return core_or_fail("lariat.pg").pg_connect(url, opts)
end

-- sleep(seconds): suspends the current request's coroutine; the loop runs on.
function lariat.sleep(seconds)
  return core_or_fail("lariat.sleep").sleep(seconds)
end

-- stats() → { handlers = live request handlers, waiting = suspended
-- coroutines, connections = open connections, versions = app versions
-- alive, tasks = spawned/timer/on_start coroutines waiting } of this worker.
function lariat.stats()
  return core_or_fail("lariat.stats").stats()
end

-- now() → seconds (float) of the loop clock.
function lariat.now()
  return core_or_fail("lariat.now").now()
end

-- spawn(fn, ...): run fn(...) in a coroutine of its own, from the next loop
-- tick. It may wait (sleep, ws:recv, sub:recv) like a handler.
function lariat.spawn(fn, ...)
  return core_or_fail("lariat.spawn").spawn(fn, ...)
end

-- tcp.connect(host, port[, {tls=, sni=, verify=true, ca=, timeout=}]) → sock | nil, err
--   sock:send(data) → bytes; sock:receive(n | "*l" | "*a") → data | nil, err, partial;
--   sock:settimeout(s); sock:setkeepalive([idle_s[, size]]); sock:close()
-- dns.resolve(name) → { "addr", ... } | nil, err   (cached per worker)
lariat.tcp = {}
function lariat.tcp.connect(host, port, opts)
  return core_or_fail("lariat.tcp.connect").tcp_connect(host, port, opts)
end
lariat.dns = {}
function lariat.dns.resolve(name)
  return core_or_fail("lariat.dns.resolve").dns_resolve(name)
end

-- http.request{url=, method="GET", headers=, body=, timeout=10, connect_timeout=,
--               read_timeout=, verify=true, ca=, max_body=8 MiB, stream=false}
--   → res { status=, headers=, body=, version= } | nil, err
--   stream = true: no res.body; res:read() → chunk | nil (end) | nil, err
--   body: a string, or a function returning the next chunk (nil or "" ends it)
-- http.get(url[, opts]), http.post(url, body[, opts])
lariat.http = require("lariat.http_client")(core_or_fail)
-- proxy(upstream_url[, opts]) → handler: reverse proxy (lua/lariat/proxy.lua)
lariat.proxy = require("lariat.proxy")(core_or_fail)

-- every(seconds, fn) / after(seconds, fn) → timer: fn(timer) runs in a
-- coroutine of its own every `seconds` (or once after them) on this worker;
-- it may wait. A tick that overruns delays the next one (ticks never
-- overlap). timer:cancel() stops it; a reload stops the old version's timers.
-- Work at load time (they start once the version's on_start hooks ended), in
-- hooks and in handlers. Returns nil, "stopping" while the server drains.
function lariat.every(seconds, fn)
  return core_or_fail("lariat.every").every(seconds, fn)
end

function lariat.after(seconds, fn)
  return core_or_fail("lariat.after").after(seconds, fn)
end

-- stopping() → true once the server has been asked to stop: a long job or a
-- streaming handler can end early.
function lariat.stopping()
  return core_or_fail("lariat.stopping").stopping()
end

-- channel(name): publish/subscribe between coroutines, across every worker
-- (a message published in one worker reaches the subscribers of all).
--   ch:publish(msg)          msg is a string; returns the subscribers reached
--                            in this worker (the others get it from their loop)
--   ch:subscribe{max_queued=1000} → sub: sub:recv([timeout]), sub:each(),
--                            sub:close() (also `local sub <close> = ...`)
--   ch:subscribers()         how many subscriptions are open in this worker
-- With --redis the channel spans every instance using that Redis: publish and
-- subscribe then wait for Redis (nil, "redis unavailable: …" while it is down).
local Channel = {}
Channel.__index = Channel

function Channel:publish(msg)
  if type(msg) ~= "string" then error("channel:publish: message must be a string (encode tables with lariat.json)", 2) end
  return core_or_fail("lariat.channel").ch_publish(self.name, msg)
end

function Channel:subscribe(opts)
  return core_or_fail("lariat.channel").ch_subscribe(self.name, opts and opts.max_queued)
end

function Channel:subscribers()
  return core_or_fail("lariat.channel").ch_count(self.name)
end

function lariat.channel(name)
  if type(name) ~= "string" or name == "" then error("lariat.channel: name must be a non-empty string", 2) end
  return setmetatable({ name = name }, Channel)
end

-- shared(name[, {size = bytes}]): a dictionary shared by every worker (and
-- every reloaded version of the app): get/set/add/incr/delete/ttl/keys on
-- strings, numbers, booleans and tables, per-key expiry, LRU eviction at the
-- size cap (default 64 MiB). The first call with a name creates it.
--   local hits = lariat.shared("hits")
--   hits:incr("/", 1, 0)          → new count (atomic across workers)
--   hits:set("k", {a = 1}, 60)    → true, or nil, err; expires in 60 s
-- With --redis the dictionary lives in Redis, shared by every instance using
-- it; each call then waits for Redis (so only where a coroutine can wait) and
-- `size` is Redis's maxmemory business.
function lariat.shared(name, opts)
  return core_or_fail("lariat.shared").shared(name, opts)
end

-- worker_id() → this worker's number, 0 .. --workers - 1
function lariat.worker_id()
  return core_or_fail("lariat.worker_id").worker_id
end

-- static(dir, opts): a relative dir is taken from the app file's directory,
-- not from wherever the server was started (outside the server, e.g. under
-- busted, from the directory of the file calling lariat.static).
function lariat.static(dir, opts)
  if type(dir) == "string" and dir:sub(1, 1) ~= "/" then
    local core = runtime.core()
    local file = core and core.app_file
    if not file then
      local src = debug.getinfo(2, "S").source
      file = src:sub(1, 1) == "@" and src:sub(2) or nil
    end
    local base = file and file:match("^(.*)/[^/]*$")
    if base then dir = base .. "/" .. dir end
  end
  return require("lariat.static")(dir, opts)
end

-- lariat.middleware.<name>(opts) → a middleware fn(req, next); loaded on use.
lariat.middleware = setmetatable({}, {
  __index = function(t, name)
    local ok, mod = pcall(require, "lariat.middleware." .. name)
    if not ok then error("lariat.middleware." .. tostring(name) .. ": " .. tostring(mod), 2) end
    rawset(t, name, mod)
    return mod
  end,
})

-- load_app(v, filename) → dispatch(req, method, path), start, direct where
-- start() runs the on_start hooks (C runs it on each worker in a coroutine; nil
-- without hooks) and direct lists the literal routes C may run without
-- dispatch (see App:compile; nil when it may not). Raises a message
-- naming the file when APP.lua did not return an app.
function lariat.load_app(v, filename)
  runtime.core() -- installs the request helpers into the real core
  filename = filename or "app"
  if not app.is_app(v) then
    local got = type(v)
    if getmetatable(v) == app.App then got = "a host scope; return the app itself" end
    error(("%s: must return a lariat app (got %s)"):format(filename, got), 0)
  end
  local ok, dispatch, direct = pcall(app.App.compile, v)
  if not ok then error(("%s: %s"):format(filename, tostring(dispatch)), 0) end
  local hooks = app.start_hooks(v)
  if #hooks == 0 then return dispatch, nil, direct end
  return dispatch, function()
    for _, f in ipairs(hooks) do f() end
  end, direct
end

return lariat
