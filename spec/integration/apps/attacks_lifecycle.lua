-- Handlers for test_attacks_lifecycle.py (issue 9): handlers that wait in
-- every way lariat offers, each with a to-be-closed variable that counts its
-- cancellation; /stats reports live handlers (lariat.stats) and that count.
local lariat = require "lariat"
local app = lariat.app()

local closecount = require "closecount" -- to-be-closed variables run (handlers cancelled or ended)
local mark = closecount.mark
local finished = {} -- spawned task name -> true once it ran to its end

app:get("/stats", function(req)
  local s = closecount.stats()
  s.subscribers = lariat.channel("c"):subscribers() + lariat.channel("wc"):subscribers()
  return s
end)

app:get("/", function(req) return "ok" end)

app:get("/sleep/:s", function(req)
  local _ <close> = mark()
  lariat.sleep(tonumber(req.bindings.s))
  return "slept"
end)

-- waits for a body that may never come
app:post("/body", function(req)
  local _ <close> = mark()
  return req:body() or "none"
end)

app:get("/channel", function(req)
  local _ <close> = mark()
  local sub <close> = lariat.channel("c"):subscribe()
  return sub:recv() or "none"
end)

app:ws("/ws-channel", function(ws, req)
  local _ <close> = mark()
  local sub <close> = lariat.channel("wc"):subscribe()
  ws:send("subscribed")
  sub:recv()
end)

app:get("/spawn/:name", function(req)
  local _ <close> = mark()
  lariat.spawn(function(name)
    lariat.sleep(0.3)
    -- the request was cancelled meanwhile: its req says so, it reads no freed memory
    finished[name] = not pcall(req.header, req, "host")
  end, req.bindings.name)
  lariat.sleep(30)
end)
app:get("/finished/:name", function(req) return finished[req.bindings.name] and "yes" or "no" end)

app:get("/loop", function(req) while true do end end)
-- about 2 ms of CPU, then an answer
app:get("/work", function(req)
  local x = 0
  for i = 1, 200000 do x = x + i % 7 end
  return tostring(x)
end)
app:get("/exec", function(req)
  os.execute("sleep 1.5")
  return "done"
end)

-- waits on a channel nobody publishes to: SIGTERM ends the wait
app:get("/channel-stop", function(req)
  local sub <close> = lariat.channel("quiet"):subscribe()
  local msg, err = sub:recv()
  return msg or err
end)

-- an event stream that ends when the server stops
app:get("/sse", function(req)
  req:stream_reply(200, { ["content-type"] = "text/event-stream" })
  req:write("data: hello\n\n")
  while true do
    local ok, err = lariat.sleep(60)
    if err == "stopping" then
      req:write("event: bye\ndata: stopping\n\n")
      return
    end
  end
end)

return app
