-- lariat.encoding: content-coding negotiation (RFC 9110 §12.5.3), shared by
-- the compression middleware and lariat.static's precompressed files.
--
--   encoding.negotiate(accept_encoding, { "zstd", "br", "gzip" }) → "br" | nil
--   encoding.precompressed(req, path, lookup, order) → path .. ".br", "br", vary, size, mtime
--
-- negotiate picks, among the codings the server offers (in its order of
-- preference), the one the client rates highest; nil means identity. Rules:
-- q=0 excludes a coding; `*` rates every coding not named; "x-gzip" is gzip;
-- no accept-encoding header (or an empty one) means identity; identity wins
-- only when the client rates it above every offered coding (an unnamed
-- identity is acceptable but never preferred), so "gzip;q=0.5" still gets
-- gzip. Equal q-values are broken by the server's order: browsers send all
-- codings at q=1 ("gzip, deflate, br, zstd"), so the server's order decides.
local M = {}

-- the name a coding is offered under; x-gzip is gzip (RFC 9110 §8.4.1.3)
local alias = { ["x-gzip"] = "gzip" }

-- parse(value) → { coding = q }, star_q (or nil)
local function parse(value)
  local q, star = {}, nil
  for item in value:gmatch("[^,]+") do
    local name, params = item:match("^%s*([^;%s]+)%s*(.*)$")
    if name then
      name = name:lower()
      name = alias[name] or name
      local v = 1
      local qs = params:match("[qQ]%s*=%s*([%d.]+)")
      if qs then v = tonumber(qs) or 0 end
      if name == "*" then star = v
      elseif q[name] == nil or v > q[name] then q[name] = v end
    end
  end
  return q, star
end

local function choose(value, offered)
  local q, star = parse(value)
  local best, best_q = nil, 0
  for _, coding in ipairs(offered) do
    local v = q[coding]
    if v == nil then v = star or 0 end
    if v > best_q then best, best_q = coding, v end
  end
  if best and q.identity and q.identity > best_q then return nil end
  return best
end

-- Browsers send the same few header values over and over: the answer for a
-- (value, offer list) pair is kept, in a table emptied when it grows large
-- (a client sending random values cannot grow it without bound).
local cache, cached = setmetatable({}, { __mode = "k" }), 0
local CACHE_MAX = 256
local NONE = false

-- negotiate(accept_encoding, offered) → coding or nil (identity). offered is
-- a list in the server's order of preference; the same table each call lets
-- the answer be cached.
function M.negotiate(value, offered)
  if type(value) == "table" then value = table.concat(value, ", ") end
  if value == nil or value == "" then return nil end
  local per = cache[offered]
  if not per then per = {}; cache[offered] = per end
  local hit = per[value]
  if hit ~= nil then return hit or nil end
  local c = choose(value, offered)
  if cached >= CACHE_MAX then
    for k in pairs(cache) do cache[k] = nil end
    cached = 0
    per = {}; cache[offered] = per
  end
  per[value] = c or NONE
  cached = cached + 1
  return c
end

-- the file suffix of each coding's precompressed sibling
M.suffix = { gzip = ".gz", br = ".br", zstd = ".zst" }

-- the default order for precompressed files: built once, at the highest
-- levels, brotli's file is usually the smallest, then zstd's, then gzip's
M.static_order = { "br", "zstd", "gzip" }

-- precompressed(req, path, lookup, order) → the sibling to serve: its path,
-- its coding, vary, its size and mtime; or nil, nil, vary (serve path itself).
-- vary is "accept-encoding" when any sibling exists (the answer depends on
-- the header), nil otherwise. lookup(path) → kind ("file", "directory",
-- "other"), size, mtime of a path inside the served tree, or nil. A Range request gets the identity
-- file: byte offsets into a compressed stream are of no use to a client that
-- wanted the content.
function M.precompressed(req, path, lookup, order)
  order = order or M.static_order
  local found -- codings with a sibling, in order
  local sizes, mtimes
  for _, coding in ipairs(order) do
    local kind, size, mtime = lookup(path .. M.suffix[coding])
    if kind == "file" then
      found, sizes, mtimes = found or {}, sizes or {}, mtimes or {}
      found[#found + 1] = coding
      sizes[coding], mtimes[coding] = size, mtime
    end
  end
  if not found then return nil end
  local vary = "accept-encoding"
  if req.headers.range then return nil, nil, vary end
  local ae = req.headers["accept-encoding"]
  if type(ae) == "table" then ae = table.concat(ae, ", ") end
  -- not cached: `found` is a new list each time
  local coding = ae and ae ~= "" and choose(ae, found)
  if not coding then return nil, nil, vary end
  return path .. M.suffix[coding], coding, vary, sizes[coding], mtimes[coding]
end

return M
