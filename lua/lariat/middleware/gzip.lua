-- lariat.middleware.gzip(opts): compresses returned bodies.
--
--   app:use(lariat.middleware.gzip{ threshold = 1024, level = 6 })
--
-- A body is compressed when it is a returned string of at least
-- opts.threshold bytes (default 1024), its content-type is compressible
-- (text/*, JSON, JavaScript, XML, SVG, *+json, *+xml; or opts.types, a list
-- of Lua patterns), the status is not 204/206/304, the method is not HEAD,
-- there is no content-encoding yet and no cache-control: no-transform.
-- Such responses get vary: accept-encoding whether or not this client
-- accepted gzip; the compressed one also a weakened ETag. Streamed replies
-- (stream_reply/write) are not compressed.
-- opts.compressor(data, level) → string replaces lariat.zlib's gzip (specs
-- inject one; the server preloads lariat.zlib).
local headers_util = require "lariat.headers"

local default_types = {
  "^text/", "^application/json", "^application/javascript", "^application/xml",
  "^image/svg%+xml", "^application/[%w.%-]+%+json", "^application/[%w.%-]+%+xml",
  "^application/wasm",
}

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

return function(opts)
  opts = opts or {}
  local threshold = opts.threshold or 1024
  local level = opts.level or 6
  local types = opts.types or default_types
  local compress = opts.compressor
  if not compress then
    local ok, zlib = pcall(require, "lariat.zlib")
    if not ok then error("gzip middleware: lariat.zlib is not available (" .. tostring(zlib) .. ")", 2) end
    compress = zlib.gzip
  end

  return function(req, next)
    local status, h, body = next()
    if type(status) ~= "number" or type(body) ~= "string" or #body < threshold
        or status == 204 or status == 206 or status == 304 or status < 200
        or req.method == "HEAD"
        or header(h, "content-encoding")
        or not compressible(header(h, "content-type"), types) then
      return status, h, body
    end
    local cc = header(h, "cache-control")
    if cc and cc:lower():find("no-transform", 1, true) then return status, h, body end
    headers_util.add_vary(req, "accept-encoding")
    if not headers_util.accepts_gzip(req) then return status, h, body end
    local zipped = compress(body, level)
    if #zipped >= #body then return status, h, body end
    local out = headers_util.copy(h)
    out["content-encoding"] = "gzip"
    local etag = header(h, "etag")
    if etag and etag:sub(1, 2) ~= "W/" then out.etag = "W/" .. etag end
    return status, out, zipped
  end
end
