-- lariat.static(dir, opts): serve files below `dir`.
--
-- As a route handler:   app:get("/assets/*", lariat.static("public"))
--   the file is req.path_info (the wildcard's rest); missing → 404.
-- As a middleware:      app:use(lariat.static("public", { prefix = "/" }))
--   the file is the request path minus opts.prefix; missing → next().
--
-- opts: index ({"index.html"}, false for none), dotfiles (false: 404 for any
-- segment starting with "."), precompressed (true: serve `file.br`,
-- `file.zst` or `file.gz` to clients accepting that coding, chosen by
-- lariat.encoding; a list such as {"zstd", "gzip"}: those, preferred first;
-- false: never), cache_control (header value), types (extension → type),
-- max_buffer (bytes read at once; larger files are streamed in 64 KiB writes),
-- prefix (middleware mode), stat/realpath (injected file system functions).
--
-- Safety: the relative path is split into segments; "..", NUL, backslash and
-- (by default) dotfile segments are refused, whether they arrived plain or
-- percent-encoded; and the resolved real path of the file must lie inside the
-- real path of `dir`, so a symlink pointing out of the tree serves nothing.
-- Inside the server the body is sent by req:sendfile (sendfile(2) on plain
-- HTTP/1.1; for TLS and HTTP/2 a read of the page cache that never waits,
-- or one on libuv's thread pool), files are looked up through the worker's open-file cache (checked
-- again after opts.open_file_cache_valid seconds, 2 by default), and a wrapping
-- middleware's next() returns nothing for a file (the response is out) --
-- except behind lariat.middleware.compress, which gets the bodies it would
-- compress (up to max_buffer, read with io.*) to do so.
-- Outside it (specs with a fake req) files are read with io.*.
local encoding = require "lariat.encoding"
local fs = require "lariat.fs"
local headers_util = require "lariat.headers"
local httpdate = require "lariat.httpdate"
local lpath = require "lariat.path"
local mime = require "lariat.mime"
local runtime = require "lariat.runtime"

local TEXT = "text/plain; charset=utf-8"
local CHUNK = 65536

-- "/a/b.css" or "a/b.css" (already decoded) → { "a", "b.css" } or nil
local function safe_segments(rel, dotfiles)
  local segs = {}
  for s in rel:gmatch("[^/]+") do
    if s == "." or s == ".." or s:find("[\0\\]") then return nil end
    if not dotfiles and s:sub(1, 1) == "." then return nil end
    segs[#segs + 1] = s
  end
  return segs
end

local function inside(real, root)
  return real == root or real:sub(1, #root + 1) == (root == "/" and "/" or root .. "/")
end

local function etag_of(size, mtime)
  return ('"%x-%x"'):format(size, math.floor(mtime or 0))
end

-- If-None-Match list contains etag (weak comparison, RFC 9110 §13.1.2)?
local function none_match(value, etag)
  value = headers_util.join(value)
  if value:match("^%s*%*%s*$") then return true end
  local bare = etag:gsub("^W/", "")
  for tag in value:gmatch('%s*(W?/?"[^"]*")%s*,?') do
    if tag:gsub("^W/", "") == bare then return true end
  end
  return false
end

local function not_modified(req, etag, mtime)
  local inm = req.headers["if-none-match"]
  if inm then return none_match(inm, etag) end
  local ims = httpdate.parse(req.headers["if-modified-since"])
  return ims ~= nil and mtime ~= nil and math.floor(mtime) <= ims
end

-- If-Range (RFC 9110 §13.1.5): the range applies only if the validator
-- matches: an entity tag strongly, or a date exactly.
local function if_range_ok(req, etag, last_modified)
  local v = req.headers["if-range"]
  if not v then return true end
  if v:sub(1, 1) == '"' then return v == etag end
  if v:sub(1, 2) == "W/" then return false end
  return v == last_modified
end

-- parse_range(value, size) → first, last | "unsatisfiable" | nil (ignore)
local function parse_range(value, size)
  local spec = value:match("^%s*[bB][yY][tT][eE][sS]%s*=%s*(.-)%s*$")
  if not spec or spec:find(",") then return nil end -- one range only; else serve it all
  local a, b = spec:match("^(%d*)%-(%d*)$")
  if not a or (a == "" and b == "") then return nil end
  if a == "" then
    local n = tonumber(b)
    if n == 0 or size == 0 then return "unsatisfiable" end
    return math.max(size - n, 0), size - 1
  end
  local first, last = tonumber(a), b ~= "" and tonumber(b) or size - 1
  if b ~= "" and last < first then return nil end -- invalid: ignored
  if first >= size then return "unsatisfiable" end
  return first, math.min(last, size - 1)
end

local function read_range(path, first, len)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  f:seek("set", first)
  local data = f:read(len) or ""
  f:close()
  return data
end

-- streams [first, first+len) with stream_reply + write, for big files
local function stream_file(req, status, h, path, first, len)
  local f = io.open(path, "rb")
  if not f then return 404, { ["content-type"] = TEXT }, "not found\n" end
  req:stream_reply(status, h)
  if req.method ~= "HEAD" then
    f:seek("set", first)
    local left = len
    while left > 0 do
      local data = f:read(math.min(CHUNK, left))
      if not data then break end
      left = left - #data
      local ok, werr = req:write(data)
      if ok == nil and werr ~= nil then break end -- client gone
    end
  end
  f:close()
end

local function not_found(next)
  if next then return next() end
  return 404, { ["content-type"] = TEXT }, "not found\n"
end

return function(dir, opts)
  opts = opts or {}
  local stat = opts.stat or fs.stat
  local realpath = opts.realpath or fs.realpath
  local index = opts.index
  if index == nil then index = { "index.html" } elseif index == false then index = {} end
  if type(index) == "string" then index = { index } end
  local precompressed = opts.precompressed ~= false
  -- true: lariat.encoding's order; a list: the codings to look for, preferred first
  local precompressed_order = type(opts.precompressed) == "table" and opts.precompressed or nil
  local max_buffer = opts.max_buffer or 1024 * 1024
  local prefix = opts.prefix and lpath.prefix(opts.prefix)
  local core = runtime.core()
  local file_info = not opts.stat and not opts.realpath and core and core.file_info
  local valid = opts.open_file_cache_valid or 2
  local root, err = realpath(dir)
  if not root then error(("lariat.static: %s: %s"):format(dir, tostring(err)), 2) end
  local st_root, serr = stat(root)
  if not st_root then error(("lariat.static: %s: %s"):format(dir, tostring(serr)), 2) end
  if st_root.type ~= "directory" then
    error(("lariat.static: %s is not a directory"):format(dir), 2)
  end

  -- lookup(full) → kind ("file"|"directory"|"other"), size, mtime for a
  -- path below root (after resolving symlinks), or nil
  local lookup
  if file_info then
    lookup = function(full) return file_info(full, valid, root) end
  else
    lookup = function(full)
      local st = stat(full)
      if not st then return nil end
      local real = realpath(full)
      if not real or not inside(real, root) then return nil end
      return st.type, st.size, st.mtime
    end
  end

  -- validators of a path, remade only when its size or mtime moved
  -- (httpdate.format is the costly part); bounded by starting afresh
  local validators, n_validators = {}, 0
  local function validators_of(full, size, mtime)
    local v = validators[full]
    if v and v[1] == size and v[2] == mtime then return v[3], v[4] end
    if n_validators >= 1024 then validators, n_validators = {}, 0 end
    if not v then n_validators = n_validators + 1 end
    local etag = etag_of(size, mtime)
    local last_modified = mtime and httpdate.format(mtime) or nil
    validators[full] = { size, mtime, etag, last_modified }
    return etag, last_modified
  end

  local function serve(req, full, size, mtime, ctype, vary, encoding)
    local h = { ["content-type"] = ctype, ["accept-ranges"] = "bytes",
                ["cache-control"] = opts.cache_control, vary = vary,
                ["content-encoding"] = encoding }
    local etag, last_modified = validators_of(full, size, mtime)
    h.etag, h["last-modified"] = etag, last_modified
    if not_modified(req, etag, mtime) then
      return 304, { etag = etag, ["last-modified"] = last_modified,
                    ["cache-control"] = opts.cache_control, vary = vary }
    end
    local first, last = 0, size - 1
    local status = 200
    local range = req.headers.range
    if range and not encoding and if_range_ok(req, etag, last_modified) then
      local a, b = parse_range(headers_util.join(range), size)
      if a == "unsatisfiable" then
        return 416, { ["content-range"] = "bytes */" .. size, ["content-type"] = TEXT },
               "range not satisfiable\n"
      elseif a then
        first, last, status = a, b, 206
        h["content-range"] = ("bytes %d-%d/%d"):format(a, b, size)
      end
    end
    local len = last - first + 1
    -- behind lariat.middleware.compress, a body it would compress is handed
    -- back to it (read whole, up to max_buffer) instead of going out by sendfile
    local handback = req.would_compress and len <= max_buffer and req:would_compress(status, h)
    if file_info and not handback then
      local ok, serr = req:sendfile(full, { status = status, headers = h, offset = first,
                                            length = len, valid = valid })
      if ok or serr == "closed" then return end
      return 404, { ["content-type"] = TEXT }, "not found\n" -- gone since the lookup
    end
    if len > max_buffer then return stream_file(req, status, h, full, first, len) end
    local data = read_range(full, first, len)
    if not data then return 404, { ["content-type"] = TEXT }, "not found\n" end
    return status, h, data
  end

  -- In the server, a path once served whole is remembered (its checked
  -- relative path → a memo made by core.file_memo: the file's identity, the
  -- precompressed siblings found missing, the response's header fields), so
  -- the next plain GET of it is one call: an open-file cache lookup and
  -- sendfile, no path splitting, no string or table built. A change of the
  -- file, a sibling appearing, a conditional or range request, another
  -- method or a compressing middleware takes the full path below.
  local memo, n_memo = file_info and {}, 0
  local memo_send = file_info and core.file_memo_send
  local sibling_order = precompressed_order or encoding.static_order
  local function remember(rel, full, size, mtime, ctype)
    if n_memo >= 1024 then memo, n_memo = {}, 0 end
    local siblings
    if precompressed then
      siblings = {}
      for i, coding in ipairs(sibling_order) do siblings[i] = full .. encoding.suffix[coding] end
    end
    local etag, last_modified = validators_of(full, size, mtime)
    local m = core.file_memo(full, valid, siblings, {
      ["content-type"] = ctype, ["accept-ranges"] = "bytes",
      ["cache-control"] = opts.cache_control, etag = etag, ["last-modified"] = last_modified })
    if m then
      n_memo = n_memo + 1
      memo[rel] = m
    end
  end

  -- true: the memo of rel answered (or the client left meanwhile)
  local function from_memo(req, rel)
    local m = memo[rel]
    if not m then return false end
    local ok, err = memo_send(req, m)
    if ok then return true end
    if ok == nil then
      if err == "closed" or req.status then return true end
      memo[rel] = nil -- changed: learnt again below
    end
    return false
  end

  return function(req, next)
    local rel = req.path_info
    if rel and memo and from_memo(req, rel) then return end
    local method = req.method
    if method ~= "GET" and method ~= "HEAD" then
      if next then return next() end
      return 405, { allow = "GET, HEAD", ["content-type"] = TEXT }, "method not allowed\n"
    end
    if rel == nil then
      local cpath = lpath.canonical(req.path)
      if not cpath then
        if next then return next() end
        return 400, { ["content-type"] = TEXT }, "bad request path\n"
      end
      if prefix then
        if not lpath.under(cpath, prefix) then return not_found(next) end
        cpath = cpath:sub(#prefix + 1)
      end
      rel = cpath
      if memo and from_memo(req, rel) then return end
    end
    local segs = safe_segments(rel, opts.dotfiles)
    if not segs then return not_found(next) end
    local full = #segs > 0 and (root .. "/" .. table.concat(segs, "/")) or root
    local kind, size, mtime = lookup(full)
    if not kind then return not_found(next) end
    if kind == "directory" then
      local raw = req.path
      if raw:sub(-1) ~= "/" then
        -- relative links in the index page need the trailing slash
        local loc = raw .. "/" .. ((req.qs or "") ~= "" and ("?" .. req.qs) or "")
        return 301, { location = loc, ["content-type"] = TEXT }, "moved to " .. loc .. "\n"
      end
      local found
      for _, name in ipairs(index) do
        local p = full .. "/" .. name
        local k, sz, mt = lookup(p)
        if k == "file" then full, kind, size, mtime, found = p, k, sz, mt, true; break end
      end
      if not found then return not_found(next) end
    end
    if kind ~= "file" then return not_found(next) end
    local ctype = mime.for_path(full, opts.types)
    if precompressed then
      local zpath, coding, vary, zsize, zmtime = encoding.precompressed(req, full, lookup, precompressed_order)
      if zpath then return serve(req, zpath, zsize, zmtime, ctype, vary, coding) end
      if vary then return serve(req, full, size, mtime, ctype, vary) end
    end
    if memo then remember(rel, full, size, mtime, ctype) end
    return serve(req, full, size, mtime, ctype)
  end
end
