-- lariat.proxy tunnelling WebSockets of HTTP/2 clients (RFC 8441) to HTTP/1.1
-- upstreams (test_net_proxy_ws_h2.py); their URLs come from the environment.
local lariat = require "lariat"
local app = lariat.app()
local up = assert(os.getenv("LARIAT_TEST_UPSTREAM"))  -- lariat (apps/upstream.lua)
local ng = assert(os.getenv("LARIAT_TEST_NGINX"))     -- nginx proxying /wsup/ to it

app:get("/ws/*", lariat.proxy(up .. "/ws/"))
app:get("/ngws/*", lariat.proxy(ng .. "/wsup/"))
app:get("/plain/*", lariat.proxy(up .. "/"))          -- answers without switching
app:get("/stats", function() return lariat.stats() end)
return app
