-- Handlers for the HTTP/2 protocol tests (test_rfc9113_*.py): they record
-- what a handler saw after its client reset the stream, hold request bodies
-- to show flow control, and stream for back-pressure and GOAWAY.
local lariat = require "lariat"
local app = lariat.app()

local seen = {} -- probe name -> what the handler's call returned after the reset

-- a to-be-closed variable that records a cancellation (issue 9: the handler
-- is cancelled at its wait, its to-be-closed variables run)
local function on_cancel(name)
  return setmetatable({}, { __close = function()
    if seen[name] == nil then seen[name] = "cancelled" end
  end })
end

app:get("/", function(req) return "Hello world!" end)

-- Writes until a write fails, then records how it failed.
app:get("/probe/write/:name", function(req)
  local _ <close> = on_cancel(req.bindings.name)
  req:stream_reply(200, { ["content-type"] = "text/plain" })
  for i = 1, 400 do
    local ok, err = req:write("tick " .. i .. "\n")
    if not ok then
      seen[req.bindings.name] = "write: nil, " .. tostring(err)
      return
    end
    lariat.sleep(0.01)
  end
  seen[req.bindings.name] = "write never failed"
end)

-- Waits for a body that never comes; the reset must end the wait.
app:post("/probe/read/:name", function(req)
  local _ <close> = on_cancel(req.bindings.name)
  local chunk, err = req:read_body{ timeout = 5 }
  seen[req.bindings.name] = "read: " .. tostring(chunk) .. ", " .. tostring(err)
end)

app:get("/seen/:name", function(req) return seen[req.bindings.name] or "nothing yet" end)

-- Sleeps before it reads anything: its window stays closed meanwhile.
app:post("/hold/:ms", function(req)
  lariat.sleep(tonumber(req.bindings.ms) / 1000)
  local body = req:body()
  return "got " .. #body
end)

-- Streams n blocks of 16 KiB (back-pressure: the client reads late).
local block = string.rep("b", 16384)
app:get("/blocks/:n", function(req)
  req:stream_reply(200, { ["content-type"] = "application/octet-stream" })
  for _ = 1, tonumber(req.bindings.n) do
    if not req:write(block) then return end
  end
end)

app:get("/slow/:ms", function(req)
  lariat.sleep(tonumber(req.bindings.ms) / 1000)
  return "slow done"
end)

app:get("/trailers", function(req)
  req:stream_reply(200, { ["content-type"] = "text/plain" })
  req:write("body")
  req:trailers({ ["x-checksum"] = "abc", ["Connection"] = "close" })
end)

app:get("/headers", function(req)
  return 200, {
    ["X-Mixed"] = "Case", connection = "keep-alive", ["keep-alive"] = "timeout=5",
    ["transfer-encoding"] = "chunked", upgrade = "h2c", ["proxy-connection"] = "x",
  }, "ok"
end)

app:post("/count", function(req)
  local n = 0
  while true do
    local chunk, state = req:read_body()
    if not chunk then return "error " .. tostring(state) end
    n = n + #chunk
    if state == "fin" then return "count " .. n end
  end
end)

return app
