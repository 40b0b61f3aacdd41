-- A chat room: an HTML page and a WebSocket route; every message goes to
-- everyone in the room, whichever worker their connection landed on
-- (lariat.channel delivers across workers).
--   lariat examples/chat/app.lua    then open http://127.0.0.1:8080/
local lariat = require "lariat"
local app = lariat.app()

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local page = assert(io.open(here .. "index.html")):read("a")

app:get("/", function()
  return 200, { ["content-type"] = "text/html; charset=utf-8" }, page
end)

-- the last messages, replayed to whoever joins. This table lives in one
-- worker's Lua state (top-level code runs once per worker), so a newcomer sees
-- the messages said through its own worker; the room itself spans them all.
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
