-- lariat.middleware.basic_auth(opts): HTTP Basic authentication (RFC 7617).
--
--   app:use("/admin", lariat.middleware.basic_auth{ users = { alice = "s3cret" } })
--   -- or check = function(user, password, req) return ... end
--
-- On success the user name is in req.ctx.user; otherwise 401 with a
-- www-authenticate challenge for opts.realm (default "lariat").
local b64 = {}
do
  local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  for i = 1, #chars do b64[chars:byte(i)] = i - 1 end
end

-- strict base64 decode → string or nil
local function decode64(s)
  if #s % 4 ~= 0 or s:find("[^%w+/=]") or s:find("=[^=]") then return nil end
  local out = {}
  for i = 1, #s, 4 do
    local a, b, c, d = s:byte(i, i + 3)
    local va, vb, vc, vd = b64[a], b64[b], b64[c], b64[d]
    if va == nil or vb == nil then return nil end
    local n = (va << 18) | (vb << 12) | ((vc or 0) << 6) | (vd or 0)
    out[#out + 1] = string.char((n >> 16) & 0xff)
    if vc then out[#out + 1] = string.char((n >> 8) & 0xff) end
    if vd then out[#out + 1] = string.char(n & 0xff) end
  end
  return table.concat(out)
end

-- compares without an early exit so timing does not leak the prefix length
local function same(a, b)
  if type(a) ~= "string" or type(b) ~= "string" then return false end
  local diff = #a ~ #b
  for i = 1, #a do
    diff = diff | (a:byte(i) ~ (b:byte(((i - 1) % math.max(#b, 1)) + 1) or 0))
  end
  return diff == 0
end

local function credentials(req)
  local h = req.headers.authorization
  if type(h) ~= "string" then return nil end
  local token = h:match("^%s*[Bb][Aa][Ss][Ii][Cc]%s+([%w+/=]+)%s*$")
  if not token then return nil end
  local decoded = decode64(token)
  if not decoded then return nil end
  return decoded:match("^([^:]*):(.*)$")
end

return function(opts)
  opts = opts or {}
  local check = opts.check
  if not check then
    local users = opts.users or error("basic_auth: give users = {name = password} or check = function", 2)
    check = function(user, password) return same(users[user], password) end
  end
  local realm = (opts.realm or "lariat"):gsub('[\\"]', "\\%0")
  local challenge = {
    ["www-authenticate"] = ('Basic realm="%s", charset="UTF-8"'):format(realm),
    ["content-type"] = "text/plain; charset=utf-8",
  }
  return function(req, next)
    local user, password = credentials(req)
    if user and check(user, password, req) then
      req.ctx.user = user
      return next()
    end
    return 401, challenge, "authentication required\n"
  end
end
