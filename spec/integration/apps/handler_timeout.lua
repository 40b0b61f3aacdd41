-- Handlers for test_attacks_handler_timeout.py (--handler-timeout): handlers
-- that never start their response, long-poll routes that say how long they
-- may wait, and streams that are already answering. Each has a to-be-closed
-- variable that counts its end; /stats reports it with lariat.stats.
local lariat = require "lariat"
local app = lariat.app()

local closecount = require "closecount"
local mark = closecount.mark

app:get("/stats", function(req) return closecount.stats() end)

app:get("/", function(req) return "ok" end)
app:get("/metrics", lariat.metrics.handler())

-- never answers: only the handler timeout ends it
app:get("/hang", function(req)
  local _ <close> = mark()
  lariat.sleep(1e9)
  return "woke"
end)

-- never reads the body it is sent: the connection stops reading once the
-- body buffer is full (test_attacks_h1_paused_hangup.py)
app:post("/hang", function(req)
  local _ <close> = mark()
  lariat.sleep(1e9)
end)

-- reads a body that may come slowly (each read within --body-timeout),
-- then never answers
app:post("/hang-body", function(req)
  local _ <close> = mark()
  local body = req:body()
  lariat.sleep(1e9)
  return body
end)

-- long polls: an answer after s seconds, longer than --handler-timeout
local function poll(req)
  local _ <close> = mark()
  lariat.sleep(tonumber(req.bindings.s))
  return "polled"
end
app:get("/poll/none/:s", { timeout = 0 }, poll)
-- a literal path (the kind C may run without the router): the same
app:get("/poll-literal", { timeout = 0 }, function(req)
  local _ <close> = mark()
  lariat.sleep(1)
  return "polled"
end)
app:get("/poll/long/:s", { timeout = 30 }, poll)
-- a middleware in front: the route's timeout still applies
app:get("/poll/mw/:s", { function(req, next) lariat.sleep(0.01); return next() end, timeout = 0 }, poll)
app:get("/poll/set/:s", function(req)
  req:set_timeout(0)
  return poll(req)
end)
-- a shorter bound than the server's, set by the handler itself
app:get("/short", function(req)
  local _ <close> = mark()
  req:set_timeout(0.2)
  lariat.sleep(1e9)
end)

-- an event stream: answering, so only its client bounds it
app:get("/sse/:s", function(req)
  local _ <close> = mark()
  req:stream_reply(200, { ["content-type"] = "text/event-stream" })
  local n = tonumber(req.bindings.s) * 10
  for i = 1, n do
    req:write("data: " .. i .. "\n\n")
    lariat.sleep(0.1)
  end
  req:write("data: end\n\n")
end)

app:ws("/ws", function(ws, req)
  local _ <close> = mark()
  for msg, kind in ws:each() do ws:send(msg, kind) end
end)

return app
