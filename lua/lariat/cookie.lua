-- lariat.cookie: Cookie header parsing and Set-Cookie serialisation (RFC 6265).
local httpdate = require "lariat.httpdate"

local M = {}

-- parse(value) → { name = value }. The first occurrence of a name wins (the
-- most specific path comes first, RFC 6265 §5.4); double quotes are removed;
-- values are not percent-decoded (the RFC does not encode them).
function M.parse(value)
  local out = {}
  if type(value) == "table" then value = table.concat(value, "; ") end
  if not value then return out end
  for pair in value:gmatch("[^;]+") do
    local k, v = pair:match("^%s*([^=%s]+)%s*=%s*(.-)%s*$")
    if k and out[k] == nil then
      v = v:match('^"(.*)"$') or v
      out[k] = v
    end
  end
  return out
end

-- token chars (RFC 9110 §5.6.2)
local function is_token(s)
  return type(s) == "string" and s:match("^[!#$%%&'*+%-.^_`|~%w]+$") ~= nil
end

-- cookie-octet: visible ASCII except DQUOTE , ; \ (RFC 6265 §4.1.1)
local function is_cookie_value(s)
  if type(s) ~= "string" then return false end
  for i = 1, #s do
    local c = s:byte(i)
    if c < 0x21 or c > 0x7e or c == 0x22 or c == 0x2c or c == 0x3b or c == 0x5c then
      return false
    end
  end
  return true
end

local function attr_value_ok(s)
  return type(s) == "string" and not s:find("[%c;]")
end

local same_site_values = { strict = "Strict", lax = "Lax", none = "None" }

-- serialize(name, value, opts) → the Set-Cookie value. Raises on a name or
-- value that would corrupt the header (encode it first, e.g. lariat.url.encode).
function M.serialize(name, value, opts)
  if not is_token(name) then error("set_cookie: invalid cookie name " .. tostring(name), 3) end
  value = value == nil and "" or tostring(value)
  if not is_cookie_value(value) then
    error("set_cookie: value has characters not allowed in a cookie (encode it first)", 3)
  end
  local parts = { name .. "=" .. value }
  opts = opts or {}
  if opts.path ~= nil then
    if not attr_value_ok(opts.path) then error("set_cookie: invalid path", 3) end
    parts[#parts + 1] = "Path=" .. opts.path
  end
  if opts.domain ~= nil then
    if not attr_value_ok(opts.domain) then error("set_cookie: invalid domain", 3) end
    parts[#parts + 1] = "Domain=" .. opts.domain
  end
  if opts.max_age ~= nil then
    local n = math.tointeger(opts.max_age)
    if not n then error("set_cookie: max_age must be an integer", 3) end
    parts[#parts + 1] = "Max-Age=" .. n
  end
  if opts.expires ~= nil then
    local e = opts.expires
    if type(e) == "number" then e = httpdate.format(e)
    elseif not attr_value_ok(e) then error("set_cookie: invalid expires", 3) end
    parts[#parts + 1] = "Expires=" .. e
  end
  if opts.secure then parts[#parts + 1] = "Secure" end
  if opts.http_only then parts[#parts + 1] = "HttpOnly" end
  if opts.same_site ~= nil then
    local s = same_site_values[tostring(opts.same_site):lower()]
    if not s then error("set_cookie: same_site must be Strict, Lax or None", 3) end
    parts[#parts + 1] = "SameSite=" .. s
  end
  return table.concat(parts, "; ")
end

return M
