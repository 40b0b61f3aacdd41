-- The app h2spec runs against (scripts/conformance) and the raw-frame tests
-- of its races: GET and POST / answer at once, POST reads the body first.
local lariat = require "lariat"
local app = lariat.app()

app:get("/", function(req) return "Hello world!" end)
app:post("/", function(req)
  local body = req:body()
  return "got " .. #(body or "")
end)

return app
