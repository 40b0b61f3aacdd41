-- A gateway in front of other services with lariat.proxy.
--   API_UPSTREAM=http://127.0.0.1:9001 scripts/run examples/proxy.lua
-- Bodies stream both ways in C with back-pressure; WebSocket upgrades are
-- tunnelled; an unreachable upstream answers 502, a slow one 504 (and a log
-- line names it). x-forwarded-for/-proto/-host are added, hop-by-hop headers
-- (and those named in Connection) dropped, --max-body applies to uploads.
local lariat = require "lariat"
local app = lariat.app()
local api = os.getenv("API_UPSTREAM") or "http://127.0.0.1:9001"
local files = os.getenv("FILES_UPSTREAM") or api

app:use(lariat.middleware.request_id())                  -- req.ctx.request_id, echoed to the client

-- /api/v1/users/7 → {api}/users/7 (nginx proxy_pass with a URI: the route's `*`)
app:all("/api/v1/*", lariat.proxy(api .. "/", {
  read_timeout = 30,
  before = function(req, o)                              -- headers set on the upstream request
    o.headers = { ["x-gateway"] = "lariat", ["x-request-id"] = req.ctx.request_id }
  end,
}))

-- WebSockets: the upgrade goes through, then bytes flow both ways
app:get("/ws/*", lariat.proxy(api .. "/ws/"))

-- anything else under /files goes up with its path and query unchanged
app:get("/files/*", lariat.proxy(files))

-- per-request choice of upstream: canary 10% of the users to another pool
local canary = os.getenv("CANARY_UPSTREAM")
app:all("/beta/*", lariat.proxy(api .. "/", {
  before = function(req, o)
    if canary and (tonumber(req.headers["x-user-id"] or "") or 0) % 10 == 0 then
      o.url = o.url:gsub("^https?://[^/]+", canary)
    end
  end,
}))

app:get("/healthz", function() return "ok" end)

return app
