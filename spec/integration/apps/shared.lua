-- lariat.shared across workers (test_shared_dict.py)
local lariat = require "lariat"
local app = lariat.app()
local hits = lariat.shared("hits")
local small = lariat.shared("small", { size = 8192 })

app:post("/incr", function(req) return tostring(hits:incr("n", 1, 0)) end)
app:get("/count", function(req) return tostring(hits:get("n")) end)
app:post("/kv/:k", function(req)
  local ttl = tonumber(req:query().ttl)
  local ok, err = hits:set(req.bindings.k, lariat.json.decode(req:body()), ttl)
  return ok and "stored" or (422), nil, err
end)
app:get("/kv/:k", function(req)
  local v = hits:get(req.bindings.k)
  if v == nil then return 404, nil, "missing" end
  return { value = v, ttl = hits:ttl(req.bindings.k) }
end)
app:post("/add/:k", function(req)
  local ok, err = hits:add(req.bindings.k, req:body())
  return ok and "added" or err
end)
app:post("/fill", function(req)
  for i = 1, 200 do small:set("k" .. i, string.rep("x", 200)) end
  return { first = small:get("k1") ~= nil, last = small:get("k200") ~= nil, n = #small:keys() }
end)
return app
