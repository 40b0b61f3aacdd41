-- lariat.sse: server-sent events over a streamed reply (WHATWG HTML §9.2).
--
--   local events = req:sse()
--   events:send{ event = "tick", data = "line 1\nline 2", id = 7 }
--   events:wait(5)   -- sleeps 5 s, sending keep-alive comments meanwhile
local json = require "lariat.json"
local runtime = require "lariat.runtime"

local M = {}

local Sse = {}
Sse.__index = Sse

local function single_line(field, v)
  v = tostring(v)
  if v:find("[\r\n]") then error("sse: " .. field .. " may not contain a newline", 3) end
  return v
end

-- format(msg) → the wire text of one event. `msg` is a string (data only) or
-- { event=, data=, id=, retry= }; table data is sent as JSON. Every line of
-- data (split on CRLF, CR or LF) becomes its own "data:" line.
function M.format(msg)
  if type(msg) ~= "table" then msg = { data = msg } end
  local out = {}
  if msg.event ~= nil then out[#out + 1] = "event: " .. single_line("event", msg.event) .. "\n" end
  if msg.id ~= nil then out[#out + 1] = "id: " .. single_line("id", msg.id) .. "\n" end
  if msg.retry ~= nil then
    local r = math.tointeger(msg.retry)
    if not r or r < 0 then error("sse: retry must be a non-negative integer (milliseconds)", 2) end
    out[#out + 1] = "retry: " .. r .. "\n"
  end
  local data = msg.data
  if type(data) == "table" then data = json.encode(data) end
  if data ~= nil then
    data = tostring(data):gsub("\r\n", "\n"):gsub("\r", "\n")
    for line in (data .. "\n"):gmatch("(.-)\n") do
      out[#out + 1] = "data: " .. line .. "\n"
    end
  end
  if #out == 0 then error("sse: an event needs data, event, id or retry", 2) end
  out[#out + 1] = "\n"
  return table.concat(out)
end

-- send(msg) → what req:write returns (nil, err once the client is gone).
function Sse:send(msg)
  return self.req:write(M.format(msg))
end

-- comment([text]): a comment line, ignored by clients; keeps proxies from
-- timing the connection out.
function Sse:comment(text)
  text = tostring(text or "")
  local out = {}
  for line in (text:gsub("\r\n", "\n"):gsub("\r", "\n") .. "\n"):gmatch("(.-)\n") do
    out[#out + 1] = ": " .. line .. "\n"
  end
  out[#out + 1] = "\n"
  return self.req:write(table.concat(out))
end

-- wait(seconds) → true, or nil, err when a keep-alive write failed (client
-- gone) or nil, "stopping" when the server stops (SIGTERM). Sends a keep-alive comment every `keepalive` seconds while waiting.
function Sse:wait(seconds)
  local core = runtime.core()
  if not core then error("sse:wait needs the lariat server (lariat.core)", 2) end
  local deadline = core.now() + seconds
  while true do
    local left = deadline - core.now()
    if left <= 0 then return true end
    if left <= self.keepalive then
      local ok, err = core.sleep(left)
      if ok == nil and err ~= nil then return nil, err end -- "stopping": the server stops
      return true
    end
    local ok, err = core.sleep(self.keepalive)
    if ok == nil and err ~= nil then return nil, err end
    local ok, err = self:comment("keep-alive")
    if ok == nil and err ~= nil then return nil, err end
  end
end

-- open(req, opts) → Sse. opts.headers are added to the reply's headers;
-- opts.keepalive (seconds, default 15) paces wait()'s comments.
function M.open(req, opts)
  opts = opts or {}
  local headers = {
    ["content-type"] = "text/event-stream; charset=utf-8",
    ["cache-control"] = "no-cache",
    ["x-accel-buffering"] = "no", -- tell buffering proxies (nginx) to pass events through
  }
  for k, v in pairs(opts.headers or {}) do headers[k:lower()] = v end
  req:stream_reply(opts.status or 200, headers)
  return setmetatable({ req = req, keepalive = opts.keepalive or 15 }, Sse)
end

return M
