-- The compression middleware and precompressed static files
-- (test_compression.py). Run with one worker: /sse's pacing is module state.
local lariat = require "lariat"
local compress = require "lariat.compress"
local app = lariat.app()

local compress_mw = lariat.middleware.compress { min_size = 256 }
-- /static and /static-zg: lariat.static alone; /mixed: static behind the middleware
app:use(function(req, next)
  if req.path:find("^/static") then return next() end
  return compress_mw(req, next)
end)

-- ~100 KB of JSON, the bench row's body
local items = {}
for i = 1, 1000 do
  items[i] = { id = i, name = "item " .. i, tags = { "a", "b" }, price = i * 1.5, active = i % 2 == 0 }
end
local JSON = lariat.json.encode(items)
local JSON_H = { ["content-type"] = "application/json", etag = '"j1"' }

app:get("/json", function() return 200, JSON_H, JSON end)
app:get("/json-reply", function(req) req:reply(200, JSON_H, JSON) end)
app:get("/nm", function() return 304, { etag = '"j1"' } end)
app:get("/small", function() return 200, { ["content-type"] = "text/plain" }, "tiny" end)
app:get("/png", function() return 200, { ["content-type"] = "image/png" }, JSON end)
app:get("/encoded", function()
  return 200, { ["content-type"] = "text/plain", ["content-encoding"] = "gzip" }, compress.encode("gzip", JSON)
end)
app:get("/no-transform", function()
  return 200, { ["content-type"] = "text/plain", ["cache-control"] = "no-transform" }, JSON
end)

-- a streamed body in 16 KiB writes, with trailers when ?trailers
app:get("/stream", function(req)
  req:stream_reply(200, { ["content-type"] = "text/plain", etag = '"s1"' })
  for i = 1, #JSON, 16384 do req:write(JSON:sub(i, i + 16383)) end
  if req.qs == "trailers" then req:trailers { ["x-checksum"] = tostring(#JSON) } end
end)

-- SSE: event n is sent, then the handler waits until the client has asked
-- for /sse/next n times: the client can only do that after decoding event n
-- while the stream is still open
local acked, active = 0, 0
app:get("/sse/next", function() acked = acked + 1; return "ok" end)
app:get("/sse/active", function() return tostring(active) end)
local function sse(req)
  acked = 0
  local events = req:sse()
  for n = 1, 3 do
    if not events:send { event = "tick", id = n, data = { n = n, pad = string.rep("x", 40) } } then return end
    local deadline = lariat.now() + 20
    while acked < n do
      if lariat.now() > deadline then return end
      local ok, err = lariat.sleep(0.01)
      if ok == nil and err ~= nil then return end -- the client left
    end
  end
end
-- a cancelled handler is not resumed: its to-be-closed variables run
local gone = { __close = function() active = active - 1 end }
app:get("/sse", function(req)
  active = active + 1
  local _ <close> = setmetatable({}, gone)
  return sse(req)
end)

-- precompressed siblings, made at load time in a fresh directory
local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir))
local function put(name, data)
  local f = assert(io.open(dir .. "/" .. name, "wb")); f:write(data); f:close()
end
local JS = ("function f(x) { return x * 2 }\n"):rep(200)
put("app.js", JS)
put("app.js.gz", compress.encode("gzip", JS, 9))
put("app.js.br", compress.encode("br", JS, 11))
put("app.js.zst", compress.encode("zstd", JS, 19))
put("only-gz.css", JS)
put("only-gz.css.gz", compress.encode("gzip", JS, 9))
app:get("/static/*", lariat.static(dir))
app:get("/static-zg/*", lariat.static(dir, { precompressed = { "zstd", "gzip" } }))
app:get("/mixed/*", lariat.static(dir))

return app
