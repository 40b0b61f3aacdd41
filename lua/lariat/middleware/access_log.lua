-- lariat.middleware.access_log(opts): one line per request.
--
-- Deprecated: use the server's --access-log FILE|- instead. It sees what this
-- middleware cannot: answers the core makes before Lua runs (413 over
-- --max-body, 400, 408, 431), requests whose handler raised, the bytes
-- really written. This one stays for apps that use it (and for opts.sink).
--
--   app:use(lariat.middleware.access_log{ format = "json", file = "access.log" })
--
-- opts.format: "combined" (Apache/nginx combined log format, default) or
-- "json" (one JSON object per line). opts.sink: function(line) receiving each
-- line (no newline); else opts.file: a path (appended to) or an open file;
-- else the server log at level "info".
-- Status: the returned one; for replies sent with req:reply/stream_reply it is
-- req.status as exposed by the core ("-" if unknown). A request whose handler
-- raised an error is not logged here: it propagates to the core, which logs it.
local json = require "lariat.json"
local runtime = require "lariat.runtime"

local months = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" }

-- [10/Oct/2000:13:55:36 +0000] without depending on the C locale
local function clf_time(t)
  local d = os.date("!*t", t)
  return ("[%02d/%s/%04d:%02d:%02d:%02d +0000]"):format(d.day, months[d.month], d.year, d.hour, d.min, d.sec)
end

-- quotes and control bytes escaped so a client cannot forge log lines
local function esc(s)
  if s == nil then return "-" end
  s = tostring(s)
  return (s:gsub('[%c"\\\127-\255]', function(c) return ("\\x%02X"):format(c:byte()) end))
end

local function peer_host(peer)
  if type(peer) ~= "string" then return "-" end
  return peer:match("^%[(.*)%]:%d+$") or peer:match("^([^:]+):%d+$") or peer
end

local function file_sink(file)
  local f = file
  if type(file) == "string" then
    f = assert(io.open(file, "a"))
  end
  f:setvbuf("line")
  return function(line) f:write(line, "\n") end
end

local function now()
  local core = runtime.core()
  return core and core.now() or os.time()
end

return function(opts)
  opts = opts or {}
  local format = opts.format or "combined"
  if format ~= "combined" and format ~= "json" then
    error("access_log: format must be \"combined\" or \"json\"", 2)
  end
  local sink = opts.sink or (opts.file and file_sink(opts.file))
      or function(line) require("lariat.log").info(line) end

  return function(req, next)
    local started = now()
    local status, headers, body = next()
    local code = status
    if code == "websocket" then code = 101
    elseif code == nil then code = req.status end
    local bytes = type(body) == "string" and #body or req.bytes_sent
    if req.method == "HEAD" then bytes = 0 end -- the core sends no body
    local h = req.headers
    local target = req.path .. ((req.qs or "") ~= "" and ("?" .. req.qs) or "")
    local line
    if format == "json" then
      line = json.encode {
        time = os.date("!%Y-%m-%dT%H:%M:%SZ"), remote = peer_host(req.peer),
        method = req.method, path = req.path, query = req.qs, version = req.version,
        status = code, bytes = bytes, referer = h.referer, user_agent = h["user-agent"],
        duration_ms = math.floor((now() - started) * 1000 + 0.5),
        request_id = req.ctx.request_id, user = req.ctx.user,
      }
    else
      line = ('%s - %s %s "%s %s %s" %s %s "%s" "%s"'):format(
        esc(peer_host(req.peer)), esc(req.ctx.user), clf_time(os.time()),
        esc(req.method), esc(target), esc(req.version),
        code or "-", bytes or "-", esc(h.referer), esc(h["user-agent"]))
    end
    sink(line)
    return status, headers, body
  end
end
