-- lariat.app: the app object (routes, middleware, mounts, hosts) and the
-- dispatch function C calls for every request.
--
-- Order of work for one request:
--   1. the path is made canonical once (lariat.path); a path that cannot be
--      (bad escape, encoded "/" or NUL) is answered 400;
--   2. app:use middlewares of the root app run, in order, for every request
--      (including ones that end up 404), prefixed ones only under their prefix;
--   3. the router picks the route (404, 405 with allow, automatic OPTIONS);
--   4. the route's own middlewares run: those of the apps it was mounted
--      through (their app:use entries, outermost first), then the route's list;
--   5. the handler; its result is normalised to status, headers, body.
-- Handlers are not wrapped in pcall: errors go to C (500, or the status of a
-- lariat.http_error value), unless the app set app:on_error, whose dispatch
-- runs under xpcall (only those apps pay for it).
local http_error = require "lariat.http_error"
local json = require "lariat.json"
local lpath = require "lariat.path"
local router_mod = require "lariat.router"
local runtime = require "lariat.runtime"
local find, byte, sub = string.find, string.byte, string.sub
local pick = router_mod.pick

local M = {}

-- Shared constant headers: C never modifies them, so results cost no table.
local TEXT = { ["content-type"] = "text/plain; charset=utf-8" }
local JSON = { ["content-type"] = "application/json" }
M.TEXT, M.JSON = TEXT, JSON

local App = {}
App.__index = App
M.App = App

function M.new()
  return setmetatable({ _entries = {}, _use = {} }, App)
end

function M.is_app(v)
  return getmetatable(v) == App and rawget(v, "_root") == nil
end

local function callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return type(mt) == "table" and mt.__call ~= nil
end

