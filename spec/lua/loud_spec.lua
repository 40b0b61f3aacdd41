-- Mistakes that used to pass silently are errors with a message that says
-- what and where; errors reach the app's on_error hook; lariat's own error
-- answers are JSON for clients that ask for JSON.
local fake = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "fake.lua")
local lariat = require "lariat"
local json = lariat.json

local THIS = debug.getinfo(1, "S").short_src

local function load(app)
  fake.core()
  return lariat.load_app(app, "spec.lua")
end

local function call(app, t)
  local dispatch = load(app)
  if type(t) == "string" then t = { path = t } end
  local req, status, headers, body = fake.run(dispatch, t)
  return status, headers, body, req
end

local function line_of(fn) return debug.getinfo(fn, "S").linedefined end

local function error_of(fn)
  local ok, err = pcall(fn)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

describe("constraints", function()
  it("an unknown constraint name is an error at route definition", function()
    local app = lariat.app()
    local err = error_of(function()
      app:get("/users/:id", { constraints = { id = "integer" } }, function() end)
    end)
    assert.matches('route /users/:id: :id: unknown constraint "integer"', err, 1, true)
    assert.matches("known: int, nonempty", err, 1, true)
    assert.matches('{ pattern = "..." }', err, 1, true)
    assert.matches(THIS .. ":%d+:", err) -- points at the route's line
  end)

  it("a constraint table without a pattern is an error", function()
    local app = lariat.app()
    local err = error_of(function()
      app:get("/x/:id", { constraints = { id = { patern = "%d+" } } }, function() end)
    end)
    assert.matches("a constraint table needs a pattern field", err, 1, true)
  end)

  it("a bad pattern is an error", function()
    local app = lariat.app()
    local err = error_of(function()
      app:get("/x/:id", { constraints = { id = { pattern = "[a-" } } }, function() end)
    end)
    assert.matches("bad constraint pattern [a-", err, 1, true)
  end)
end)

describe("duplicate routes", function()
  it("the same method and path twice is an error at load naming both lines", function()
    local app = lariat.app()
    local first = debug.getinfo(1, "l").currentline + 1
    app:get("/users/:id", function() end)
    app:get("/users/:uid", function() end)
    local err = error_of(function() load(app) end)
    assert.matches("duplicate route: GET /users/:uid (" .. THIS .. ":" .. (first + 1) .. ")", err, 1, true)
    assert.matches("same method and path as GET /users/:id (" .. THIS .. ":" .. first .. ")", err, 1, true)
  end)

  it("catches an optional segment, a mount and a route list", function()
    local a = lariat.app()
    a:get("/a[/b]", function() end)
    a:get("/a/b/", function() end)
    assert.matches("duplicate route: GET /a/b/", error_of(function() load(a) end), 1, true)

    local root, sub = lariat.app(), lariat.app()
    root:post("/api/items", function() end)
    sub:post("/items", function() end)
    root:mount("/api", sub)
    assert.matches("duplicate route: POST /api/items", error_of(function() load(root) end), 1, true)

    local c = lariat.app()
    c:route("GET,POST", "/x", function() end)
    c:post("/x", function() end)
    assert.matches("duplicate route: POST /x", error_of(function() load(c) end), 1, true)

    local d = lariat.app()
    d:get("/chat", function() end)
    d:ws("/chat", function() end)
    assert.matches("duplicate route: GET /chat", error_of(function() load(d) end), 1, true)
  end)

  it("other methods, hosts and constraints are not duplicates", function()
    local app = lariat.app()
    app:get("/x", function() return "get" end)
    app:post("/x", function() return "post" end)
    app:all("/x", function() return "any" end)
    app:host("a.example"):get("/x", function() return "a" end)
    app:get("/n/:id", { constraints = { id = "int" } }, function() return "int" end)
    app:get("/n/:id", function() return "any" end)
    assert.has_no.errors(function() load(app) end)
    assert.equal("any", select(3, call(app, { method = "PUT", path = "/x" })))
  end)
end)

describe("a status outside 100..599", function()
  local app = lariat.app()
  local line = debug.getinfo(1, "l").currentline + 1
  app:get("/fast", function() return 999, {}, "x" end)
  app:get("/slow/:id", function() return 42 end)
  app:get("/mw", { function(_, next) local _, h, b = next(); return 1000, h, b end }, function() return "x" end)

  it("is an error naming the route (literal fast path)", function()
    local err = error_of(function() call(app, "/fast") end)
    assert.equal(("route GET /fast (%s:%d) returned status 999; a status is an integer 100..599"):format(THIS, line), err)
  end)

  it("is an error naming the route (routed)", function()
    local err = error_of(function() call(app, "/slow/1") end)
    assert.matches("route GET /slow/:id (" .. THIS .. ":" .. (line + 1) .. ") returned status 42", err, 1, true)
    assert.matches("returned status 1000", error_of(function() call(app, "/mw") end), 1, true)
  end)
end)

describe("ws options order", function()
  it("accepts ws(path, opts, handler) and the older ws(path, handler, opts)", function()
    local h = function() end
    local app = lariat.app()
    app:ws("/new", { protocols = { "chat" } }, h)
    app:ws("/old", h, { protocols = { "chat" } })
    app:ws("/none", h)
    for _, p in ipairs { "/new", "/old" } do
      local s, fn, opts = call(app, p)
      assert.same({ "websocket", h, { "chat" } }, { s, fn, opts.protocols })
    end
    assert.equal("websocket", (call(app, "/none")))
  end)
end)

