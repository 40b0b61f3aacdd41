-- Wildcard routes C matches itself (bindings/direct.c) next to the ones that
-- need Lua around them: test_routes_in_c.py counts which way each went.
local lariat = require "lariat"
local app = lariat.app()
local up = assert(os.getenv("LARIAT_TEST_UPSTREAM"))  -- lariat (apps/upstream.lua)

local runs = { mw = 0, before = 0 }

app:all("/c/*", lariat.proxy(up .. "/path/"))            -- routed and proxied without Lua
app:all("/e/*", lariat.proxy(up .. "/"))
app:get("/mw/*", { function(req, next)                    -- a route middleware: Lua runs
  runs.mw = runs.mw + 1
  return next()
end }, lariat.proxy(up .. "/path/"))
app:get("/b/*", lariat.proxy(up .. "/path/", {            -- `before`: Lua runs
  before = function(req, o) runs.before = runs.before + 1; o.headers = { ["x-before"] = "1" } end,
}))
app:get("/t/*", { timeout = 0.3 }, lariat.proxy(up .. "/"))  -- a route timeout: Lua sets it
app:get("/w/*", function(req) return "info=" .. req.path_info end)
app:post("/w/*", function(req) return 201, {}, "posted " .. req.path_info end)
app:get("/k", function() return "k itself" end)          -- the prefix is a route of its own
app:get("/k/*", function(req) return "k/" .. req.path_info end)
app:route("*", "/any/*", function(req) return req.method .. " " .. req.path_info end)
app:get("/counts", function()
  return { mw = runs.mw, before = runs.before, direct = lariat.stats().direct }
end)
return app
