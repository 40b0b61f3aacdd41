-- Server-sent events: a clock ticking every second.
--
--   scripts/run examples/sse_clock.lua
--   curl -N localhost:8080/clock         (or open http://localhost:8080/)
--
-- Each request runs in its own coroutine: wait() yields to the loop, so one
-- worker serves any number of clocks. A closed client ends the loop (send
-- returns nil, "closed").
local lariat = require "lariat"

local app = lariat.app()

local PAGE = [[<!doctype html>
<meta charset="utf-8"><title>lariat clock</title>
<h1 id="t">…</h1>
<script>
  const es = new EventSource("/clock");
  es.addEventListener("tick", e => { document.getElementById("t").textContent = JSON.parse(e.data).time; });
</script>
]]

app:get("/", function()
  return 200, { ["content-type"] = "text/html; charset=utf-8" }, PAGE
end)

app:get("/clock", function(req)
  local events = req:sse { keepalive = 15 }
  events:send { retry = 2000, data = "connected" }
  local n = tonumber(req:query().count) -- ?count=3 stops after 3 ticks (handy for curl)
  local i = 0
  while not n or i < n do
    i = i + 1
    local ok = events:send { event = "tick", id = i,
                             data = { time = os.date("!%Y-%m-%dT%H:%M:%SZ"), n = i } }
    if not ok then return end -- client gone
    events:wait(1)
  end
end)

return app
