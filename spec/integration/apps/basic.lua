-- The app most integration tests talk to (spec/integration/conftest.py).
local lariat = require "lariat"
local app = lariat.app()

local function text(status, body, headers)
  headers = headers or {}
  headers["content-type"] = headers["content-type"] or "text/plain"
  return status, headers, body
end

app:get("/", function(req) return "Hello world!" end)

-- Echo the path so pipelined responses can be told apart.
app:get("/p/*", function(req) return req.path end)

app:get("/sleep/:ms", function(req)
  local ms = tonumber(req.bindings.ms)
  lariat.sleep(ms / 1000)
  return "slept " .. ms
end)

app:get("/utf8", function(req) return "h\u{E9}llo \u{2713}" end)

app:get("/big/:n", function(req) return string.rep("a", tonumber(req.bindings.n)) end)

app:post("/echo", function(req)
  local body = req:body()
  return 200, { ["content-type"] = req.headers["content-type"] or "application/octet-stream" }, body
end)

-- Replies without touching the request body.
app:post("/noread", function(req) return "ignored body" end)

-- Sleeps, then reads the body (100-continue must wait for the read).
app:post("/read-after/:ms", function(req)
  lariat.sleep(tonumber(req.bindings.ms) / 1000)
  local body = req:body()
  return "read " .. #body
end)

-- Streams the body in with read_body; reports what it saw.
app:post("/read-stream", function(req)
  local parts, n = {}, 0
  while true do
    local chunk, state = req:read_body{ length = 4096 }
    if chunk == nil then
      return text(200, "timeout after " .. n .. " bytes: " .. tostring(state))
    end
    parts[#parts + 1] = chunk
    n = n + #chunk
    if state == "fin" then break end
    assert(state == "more", "read_body state " .. tostring(state))
  end
  return text(200, table.concat(parts))
end)

-- Same with an explicit per-call timeout.
app:post("/read-timeout", function(req)
  local n = 0
  while true do
    local chunk, state = req:read_body{ timeout = 0.3 }
    if chunk == nil then
      return text(200, "timeout after " .. n .. " bytes: " .. tostring(state))
    end
    n = n + #chunk
    if state == "fin" then return text(200, "complete " .. n) end
  end
end)

-- The whole-body read reports a stall as nil, "timeout".
app:post("/body-or-error", function(req)
  local body, err = req:body()
  return "body=" .. tostring(body) .. " err=" .. tostring(err)
end)

app:route({ "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS" }, "/req", function(req)
  return {
    method = req.method, version = req.version, scheme = req.scheme,
    host = req.host, port = req.port, path = req.path, qs = req.qs,
    peer = req.peer, headers = req.headers,
  }
end)

app:get("/users/:id", function(req) return { id = req.bindings.id } end)
app:get("/users/:id/posts/:post", function(req)
  return { id = req.bindings.id, post = req.bindings.post }
end)

app:get("/stream", function(req)
  req:stream_reply(200, { ["content-type"] = "text/plain" })
  for i = 1, 3 do
    req:write("chunk" .. i .. "\n")
    lariat.sleep(0.05)
  end
end)

-- Gaps longer than the short timeouts of test_rfc9112_connection.py.
app:get("/slow-stream", function(req)
  req:stream_reply(200, { ["content-type"] = "text/plain" })
  for i = 1, 3 do
    lariat.sleep(0.7)
    req:write("slow" .. i .. "\n")
  end
end)

app:get("/trailers", function(req)
  req:stream_reply(200, { ["content-type"] = "text/plain", trailer = "x-checksum" })
  req:write("hello ")
  req:write("trailers")
  req:trailers{ ["x-checksum"] = "abc123" }
end)

app:get("/empty", function(req) end)

app:get("/stream-empty", function(req)
  req:stream_reply(200, { ["content-type"] = "text/plain" })
end)

app:get("/inject-value", function(req)
  return 200, { ["x-evil"] = "a\r\nx-injected: 1" }, "body"
end)

app:get("/inject-name", function(req)
  return 200, { ["x-evil\r\nx-injected"] = "1" }, "body"
end)

app:get("/no-content/:status", function(req)
  return tonumber(req.bindings.status), { ["content-type"] = "text/plain" }, "must not be sent"
end)

app:get("/bad-result", function(req) return 1000, {}, "no such status" end)

app:get("/reply", function(req)
  req:reply(201, { ["x-reply"] = "yes", ["content-type"] = "text/plain" }, "created")
end)

app:get("/json", function(req) return { hello = "world", n = 42 } end)

app:get("/status", function(req)
  return 418, { ["X-Custom-Header"] = "Mixed", ["content-type"] = "text/plain" }, "teapot"
end)

app:get("/server-header", function(req)
  return 200, { server = "custom/1.0" }, "ok"
end)

app:get("/server-mixed-case", function(req)
  return 200, { Server = "mixed/1.0" }, "ok"
end)

app:get("/hop-headers", function(req)
  return 200, {
    ["transfer-encoding"] = "gzip", ["keep-alive"] = "timeout=99",
    upgrade = "websocket", ["content-length"] = "999",
  }, "body"
end)

app:get("/conn-upgrade", function(req)
  return 200, { connection = "upgrade" }, "body"
end)

app:get("/close", function(req)
  return 200, { connection = "close" }, "bye"
end)

app:get("/error", function(req) error("boom-secret-detail") end)

app:get("/stream-error", function(req)
  req:stream_reply(200, { ["content-type"] = "text/plain" })
  req:write("partial-data")
  lariat.sleep(0.05)
  error("stream-boom-detail")
end)

app:get("/query", function(req) return req:query() end)
app:get("/cookies", function(req) return req:cookies() end)

app:get("/set-header", function(req)
  req:set_header("x-set", "yes")
  return "ok"
end)

app:get("/set-header-json", function(req)
  req:set_header("x-set", "json")
  return { ok = true }
end)

app:get("/header", function(req) return req:header("x-test", "default-value") end)

app:get("/only-get", function(req) return "only get" end)

app:put("/methods", function(req) return req.method end)
app:patch("/methods", function(req) return req.method end)
app:delete("/methods", function(req) return req.method end)
app:options("/methods", function(req) return req.method end)
app:post("/methods", function(req) return req.method end)

app:route({ "GET", "POST" }, "/multi", function(req) return "multi " .. req.method end)

app:get("/files/*", function(req) return "file " .. req.path end)

return app
