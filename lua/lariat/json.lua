-- lariat.json: lua-cjson with lariat's conventions.
-- A private cjson instance so that an app tweaking its own `require "cjson"`
-- settings does not change how lariat encodes responses.
local cjson = require("cjson").new()

cjson.decode_invalid_numbers(false) -- NaN/Infinity/hex are not JSON
cjson.encode_invalid_numbers(false)

local M = { null = cjson.null }

-- An empty Lua table is both {} and []; cjson picks {}. Tables passed through
-- json.array() encode as [] even when empty: they are swapped for a sentinel
-- string that is replaced in the output. The walk only happens once some
-- array was marked in this Lua state.
local array_mt = { __name = "lariat.json.array" }
local SENTINEL = "\0lariat:[]\0"
local SENTINEL_JSON = '"\\u0000lariat:%[%]\\u0000"'
local marked = false

-- array([t]) → t, encoded as a JSON array even when empty.
function M.array(t)
  marked = true
  return setmetatable(t or {}, array_mt)
end

local function swap_empty_arrays(v, depth)
  if depth > 1000 then error("json.encode: nesting too deep (cycle?)", 0) end
  if getmetatable(v) == array_mt and next(v) == nil then return SENTINEL end
  local copy
  for k, x in pairs(v) do
    if type(x) == "table" then
      local nx = swap_empty_arrays(x, depth + 1)
      if nx ~= x then
        if not copy then copy = {}; for kk, vv in pairs(v) do copy[kk] = vv end end
        copy[k] = nx
      end
    end
  end
  return copy or v
end

-- cjson writes "/" as "\/" and has no switch for it. Every "/" it emits is
-- inside a string and escaped that way, and a backslash is "\\", so "\/"
-- in its output is always an escaped slash: dropping the backslash is exact.
local find, gsub = string.find, string.gsub

local function unslash(s)
  if find(s, "\\/", 1, true) then return (gsub(s, "\\/", "/")) end
  return s
end

-- encode(value) → string; raises on values JSON cannot represent.
function M.encode(value)
  if marked and type(value) == "table" then
    local swapped = swap_empty_arrays(value, 0)
    if swapped ~= value then
      return unslash((cjson.encode(swapped):gsub(SENTINEL_JSON, "[]")))
    end
  end
  return unslash(cjson.encode(value))
end

-- decode(text) → value, or nil, message. JSON null decodes to lariat.json.null.
function M.decode(text)
  if type(text) ~= "string" then
    return nil, "expected a string, got " .. type(text)
  end
  local ok, v = pcall(cjson.decode, text)
  if not ok then
    return nil, tostring(v)
  end
  return v
end

return M
