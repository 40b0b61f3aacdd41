-- The smallest lariat app: scripts/run examples/hello.lua, then curl localhost:8080
local lariat = require "lariat"
local app = lariat.app()

app:get("/", function(req)
  return "Hello world!"
end)

app:post("/echo", function(req)
  return 200, { ["content-type"] = req.headers["content-type"] or "application/octet-stream" }, req:body()
end)

app:get("/hello/:name", function(req)
  return { hello = req.bindings.name }
end)

return app
