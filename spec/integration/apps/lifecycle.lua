-- Lifecycle tests (test_lifecycle.py): slow handlers to drain on stop.
local lariat = require "lariat"
local app = lariat.app()
app:get("/", function(req) return "ok" end)
app:get("/sleep/:ms", function(req)
  lariat.sleep(tonumber(req.bindings.ms) / 1000)
  return "slept " .. req.bindings.ms
end)
app:get("/log", function(req) lariat.log.warn("a \"quoted\" line\nand a second") return "logged" end)
return app
