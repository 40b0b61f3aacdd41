-- The lariat side of the compress-json rows: the JSON file named by
-- $BENCH_JSON (scripts/bench.d/compress_body.py), returned by a handler
-- through lariat.middleware.compress at nginx's level for gzip (6) and the
-- middleware's defaults for br (4) and zstd (3).
local lariat = require "lariat"
local app = lariat.app()

local f = assert(io.open(assert(os.getenv("BENCH_JSON"), "BENCH_JSON not set"), "rb"))
local body = f:read("a")
f:close()
local headers = { ["content-type"] = "application/json" }

app:use(lariat.middleware.compress { levels = { gzip = 6 }, min_size = 1024 })
app:get("/json", function() return 200, headers, body end)
return app
