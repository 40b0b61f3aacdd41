-- A static site from examples/public with lariat.static.
--
--   scripts/run examples/static_site.lua
--   curl -i localhost:8080/                       (index.html)
--   curl -i localhost:8080/css/site.css -H 'range: bytes=0-9'
--   curl -i localhost:8080/css/site.css -H 'if-none-match: "<etag from before>"'
--
-- Files are looked up relative to this script, not the working directory.
local lariat = require "lariat"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."

local app = lariat.app()
app:use(lariat.middleware.access_log())
app:get("/api/time", function() return { time = os.time() } end)
-- every other GET/HEAD is a file (or 404)
app:get("/*", lariat.static(here .. "/public", { cache_control = "public, max-age=60" }))

return app