local function methods_of(spec)
  if spec == "*" then return "*" end
  local list = {}
  if type(spec) == "string" then
    for m in spec:gmatch("[^,%s]+") do list[#list + 1] = m:upper() end
  elseif type(spec) == "table" then
    for _, m in ipairs(spec) do list[#list + 1] = tostring(m):upper() end
  end
  if #list == 0 then error("methods must be \"*\", \"GET,POST\" or {\"GET\", \"POST\"}", 0) end
  for _, m in ipairs(list) do
    if m == "*" then return "*" end
    if not m:match("^[A-Z][A-Z_%-]*$") then error("bad method name " .. m, 0) end
  end
  return list
end

-- The common part of every route registration. `level` points error
-- messages at the user's line.
local function where(level)
  local info = debug.getinfo(level + 1, "Sl")
  if not info or info.currentline < 0 then return nil end
  return (info.short_src or "?") .. ":" .. info.currentline
end

local function add(self, kind, methods, pattern, opts, handler)
  local root = rawget(self, "_root") or self
  if not callable(handler) then
    error("route " .. tostring(pattern) .. ": handler must be a function, got " .. type(handler), 3)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("route " .. tostring(pattern) .. ": options must be a table (middleware list, constraints=)", 3)
  end
  local mws = {}
  for i, f in ipairs(opts or {}) do
    if not callable(f) then error(("route %s: middleware #%d is not a function"):format(pattern, i), 3) end
    mws[i] = { fn = f }
  end
  local ok, m = pcall(methods_of, methods)
  if not ok then error("route " .. tostring(pattern) .. ": " .. m, 3) end
  local constraints = opts and opts.constraints
  local timeout = opts and opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error("route " .. tostring(pattern) .. ": timeout must be seconds >= 0 (0: no limit)", 3)
  end
  local ok2, err = pcall(router_mod.check, pattern, constraints)
  if not ok2 then error("route " .. tostring(pattern) .. ": " .. err, 3) end
  local entry = {
    kind = kind, methods = m, pattern = pattern, host = rawget(self, "_host"),
    constraints = constraints, handler = handler, middleware = mws, timeout = timeout,
    where = where(3), -- the user's line, for duplicate and status messages
  }
  if kind == "ws" then
    -- what C receives as the third value: the options without lariat's own keys
    local wso = {}
    for k, v in pairs(opts or {}) do
      if type(k) ~= "number" and k ~= "constraints" and k ~= "timeout" then wso[k] = v end
    end
    entry.ws_opts = wso
  end
  local entries = root._entries
  entries[#entries + 1] = entry
end

-- get/post/put/patch/delete/options/head(path, [opts,] handler) where opts
-- is a list of middlewares plus optional `constraints = {name = spec}` and
-- `timeout = seconds` (the handler's --handler-timeout; 0: no limit).
for _, verb in ipairs { "get", "post", "put", "patch", "delete", "options", "head" } do
  local method = verb:upper()
  App[verb] = function(self, path, a, b)
    if b == nil then a, b = nil, a end
    add(self, "http", method, path, a, b)
    return self
  end
end

-- route(methods, path, [opts,] handler): methods "GET,POST", {"GET"} or "*".
function App:route(methods, path, a, b)
  if b == nil then a, b = nil, a end
  add(self, "http", methods, path, a, b)
  return self
end

-- all(path, [opts,] handler): any method.
function App:all(path, a, b)
  if b == nil then a, b = nil, a end
  add(self, "http", "*", path, a, b)
  return self
end

-- ws(path, [opts,] handler), or the older ws(path, handler, opts): a
-- WebSocket route. dispatch answers it with "websocket", handler, opts and C
-- upgrades and runs handler(ws, req). opts may hold middlewares (array
-- part), constraints, and options for C.
function App:ws(path, a, b)
  local opts, handler = a, b
  if b == nil or (callable(a) and not callable(b)) then opts, handler = b, a end
  add(self, "ws", "GET", path, opts, handler)
  return self
end

-- on_error(fn(req, err)): called for every error answer the Lua layer makes
-- (404, 405, a bad path, an error raised by a handler or middleware, a
-- lariat.http_error raised by req:json() and friends). err has status,
-- message, kind, error (the raised value), traceback, route, headers and body
-- (lariat's own answer). fn returns a response like a handler does, or
-- nothing to send lariat's own. Setting it wraps dispatch in xpcall.
function App:on_error(fn)
  if rawget(self, "_root") then error("on_error() is not available on a host scope; set it on the app", 2) end
  if not callable(fn) then error("on_error: expected a function, got " .. type(fn), 2) end
  self._on_error = fn
  return self
end

-- use([prefix,] fn(req, next)): middleware. On the root app it runs for every
-- request (under `prefix` when given); on a mounted app, for its routes.
function App:use(a, b)
  if rawget(self, "_host") then
    error("use() is not available on a host scope; use per-route middleware or mount an app", 2)
  end
  local prefix, fn = nil, a
  if type(a) == "string" then
    local ok, p = pcall(lpath.prefix, a)
    if not ok then error(p, 2) end
    if p ~= "/" then prefix = p end
    fn = b
  end
  if not callable(fn) then error("use: middleware must be a function, got " .. type(fn), 2) end
  self._use[#self._use + 1] = { prefix = prefix, fn = fn }
  return self
end

-- on_start(fn): fn() runs once per worker per app version, in a coroutine
-- (it may wait: sleep, sockets, databases), before the version serves; hooks
-- run in the order they were added, those of mounted apps after the root's.
-- An error in one rejects the version (exit 2 at startup; at reload the
-- previous version keeps serving).
function App:on_start(fn)
  if not callable(fn) then error("on_start: expected a function, got " .. type(fn), 2) end
  local root = rawget(self, "_root") or self
  local hooks = rawget(root, "_on_start")
  if not hooks then
    hooks = {}
    root._on_start = hooks
  end
  hooks[#hooks + 1] = fn
  return self
end

-- start_hooks() → the on_start hooks of the app and the apps mounted in it
function M.start_hooks(app, out, seen)
  out, seen = out or {}, seen or {}
  if seen[app] then return out end
  seen[app] = true
  for _, f in ipairs(rawget(app, "_on_start") or {}) do out[#out + 1] = f end
  for _, e in ipairs(app._entries) do
    if e.kind == "mount" then M.start_hooks(e.app, out, seen) end
  end
  return out
end

-- mount(prefix, subapp): subapp's routes appear under prefix. Routes are
-- copied at load_app time, so the sub-app may be completed after mounting.
function App:mount(prefix, sub)
  local root = rawget(self, "_root") or self
  local ok, p = pcall(lpath.prefix, prefix)
  if not ok then error(p, 2) end
  if not M.is_app(sub) then error("mount: expected a lariat app, got " .. type(sub), 2) end
  if sub == root then error("mount: an app cannot be mounted inside itself", 2) end
  root._entries[#root._entries + 1] = { kind = "mount", prefix = p, app = sub, host = rawget(self, "_host") }
  return self
end

-- host(pattern) → a scope with the same route methods (and mount) whose
-- routes only match that host: "api.example.com", ":tenant.example.com"
-- (binding), "*.example.com" (any subdomain, rest in bindings.host_info).
function App:host(pattern)
  if rawget(self, "_host") then error("host(): already a host scope", 2) end
  local ok, err = pcall(router_mod.check_host, pattern)
  if not ok then error("host " .. tostring(pattern) .. ": " .. err, 2) end
  return setmetatable({ _root = self, _host = pattern }, App)
end

-- Compilation ---------------------------------------------------------------

local function join(prefix, pattern)
  if prefix == "" then return pattern end
  if pattern == "/" then return prefix end
  return prefix .. pattern
end

local function concat_lists(a, b)
  local out = {}
  for _, v in ipairs(a) do out[#out + 1] = v end
  for _, v in ipairs(b) do out[#out + 1] = v end
  return out
end

-- Flatten mounts into one list of routes; a mounted app's use() entries
-- become route-level middleware of its routes.
local function flatten(app, prefix, host, chain, out, seen)
  if seen[app] then error("app mounted inside itself", 0) end
  seen[app] = true
  for _, e in ipairs(app._entries) do
    if e.kind == "mount" then
      local sub_prefix = join(prefix, e.prefix)
      local sub_chain = {}
      for _, u in ipairs(chain) do sub_chain[#sub_chain + 1] = u end
      for _, u in ipairs(e.app._use) do
        sub_chain[#sub_chain + 1] = { fn = u.fn, prefix = u.prefix and join(sub_prefix, u.prefix) }
      end
      flatten(e.app, sub_prefix, e.host or host, sub_chain, out, seen)
    else
      out[#out + 1] = {
        kind = e.kind, methods = e.methods, pattern = join(prefix, e.pattern),
        host = e.host or host, constraints = e.constraints, handler = e.handler,
        chain = concat_lists(chain, e.middleware), ws_opts = e.ws_opts, where = e.where, timeout = e.timeout,
      }
    end
  end
  seen[app] = nil
  return out
end

-- A status C could only send as "999 Unknown" is the handler's mistake: a
-- 500 and a log line naming the route, not a response.
local function bad_status(label, s)
  error(("%s returned status %s; a status is an integer 100..599"):format(label, tostring(s)), 0)
end

local function check_status(label, a, b, c)
  if type(a) == "number" and (math.type(a) ~= "integer" or a < 100 or a > 599) then bad_status(label, a) end
  return a, b, c
end

local function route_label(route)
  local m = route.methods == "*" and "*" or table.concat(route.methods, ",")
  return ("route %s %s%s"):format(m, route.pattern, route.where and (" (" .. route.where .. ")") or "")
end

-- normalize(handler results) → status, headers, body (or nothing).
local function normalize(a, b, c)
  local t = type(a)
  if t == "number" then return a, b, c end
  if t == "string" then
    if a == "websocket" and type(b) == "function" then return a, b, c end
    return 200, TEXT, a
  end
  if a == nil then return end
  if t == "table" then
    if http_error.is(a) then return a.status, a.headers, a.body end
    return 200, JSON, json.encode(a)
  end
  error("handler returned a " .. t .. "; expected a string, a table, or status, headers, body", 0)
end
M.normalize = normalize


local under = lpath.under

-- run(chain, i, ...): calls chain[i] with a `next` that continues at i+1 and
-- ends in final(req, x, y, z). Entries with a prefix the path is not under
-- are skipped.
local function run(chain, i, req, cpath, final, x, y, z)
  local e = chain[i]
  while e and e.prefix and not under(cpath, e.prefix) do
    i = i + 1; e = chain[i]
  end
  if not e then return final(req, x, y, z) end
  return e.fn(req, function()
    return run(chain, i + 1, req, cpath, final, x, y, z)
  end)
end

local function call_handler(req, route)
  if route.kind == "ws" then return "websocket", route.handler, route.ws_opts end
  return check_status(route.label, normalize(route.handler(req)))
end

local NOT_FOUND_BODY = "not found\n"

-- lariat's own error answer for req: {"error": msg, "status": n} when the
-- client asks for JSON, text otherwise
local function error_answer(req, status, message, headers)
  local e = http_error.for_request(req, status, message, headers)
  return e.status, e.headers, e.body
end

-- Errors with on_error ------------------------------------------------------

-- the message of a raised value, without the "file:line:" of its position
local function message_of(e)
  if http_error.is(e) then return e.message end
  if type(e) == "table" and math.type(e.status) == "integer" then return tostring(e.body or e.status) end
  return tostring(e)
end

-- Build the error object handed to on_error, and lariat's own answer in it.
local function error_object(req, e, traceback, route)
  local err = { error = e, traceback = traceback, route = route and route.pattern, message = message_of(e) }
  if http_error.is(e) or (type(e) == "table" and math.type(e.status) == "integer") then
    err.kind, err.status, err.headers, err.body = "http_error", e.status, e.headers, e.body
  else
    local status = 500
    if type(e) == "string" and e:find("not enough memory", 1, true) then status = 503 end
    err.kind, err.status = "error", status
    local _
    _, err.headers, err.body = error_answer(req, status, http_error.reasons[status])
  end
  return err
end

local function log_error(req, text)
  require("lariat.log").error("%s %s: %s", req.method, req.path, text)
end

-- Run the app's hook; what it returns is the answer, nothing means lariat's.
-- A hook that fails is logged and the default answer goes out.
local function run_hook(hook, req, err)
  local ok, a, b, c = pcall(hook, req, err)
  if not ok then
    log_error(req, "on_error hook failed: " .. tostring(a))
    return err.status, err.headers, err.body
  end
  if a == nil then return err.status, err.headers, err.body end
  local ok2, s, h, bd = pcall(normalize, a, b, c)
  if not ok2 then
    log_error(req, "on_error hook: " .. tostring(s))
    return err.status, err.headers, err.body
  end
  return check_status("on_error hook", s, h, bd)
end

-- compile() → dispatch(req, method, path)[, direct routes]. load_app calls
-- it once per load.
function App:compile()
  if rawget(self, "_root") then error("compile() on a host scope; compile the app itself", 2) end
  local router = router_mod.new()
  local on_error = self._on_error
  -- fast[path][method] → handler, for literal routes with nothing around
  -- them: the raw path is looked up before any canonicalisation or routing
  -- (a literal route is the most specific match there is)
  local fast, fast_route = {}, {}
  -- metrics on (--metrics, lariat.metrics.handler()): each request is tagged
  -- with its route's id, counted by C when the response ends
  local core = runtime.core()
  local tag = core and core.metrics_on and core.metrics_on() and core.metric_tag
  local plain = core and core.path_plain
  for _, route in ipairs(flatten(self, "", nil, {}, {}, {})) do
    route.label = route_label(route)
    if tag then route.metric_id = core.metric_route((route.host and route.host .. " " or "") .. route.pattern) end
    local ok, err = pcall(router.add, router, route)
    if not ok then
      err = tostring(err)
      if err:find("^duplicate route") then error(err, 0) end
      error("route " .. route.pattern .. ": " .. err, 0)
    end
    local p = route.pattern
    -- (a route with its own timeout goes through call_route, which sets it)
    if route.kind ~= "ws" and not route.host and not route.chain[1] and route.methods ~= "*"
        and route.timeout == nil and not p:find("[:%*%[]") and lpath.canonical(p) == p then
      local f = fast[p] or {}
      fast[p] = f
      fast_route[p] = fast_route[p] or {}
      -- with metrics, the handler tags the request first (the fast path
      -- itself stays as it is)
      local h = route.handler
      if tag then
        local id, inner = route.metric_id, h
        h = function(req) tag(req, id); return inner(req) end
      end
      for _, m in ipairs(route.methods) do
        if f[m] == nil then f[m] = h; fast_route[p][m] = route end
      end
    end
  end
  local global = {}
  for i, u in ipairs(self._use) do global[i] = u end
  local has_global = #global > 0
  local has_hosts = router.has_hosts
  local OPTIONS_ALL = { allow = router:allow_all() }

  -- lariat's own error answers go through the hook when there is one
  local function fail(req, status, message, headers)
    if on_error then
      local e = http_error.for_request(req, status, message, headers)
      local err = { kind = status == 404 and "not_found" or status == 405 and "method_not_allowed" or "bad_request",
                    status = e.status, message = e.message, headers = e.headers, body = e.body }
      return run_hook(on_error, req, err)
    end
    return error_answer(req, status, message, headers)
  end

  local function found(req, cpath, route, b, pi)
    if b then req.bindings = b end
    if pi then req.path_info = pi end
    if tag then tag(req, route.metric_id) end
    if route.timeout then req:set_timeout(route.timeout) end
    if route.chain[1] then
      return check_status(route.label, normalize(run(route.chain, 1, req, cpath, call_handler, route)))
    end
    return call_handler(req, route)
  end

  local function call_route(req, cpath, method, segs)
    if cpath == "*" then
      if method == "OPTIONS" then return 204, OPTIONS_ALL end
      return fail(req, 400, "'*' is only valid with OPTIONS")
    end
    local route, b, pi = router:match(has_hosts and req.host, method, cpath, segs)
    if not route then
      if b then
        if method == "OPTIONS" then return 204, { allow = b } end
        return fail(req, 405, "method not allowed", { allow = b })
      end
      return fail(req, 404, "not found")
    end
    return found(req, cpath, route, b, pi)
  end

  if has_global or has_hosts then fast = {} end
  local wild = (has_global or has_hosts) and {} or router:wild_prefixes()
  if #wild > 8 then wild = {} end -- a linear scan: worth it for a few prefixes only
  local n_wild = #wild
  for p, f in pairs(fast) do
    if f.HEAD == nil and f.GET then -- HEAD falls back to GET, as in the router
      f.HEAD = f.GET
      fast_route[p].HEAD = fast_route[p].GET
    end
  end

  -- normalize for literal routes without middleware (nothing else looks at
  -- the result): C knows 1 and 2 as the text and JSON content types, so a
  -- string or table result costs no header table walk.
  local function normalize_route(label, path, method, a, b, c)
    local t = type(a)
    if t == "string" then
      if a == "websocket" and type(b) == "function" then return a, b, c end
      return 200, 1, a
    end
    if t == "table" and not http_error.is(a) then return 200, 2, json.encode(a) end
    if t == "number" and (math.type(a) ~= "integer" or a < 100 or a > 599) then
      bad_status(label or fast_route[path][method].label, a)
    end
    return normalize(a, b, c)
  end
  local function normalize_direct(path, method, a, b, c)
    return normalize_route(nil, path, method, a, b, c)
  end

  -- the same literal routes for C, which looks them up by the raw path and
  -- method itself and resumes the handler directly: no dispatch frame, no
  -- method or path string per request. Each entry is { path, method,
  -- handler, finish, metric id } where finish(a, b, c) normalises a result
  -- that is not a plain string (C answers those) and C tags the request with
  -- the metric id itself (the handler is the route's own, not the tagging
  -- wrapper). Not with on_error: its xpcall wraps every request.
  local direct
  if not on_error then
    direct = {}
    for p, f in pairs(fast) do
      for m in pairs(f) do
        local route = fast_route[p][m]
        direct[#direct + 1] = { p, m, route.handler, function(a, b, c) return normalize_direct(p, m, a, b, c) end,
                                tag and route.metric_id or 0 }
      end
    end
    -- the wildcard prefixes dispatch scans below (wild), for C to match on
    -- the canonical path as that scan does: { prefix, method or "*" (the
    -- route for any method), handler, finish, metric id, 1 | 2 (2: the
    -- prefix itself is a route of its own, not the wildcard's) }; C sets
    -- req.path_info by reference, and leaves a method it lacks to dispatch.
    -- Only when every route of the wildcard needs nothing around it: C
    -- would otherwise pick the "*" route where the router picks another.
    for k = 1, n_wild do
      local w = wild[k]
      local leaf, ok = w.wild, true
      for _, route in pairs(leaf.methods) do
        if route.kind == "ws" or route.chain[1] or route.timeout ~= nil then ok = false end
      end
      local any = leaf.any
      if any and (any.kind == "ws" or any.chain[1] or any.timeout ~= nil) then ok = false end
      if ok then
        local kind = w.leaf and 2 or 1
        local function add(m, route)
          local label = route.label
          direct[#direct + 1] = { w.prefix, m, route.handler, function(a, b, c)
            return normalize_route(label, nil, nil, a, b, c) end, tag and route.metric_id or 0, kind }
        end
        for m, route in pairs(leaf.methods) do add(m, route) end
        if any then add("*", any) end
      end
    end
  end

  local function dispatch(req, method, path)
    local f = fast[path]
    if f then
      local h = f[method]
      if h then return normalize_direct(path, method, h(req)) end
    end
    local cpath, segs = path, nil
    if path ~= "*" then
      cpath = plain and plain(path) -- the common case in one C call (lariat.path's fast path)
      if not cpath then
        cpath, segs = lpath.canonical(path)
        if not cpath then return fail(req, 400, "bad request path: " .. segs) end
      end
    end
    if not has_global then
      -- under a wildcard prefix nothing else can claim (a reverse proxy's
      -- "/api/*"): no split, no search (router:wild_prefixes)
      for k = 1, n_wild do
        local w = wild[k]
        local p = w.prefix
        if find(cpath, p, 1, true) == 1 then
          local c = byte(cpath, #p + 1)
          if c == 47 or (c == nil and not w.leaf) then
            local route = pick(w.wild, method)
            if route then return found(req, cpath, route, nil, c and sub(cpath, #p + 2) or "") end
          end
        end
      end
      return call_route(req, cpath, method, segs)
    end
    return check_status("middleware", normalize(run(global, 1, req, cpath, call_route, cpath, method, segs)))
  end
  if not on_error then return dispatch, direct end

  -- with on_error: errors raised anywhere in the chain come back here. The
  -- traceback is taken where the error was raised (xpcall's handler).
  local CAUGHT = {} -- marks what the message handler returns (a memory error skips it)
  local function traceback(e)
    if type(e) == "string" then return setmetatable({ e, debug.traceback(e, 2) }, CAUGHT) end
    return setmetatable({ e }, CAUGHT)
  end
  local function finish(req, ok, a, ...)
    if ok then return a, ... end
    local e, tb = a, nil
    if getmetatable(a) == CAUGHT then e, tb = a[1], a[2] end
    if type(e) == "userdata" then error(e, 0) end -- the server stopping a handler: not ours
    if req.status ~= nil then
      -- the response already began: it can only be cut short (C does that)
      error(tb or e, 0)
    end
    local cpath = lpath.canonical(req.path)
    local route = cpath and router:match(has_hosts and req.host, req.method, cpath)
    local err = error_object(req, e, tb, route)
    if err.kind == "error" then log_error(req, tb or tostring(e)) end
    return run_hook(on_error, req, err)
  end
  return function(req, method, path)
    return finish(req, xpcall(dispatch, traceback, req, method, path))
  end
end

return M
