-- lariat --redis: lariat.shared and lariat.channel across instances
-- (test_cluster_redis.py). Every answer names the instance that gave it.
local lariat = require "lariat"
local app = lariat.app()
local kv = lariat.shared("kv")
local other = lariat.shared("other")
local instance = os.getenv("LARIAT_TEST_INSTANCE") or "?"

app:use(function(req, next)
  local status, headers, body = next()
  if status == "websocket" then return status, headers, body end -- upgrade: handler, opts
  if type(status) ~= "number" then status, headers, body = 200, nil, status end
  headers = headers or {}
  headers["x-instance"] = instance
  if type(body) == "table" then
    body = lariat.json.encode(body)
    headers["content-type"] = "application/json"
  end
  return status, headers, body
end)

local function failed(err) return 503, nil, err end

app:post("/kv/:k", function(req)
  local ok, err = kv:set(req.bindings.k, lariat.json.decode(req:body()), tonumber(req:query().ttl))
  if not ok then return failed(err) end
  return "stored"
end)
app:get("/kv/:k", function(req)
  local v, err = kv:get(req.bindings.k)
  if err then return failed(err) end
  if v == nil then return 404, nil, "missing" end
  local ttl = kv:ttl(req.bindings.k)
  return { value = v, ttl = ttl, type = math.type(v) or type(v) }
end)
app:delete("/kv/:k", function(req)
  local ok, err = kv:delete(req.bindings.k)
  if err then return failed(err) end
  return tostring(ok)
end)
app:post("/incr/:k", function(req)
  local q = req:query()
  local by = q.by and (math.tointeger(tonumber(q.by)) or tonumber(q.by)) or 1
  local v, err = kv:incr(req.bindings.k, by, q.init and tonumber(q.init), tonumber(q.ttl))
  if v == nil then return err == "not found" and 404 or err == "not a number" and 409 or 503, nil, err end
  return { value = v, type = math.type(v) }
end)
app:post("/add/:k", function(req)
  local ok, err = kv:add(req.bindings.k, req:body())
  if ok then return "added" end
  if err == "exists" then return "exists" end
  return failed(err)
end)
app:get("/keys", function(req)
  local keys, err = kv:keys(tonumber(req:query().max))
  if not keys then return failed(err) end
  table.sort(keys)
  local o = assert(other:keys())
  return { keys = keys, other = #o }
end)
app:post("/other/:k", function(req)
  return tostring(assert(other:set(req.bindings.k, true)))
end)
-- the values a dictionary keeps, round trip (and what another Redis client wrote)
app:get("/types", function(req)
  local t = { s = "héllo", i = 42, f = 2.5, whole = 3.0, yes = true, no = false,
              t = { a = 1, list = { "x", 2, false } }, big = math.maxinteger, neg = -7 }
  for k, v in pairs(t) do assert(kv:set("type:" .. k, v)) end
  local out = {}
  for k in pairs(t) do
    local v = kv:get("type:" .. k)
    out[k] = { v = v, type = math.type(v) or type(v) }
  end
  out.raw = kv:get("raw")
  return out
end)
app:get("/outside", function(req)
  -- a call that can't wait (inside table.sort's comparator) raises
  local ok, err = pcall(table.sort, { 2, 1 }, function(a, b) kv:get("x"); return a < b end)
  return { ok = ok, err = tostring(err) }
end)

app:post("/publish/:ch", function(req)
  local n, err = lariat.channel(req.bindings.ch):publish(req:body())
  if not n then return failed(err) end
  return tostring(n)
end)
app:ws("/sub/:ch", function(ws, req)
  local sub, err = lariat.channel(req.bindings.ch):subscribe()
  if not sub then
    ws:send("error: " .. err)
    return
  end
  ws:send("ready " .. instance)
  while true do
    local msg = sub:recv()
    if not msg or not ws:send(msg) then break end
  end
end)
return app
