-- lariat.proxy in front of the upstreams test_net_proxy.py starts; their
-- URLs come from the environment.
local lariat = require "lariat"
local app = lariat.app()
local up = assert(os.getenv("LARIAT_TEST_UPSTREAM"))  -- lariat (apps/upstream.lua)
local ng = assert(os.getenv("LARIAT_TEST_NGINX"))     -- nginx, plain HTTP/1.1
local silent = os.getenv("LARIAT_TEST_SILENT")         -- accepts, never answers

app:all("/up/*", lariat.proxy(up .. "/"))
app:all("/path/*", lariat.proxy(up))                     -- path and query unchanged
app:all("/m/*", lariat.proxy(up .. "/path/base/"))       -- /m/x → /path/base/x
app:get("/exact", lariat.proxy(up .. "/path/fixed"))    -- no `*`: the base, then the query
app:get("/files/*", lariat.proxy(ng))
app:get("/wsup/*", lariat.proxy(up .. "/ws/"))
app:get("/dead/*", lariat.proxy("http://127.0.0.1:1/"))
app:get("/t/*", lariat.proxy(up .. "/", { read_timeout = 0.3 }))
app:get("/edit/*", lariat.proxy(up .. "/", {
  headers = { ["x-added"] = "yes" },
  before = function(req, o) o.headers = { ["x-added"] = "by before", ["x-path"] = req.path } end,
}))
if silent then app:get("/silent", lariat.proxy(silent)) end
app:get("/stats", function() return lariat.stats() end)
return app
