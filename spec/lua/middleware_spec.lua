-- The shipped middlewares: access_log, request_id, cors, gzip, basic_auth.
local fake = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "fake.lua")
local lariat = require "lariat"
local mw = lariat.middleware

-- an app with the given middleware and a few routes; returns req, results
local function call(middleware, t, setup)
  fake.core()
  local app = lariat.app()
  app:use(middleware)
  app:get("/", function() return "hello" end)
  app:get("/big", function() return 200, { ["content-type"] = "text/html", etag = '"v1"' }, string.rep("<p>lariat</p>", 200) end)
  app:get("/png", function() return 200, { ["content-type"] = "image/png" }, string.rep("x", 5000) end)
  app:get("/encoded", function() return 200, { ["content-type"] = "text/plain", ["content-encoding"] = "br" }, string.rep("x", 5000) end)
  app:get("/partial", function() return 206, { ["content-type"] = "text/plain" }, string.rep("x", 5000) end)
  app:get("/reply", function(req) req:reply(201, {}, "created") end)
  app:post("/items", function() return 201, {}, "ok" end)
  if setup then setup(app) end
  local dispatch = lariat.load_app(app, "spec.lua")
  local req = fake.req(t or {})
  return req, dispatch(req, req.method, req.path)
end

describe("access_log", function()
  it("writes combined log format lines to the sink", function()
    local lines = {}
    local log = mw.access_log { sink = function(l) lines[#lines + 1] = l end }
    call(log, { path = "/", qs = "a=1", peer = "10.0.0.1",
                headers = { referer = "http://r/", ["user-agent"] = 'curl "7"' } })
    assert.equal(1, #lines)
    assert.matches('^10%.0%.0%.1 %- %- %[%d%d/%a%a%a/%d%d%d%d:%d%d:%d%d:%d%d %+0000%] "GET /%?a=1 HTTP/1%.1" 200 5 "http://r/" "curl \\x227\\x22"$', lines[1])
  end)

  it("logs 404s and statuses of explicit replies", function()
    local lines = {}
    local log = mw.access_log { sink = function(l) lines[#lines + 1] = l end }
    call(log, { path = "/nope" })
    call(log, { path = "/reply" })
    assert.matches('" 404 10 ', lines[1])
    assert.matches('" 201 %- ', lines[2])
  end)

  it("writes JSON lines", function()
    local lines = {}
    local log = mw.access_log { format = "json", sink = function(l) lines[#lines + 1] = l end }
    call(log, { method = "POST", path = "/items", peer = "::1" })
    local entry = lariat.json.decode(lines[1])
    assert.same({ "POST", "/items", 201, 2, "::1" },
      { entry.method, entry.path, entry.status, entry.bytes, entry.remote })
    assert.is_number(entry.duration_ms)
  end)

  it("appends to a file", function()
    local name = os.tmpname()
    call(mw.access_log { file = name }, { path = "/" })
    local f = assert(io.open(name))
    local content = f:read("a")
    f:close()
    os.remove(name)
    assert.matches('"GET / HTTP/1%.1" 200 5', content)
  end)
end)

describe("request_id", function()
  it("generates an id when absent and echoes it", function()
    local req = call(mw.request_id())
    local id = req.ctx.request_id
    assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", id)
    assert.equal(id, req.set_headers["x-request-id"])
    local other = call(mw.request_id())
    assert.are_not.equal(id, other.ctx.request_id)
  end)

  it("keeps a sane incoming id and replaces an unsafe one", function()
    local req = call(mw.request_id(), { headers = { ["x-request-id"] = "abc-123" } })
    assert.equal("abc-123", req.set_headers["x-request-id"])
    req = call(mw.request_id(), { headers = { ["x-request-id"] = "bad id\r\n" } })
    assert.are_not.equal("bad id\r\n", req.ctx.request_id)
    req = call(mw.request_id { trust_incoming = false, generator = function() return "gen" end },
               { headers = { ["x-request-id"] = "abc" } })
    assert.equal("gen", req.ctx.request_id)
  end)
end)

describe("cors", function()
  local cors = mw.cors { origins = { "https://app.example" }, credentials = true,
                         expose = { "x-total" }, max_age = 60 }

  it("answers a preflight with 204 and the allow headers", function()
    local _, status, h = call(cors, { method = "OPTIONS", path = "/items", headers = {
      origin = "https://app.example", ["access-control-request-method"] = "POST",
      ["access-control-request-headers"] = "content-type, x-token" } })
    assert.equal(204, status)
    assert.equal("https://app.example", h["access-control-allow-origin"])
    assert.equal("GET, HEAD, PUT, PATCH, POST, DELETE", h["access-control-allow-methods"])
    assert.equal("content-type, x-token", h["access-control-allow-headers"])
    assert.equal("true", h["access-control-allow-credentials"])
    assert.equal("60", h["access-control-max-age"])
    assert.matches("origin", h.vary)
  end)

  it("adds CORS headers to actual requests from allowed origins", function()
    local req, status = call(cors, { path = "/", headers = { origin = "https://app.example" } })
    assert.equal(200, status)
    assert.equal("https://app.example", req.set_headers["access-control-allow-origin"])
    assert.equal("true", req.set_headers["access-control-allow-credentials"])
    assert.equal("x-total", req.set_headers["access-control-expose-headers"])
    assert.equal("origin", req.set_headers.vary)
  end)

  it("leaves other origins and same-origin requests alone", function()
    local req = call(cors, { path = "/", headers = { origin = "https://evil.example" } })
    assert.same({}, req.set_headers)
    local _, status = call(cors, { method = "OPTIONS", path = "/items", headers = {
      origin = "https://evil.example", ["access-control-request-method"] = "POST" } })
    assert.equal(204, status) -- the router's OPTIONS answer, without CORS headers
    req = call(cors, { path = "/" })
    assert.same({}, req.set_headers)
  end)

  it("uses * for any origin without credentials", function()
    local req = call(mw.cors(), { path = "/", headers = { origin = "https://x.example" } })
    assert.equal("*", req.set_headers["access-control-allow-origin"])
    assert.is_nil(req.set_headers.vary)
  end)
end)

describe("gzip", function()
  -- a fake compressor: the real one (lariat.zlib) is C, covered by integration tests
  local calls
  local function compressor(data, level)
    calls[#calls + 1] = level
    return "GZ(" .. #data .. ")"
  end
  local gzip = mw.gzip { threshold = 1000, level = 5, compressor = compressor }
  local ACCEPT = { ["accept-encoding"] = "br;q=1.0, gzip;q=0.8" }

  before_each(function() calls = {} end)

  it("compresses compressible bodies above the threshold", function()
    local req, status, h, body = call(gzip, { path = "/big", headers = ACCEPT })
    assert.equal(200, status)
    assert.equal("gzip", h["content-encoding"])
    assert.equal("text/html", h["content-type"])
    assert.equal('W/"v1"', h.etag)
    assert.equal("GZ(2600)", body)
    assert.same({ 5 }, calls)
    assert.equal("accept-encoding", req.set_headers.vary)
  end)

  it("adds vary but does not compress for clients not accepting gzip", function()
    for _, ae in ipairs { false, "identity", "gzip;q=0", "br" } do
      local req, _, h, body = call(gzip, { path = "/big", headers = { ["accept-encoding"] = ae or nil } })
      assert.is_nil(h["content-encoding"])
      assert.equal(2600, #body)
      assert.equal("accept-encoding", req.set_headers.vary)
    end
    local _, _, h = call(gzip, { path = "/big", headers = { ["accept-encoding"] = "*" } })
    assert.equal("gzip", h["content-encoding"])
  end)

  it("leaves small, incompressible, encoded, partial and HEAD responses alone", function()
    for _, t in ipairs {
      { path = "/" }, { path = "/png" }, { path = "/encoded" }, { path = "/partial" },
      { path = "/big", method = "HEAD" },
    } do
      t.headers = ACCEPT
      local req, _, h = call(gzip, t)
      assert.is_true(h == nil or h["content-encoding"] ~= "gzip" or t.path == "/encoded", t.path)
      assert.is_nil(req.set_headers.vary, t.path)
    end
    assert.same({}, calls)
  end)

  it("does not modify the handler's (possibly shared) header table", function()
    local shared = { ["content-type"] = "text/plain" }
    local _, _, h = call(gzip, { path = "/s", headers = ACCEPT }, function(app)
      app:get("/s", function() return 200, shared, string.rep("a", 2000) end)
    end)
    assert.is_nil(shared["content-encoding"])
    assert.equal("gzip", h["content-encoding"])
  end)
end)

describe("basic_auth", function()
  local auth = mw.basic_auth { realm = "Admin area", users = { alice = "s3cr:et" } }
  -- precomputed base64 (python3 -c 'import base64; ...')
  local encoded = {
    ["alice:s3cr:et"] = "YWxpY2U6czNjcjpldA==",
    ["alice:wrong"] = "YWxpY2U6d3Jvbmc=",
    ["bob:s3cr:et"] = "Ym9iOnMzY3I6ZXQ=",
    ["x:x"] = "eDp4",
    ["x:y"] = "eDp5",
  }
  local function basic(s) return "Basic " .. encoded[s] end

  it("lets valid credentials through with req.ctx.user", function()
    local req, status = call(auth, { path = "/", headers = { authorization = basic("alice:s3cr:et") } })
    assert.equal(200, status)
    assert.equal("alice", req.ctx.user)
  end)

  it("answers 401 with a challenge otherwise", function()
    for _, a in ipairs { false, basic("alice:wrong"), basic("bob:s3cr:et"), "Basic !!!", "Bearer x" } do
      local _, status, h = call(auth, { path = "/", headers = { authorization = a or nil } })
      assert.equal(401, status)
      assert.equal('Basic realm="Admin area", charset="UTF-8"', h["www-authenticate"])
    end
  end)

  it("accepts a check function", function()
    local a = mw.basic_auth { check = function(u, p) return u == p end }
    assert.equal(200, select(2, call(a, { path = "/", headers = { authorization = basic("x:x") } })))
    assert.equal(401, select(2, call(a, { path = "/", headers = { authorization = basic("x:y") } })))
  end)
end)
