-- WebSocket echo: every message comes back as it was sent (text or binary).
--   lariat examples/echo_ws.lua   then connect to ws://127.0.0.1:8080/echo
local lariat = require "lariat"
local app = lariat.app()

app:get("/", function()
  return "WebSocket echo at /echo\n"
end)

app:ws("/echo", function(ws, req)
  for msg, kind in ws:each() do
    ws:send(msg, kind)
  end
end, { max_message = 16 * 1024 * 1024 })

return app
