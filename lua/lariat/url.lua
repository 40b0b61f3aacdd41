-- lariat.url: percent-decoding and key=value&… parsing (RFC 3986, WHATWG
-- application/x-www-form-urlencoded). Strict: a malformed escape is an error,
-- because guessing what the client meant is how filters get bypassed.
local byte, char, find, gsub, sub = string.byte, string.char, string.find, string.gsub, string.sub

local M = {}

local function hex_to_char(h)
  return char(tonumber(h, 16))
end

-- decode(s[, plus]) → decoded string, or nil, message. With `plus`, "+" means
-- space (query strings and forms), as browsers encode them.
function M.decode(s, plus)
  if plus and find(s, "+", 1, true) then s = gsub(s, "+", " ") end
  if not find(s, "%", 1, true) then return s end
  -- every "%" must start a two-hex-digit escape
  local i = 1
  while true do
    i = find(s, "%", i, true)
    if not i then break end
    local a, b = byte(s, i + 1, i + 2)
    local function ishex(c)
      return c and ((c >= 48 and c <= 57) or (c >= 65 and c <= 70) or (c >= 97 and c <= 102))
    end
    if not (ishex(a) and ishex(b)) then
      return nil, "malformed percent-encoding near '" .. sub(s, i, i + 2) .. "'"
    end
    i = i + 3
  end
  return (gsub(s, "%%(%x%x)", hex_to_char))
end

local function encode_char(c)
  return string.format("%%%02X", byte(c))
end

-- encode(s): percent-encode everything but RFC 3986 unreserved characters.
function M.encode(s)
  return (gsub(s, "[^%w%-%._~]", encode_char))
end

-- parse(s, limit, what) → table, or nil, message.
-- Repeated keys collect into an array in arrival order; a key without "="
-- maps to "". More than `limit` pairs is an error, not a truncation.
function M.parse(s, limit, what)
  local out, count = {}, 0
  if s == nil or s == "" then return out end
  what = what or "parameters"
  for pair in string.gmatch(s, "[^&]+") do
    count = count + 1
    if limit and count > limit then
      return nil, ("too many %s (limit %d)"):format(what, limit)
    end
    local eq = find(pair, "=", 1, true)
    local k, v
    if eq then k, v = sub(pair, 1, eq - 1), sub(pair, eq + 1) else k, v = pair, "" end
    local dk, err = M.decode(k, true)
    if not dk then return nil, err end
    local dv, err2 = M.decode(v, true)
    if not dv then return nil, err2 end
    local prev = out[dk]
    if prev == nil then
      out[dk] = dv
    elseif type(prev) == "table" then
      prev[#prev + 1] = dv
    else
      out[dk] = { prev, dv }
    end
  end
  return out
end

return M
