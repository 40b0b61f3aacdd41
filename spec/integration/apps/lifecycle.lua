-- Lifecycle tests (test_lifecycle.py): slow handlers to drain on stop.
local lariat = require "lariat"
local app = lariat.app()
app:get("/", function(req) return "ok" end)
app:get("/sleep/:ms", function(req)
  lariat.sleep(tonumber(req.bindings.ms) / 1000)
  return "slept " .. req.bindings.ms
end)
-- ignores that the server stops (its first sleep returns nil, "stopping"):
-- only the drain timeout or a second SIGINT ends it
app:get("/stubborn/:ms", function(req)
  local ok, err = lariat.sleep(tonumber(req.bindings.ms) / 1000)
  if err == "stopping" then lariat.sleep(tonumber(req.bindings.ms) / 1000) end
  return "slept " .. req.bindings.ms
end)
app:get("/log", function(req) lariat.log.warn("a \"quoted\" line\nand a second") return "logged" end)
return app
