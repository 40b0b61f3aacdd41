-- lariat.middleware.request_id(opts): gives every request an id.
--
-- The id comes from the incoming header (opts.header, default x-request-id)
-- when it is a sane token (1..200 visible ASCII characters) and
-- opts.trust_incoming is not false; otherwise opts.generator() or a random
-- UUIDv4. It is stored in req.ctx.request_id and echoed on the response.
local function uuid4()
  local r = math.random
  return ("%08x-%04x-4%03x-%04x-%012x"):format(
    r(0, 0xffffffff), r(0, 0xffff), r(0, 0xfff), 0x8000 | r(0, 0x3fff), r(0, 0xffffffffffff))
end

local function valid(id)
  return type(id) == "string" and #id >= 1 and #id <= 200 and id:find("^[!-~]+$") ~= nil
end

return function(opts)
  opts = opts or {}
  local header = (opts.header or "x-request-id"):lower()
  local generate = opts.generator or uuid4
  local trust = opts.trust_incoming ~= false
  return function(req, next)
    local id = trust and req.headers[header] or nil
    if not valid(id) then id = generate() end
    req.ctx.request_id = id
    req:set_header(header, id)
    return next()
  end
end
