-- A chat room: an HTML page and a WebSocket route; every message goes to
-- everyone in the room (lariat.channel: one worker; run with -w 1 to share
-- one room between all connections until channels cross workers).
--   lariat -w 1 examples/chat/app.lua    then open http://127.0.0.1:8080/
local lariat = require "lariat"
local app = lariat.app()

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local page = assert(io.open(here .. "index.html")):read("a")

app:get("/", function()
  return 200, { ["content-type"] = "text/html; charset=utf-8" }, page
end)

-- the last messages, replayed to whoever joins (per worker, like the room)
local history, HISTORY = {}, 50

local function say(room, from, text)
  local msg = lariat.json.encode { from = from, text = text }
  history[#history + 1] = msg
  if #history > HISTORY then table.remove(history, 1) end
  room:publish(msg)
end

app:ws("/chat", function(ws, req)
  local room = lariat.channel("chat")
  local name = req:query().name or ("guest" .. math.random(1000, 9999))
  for _, msg in ipairs(history) do ws:send(msg) end
  local sub <close> = room:subscribe()
  -- a second coroutine carries the room to this client while this one reads
  lariat.spawn(function()
    for msg in sub:each() do
      if not ws:send(msg) then break end
    end
  end)
  say(room, "server", name .. " joined")
  for msg in ws:each() do say(room, name, msg) end
  say(room, "server", name .. " left")
end, { protocols = { "chat" }, max_message = 64 * 1024 })

return app
