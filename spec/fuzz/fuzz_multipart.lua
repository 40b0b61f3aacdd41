-- lariat.multipart (RFC 7578): the streaming multipart/form-data reader, fed
-- by a fake req:read_body. Input: the content-type line, "\n", one byte of
-- options (chunk size, read style), then the body.
-- Allowed failures: lariat.http_error values (400/413 on malformed or too
-- big bodies). Anything else out of the module (a Lua runtime error) is a bug.
local mp = require 'lariat.multipart'
local http_error = require 'lariat.http_error'
return function(data)
  local nl = data:find('\n', 1, true)
  if not nl then return end
  local ct = data:sub(1, nl - 1)
  local opt = data:byte(nl + 1) or 0
  local body = data:sub(nl + 2)
  local step = (opt % 64) + 1
  local pos = 1
  local req = { headers = { ['content-type'] = ct } }
  function req:read_body(o)
    assert(type(o) == 'table' and o.length and o.length > 0, 'read_body without a length')
    if pos > #body then return '', 'fin' end
    local n = math.min(step, o.length)
    local c = body:sub(pos, pos + n - 1)
    pos = pos + n
    return c, pos > #body and 'fin' or 'more'
  end
  local ok, err = pcall(function()
    local n = 0
    for part in mp.iterate(req, { max_parts = 16, max_header_size = 256, max_size = 1 << 16,
                                  chunk_size = (opt & 64) ~= 0 and 7 or 4096 }) do
      n = n + 1
      assert(type(part.headers) == 'table')
      assert(part.name == nil or type(part.name) == 'string')
      assert(part.filename == nil or type(part.filename) == 'string')
      if (opt & 128) ~= 0 then
        local b = part:body(1024)
        assert(type(b) == 'string' and #b <= 1024)
      elseif n % 2 == 0 then
        local c = part:read()
        assert(c == nil or (type(c) == 'string' and #c > 0))
      end
    end
  end)
  if not ok and not http_error.is(err) then error(err, 0) end
  if not ok then assert(err.status == 400 or err.status == 413 or err.status == 415, err.status) end
end
