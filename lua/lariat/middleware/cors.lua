-- lariat.middleware.cors(opts): Cross-Origin Resource Sharing (WHATWG Fetch).
--
--   app:use(lariat.middleware.cors{ origins = { "https://app.example.com" },
--                                   credentials = true })
--
-- opts.origins: "*" (default), one origin, a list, or function(origin, req) → bool.
-- opts.methods: allowed methods for preflights (default the common ones).
-- opts.headers: allowed request headers (default: echo what the preflight asks).
-- opts.expose: response headers readable by the page.
-- opts.credentials: send access-control-allow-credentials (the origin is then
-- always echoed, never "*"). opts.max_age: preflight cache seconds (600).
--
-- A preflight (OPTIONS with access-control-request-method) from an allowed
-- origin is answered 204 here; other requests get their CORS headers through
-- req:set_header, so they apply to returned results and req:reply alike.
-- Requests from origins not allowed pass through without CORS headers: the
-- browser then withholds the response from the page.
local headers_util = require "lariat.headers"

local function list(v, default)
  if v == nil then return default end
  if type(v) == "table" then return table.concat(v, ", ") end
  return v
end

return function(opts)
  opts = opts or {}
  local origins = opts.origins or "*"
  local allowed
  if origins == "*" then
    allowed = function() return true end
  elseif type(origins) == "function" then
    allowed = origins
  else
    local set = {}
    for _, o in ipairs(type(origins) == "table" and origins or { origins }) do set[o] = true end
    allowed = function(origin) return set[origin] == true end
  end
  local any = origins == "*" and not opts.credentials
  local methods = list(opts.methods, "GET, HEAD, PUT, PATCH, POST, DELETE")
  local allow_headers = list(opts.headers, nil)
  local expose = list(opts.expose, nil)
  local max_age = tostring(opts.max_age or 600)

  return function(req, next)
    local origin = req.headers.origin
    if not origin or not allowed(origin, req) then return next() end
    local allow_origin = any and "*" or origin
    local acrm = req.headers["access-control-request-method"]
    if req.method == "OPTIONS" and acrm then
      local h = {
        ["access-control-allow-origin"] = allow_origin,
        ["access-control-allow-methods"] = methods,
        ["access-control-allow-headers"] = allow_headers
            or headers_util.join(req.headers["access-control-request-headers"]),
        ["access-control-max-age"] = max_age,
        vary = "origin, access-control-request-method, access-control-request-headers",
      }
      if opts.credentials then h["access-control-allow-credentials"] = "true" end
      return 204, h
    end
    req:set_header("access-control-allow-origin", allow_origin)
    if opts.credentials then req:set_header("access-control-allow-credentials", "true") end
    if expose then req:set_header("access-control-expose-headers", expose) end
    if not any then headers_util.add_vary(req, "origin") end
    return next()
  end
end
