-- lariat.test: run an app in a real lariat on a loopback port and talk to it
-- from busted specs (or any Lua 5.4 script). Needs LuaSocket (Debian:
-- lua-socket); not loaded by the server itself.
--
--   local lt = require "lariat.test"
--   local app = lt.start("examples/rest.lua")         -- spawns lariat, waits until it listens
--   local status, headers, body = app:get("/todos")
--   app:post("/todos", { json = { title = "x" } })     -- body, headers, query, timeout too
--   app:request("PATCH", "/todos/1", { body = "..." })
--   local ws = assert(app:ws("/echo"))                 -- ws:send(s[, kind]), ws:recv(), ws:close()
--   app:log()                                          -- what the server logged so far
--   app:stop()                                         -- SIGTERM, waits for the exit status
--
-- start(app_file[, opts]): opts.bin (default: $LARIAT_BIN, the checkout's
-- build/lariat, an installed prefix's bin/lariat, then lariat on PATH),
-- opts.workers (default 1), opts.args (more command-line options), opts.cwd,
-- opts.timeout (seconds to wait for the listening line, default 10).
-- Every request opens a connection of its own (HTTP/1.1, connection: close).
local socket = require "socket"
local json = require "lariat.json"

local M = {}

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- the lariat binary: next to the library in a checkout or an installed prefix
local function find_bin()
  local env = os.getenv("LARIAT_BIN")
  if env and env ~= "" then return env end
  local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
  for _, rel in ipairs { "/../../build/lariat", "/../../../../bin/lariat" } do
    if exists(here .. rel) then return here .. rel end
  end
  return "lariat"
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

local Server = {}
Server.__index = Server

function M.start(app_file, opts)
  opts = opts or {}
  local log = os.tmpname()
  local argv = { shell_quote(opts.bin or find_bin()), "--listen", "127.0.0.1:0",
                 "--workers", tostring(opts.workers or 1) }
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = shell_quote(a) end
  argv[#argv + 1] = shell_quote(app_file)
  -- the shell prints its pid, then becomes lariat: that pid is the server's
  local cmd = ("exec 2>%s </dev/null; %secho $$; exec %s"):format(shell_quote(log),
    opts.cwd and ("cd " .. shell_quote(opts.cwd) .. " && ") or "", table.concat(argv, " "))
  local out = assert(io.popen(cmd, "r"))
  local pid = tonumber(out:read("l"))
  local self = setmetatable({ pid = pid, out = out, log_file = log }, Server)
  local deadline = socket.gettime() + (opts.timeout or 10)
  -- lariat prints the ready line only once it listens; a failed start ends the pipe
  while socket.gettime() < deadline do
    local line = out:read("l")
    if line == nil then break end
    local port = line:match("^listening on http://127%.0%.0%.1:(%d+)")
    if port then
      self.port = tonumber(port)
      return self
    end
  end
  local why = self:log()
  self:stop()
  error("lariat.test: " .. tostring(app_file) .. " did not start:\n" .. why, 2)
end

-- what the server wrote to stderr (its log) so far
function Server:log()
  return read_file(self.log_file)
end

-- stop(): SIGTERM, then the exit status (true when it exited 0)
function Server:stop()
  if not self.out then return self.exit_ok end
  if self.pid then os.execute("kill -TERM " .. self.pid .. " 2>/dev/null") end
  self.exit_ok = self.out:close()
  self.out = nil
  os.remove(self.log_file)
  return self.exit_ok
end

-- HTTP -------------------------------------------------------------------------

local function url_encode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

local function with_query(path, query)
  if not query then return path end
  local keys, parts = {}, {}
  for k in pairs(query) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = url_encode(k) .. "=" .. url_encode(query[k]) end
  if #parts == 0 then return path end
  return path .. (path:find("?", 1, true) and "&" or "?") .. table.concat(parts, "&")
end

local function connect(self, timeout)
  local c = socket.tcp()
  c:settimeout(timeout or 10)
  local ok, err = c:connect("127.0.0.1", self.port)
  if not ok then c:close() return nil, err end
  return c
end

-- head block → status, headers (lowercase names; repeats joined with ", ")
local function read_head(c)
  local line, err = c:receive("*l")
  if not line then return nil, err end
  local status = tonumber(line:match("^HTTP/%d%.%d (%d%d%d)"))
  if not status then return nil, "bad status line: " .. line end
  local headers = {}
  while true do
    local h, herr = c:receive("*l")
    if not h then return nil, herr end
    if h == "" then break end
    local name, value = h:match("^([^:]+):%s*(.-)%s*$")
    if name then
      name = name:lower()
      headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
    end
  end
  return status, headers
end

local function read_body(c, method, status, headers)
  if method == "HEAD" or status == 204 or status == 304 or status < 200 then return "" end
  if (headers["transfer-encoding"] or ""):lower():find("chunked", 1, true) then
    local parts = {}
    while true do
      local size_line, err = c:receive("*l")
      if not size_line then return nil, err end
      local size = tonumber(size_line:match("^(%x+)"), 16)
      if not size then return nil, "bad chunk size" end
      if size == 0 then
        repeat local t = c:receive("*l") until t == nil or t == ""
        return table.concat(parts)
      end
      local data, derr = c:receive(size)
      if not data then return nil, derr end
      parts[#parts + 1] = data
      c:receive("*l")
    end
  end
  local len = tonumber(headers["content-length"])
  if len then return c:receive(len) end
  local data, err, partial = c:receive("*a")
  return data or partial, data == nil and err or nil
end

-- request(method, path[, opts]) → status, headers, body | nil, err
-- opts: headers (table), body (string), json (a value sent as JSON),
-- query (table added to the path), timeout (seconds, default 10)
function Server:request(method, path, opts)
  opts = opts or {}
  local headers = { host = "127.0.0.1:" .. self.port, connection = "close" }
  local body = opts.body
  if opts.json ~= nil then
    body = json.encode(opts.json)
    headers["content-type"] = "application/json"
  end
  for k, v in pairs(opts.headers or {}) do headers[k:lower()] = v end
  if body then headers["content-length"] = tostring(#body) end
  local lines = { ("%s %s HTTP/1.1"):format(method, with_query(path, opts.query)) }
  for k, v in pairs(headers) do lines[#lines + 1] = k .. ": " .. tostring(v) end
  local c, err = connect(self, opts.timeout)
  if not c then return nil, err end
  local ok, serr = c:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or ""))
  if not ok then c:close() return nil, serr end
  local status, rheaders = read_head(c)
  if not status then c:close() return nil, rheaders end
  local rbody, berr = read_body(c, method, status, rheaders)
  c:close()
  if not rbody then return nil, berr end
  return status, rheaders, rbody
end

for _, m in ipairs { "get", "head", "delete", "options" } do
  Server[m] = function(self, path, opts) return self:request(m:upper(), path, opts) end
end
for _, m in ipairs { "post", "put", "patch" } do
  Server[m] = function(self, path, opts) return self:request(m:upper(), path, opts) end
end

-- WebSocket (RFC 6455), client side: masked frames, pings answered --------------

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = (a << 16) | ((b or 0) << 8) | (c or 0)
    for k = 1, 4 do
      local idx = (n >> (6 * (4 - k))) & 63
      out[#out + 1] = B64:sub(idx + 1, idx + 1)
    end
    if not c then out[#out] = "=" end
    if not b then out[#out - 1] = "=" end
  end
  return table.concat(out)
end
M._base64 = base64

local WS = {}
WS.__index = WS

local OPS = { text = 1, binary = 2, close = 8, ping = 9, pong = 10 }

local function mask(data, key)
  local out, kb = {}, { key:byte(1, 4) }
  for i = 1, #data do out[i] = string.char(data:byte(i) ~ kb[(i - 1) % 4 + 1]) end
  return table.concat(out)
end

local function frame(op, data)
  local len = #data
  local head
  if len < 126 then head = string.pack(">BB", 0x80 | op, 0x80 | len)
  elseif len < 65536 then head = string.pack(">BBI2", 0x80 | op, 0x80 | 126, len)
  else head = string.pack(">BBI8", 0x80 | op, 0x80 | 127, len) end
  local key = string.pack(">I4", math.random(0, 0xffffffff))
  return head .. key .. mask(data, key)
end

-- ws(path[, opts]) → ws | nil, err (or nil, "status N", headers, body when
-- the server did not switch protocols). opts: protocols (list), headers, timeout.
function Server:ws(path, opts)
  opts = opts or {}
  local key = base64(string.pack(">I4I4I4I4", math.random(0, 0xffffffff), math.random(0, 0xffffffff),
                                 math.random(0, 0xffffffff), math.random(0, 0xffffffff)))
  local lines = { ("GET %s HTTP/1.1"):format(path), "host: 127.0.0.1:" .. self.port, "upgrade: websocket",
                  "connection: upgrade", "sec-websocket-version: 13", "sec-websocket-key: " .. key }
  if opts.protocols then lines[#lines + 1] = "sec-websocket-protocol: " .. table.concat(opts.protocols, ", ") end
  for k, v in pairs(opts.headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  local c, err = connect(self, opts.timeout)
  if not c then return nil, err end
  c:send(table.concat(lines, "\r\n") .. "\r\n\r\n")
  local status, headers = read_head(c)
  if not status then c:close() return nil, headers end
  if status ~= 101 then
    local body = read_body(c, "GET", status, headers)
    c:close()
    return nil, "status " .. status, headers, body
  end
  return setmetatable({ c = c, protocol = headers["sec-websocket-protocol"], closed = false }, WS)
end

function WS:send(data, kind)
  if self.closed then return nil, "closed" end
  local ok, err = self.c:send(frame(OPS[kind or "text"] or error("ws:send: kind is text or binary", 2), data))
  if not ok then return nil, err end
  return true
end

-- one frame → fin, opcode, payload
local function read_frame(c)
  local h, err = c:receive(2)
  if not h then return nil, err end
  local b1, b2 = h:byte(1, 2)
  local len = b2 & 0x7f
  if len == 126 then len = string.unpack(">I2", c:receive(2))
  elseif len == 127 then len = string.unpack(">I8", c:receive(8)) end
  local key = (b2 & 0x80) ~= 0 and c:receive(4) or nil
  local data = len > 0 and c:receive(len) or ""
  if not data then return nil, "closed" end
  if key then data = mask(data, key) end
  return (b1 & 0x80) ~= 0, b1 & 0x0f, data
end

-- recv([timeout]) → msg, "text"|"binary" | nil, "closed", code, reason | nil, "timeout"
function WS:recv(timeout)
  if self.closed then return nil, "closed", self.close_code, self.close_reason end
  self.c:settimeout(timeout or 10)
  local parts, kind = {}, nil
  while true do
    local fin, op, data = read_frame(self.c)
    if fin == nil then
      if op == "timeout" then return nil, "timeout" end
      self.closed = true
      self.c:close()
      return nil, "closed", 1006, ""
    end
    if op == 9 then
      self.c:send(frame(10, data))
    elseif op == 8 then
      self.closed = true
      self.close_code = #data >= 2 and string.unpack(">I2", data) or 1005
      self.close_reason = data:sub(3)
      self.c:send(frame(8, data:sub(1, 2)))
      self.c:close()
      return nil, "closed", self.close_code, self.close_reason
    elseif op ~= 10 then
      if op ~= 0 then kind = op == 1 and "text" or "binary" end
      parts[#parts + 1] = data
      if fin then return table.concat(parts), kind end
    end
  end
end

-- close([code[, reason]]): the closing handshake; → the server's code, reason
function WS:close(code, reason)
  if self.closed then return self.close_code, self.close_reason end
  self.c:send(frame(8, string.pack(">I2", code or 1000) .. (reason or "")))
  self.c:settimeout(5)
  while true do
    local fin, op, data = read_frame(self.c)
    if fin == nil or op == 8 then
      self.closed = true
      self.close_code = data and #data >= 2 and string.unpack(">I2", data) or nil
      self.close_reason = data and data:sub(3) or nil
      self.c:close()
      return self.close_code, self.close_reason
    end
  end
end

return M
