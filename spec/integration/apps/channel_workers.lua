-- lariat.channel across workers (test_channel_workers.py): long-poll
-- subscribers on every worker, one publisher.
local lariat = require "lariat"
local app = lariat.app()
local ready = lariat.shared("channel-test")

app:get("/sub", function(req)
  local sub = lariat.channel("news"):subscribe()
  ready:incr("subs", 1, 0)
  local msg, err = sub:recv(5)
  sub:close()
  return { worker = lariat.worker_id(), msg = msg, err = err }
end)
app:get("/subs", function(req) return tostring(ready:get("subs") or 0) end)
app:post("/pub", function(req)
  return { worker = lariat.worker_id(), local_subscribers = lariat.channel("news"):publish(req:body()) }
end)
return app
