-- The app: handler results, middleware composition, mounts, ws routes, load_app.
local fake = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "fake.lua")
local lariat = require "lariat"

local function load(app)
  fake.core()
  return lariat.load_app(app, "spec.lua")
end

-- a number in the headers slot is a preset C expands (see fake.PRESETS)
local function expand(req, ...)
  if select("#", ...) >= 2 and type((select(2, ...))) == "number" then
    local s, h, b = ...
    return req, s, fake.PRESETS[h], b
  end
  return req, ...
end

local function call(app, t)
  local dispatch = load(app)
  if type(t) == "string" then t = { path = t } end
  local req = fake.req(t)
  return expand(req, dispatch(req, req.method, req.path))
end

describe("app", function()
  describe("handler results", function()
    local app = lariat.app()
    app:get("/s", function() return "Hello world!" end)
    app:get("/t", function() return { ok = true } end)
    app:get("/full", function() return 201, { ["x-a"] = "1" }, "made" end)
    app:get("/none", function() end)
    app:get("/replied", function(req) req:reply(202, {}, "r") end)
    app:get("/err", function() return lariat.http_error(409, "taken") end)

    it("a string is 200 text/plain", function()
      local _, s, h, b = call(app, "/s")
      assert.same({ 200, "text/plain; charset=utf-8", "Hello world!" }, { s, h["content-type"], b })
    end)

    it("shares one constant header table between requests (no allocation)", function()
      local d = load(app)
      local _, h1 = select(2, true, d(fake.req { path = "/s" }, "GET", "/s"))
      local _, h2 = select(2, true, d(fake.req { path = "/s" }, "GET", "/s"))
      assert.equal(h1, h2)
    end)

    it("a table is 200 JSON", function()
      local _, s, h, b = call(app, "/t")
      assert.same({ 200, "application/json", '{"ok":true}' }, { s, h["content-type"], b })
    end)

    it("status, headers, body pass through", function()
      local _, s, h, b = call(app, "/full")
      assert.same({ 201, "1", "made" }, { s, h["x-a"], b })
    end)

    it("nothing returns nothing (C answers 204, or already replied)", function()
      assert.equal(0, select("#", select(2, call(app, "/none"))))
      local req = call(app, "/replied")
      assert.equal(0, select("#", select(2, call(app, "/replied"))))
      assert.equal(202, req.replied.status)
    end)

    it("a returned http_error becomes its status, headers and body", function()
      local _, s, h, b = call(app, "/err")
      assert.same({ 409, "text/plain; charset=utf-8", "taken\n" }, { s, h["content-type"], b })
    end)

    it("errors are not caught: they propagate to C", function()
      local a = lariat.app()
      a:get("/boom", function() error("kaboom") end)
      a:get("/bad", function() error(lariat.http_error(400, "malformed")) end)
      assert.has_error(function() call(a, "/boom") end)
      local ok, e = pcall(call, a, "/bad")
      assert.is_false(ok)
      assert.same({ 400, "malformed\n" }, { e.status, e.body })
    end)
  end)

  describe("middleware", function()
    it("runs in order, before and after, and may change the result", function()
      local trace = {}
      local app = lariat.app()
      app:use(function(req, next)
        trace[#trace + 1] = "a>"
        local s, h, b = next()
        trace[#trace + 1] = "<a"
        return s, h, b .. "!"
      end)
      app:use(function(req, next)
        trace[#trace + 1] = "b>"
        local s, h, b = next()
        trace[#trace + 1] = "<b"
        return s, h, b:upper()
      end)
      app:get("/", function() trace[#trace + 1] = "h"; return "hi" end)
      local _, s, _, b = call(app, "/")
      assert.equal(200, s)
      assert.equal("HI!", b)
      assert.same({ "a>", "b>", "h", "<b", "<a" }, trace)
    end)

    it("can answer without calling next; its results are normalised", function()
      local app = lariat.app()
      local reached = false
      app:use(function() return { denied = true } end)
      app:get("/", function() reached = true end)
      local _, s, h, b = call(app, "/")
      assert.same({ 200, "application/json", '{"denied":true}' }, { s, h["content-type"], b })
      assert.is_false(reached)
    end)

    it("global middleware also sees 404 answers", function()
      local app = lariat.app()
      local seen
      app:use(function(req, next) local s, h, b = next(); seen = s; return s, h, b end)
      call(app, "/missing")
      assert.equal(404, seen)
    end)

    it("use(prefix, fn) runs only under the prefix, on canonical paths", function()
      local app = lariat.app()
      app:use("/admin/", function() return 401, {}, "no" end)
      app:get("/admin/panel", function() return "panel" end)
      app:get("/adminx", function() return "adminx" end)
      app:get("/public", function() return "public" end)
      assert.equal(401, select(2, call(app, "/admin/panel")))
      assert.equal(401, select(2, call(app, "/admin")))
      assert.equal(401, select(2, call(app, "/public/../admin/panel")))
      assert.equal(401, select(2, call(app, "/%61dmin/panel")))
      assert.equal("adminx", select(4, call(app, "/adminx")))
      assert.equal("public", select(4, call(app, "/public")))
    end)

    it("per-route middleware lists run after routing, with bindings set", function()
      local app = lariat.app()
      local function need_admin(req, next)
        if req.bindings.id ~= 1 then return 403, {}, "forbidden" end
        return next()
      end
      app:get("/u/:id", { need_admin, constraints = { id = "int" } }, function(req)
        return "welcome " .. req.bindings.id
      end)
      assert.equal("welcome 1", select(4, call(app, "/u/1")))
      assert.equal(403, select(2, call(app, "/u/2")))
    end)

    it("req.ctx carries data from middleware to handler", function()
      local app = lariat.app()
      app:use(function(req, next) req.ctx.user = "ann"; return next() end)
      app:get("/", function(req) return req.ctx.user end)
      assert.equal("ann", select(4, call(app, "/")))
    end)
  end)

  describe("mount", function()
    local api = lariat.app()
    local api_calls = 0
    api:use(function(req, next) api_calls = api_calls + 1; return next() end)
    api:use("/private", function() return 401, {}, "private" end)
    api:get("/", function() return "api root" end)
    api:get("/items/:id", function(req) return "item " .. req.bindings.id end)
    api:get("/private/x", function() return "secret" end)
    local app = lariat.app()
    app:get("/", function() return "home" end)
    app:mount("/api/v1", api)

    it("serves the sub-app's routes under the prefix", function()
      assert.equal("api root", select(4, call(app, "/api/v1")))
      assert.equal("item 9", select(4, call(app, "/api/v1/items/9")))
      assert.equal("home", select(4, call(app, "/")))
      assert.equal(404, select(2, call(app, "/items/9")))
    end)

    it("runs the sub-app's middleware only for its routes", function()
      api_calls = 0
      call(app, "/")
      assert.equal(0, api_calls)
      call(app, "/api/v1/items/1")
      assert.equal(1, api_calls)
      assert.equal(401, select(2, call(app, "/api/v1/private/x")))
    end)

    it("refuses to mount an app inside itself", function()
      local a, b = lariat.app(), lariat.app()
      a:mount("/b", b)
      b:mount("/a", a)
      assert.has_error(function() load(a) end)
    end)
  end)

  describe("websocket routes", function()
    it("dispatch returns \"websocket\", handler, opts after middleware", function()
      local app = lariat.app()
      local order = {}
      local function ws_handler() end
      app:use(function(req, next) order[#order + 1] = "mw"; return next() end)
      app:ws("/chat/:room", ws_handler, { max_message_size = 4096 })
      local req, kind, handler, opts = call(app, "/chat/lobby")
      assert.equal("websocket", kind)
      assert.equal(ws_handler, handler)
      assert.same({ max_message_size = 4096 }, opts)
      assert.equal("lobby", req.bindings.room)
      assert.same({ "mw" }, order)
    end)

    it("middleware can refuse the upgrade", function()
      local app = lariat.app()
      app:use(function() return 403, {}, "no" end)
      app:ws("/chat", function() end)
      assert.equal(403, select(2, call(app, "/chat")))
    end)
  end)

  describe("load_app", function()
    it("names the file when the script did not return an app", function()
      assert.has_error(function() lariat.load_app(nil, "app.lua") end,
        "app.lua: must return a lariat app (got nil)")
      assert.has_error(function() lariat.load_app({}, "x.lua") end,
        "x.lua: must return a lariat app (got table)")
      local app = lariat.app()
      assert.has_error(function() lariat.load_app(app:host("a.b"), "h.lua") end,
        "h.lua: must return a lariat app (got a host scope; return the app itself)")
    end)

    it("reports a bad route at registration, pointing at the caller", function()
      local app = lariat.app()
      local ok, err = pcall(function() app:get("/a/*/b", function() end) end)
      assert.is_false(ok)
      assert.matches("app_spec.lua:%d+: route /a/%*/b: '%*' must be the last segment", err)
      assert.has_error(function() app:get("/x", "not a function") end)
      assert.has_error(function() app:get("no-slash", function() end) end)
    end)

    it("lists the literal routes C may run without dispatch, with their finish", function()
      local app = lariat.app()
      local hello = function() return "hi" end
      app:get("/", hello)
      app:get("/t", function() return { ok = true } end)
      app:get("/users/:id", function() end)       -- a binding: the router's
      app:get("/mw", { function(_, nx) return nx() end }, function() end)
      fake.core()
      local _, _, direct = lariat.load_app(app, "spec.lua")
      local by = {}
      for _, e in ipairs(direct) do by[e[2] .. " " .. e[1]] = e end
      assert.same({ "GET /", "GET /t", "HEAD /", "HEAD /t" }, (function()
        local ks = {}
        for k in pairs(by) do ks[#ks + 1] = k end
        table.sort(ks)
        return ks
      end)())
      assert.equal(hello, by["GET /"][3])
      assert.equal(hello, by["HEAD /"][3])             -- HEAD falls back to GET
      assert.same({ 200, 2, '{"ok":true}' }, { by["GET /t"][4]({ ok = true }) })
      assert.has_error(function() by["GET /"][4](999) end)
      -- none where something wraps every request
      local a2 = lariat.app()
      a2:get("/", hello)
      a2:on_error(function() end)
      assert.is_nil(select(3, lariat.load_app(a2, "spec.lua")))
      local a3 = lariat.app()
      a3:get("/", hello)
      a3:use(function(_, nx) return nx() end)
      assert.same({}, select(3, lariat.load_app(a3, "spec.lua")))
    end)

    it("installs the request helpers into core.req_methods", function()
      local core = fake.core()
      lariat.load_app(lariat.app(), "a.lua")
      assert.is_function(rawget(core.req_methods, "query"))
      assert.is_function(rawget(core.req_methods, "multipart"))
    end)
  end)
end)
