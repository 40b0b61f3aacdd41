-- WebSocket routes for spec/integration/test_rfc6455_*.py and test_rfc7692_*.py
local lariat = require "lariat"
local app = lariat.app()

local function echo(ws)
  for msg, kind in ws:each() do
    if not ws:send(msg, kind) then break end
  end
end

app:get("/", function() return "ok" end)
app:ws("/echo", echo)
app:ws("/plain", echo, { compress = false })
app:ws("/nctx", echo, { compress = { server_no_context_takeover = true, threshold = 0 } })
app:ws("/small", echo, { max_message = 1024 })
app:ws("/proto", function(ws) ws:send(ws.protocol or "none") end, { protocols = { "chat", "superchat" } })
app:ws("/origin", function(ws) ws:send("welcome") end, { origins = { "http://good.example" } })
app:ws("/origin_fn", function(ws) ws:send("welcome") end, {
  origins = function(origin, req) return origin == "http://fn.example" and req.path == "/origin_fn" end,
})
app:ws("/bye", function(ws) ws:close(4001, "bye") ; ws:recv() end)
app:ws("/fail", function(ws) error("boom") end)
app:ws("/done", function(ws) ws:send("done") end)
app:ws("/guarded", echo, {
  function(req, next)
    if req.headers["x-token"] ~= "yes" then return 403, { ["content-type"] = "text/plain" }, "no token\n" end
    return next()
  end,
})
app:ws("/pinger", echo, { ping_interval = 0.3 })
app:ws("/timeout", function(ws)
  local msg, err = ws:recv(0.1)
  ws:send(tostring(msg) .. " " .. tostring(err))
  echo(ws)
end)
app:ws("/closeinfo", function(ws)
  local msg, err, code, reason = ws:recv()
  -- the peer closed: report what recv said to the next connection
  lariat.channel("closeinfo"):publish(("%s %s %s %s"):format(tostring(msg), tostring(err), tostring(code), tostring(reason)))
end)
app:ws("/closeinfo_watch", function(ws)
  local sub <close> = lariat.channel("closeinfo"):subscribe()
  ws:send("ready")
  ws:send(sub:recv(5) or "nothing")
end)
app:ws("/big", function(ws, req)
  -- more than the connection's output high-water mark: send must wait for the peer
  -- (?n=: chunks of 64 KiB; more than the kernel's socket buffers can absorb, up to
  -- 4 MiB of send buffer on loopback, for a test that needs output left queued)
  local chunk = string.rep("x", 64 * 1024)
  for i = 1, tonumber(req:query().n) or 64 do assert(ws:send(chunk, "binary")) end
  ws:send("end")
  ws:recv()
end, { compress = false })
app:ws("/room", function(ws, req)
  local room = lariat.channel("room")
  local sub <close> = room:subscribe()
  lariat.spawn(function()
    for msg in sub:each() do
      if not ws:send(msg) then break end
    end
  end)
  ws:send("joined " .. room:subscribers())
  for msg in ws:each() do room:publish(msg) end
end)
app:ws("/info", function(ws, req)
  ws:send(lariat.json.encode { path = req.path, qs = req.qs, ext = ws.extensions or "", version = req.version })
end)

return app
