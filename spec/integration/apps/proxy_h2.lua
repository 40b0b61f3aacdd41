-- lariat.proxy and lariat.http to HTTP/2 upstreams (test_net_proxy_h2.py);
-- their URLs come from the environment.
local lariat = require "lariat"
local app = lariat.app()
local up = assert(os.getenv("LARIAT_TEST_UPSTREAM"))  -- lariat (apps/upstream.lua), h2c by prior knowledge
local ng = assert(os.getenv("LARIAT_TEST_NGINX_TLS")) -- nginx, TLS with ALPN h2
local ca = assert(os.getenv("LARIAT_TEST_CA"))
local peer = assert(os.getenv("LARIAT_TEST_H2PEER"))  -- python-h2 (netpeers.H2Peer)
local peer2 = assert(os.getenv("LARIAT_TEST_H2PEER2"))

app:all("/c/*", lariat.proxy(up .. "/", { version = "2" }))
app:all("/h1/*", lariat.proxy(up .. "/"))
app:get("/ct/*", lariat.proxy(up .. "/", { version = "2", read_timeout = 0.3 }))
app:all("/n/*", lariat.proxy(ng .. "/", { ca = ca }))
app:get("/p/*", lariat.proxy(peer .. "/", { version = "2" }))
app:get("/p2/*", lariat.proxy(peer2 .. "/", { version = "2" }))
app:get("/dead/*", lariat.proxy("http://127.0.0.1:1/", { version = "2" }))

local function hopts(q)
  return { version = q.version, ca = ca, keepalive_timeout = tonumber(q.ka) }
end

app:get("/get", function(req)
  local q = req:query()
  local res, err = lariat.http.get(q.url, hopts(q))
  if not res then return 502, {}, err end
  return { status = res.status, version = res.version, headers = res.headers, len = #res.body }
end)

-- n concurrent lariat.http.get of one URL (lariat.spawn): "status version" or the error of each
app:get("/many", function(req)
  local q = req:query()
  local n = tonumber(q.n)
  local ch = lariat.channel("many" .. tostring(req))
  local sub = ch:subscribe()
  local out = {}
  for i = 1, n do
    lariat.spawn(function()
      local res, err = lariat.http.get(q.url, hopts(q))
      out[i] = res and (res.status .. " " .. res.version) or err
      ch:publish("done")
    end)
  end
  for _ = 1, n do sub:recv(30) end
  return out
end)

app:get("/stats", function() return lariat.stats() end)
return app
