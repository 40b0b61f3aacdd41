-- scripts/bench: the static-file rows' app (BENCH_STATIC_DIR holds 4k.bin and
-- 200m.bin); the nginx anchor is nginx-static.conf.in
local lariat = require "lariat"
local app = lariat.app()
app:get("/s/*", lariat.static(assert(os.getenv("BENCH_STATIC_DIR"), "BENCH_STATIC_DIR")))
return app
