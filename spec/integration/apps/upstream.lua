-- lariat as an upstream for the outbound tests (test_net_http.py).
local lariat = require "lariat"
local app = lariat.app()

app:post("/echo", function(req)
  return 200, { ["content-type"] = "application/octet-stream", ["x-method"] = req.method }, req:body()
end)
app:get("/slow", function(req)
  lariat.sleep(tonumber(req:query().s or "1"))
  return "slow " .. (req:query().tag or "")
end)
app:get("/chunked", function(req)
  local n = tonumber(req:query().n or "3")
  req:stream_reply(200, { ["content-type"] = "text/plain" })
  for i = 1, n do
    req:write("chunk" .. i .. "\n")
    lariat.sleep(tonumber(req:query().gap or "0.05"))
  end
end)
app:get("/headers", function(req) return req.headers end)
app:get("/redirect", function(req) return 302, { location = req:query().to or "/target" }, "" end)
app:get("/target", function() return "arrived" end)
app:all("/path/*", function(req)
  return 200, { ["content-type"] = "text/plain" }, req.method .. " " .. req.path .. "?" .. req.qs
end)
app:ws("/ws/echo", function(ws)
  for msg, kind in ws:each() do ws:send(msg, kind) end
end)
-- WebSockets open now on /ws/count (GET /wsopen): a proxy's client leaving must end them
app:ws("/ws/count", function(ws)
  local open = lariat.shared("wsopen")
  open:incr("n", 1, 0)
  local _ <close> = setmetatable({}, { __close = function() open:incr("n", -1) end })
  for msg, kind in ws:each() do ws:send(msg, kind) end
end)
app:get("/wsopen", function() return tostring(lariat.shared("wsopen"):get("n") or 0) end)
app:ws("/ws/flood", function(ws)                -- 4 MiB at once, then "end"
  for _ = 1, 64 do ws:send(string.rep("x", 65536), "binary") end
  ws:send("end")
  for _ in ws:each() do end
end)
app:ws("/ws/bye", function(ws) ws:send("bye"); ws:close(1000, "bye") end)   -- the upstream ends it
app:ws("/ws/proto", function(ws) ws:send(ws.protocol or "none") ; for _ in ws:each() do end end,
       { protocols = { "chat" } })
app:get("/hello", function() return "hello" end)
app:get("/cookies", function(req)
  req:set_cookie("a", "1", { path = "/" })
  req:set_cookie("b", "2")
  return "cookies"
end)
app:get("/trailers", function(req)
  req:stream_reply(200, { ["content-type"] = "text/plain" })
  req:write("body")
  req:trailers({ ["x-trail"] = "done" })
end)
return app
