-- The shipped middlewares: access_log, request_id, cors, compress (gzip), basic_auth.
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

describe("compress (gzip)", function()
  -- a fake backend: the real one (lariat.compress) is C, covered by
  -- spec/integration/test_compression.py
  local calls
  local backend = { encodings = { "zstd", "br", "gzip" } }
  function backend.encode(e, data, level)
    if data ~= "" then calls[#calls + 1] = e .. level end
    return e:upper() .. "(" .. #data .. ")"
  end
  function backend.new(e, level)
    calls[#calls + 1] = "new " .. e .. level
    local z = {}
    function z:write(d) return "<" .. d .. ">" end
    function z:update(d) return "" end
    function z:finish() return "<end>" end
    return z
  end
  local gzip = mw.gzip { threshold = 1000, level = 5, backend = backend }
  local ACCEPT = { ["accept-encoding"] = "br;q=0.9, gzip;q=0.8" }

  before_each(function() calls = {} end)

  it("compresses compressible bodies above the threshold", function()
    local req, status, h, body = call(gzip, { path = "/big", headers = ACCEPT })
    assert.equal(200, status)
    assert.equal("br", h["content-encoding"])
    assert.equal("text/html", h["content-type"])
    assert.equal('W/"v1"', h.etag)
    assert.equal("BR(2600)", body)
    assert.same({ "br5" }, calls)
    assert.equal("accept-encoding", req.set_headers.vary)
  end)

  it("picks the coding by q-value, then by the server's order", function()
    local cases = {
      { "gzip", "gzip" }, { "gzip, br", "br" }, { "gzip, deflate, br, zstd", "zstd" },
      { "br;q=0.5, gzip", "gzip" }, { "zstd;q=0, *", "br" }, { "*;q=0.1, gzip;q=0.2", "gzip" },
      { "X-GZIP", "gzip" }, { "gzip;q=0.5", "gzip" }, { "identity, gzip;q=0.5", false },
      { "identity;q=0.5, gzip", "gzip" }, { "*;q=0", false }, { "deflate", false }, { "", false },
    }
    for _, c in ipairs(cases) do
      local _, _, h = call(gzip, { path = "/big", headers = { ["accept-encoding"] = c[1] } })
      assert.equal(c[2] or nil, h["content-encoding"], c[1])
    end
    local only = mw.compress { encodings = { "gzip", "br" }, backend = backend }
    local _, _, h = call(only, { path = "/big", headers = { ["accept-encoding"] = "zstd, br, gzip" } })
    assert.equal("gzip", h["content-encoding"])
  end)

  it("adds vary but does not compress for clients not accepting a coding", function()
    for _, ae in ipairs { false, "identity", "gzip;q=0", "compress" } do
      local req, _, h, body = call(gzip, { path = "/big", headers = { ["accept-encoding"] = ae or nil } })
      assert.is_nil(h["content-encoding"])
      assert.equal(2600, #body)
      assert.equal("accept-encoding", req.set_headers.vary)
    end
    local _, _, h = call(gzip, { path = "/big", headers = { ["accept-encoding"] = "*" } })
    assert.equal("zstd", h["content-encoding"])
  end)

  it("leaves small, incompressible, encoded and partial responses alone", function()
    for _, t in ipairs {
      { path = "/" }, { path = "/png" }, { path = "/encoded" }, { path = "/partial" },
    } do
      t.headers = ACCEPT
      local req, _, h = call(gzip, t)
      assert.is_true(h == nil or h["content-encoding"] == nil or t.path == "/encoded", t.path)
      assert.is_nil(req.set_headers.vary, t.path)
    end
    assert.same({}, calls)
  end)

  it("gives HEAD the headers of GET and a 304 the validators of its 200", function()
    local _, _, h = call(gzip, { path = "/big", method = "HEAD", headers = ACCEPT })
    assert.equal("br", h["content-encoding"])
    local req, status
    req, status, h = call(gzip, { path = "/nm", headers = ACCEPT }, function(app)
      app:get("/nm", function() return 304, { etag = '"v1"' } end)
    end)
    assert.equal(304, status)
    assert.equal('W/"v1"', h.etag)
    assert.equal("accept-encoding", req.set_headers.vary)
  end)

  it("compresses streamed replies write by write and ends the stream", function()
    local function stream(app)
      app:get("/s", function(req)
        req:stream_reply(200, { ["content-type"] = "text/event-stream", ["content-length"] = "5000", etag = '"e"' })
        req:write("data: 1\n\n")
        req:write("data: 2\n\n")
      end)
      app:get("/t", function(req)
        req:stream_reply(200, { ["content-type"] = "text/plain" })
        req:write("a")
        req:trailers({ ["x-sum"] = "1" })
      end)
      app:get("/small", function(req)
        req:stream_reply(200, { ["content-type"] = "text/plain", ["content-length"] = "1" })
        req:write("a")
      end)
    end
    local req = call(gzip, { path = "/s", headers = ACCEPT }, stream)
    local h = req.replied.headers
    assert.equal("br", h["content-encoding"])
    assert.is_nil(h["content-length"])
    assert.equal('W/"e"', h.etag)
    assert.same({ "<data: 1\n\n>", "<data: 2\n\n>", "<end>" }, req.written)
    assert.same({ "new br5" }, calls)
    req = call(gzip, { path = "/t", headers = ACCEPT }, stream)
    assert.same({ "<a>", "<end>" }, req.written)
    assert.same({ ["x-sum"] = "1" }, req.trailers_sent)
    req = call(gzip, { path = "/small", headers = ACCEPT }, stream)
    assert.same({ "a" }, req.written)
    assert.is_nil(req.replied.headers["content-encoding"])
  end)

  it("does not modify the handler's (possibly shared) header table", function()
    local shared = { ["content-type"] = "text/plain" }
    local _, _, h = call(gzip, { path = "/s", headers = ACCEPT }, function(app)
      app:get("/s", function() return 200, shared, string.rep("a", 2000) end)
    end)
    assert.is_nil(shared["content-encoding"])
    assert.equal("br", h["content-encoding"])
  end)

  it("rejects unknown encodings and bad levels when built", function()
    assert.has_error(function() mw.compress { encodings = { "lzma" }, backend = backend } end)
    local strict = { encodings = { "gzip" }, new = backend.new,
      encode = function(_, _, level) assert(level <= 9, "level must be 0..9") return "" end }
    assert.has_error(function() mw.compress { level = 11, backend = strict } end)
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
