-- lariat.json: lua-cjson with lariat's conventions.
-- A private cjson instance so that an app tweaking its own `require "cjson"`
-- settings does not change how lariat encodes responses.
local cjson = require("cjson").new()

cjson.decode_invalid_numbers(false) -- NaN/Infinity/hex are not JSON
cjson.encode_invalid_numbers(false)

local M = { null = cjson.null }

-- encode(value) → string; raises on values JSON cannot represent.
function M.encode(value)
  return cjson.encode(value)
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
