-- An API that aggregates two upstream calls made concurrently.
--   scripts/run examples/aggregate.lua, then curl localhost:8080/dashboard/7
-- The upstream is this same server by default (/api/users/:id and
-- /api/orders/:id, each 200 ms slow); set UPSTREAM=http://host:port for another.
-- The dashboard answers in ~200 ms, not 400: both calls wait at once.
local lariat = require "lariat"
local app = lariat.app()
local upstream = os.getenv("UPSTREAM") or "http://127.0.0.1:8080"

-- run each function in a coroutine of its own; their results, in order, once all are done
local function all(...)
  local fns = { ... }
  local ch = lariat.channel(("all:%d:%s"):format(lariat.worker_id(), tostring(fns)))
  local sub <close> = ch:subscribe()
  local out = {}
  for i, fn in ipairs(fns) do
    lariat.spawn(function()
      out[i] = { pcall(fn) }
      ch:publish("done")
    end)
  end
  for _ = 1, #fns do assert(sub:recv(30), "timed out") end
  return out
end

local function get_json(path)
  local res, err = lariat.http.get(upstream .. path, { timeout = 5 })
  if not res then error(err) end
  if res.status ~= 200 then error("upstream answered " .. res.status) end
  return lariat.json.decode(res.body)
end

app:get("/dashboard/:id", function(req)
  local id = req.bindings.id
  local r = all(function() return get_json("/api/users/" .. id) end,
                function() return get_json("/api/orders/" .. id) end)
  local user, orders = r[1], r[2]
  if not user[1] or not orders[1] then
    return 502, {}, "upstream failed: " .. tostring(user[2] or orders[2])
  end
  return { user = user[2], orders = orders[2] }
end)

-- the "upstream" services
app:get("/api/users/:id", function(req)
  lariat.sleep(0.2)
  return { id = req.bindings.id, name = "user " .. req.bindings.id }
end)
app:get("/api/orders/:id", function(req)
  lariat.sleep(0.2)
  return { { order = 1, user = req.bindings.id }, { order = 2, user = req.bindings.id } }
end)

return app
