-- Middleware behaviour (test_req_api.py).
local lariat = require "lariat"
local app = lariat.app()

-- Which middlewares ran before the handler, per request.
local trail = setmetatable({}, { __mode = "k" })

-- Outer middleware: records the order it ran in and tags every response.
app:use(function(req, next)
  if req.path == "/block" then
    return 403, { ["content-type"] = "text/plain" }, "blocked by middleware"
  end
  if req.path == "/mw-error" then error("middleware-boom-detail") end
  req:set_header("x-outer", "1")
  trail[req] = "outer"
  local status, headers, body = next()
  if req.path == "/change" then
    return 202, { ["content-type"] = "text/plain", ["x-changed"] = "yes" }, "changed: " .. body
  end
  return status, headers, body
end)

-- Inner middleware: after `next()` it can see what the handler returned.
app:use(function(req, next)
  trail[req] = (trail[req] or "") .. ",inner"
  local status, headers, body = next()
  if req.path == "/after" then
    headers = headers or {}
    headers["x-after"] = "inner"
    body = body .. "+after"
  end
  return status, headers, body
end)

app:get("/plain", function(req)
  return 200, { ["content-type"] = "text/plain" }, "handler after " .. tostring(trail[req])
end)
app:get("/after", function(req)
  return 200, { ["content-type"] = "text/plain" }, "handler"
end)
app:get("/change", function(req)
  return 200, { ["content-type"] = "text/plain" }, "original"
end)
app:get("/block", function(req) return "handler must not run" end)
app:get("/mw-error", function(req) return "handler must not run" end)
app:get("/ok", function(req) return "still fine" end)

return app
