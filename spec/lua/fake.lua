-- A fake lariat.core for busted: the C methods of req implemented in Lua,
-- recording what a handler did, so specs can check the Lua library alone.
--   local fake = dofile(dir .. "fake.lua")
--   local core = fake.core()          -- also injected via lariat.runtime
--   local req = fake.req{ method = "GET", path = "/", headers = {...}, body = "..." }
local runtime = require "lariat.runtime"

local M = {}

local methods = {}

function methods.header(req, name, default)
  local v = req.headers[name:lower()]
  if v == nil then return default end
  return v
end

function methods.body(req)
  if req._body_error then return nil, req._body_error end
  if req._chunks then return table.concat(req._chunks) end
  return req._body or ""
end

-- read_body: serves the configured chunks one by one
function methods.read_body(req, opts)
  local chunks = req._chunks or { req._body or "" }
  req._reads = (req._reads or 0) + 1
  req._read_opts = opts
  if req._body_error then return nil, req._body_error end
  local i = (req._next_chunk or 0) + 1
  req._next_chunk = i
  if i > #chunks then return "", "fin" end
  return chunks[i], i == #chunks and "fin" or "more"
end

function methods.reply(req, status, headers, body)
  assert(not req.replied, "reply after reply")
  req.replied = { status = status, headers = headers, body = body }
  req.status = status
end

function methods.stream_reply(req, status, headers)
  assert(not req.replied, "stream_reply after reply")
  req.replied = { status = status, headers = headers, streamed = true }
  req.status = status
  req.written = {}
end

function methods.write(req, data)
  assert(req.replied and req.replied.streamed, "write before stream_reply")
  if req.closed then return nil, "closed" end
  req.written[#req.written + 1] = data
  return true
end

function methods.trailers(req, t)
  req.trailers_sent = t
end

-- like C: appends for set-cookie, replaces otherwise
function methods.set_header(req, name, value)
  local h = req.set_headers
  if name == "set-cookie" then
    local prev = h[name]
    if prev == nil then h[name] = value
    elseif type(prev) == "table" then prev[#prev + 1] = value
    else h[name] = { prev, value } end
  else
    h[name] = value
  end
end

function M.core()
  local core = {
    req_methods = setmetatable({}, { __index = methods }),
    clock = 1000.0,
    logs = {},
    slept = {},
  }
  function core.sleep(s) core.slept[#core.slept + 1] = s; core.clock = core.clock + s end
  function core.now() return core.clock end
  function core.log(level, msg) core.logs[#core.logs + 1] = { level = level, msg = msg } end
  -- no core.stat/core.realpath: lariat.fs falls back to lfs
  runtime.use_core(core)
  M.current = core
  return core
end

-- fake.req{ method=, path=, qs=, host=, headers=, body= | chunks= }
function M.req(t)
  local core = M.current or M.core()
  local r = {
    method = t.method or "GET", version = t.version or "HTTP/1.1", scheme = t.scheme or "http",
    host = t.host or "localhost", port = t.port or 8080, path = t.path or "/", qs = t.qs or "",
    peer = t.peer or "127.0.0.1:50000", headers = t.headers or {}, bindings = {},
    _body = t.body, _chunks = t.chunks, _body_error = t.body_error,
    set_headers = {},
  }
  return setmetatable(r, {
    __index = function(self, k)
      if k == "ctx" then local c = {}; rawset(self, "ctx", c); return c end
      return core.req_methods[k]
    end,
  })
end

-- dispatch helper: runs dispatch like C does and returns its results
-- C reads a number in the headers slot as one of lariat.app's preset
-- content types (literal routes' fast path); do the same here
local PRESETS = {
  { ["content-type"] = "text/plain; charset=utf-8" },
  { ["content-type"] = "application/json" },
}
M.PRESETS = PRESETS

function M.run(dispatch, t)
  local req = M.req(t)
  local status, headers, body = dispatch(req, req.method, req.path)
  if type(headers) == "number" then headers = PRESETS[headers] end
  return req, status, headers, body
end

return M
