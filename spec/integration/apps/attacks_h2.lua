-- Handlers for the HTTP/2 attack suite (test_attacks_h2.py): a handler that
-- sleeps and counts itself while alive (the to-be-closed guard also runs
-- when a handler is cancelled), a streamed download, and the live count.
local lariat = require "lariat"
local app = lariat.app()

local live, peak = 0, 0

local function enter()
  live = live + 1
  if live > peak then peak = live end
  return setmetatable({}, { __close = function() live = live - 1 end })
end

app:get("/", function(req) return "Hello world!" end)

-- sleeps ms without reading its body (POST: the MadeYouReset target)
local function sleeper(req)
  local guard <close> = enter()
  lariat.sleep(tonumber(req.bindings.ms) / 1000)
  return "slept"
end
app:get("/sleep/:ms", sleeper)
app:post("/sleep/:ms", sleeper)

-- answers at once, then works on for ms (its stream ends normally meanwhile)
app:get("/after/:ms", function(req)
  local guard <close> = enter()
  req:reply(200, { ["content-type"] = "text/plain" }, "done")
  lariat.sleep(tonumber(req.bindings.ms) / 1000)
end)

app:get("/live", function(req) return { live = live, peak = peak } end)
app:post("/live/reset", function(req)
  peak = live
  return { live = live, peak = peak }
end)

-- n blocks of 16 KiB, written one by one (back-pressure decides the pace)
app:get("/big/:n", function(req)
  local guard <close> = enter()
  req:stream_reply(200, { ["content-type"] = "application/octet-stream" })
  local block = string.rep("x", 16384)
  for _ = 1, tonumber(req.bindings.n) do
    if not req:write(block) then return end
  end
end)

return app
