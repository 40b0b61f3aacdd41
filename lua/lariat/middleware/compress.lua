-- lariat.middleware.compress(opts): compresses responses with zstd, br or gzip,
-- whichever the request's accept-encoding rates highest (lariat.encoding).
-- lariat.middleware.gzip is the same middleware under its old name.
--
--   app:use(lariat.middleware.compress{ min_size = 1024 })
--
-- What is compressed:
--   * returned bodies and req:reply bodies of at least min_size bytes;
--   * streamed replies (req:stream_reply, then req:write; req:sse()), each
--     write flushed through the encoder so the client can decode everything
--     written so far at once: an SSE event is not held back waiting for more;
--     the end of the stream is written when the handler returns or calls
--     req:trailers (the trailers follow it).
-- Only when the content-type is compressible, the status is 200..599 except
-- 204/206/304, there is no content-encoding yet (no double compression) and no
-- cache-control: no-transform. Such responses get vary: accept-encoding
-- whether or not this client accepted a coding; the compressed one also a
-- weakened ETag (W/"…": it is not the same bytes) and no content-length or
-- accept-ranges. HEAD gets the headers GET would get. A 304 gets the vary and
-- the weakened ETag its 200 would carry.
--
-- opts:
--   encodings  the server's order of preference among codings the client
--              rates equally (default { "zstd", "br", "gzip" }); leaving one
--              out never uses it
--   levels     { gzip = 6, br = 5, zstd = 3 } (merged over these defaults);
--              `level = n` alone sets gzip's (the old option)
--   min_size   bytes (default 1024; `threshold` is the old name): smaller
--              bodies, and streams whose content-length is smaller, go as they
--              are; a stream of unknown length is compressed
--   types      list of Lua patterns over the lowercased content-type (default:
--              text/*, JSON, JavaScript, XML, SVG, *+json, *+xml, wasm)
--   flush      false: streamed writes are not flushed one by one (better ratio
--              for many small writes; not for SSE). Default true.
--   backend    a module like lariat.compress (specs inject one)
local encoding = require "lariat.encoding"
local headers_util = require "lariat.headers"

local default_types = {
  "^text/", "^application/json", "^application/javascript", "^application/xml",
  "^image/svg%+xml", "^application/[%w.%-]+%+json", "^application/[%w.%-]+%+xml",
  "^application/wasm",
}

-- Why zstd, br, gzip: browsers rate every coding they accept at q=1 (Chromium
-- and Firefox send "gzip, deflate, br, zstd", Safari "gzip, deflate, br"), so
-- this order decides. On a 100 KB JSON body (scripts/bench row compress-json)
-- zstd at level 3 is both the fastest and smaller than gzip at 6; brotli at 4
-- is smaller than gzip at 6 for about the same CPU; gzip is for the rest.
local default_encodings = { "zstd", "br", "gzip" }
local default_levels = { gzip = 6, br = 5, zstd = 3 }

-- per request: { z = encoder } closed with the middleware's frame
local stream_state = { __close = function(st)
  local z = st.z
  if z then st.z = nil; z:close() end
end }

local function compressible(ctype, types)
  if type(ctype) ~= "string" then return false end
  ctype = ctype:lower()
  for _, p in ipairs(types) do
    if ctype:find(p) then return true end
  end
  return false
end

local function header(h, name)
  if not h then return nil end
  return headers_util.join(h[name])
end

local function weak(etag)
  if etag and etag:sub(1, 2) ~= "W/" then return "W/" .. etag end
  return etag
end

-- the headers of a compressed response, from the handler's (never changed
-- in place: they may be a shared constant)
local function encoded_headers(h, coding)
  local out = headers_util.copy(h)
  out["content-encoding"] = coding
  out["content-length"] = nil
  out["accept-ranges"] = nil
  local etag = header(h, "etag")
  if etag then out.etag = weak(etag) end
  return out
end

return function(opts)
  opts = opts or {}
  local min_size = opts.min_size or opts.threshold or 1024
  local types = opts.types or default_types
  local flush = opts.flush ~= false
  local backend = opts.backend
  if not backend then
    local ok, mod = pcall(require, "lariat.compress")
    if not ok then error("compress middleware: lariat.compress is not available (" .. tostring(mod) .. ")", 2) end
    backend = mod
  end
  local levels = {}
  for k, v in pairs(default_levels) do levels[k] = v end
  if opts.level then levels.gzip = opts.level end
  for k, v in pairs(opts.levels or {}) do levels[k] = v end
  -- offered: the configured order, less what this build lacks
  local built = {}
  for _, e in ipairs(backend.encodings or default_encodings) do built[e] = true end
  local offered = {}
  for _, e in ipairs(opts.encodings or default_encodings) do
    if not default_levels[e] then error("compress middleware: unknown encoding " .. tostring(e), 2) end
    if built[e] then offered[#offered + 1] = e end
  end
  -- a bad level fails here, at startup, not in the first request
  for _, e in ipairs(offered) do backend.encode(e, "", levels[e]) end

  -- Is a response with this status and these headers one to compress? The
  -- client's choice is asked separately: vary is due either way.
  local function eligible(req, status, h)
    if type(status) ~= "number" or status < 200 or status == 204 or status == 206 or status == 304 then
      return false
    end
    if header(h, "content-encoding") or not compressible(header(h, "content-type"), types) then
      return false
    end
    local cc = header(h, "cache-control")
    if cc and cc:lower():find("no-transform", 1, true) then return false end
    return true
  end

  local function choose(req)
    headers_util.add_vary(req, "accept-encoding")
    return encoding.negotiate(req.headers["accept-encoding"], offered)
  end

  -- a whole body: status, headers, body as they go out
  local function whole(req, status, h, body)
    if status == 304 then
      -- the validators of the 200 this stands for
      local etag = header(h, "etag")
      if etag and choose(req) then
        h = headers_util.copy(h); h.etag = weak(etag)
      end
      return status, h, body
    end
    if type(body) ~= "string" or #body < min_size or not eligible(req, status, h) then
      return status, h, body
    end
    local coding = choose(req)
    if not coding then return status, h, body end
    local zipped = backend.encode(coding, body, levels[coding])
    if #zipped >= #body then return status, h, body end
    return status, encoded_headers(h, coding), zipped
  end

  return function(req, next)
    local c_reply, c_stream_reply, c_write, c_trailers = req.reply, req.stream_reply, req.write, req.trailers
    -- st.z: the encoder of a streamed reply being compressed. <close>: a
    -- handler that fails or is cancelled (client gone) frees it at once; its
    -- memory is outside Lua's accounting, the GC would take its time.
    local st <close> = setmetatable({}, stream_state)

    -- writes what is left in the encoder: the end of the coded stream
    local function finish(self)
      local z = st.z
      st.z = nil
      local tail = z:finish()
      if #tail > 0 then return c_write(self, tail) end
      return true
    end

    req.reply = function(self, status, h, body)
      return c_reply(self, whole(self, status, h, body))
    end
    req.stream_reply = function(self, status, h)
      if status == 304 then return c_stream_reply(self, whole(self, status, h)) end
      local len = tonumber(header(h, "content-length"))
      if not eligible(self, status, h) or (len and len < min_size) then
        return c_stream_reply(self, status, h)
      end
      local coding = choose(self)
      if not coding then return c_stream_reply(self, status, h) end
      -- HEAD: the headers GET would get; the core sends no body
      if self.method ~= "HEAD" then st.z = backend.new(coding, levels[coding]) end
      return c_stream_reply(self, status, encoded_headers(h, coding))
    end
    req.write = function(self, data)
      local z = st.z
      if not z then return c_write(self, data) end
      local out
      if flush then out = z:write(data) else out = z:update(data) end
      if #out == 0 then return true end
      return c_write(self, out)
    end
    req.trailers = function(self, t)
      if st.z then
        local ok, err = finish(self)
        if not ok then return ok, err end
      end
      return c_trailers(self, t)
    end

    -- lariat.static asks before it sends a file by sendfile (which bypasses
    -- this middleware): would this response be compressed?
    req.would_compress = function(self, status, h)
      return eligible(self, status, h) and encoding.negotiate(self.headers["accept-encoding"], offered) ~= nil
    end

    local status, h, body = next()
    if st.z then
      -- the handler returned with the stream open: end the coded stream. The
      -- client may be gone (the write says so; a finished request raises)
      pcall(finish, req)
      return status, h, body
    end
    return whole(req, status, h, body)
  end
end