describe("lariat's own errors", function()
  local app = lariat.app()
  app:get("/r", function() return "r" end)
  local JSON = { accept = "application/json" }

  it("are text by default and JSON when the client asks for JSON", function()
    local s, h, b = call(app, "/nope")
    assert.same({ 404, "text/plain; charset=utf-8", "not found\n" }, { s, h["content-type"], b })
    s, h, b = call(app, { path = "/nope", headers = JSON })
    assert.same({ 404, "application/json" }, { s, h["content-type"] })
    assert.same({ error = "not found", status = 404 }, json.decode(b))
    s, h, b = call(app, { method = "DELETE", path = "/r", headers = JSON })
    assert.same({ 405, "GET, HEAD, OPTIONS" }, { s, h.allow })
    assert.same({ error = "method not allowed", status = 405 }, json.decode(b))
    s, h = call(app, { path = "/a/%2F", headers = JSON })
    assert.same({ 400, "application/json" }, { s, h["content-type"] })
  end)

  it("read the accept header like a content negotiation would", function()
    local w = require("lariat.http_error").wants_json
    local function wants(a) return w(fake.req { headers = { accept = a } }) end
    assert.is_true(wants("application/json"))
    assert.is_true(wants("application/problem+json"))
    assert.is_true(wants("application/json, text/plain, */*"))
    assert.is_false(wants("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"))
    assert.is_false(wants("*/*"))
    assert.is_false(wants("application/json;q=0"))
    assert.is_false(wants("text/plain, application/json;q=0.5"))
    assert.is_false(w(fake.req {}))
  end)
end)

describe("app:on_error", function()
  local function app_with(hook)
    local app = lariat.app()
    app:get("/boom", function() error("kaboom") end)
    app:get("/teapot", function() error(lariat.http_error(418, "short and stout")) end)
    app:post("/json", function(req) return req:json() end)
    app:get("/ok", function() return "ok" end)
    app:on_error(hook)
    return app
  end

  it("gets handler errors with status, message, traceback and route", function()
    local seen
    local app = app_with(function(req, err) seen = err; return 500, { ["content-type"] = "text/plain" }, "custom " .. req.path end)
    local s, _, b = call(app, "/boom")
    assert.same({ 500, "custom /boom" }, { s, b })
    assert.equal("error", seen.kind)
    assert.equal(500, seen.status)
    assert.matches("kaboom", seen.message)
    assert.matches("stack traceback", seen.traceback)
    assert.equal("/boom", seen.route)
    assert.equal("internal server error\n", seen.body)
    local logs = fake.current.logs
    assert.matches("GET /boom: .*kaboom", logs[#logs].msg)
  end)

  it("gets raised http errors and 404s; returning nothing sends lariat's answer", function()
    local seen = {}
    local app = app_with(function(_, err) seen[#seen + 1] = err end)
    local s, _, b = call(app, "/teapot")
    assert.same({ 418, "short and stout\n" }, { s, b })
    assert.same({ "http_error", 418, "short and stout" }, { seen[1].kind, seen[1].status, seen[1].message })
    s = call(app, "/missing")
    assert.equal(404, s)
    assert.same({ "not_found", 404 }, { seen[2].kind, seen[2].status })
    s, _, b = call(app, { method = "POST", path = "/json", body = "{bad" })
    assert.equal(400, s)
    assert.equal(400, json.decode(b).status)
    assert.equal(3, #seen)
  end)

  it("can make every error JSON", function()
    local app = app_with(function(_, err) return err.status, nil, nil end)
    app = lariat.app()
    app:get("/boom", function() error("kaboom") end)
    app:on_error(function(_, err) return err.status, { ["content-type"] = "application/json" },
      json.encode { error = err.message, status = err.status } end)
    local s, _, b = call(app, "/boom")
    assert.equal(500, s)
    assert.matches("kaboom", json.decode(b).error)
    s, _, b = call(app, "/nope")
    assert.same({ 404, "not found" }, { s, json.decode(b).error })
  end)

  it("a failing hook is logged and lariat's answer goes out", function()
    local app = app_with(function() error("hook broke") end)
    local s = call(app, "/boom")
    assert.equal(500, s)
    local logs = fake.current.logs
    assert.matches("on_error hook failed: .*hook broke", logs[#logs].msg)
  end)

  it("leaves successful requests and a server stop alone", function()
    local app = app_with(function() return 599 end)
    assert.equal("ok", select(3, call(app, "/ok")))
    local stop = io.stdout -- any userdata stands for the server's stop signal
    local a2 = lariat.app()
    a2:get("/s", function() error(stop, 0) end)
    a2:on_error(function() return "no" end)
    local ok, e = pcall(call, a2, "/s")
    assert.is_false(ok)
    assert.equal(stop, e)
  end)

  it("cannot answer once the response began: the error goes on to C", function()
    local app = lariat.app()
    app:get("/stream", function(req) req:stream_reply(200, {}); error("late") end)
    local called = false
    app:on_error(function() called = true end)
    local ok, e = pcall(call, app, "/stream")
    assert.is_false(ok)
    assert.matches("late", e)
    assert.is_false(called)
  end)
end)

describe("json", function()
  it("leaves / alone", function()
    assert.equal('{"u":"http://example.com/a"}', json.encode { u = "http://example.com/a" })
    assert.equal('["a\\\\/b"]', json.encode { "a\\/b" })
    assert.equal("a\\/b", json.decode(json.encode { "a\\/b" })[1])
  end)
end)

describe("lariat.static", function()
  it("resolves a relative directory against the app file, not the cwd", function()
    local core = fake.core()
    local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
    core.app_file = here .. "../../examples/static_site.lua"
    assert.has_no.errors(function() lariat.static("public") end)
    core.app_file = "/nonexistent/app.lua"
    assert.matches("/nonexistent/public", error_of(function() lariat.static("public") end), 1, true)
  end)
end)
