-- Routing: Cowboy's router in Lua (lariat.app + lariat.router).
local fake = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "fake.lua")
local lariat = require "lariat"

local function echo(req)
  return { bindings = req.bindings, path_info = req.path_info, route = req.ctx.route }
end

local function named(name)
  return function(req) return { route = name, bindings = req.bindings, path_info = req.path_info } end
end

local json = lariat.json

-- runs a request and returns status, headers, decoded body (when JSON)
local function call(app, t)
  fake.core()
  local dispatch = lariat.load_app(app, "spec.lua")
  if type(t) == "string" then t = { path = t } end
  local req, status, headers, body = fake.run(dispatch, t)
  if headers and headers["content-type"] == "application/json" then body = json.decode(body) end
  return status, headers, body, req
end

describe("router", function()
  describe("bindings", function()
    it("binds :name segments, percent-decoded", function()
      local app = lariat.app()
      app:get("/users/:id/posts/:post", echo)
      local status, _, body = call(app, "/users/j%C3%B6rg/posts/a%20b")
      assert.equal(200, status)
      assert.same({ id = "jörg", post = "a b" }, body.bindings)
    end)

    it("leaves req.bindings untouched (no table) for literal routes", function()
      local app = lariat.app()
      app:get("/plain", function(req) return tostring(next(req.bindings) == nil) end)
      local _, _, body, req = call(app, "/plain")
      assert.equal("true", body)
      assert.is_nil(rawget(req, "path_info"))
    end)

    it("matches optional segments, nested", function()
      local app = lariat.app()
      app:get("/users[/:id[/:tab]]", echo)
      assert.same({}, select(3, call(app, "/users")).bindings or {})
      assert.same({ id = "7" }, select(3, call(app, "/users/7")).bindings)
      assert.same({ id = "7", tab = "posts" }, select(3, call(app, "/users/7/posts")).bindings)
      assert.equal(404, (call(app, "/users/7/posts/x")))
    end)

    it("refuses more than 8 optional parts (each doubles the expansions)", function()
      local app = lariat.app()
      local ok, err = pcall(app.get, app, ("/a"):rep(1) .. ("[/x"):rep(9) .. ("]"):rep(9), echo)
      assert.is_false(ok)
      assert.matches("too many optional parts %(9, at most 8%)", err)
      app:get("/b" .. ("[/y"):rep(8) .. ("]"):rep(8), echo) -- 8 is fine
    end)

    it("puts the rest of a trailing * in req.path_info, decoded", function()
      local app = lariat.app()
      app:get("/static/*", echo)
      assert.equal("css/site%.css", (select(3, call(app, "/static/css/site%25.css")).path_info))
      assert.equal("", (select(3, call(app, "/static")).path_info))
      assert.equal("a b", (select(3, call(app, "/static/a%20b/")).path_info))
    end)

    it("answers under a wildcard prefix exactly as the full search would", function()
      -- "/px/*" has nothing else below it: dispatch takes it without a search
      local app = lariat.app()
      app:get("/px/*", named("px"))
      app:get("/px", named("px-exact"))
      app:get("/api/v1/*", named("api"))
      app:get("/api/v1/health", named("health"))
      app:get("/:any/deep", named("deep"))
      for _ = 1, 2 do -- the second time too
        local st, _, body = call(app, "/px/a/b")
        assert.equal(200, st)
        assert.same({ "px", "a/b" }, { body.route, body.path_info })
        assert.equal("px-exact", select(3, call(app, "/px/")).route)
        assert.equal("", select(3, call(app, "/px%2F")).path_info or "") -- refused or routed, never a crash
        local st2, h2 = call(app, { method = "POST", path = "/px/a" })
        assert.equal(405, st2)
        assert.matches("GET", h2.allow)
        assert.equal(200, (call(app, { method = "HEAD", path = "/px/a" })))
        assert.equal("health", select(3, call(app, "/api/v1/health")).route)
        local a = select(3, call(app, "/api/v1/x"))
        assert.same({ "api", "x" }, { a.route, a.path_info })
        a = select(3, call(app, "/px/../api/v1/x/"))
        assert.same({ "api", "x" }, { a.route, a.path_info })
        assert.equal("px", select(3, call(app, "/px/deep")).route) -- literal first, as the search does
      end
    end)

    it("treats trailing and doubled slashes as insignificant", function()
      local app = lariat.app()
      app:get("/a/b", named("ab"))
      assert.equal(200, (call(app, "/a/b/")))
      assert.equal(200, (call(app, "//a//b")))
    end)
  end)

  describe("constraints", function()
    it("int converts to an integer and rejects other values", function()
      local app = lariat.app()
      app:get("/n/:id", { constraints = { id = "int" } }, echo)
      local _, _, body = call(app, "/n/-42")
      assert.equal(-42, body.bindings.id)
      assert.equal(404, (call(app, "/n/4x")))
      assert.equal(404, (call(app, "/n/99999999999999999999999")))
    end)

    it("{ pattern = ... } is an anchored Lua pattern", function()
      local app = lariat.app()
      app:get("/c/:code", { constraints = { code = { pattern = "%u%u" } } }, echo)
      app:get("/y/:year", { constraints = { year = { pattern = "^%d%d%d%d$" } } }, echo)
      assert.equal(200, (call(app, "/c/FR")))
      assert.equal(404, (call(app, "/c/FRA")))
      assert.equal(200, (call(app, "/y/2024")))
      assert.equal(404, (call(app, "/y/24")))
    end)

    it("a string with pattern characters is still a pattern (older form)", function()
      local app = lariat.app()
      app:get("/c/:code", { constraints = { code = "%u%u" } }, echo)
      assert.equal(200, (call(app, "/c/FR")))
      assert.equal(404, (call(app, "/c/FRA")))
      assert.equal(404, (call(app, "/c/xFR")))
    end)

    it("a function may accept, reject or convert", function()
      local app = lariat.app()
      app:get("/d/:day", { constraints = { day = function(v)
        local days = { mon = 1, tue = 2 }
        return days[v]
      end } }, echo)
      app:get("/e/:x", { constraints = { x = function(v) return #v < 3 end } }, echo)
      assert.equal(2, select(3, call(app, "/d/tue")).bindings.day)
      assert.equal(404, (call(app, "/d/sun")))
      assert.equal("ab", select(3, call(app, "/e/ab")).bindings.x)
      assert.equal(404, (call(app, "/e/abc")))
    end)

    it("rejects a constraint for an unknown binding at registration", function()
      local app = lariat.app()
      assert.has_error(function()
        app:get("/x/:id", { constraints = { idd = "int" } }, echo)
      end, "route /x/:id: constraint for unknown binding :idd")
    end)
  end)

  describe("precedence", function()
    it("prefers literal, then constrained binding, then binding, then wildcard", function()
      local app = lariat.app()
      app:get("/p/*", named("wild"))
      app:get("/p/:any", named("bind"))
      app:get("/p/:num", { constraints = { num = "int" } }, named("int"))
      app:get("/p/new", named("lit"))
      assert.equal("lit", select(3, call(app, "/p/new")).route)
      assert.equal("int", select(3, call(app, "/p/12")).route)
      assert.equal("bind", select(3, call(app, "/p/abc")).route)
      assert.equal("wild", select(3, call(app, "/p/abc/def")).route)
    end)

    it("backtracks when the more specific branch fails deeper", function()
      local app = lariat.app()
      app:get("/u/new/form", named("form"))
      app:get("/u/:id/edit", named("edit"))
      assert.equal("edit", select(3, call(app, "/u/new/edit")).route)
      assert.equal("form", select(3, call(app, "/u/new/form")).route)
    end)

    it("breaks ties between constraints by registration order", function()
      local app = lariat.app()
      app:get("/t/:a", { constraints = { a = function(v) return #v < 5 end } }, named("first"))
      app:get("/t/:b", { constraints = { b = "nonempty" } }, named("second"))
      assert.equal("first", select(3, call(app, "/t/x")).route)
      assert.equal("second", select(3, call(app, "/t/xxxxxx")).route)
    end)

    it("keeps looking for a route accepting the method", function()
      local app = lariat.app()
      app:get("/m/fixed", named("get-fixed"))
      app:post("/m/:x", named("post-bind"))
      local status, _, body = call(app, { method = "POST", path = "/m/fixed" })
      assert.equal(200, status)
      assert.equal("post-bind", body.route)
    end)
  end)

  describe("404, 405, OPTIONS, HEAD", function()
    local app = lariat.app()
    app:get("/r", named("get"))
    app:route("PUT,DELETE", "/r", named("put-delete"))
    app:post("/other", named("post"))

    it("answers 404 when no route matches the path", function()
      local status, headers, body = call(app, "/nope")
      assert.equal(404, status)
      assert.equal("text/plain; charset=utf-8", headers["content-type"])
      assert.equal("not found\n", body)
    end)

    it("answers 405 with allow when the path matches but not the method", function()
      local status, headers = call(app, { method = "PATCH", path = "/r" })
      assert.equal(405, status)
      assert.equal("GET, HEAD, PUT, DELETE, OPTIONS", headers.allow)
    end)

    it("answers OPTIONS on a known path with 204 and allow", function()
      local status, headers = call(app, { method = "OPTIONS", path = "/r" })
      assert.equal(204, status)
      assert.equal("GET, HEAD, PUT, DELETE, OPTIONS", headers.allow)
    end)

    it("answers OPTIONS * with every method of the app", function()
      local status, headers = call(app, { method = "OPTIONS", path = "*" })
      assert.equal(204, status)
      assert.equal("GET, HEAD, POST, PUT, DELETE, OPTIONS", headers.allow)
      assert.equal(400, (call(app, { method = "GET", path = "*" })))
    end)

    it("serves HEAD with the GET route unless a HEAD route exists", function()
      assert.equal("get", select(3, call(app, { method = "HEAD", path = "/r" })).route)
      local app2 = lariat.app()
      app2:get("/h", named("get"))
      app2:head("/h", named("head"))
      assert.equal("head", select(3, call(app2, { method = "HEAD", path = "/h" })).route)
    end)

    it("route(\"*\", ...) and all() accept any method", function()
      local app2 = lariat.app()
      app2:all("/any", named("any"))
      assert.equal("any", select(3, call(app2, { method = "PURGE", path = "/any" })).route)
    end)
  end)

  describe("path safety", function()
    local app = lariat.app()
    app:get("/files/*", echo)
    app:get("/admin/*", named("admin"))

    it("resolves .. before matching, so it cannot climb out of a wildcard", function()
      local _, _, body = call(app, "/files/../admin/x")
      assert.equal("admin", body.route)
      -- "/files/a/../../../b" is "/b": above the root clamps to the root
      assert.equal(404, (call(app, "/files/a/../../../b")))
    end)

    it("treats encoded dots as dot segments too", function()
      assert.equal("admin", select(3, call(app, "/files/%2e%2E/admin")).route)
      assert.equal("x/y", select(3, call(app, "/files/x/%2e/y")).path_info)
    end)

    it("refuses encoded slashes and NUL with 400", function()
      assert.equal(400, (call(app, "/files/..%2fadmin")))
      assert.equal(400, (call(app, "/files/a%2Fb")))
      assert.equal(400, (call(app, "/files/a%00b")))
    end)

    it("refuses malformed percent-encoding with 400", function()
      assert.equal(400, (call(app, "/files/%zz")))
      assert.equal(400, (call(app, "/files/%4")))
    end)
  end)

  describe("hosts", function()
    local app = lariat.app()
    app:host("api.example.com"):get("/", named("api"))
    app:host(":tenant.example.com"):get("/", named("tenant"))
    app:host("*.cdn.example.com"):get("/x", named("cdn"))
    app:get("/", named("default"))

    it("prefers an exact host, then patterns, then host-less routes", function()
      assert.equal("api", select(3, call(app, { host = "API.example.com:8080", path = "/" })).route)
      local body = select(3, call(app, { host = "acme.example.com", path = "/" }))
      assert.equal("tenant", body.route)
      assert.same({ tenant = "acme" }, body.bindings)
      assert.equal("default", select(3, call(app, { host = "other.org", path = "/" })).route)
    end)

    it("a leading * matches one or more labels", function()
      local body = select(3, call(app, { host = "a.b.cdn.example.com", path = "/x" }))
      assert.equal("cdn", body.route)
      assert.equal("a.b", body.bindings.host_info)
      assert.equal(404, (call(app, { host = "cdn.example.com", path = "/x" })))
    end)
  end)

  describe("cost", function()
    -- Each route set answers the same request; the literal path step is a
    -- hash lookup, so 1,000 routes should cost about what 10 do.
    local function build(n)
      local app = lariat.app()
      for i = 1, n do
        app:get("/r" .. i .. "/items/:id", function() return "x" end)
        app:get("/s" .. i .. "/static", function() return "x" end)
      end
      fake.core()
      return lariat.load_app(app, "bench.lua")
    end

    local function cost(dispatch, path, iterations)
      local req = fake.req { path = path }
      local t0 = os.clock()
      for _ = 1, iterations do dispatch(req, "GET", path) end
      return os.clock() - t0
    end

    it("does not grow linearly with the number of routes", function()
      local small, large = build(10), build(1000)
      local n = 20000
      -- warm up both, then take the best of three runs to damp noise
      cost(small, "/r5/items/42", n); cost(large, "/r500/items/42", n)
      local best_small, best_large = math.huge, math.huge
      for _ = 1, 3 do
        best_small = math.min(best_small, cost(small, "/r5/items/42", n))
        best_large = math.min(best_large, cost(large, "/r500/items/42", n))
      end
      local static_small = cost(small, "/s5/static", n)
      local static_large = cost(large, "/s500/static", n)
      print(("\nrouter match cost per request: 10 routes %.2f us, 1000 routes %.2f us (binding); "
        .. "%.2f us vs %.2f us (literal)"):format(best_small / n * 1e6, best_large / n * 1e6,
        static_small / n * 1e6, static_large / n * 1e6))
      assert.is_true(best_large < 5 * best_small + 0.01)
      assert.is_true(static_large < 5 * static_small + 0.01)
    end)
  end)
end)
