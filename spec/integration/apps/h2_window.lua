-- For test_attacks_h2_zero_window_queue.py: downloads written in 16 KiB
-- blocks (back-pressure sets the pace), a sha256-checkable 2 MB body, and
-- what the worker holds (lariat.stats: live handlers, buffered output).
local lariat = require "lariat"
local app = lariat.app()

app:get("/", function(req) return "ok" end)

app:get("/big/:n", function(req)
  req:stream_reply(200, { ["content-type"] = "application/octet-stream" })
  for i = 1, tonumber(req.bindings.n) do
    -- a fresh string per block: what a handler reading a file would write
    if not req:write(string.rep(string.char(97 + i % 26), 16384)) then return end
  end
end)

app:get("/stats", function(req)
  local s = lariat.stats()
  s.handlers = s.handlers - 1 -- not this one
  return s
end)

return app
