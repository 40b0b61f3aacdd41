-- lariat.path: the canonical form of a request path, computed once per
-- request and shared by prefix middleware and the router so that both see
-- the same thing (a check on "/admin" cannot be bypassed by "/x/../admin").
--
-- Canonical: segments percent-decoded, empty and "." segments dropped, ".."
-- removes the previous segment (never above the root, RFC 3986 §5.2.4), no
-- trailing slash. A decoded segment containing "/" or NUL is refused: an
-- encoded slash must not be able to create or escape a route segment.
local url = require "lariat.url"
local byte, find, sub, concat = string.byte, string.find, string.sub, table.concat

local M = {}

-- canonical(path) → cpath[, segments], or nil, message.
-- Common paths ("/", "/users/42") come back unchanged with no allocation.
function M.canonical(path)
  if byte(path, 1) ~= 47 then return nil, "path must start with /" end
  if not find(path, "%", 1, true) and not find(path, "//", 1, true)
      and not find(path, "/.", 1, true) then
    if #path == 1 or byte(path, #path) ~= 47 then return path end
    return sub(path, 1, -2) -- "/api/": only the trailing slash goes
  end
  -- segments by find, not gmatch: gmatch allocates a 600-byte match state
  local segs, n, i, len = {}, 0, 2, #path
  while i <= len do
    local j = find(path, "/", i, true) or len + 1
    if j > i then
      local s, err = url.decode(sub(path, i, j - 1))
      if not s then return nil, err end
      if find(s, "[/\0]") then return nil, "encoded slash or NUL in path" end
      if s == ".." then
        if n > 0 then segs[n] = nil; n = n - 1 end
      elseif s ~= "." then
        n = n + 1; segs[n] = s
      end
    end
    i = j + 1
  end
  return "/" .. concat(segs, "/"), segs
end

-- under(cpath, prefix): is cpath at or below the canonical `prefix`?
-- Segment-aware: "/apiary" is not under "/api".
function M.under(cpath, prefix)
  if prefix == "/" then return byte(cpath, 1) == 47 end
  local n = #prefix
  if find(cpath, prefix, 1, true) ~= 1 then return false end
  return #cpath == n or byte(cpath, n + 1) == 47
end

-- prefix(p) → canonical form of a literal prefix given by the app ("/api/" → "/api").
function M.prefix(p)
  if type(p) ~= "string" or byte(p, 1) ~= 47 then
    error("prefix must be a string starting with /, got " .. tostring(p), 3)
  end
  local c = assert(M.canonical(p))
  return c
end

return M
