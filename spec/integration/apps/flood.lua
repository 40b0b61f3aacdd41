-- Back-pressure (test_backpressure.py): a handler that writes far more than
-- the peer reads. Each 64 KiB block starts with its 8-digit index.
local lariat = require "lariat"
local app = lariat.app()

local filler = string.rep("x", 65536 - 8)

app:get("/flood/:blocks", function(req)
  local n = tonumber(req.bindings.blocks)
  req:stream_reply(200, { ["content-type"] = "application/octet-stream" })
  for i = 0, n - 1 do
    req:write(string.format("%08d", i) .. filler)
  end
end)

-- The same, for a handler that stops once its client is gone (write fails).
app:get("/stream/:blocks", function(req)
  local n = tonumber(req.bindings.blocks)
  req:stream_reply(200, { ["content-type"] = "application/octet-stream" })
  for i = 0, n - 1 do
    if not req:write(string.format("%08d", i) .. filler) then return end
  end
end)

app:get("/", function(req) return "Hello world!" end)

return app
