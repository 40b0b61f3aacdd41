-- A static site from examples/public with lariat.static.
--
--   scripts/run examples/static_site.lua
--   curl -i localhost:8080/                       (index.html)
--   curl -i localhost:8080/css/site.css -H 'range: bytes=0-9'
--   curl -i localhost:8080/css/site.css -H 'if-none-match: "<etag from before>"'
--
-- A relative directory is taken from this script's directory, not from the
-- working directory. For an access log, start it with --access-log - (or FILE).
local lariat = require "lariat"

local app = lariat.app()
app:get("/api/time", function() return { time = os.time() } end)
-- every other GET/HEAD is a file (or 404)
app:get("/*", lariat.static("public", { cache_control = "public, max-age=60" }))

return app
