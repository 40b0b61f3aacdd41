-- lariat.multipart: a streaming multipart/form-data reader (RFC 7578, RFC 2046).
--
--   for part in req:multipart() do
--     -- part.name, part.filename, part.content_type, part.headers
--     local chunk = part:read()   -- successive body chunks, then nil
--     -- or: local data = part:body()
--   end
--
-- The body is pulled with req:read_body, so memory stays bounded by the
-- chunk size plus one delimiter, whatever the upload size. Advancing the
-- iterator skips what is left of the current part. Limits (lariat.limits or
-- opts): part count and whole-body size → 413, one part's header block → 413,
-- malformed framing → 400, body timeout → 408.
local http_error = require "lariat.http_error"
local limits = require "lariat.limits"
local url = require "lariat.url"

local find, sub = string.find, string.sub

local M = {}

-- JSON when the client asks for it (req known), text otherwise
local function fail(status, msg, req)
  error(req and http_error.for_request(req, status, msg) or http_error.new(status, msg), 0)
end

-- header parameter parsing: `form-data; name="a\"b"; filename*=UTF-8''%e2%82%ac`
local function parse_params(value)
  local params = {}
  local kind, rest = value:match("^%s*([^;%s]*)%s*(.*)$")
  local i = 1
  while i <= #rest do
    local s = rest:match("^[;%s]*()", i); i = s
    if i > #rest then break end
    local key, e = rest:match("^([^=;%s]+)%s*=%s*()", i)
    if not key then
      local skip = rest:match("^[^;]*()", i); i = skip -- attribute without value
    else
      i = e
      local v
      if sub(rest, i, i) == '"' then
        local buf, j = {}, i + 1
        while j <= #rest do
          local c = sub(rest, j, j)
          if c == "\\" then buf[#buf + 1] = sub(rest, j + 1, j + 1); j = j + 2
          elseif c == '"' then j = j + 1; break
          else buf[#buf + 1] = c; j = j + 1 end
        end
        v, i = table.concat(buf), j
      else
        local tok, e2 = rest:match("^([^;]*)()", i)
        v, i = tok:match("^(.-)%s*$"), e2
      end
      params[key:lower()] = v
    end
  end
  return (kind or ""):lower(), params
end
M.parse_params = parse_params

-- RFC 5987 ext-value: charset'lang'pct-encoded
local function ext_value(v)
  local enc = v:match("^[^']*'[^']*'(.*)$")
  if not enc then return nil end
  return url.decode(enc)
end

local function parse_headers(block)
  local headers = {}
  for line in block:gmatch("([^\r\n]*)\r\n") do
    if line ~= "" then
      local name, value = line:match("^([!#$%%&'*+%-.^_`|~%w]+):%s*(.-)%s*$")
      if not name then fail(400, "malformed multipart part header") end
      name = name:lower()
      local prev = headers[name]
      headers[name] = prev and (prev .. ", " .. value) or value
    end
  end
  return headers
end

-- boundary(content_type) → boundary or nil, status, message
function M.boundary(content_type)
  if type(content_type) ~= "string" then return nil, 415, "expected a multipart body" end
  local kind, params = parse_params(content_type)
  if sub(kind, 1, 10) ~= "multipart/" then return nil, 415, "expected a multipart body" end
  local b = params.boundary
  if not b or b == "" or #b > 70 then return nil, 400, "multipart body without a valid boundary" end
  return b
end

local Part = {}
Part.__index = Part

local Reader = {}
Reader.__index = Reader

-- fill(): append one chunk from the request body; false at end of body.
function Reader:fill()
  if self.fin then return false end
  local chunk, status = self.req:read_body { length = self.chunk_size, timeout = self.timeout }
  if chunk == nil then
    if status == "timeout" then fail(408, "request body timed out", self.req) end
    fail(400, "request body ended early (" .. tostring(status) .. ")", self.req)
  end
  self.total = self.total + #chunk
  if self.total > self.max_size then fail(413, "multipart body too large", self.req) end
  if self.pos > 1 then self.buf = sub(self.buf, self.pos); self.pos = 1 end
  self.buf = self.buf .. chunk
  if status == "fin" then self.fin = true end
  return true
end

-- ensure(n): at least n unread bytes buffered; false when the body ends first.
function Reader:ensure(n)
  while #self.buf - self.pos + 1 < n do
    if not self:fill() then return false end
  end
  return true
end

-- read() → the next chunk of this part's body, or nil at its end.
function Part:read()
  if self.done then return nil end
  local r = self.reader
  local delim = r.delim
  while true do
    local i = find(r.buf, delim, r.pos, true)
    if i then
      local data = sub(r.buf, r.pos, i - 1)
      r.pos = i + #delim
      self.done = true
      r.after_delim = true
      if data == "" then return nil end
      return data
    end
    -- everything but a possible partial delimiter at the end is body
    local avail = #r.buf - r.pos + 1 - (#delim - 1)
    if avail > 0 then
      local data = sub(r.buf, r.pos, r.pos + avail - 1)
      r.pos = r.pos + avail
      return data
    end
    if not r:fill() then fail(400, "multipart body ended inside a part", r.req) end
  end
end

-- body([max]) → the whole remaining body of this part as one string.
function Part:body(max)
  local out, size = {}, 0
  for chunk in self.read, self do
    size = size + #chunk
    if max and size > max then fail(413, "multipart part too large", self.reader.req) end
    out[#out + 1] = chunk
  end
  return table.concat(out)
end

-- next part, or nil after the closing delimiter
function Reader:next_part()
  if self.done then return nil end
  if self.part and not self.part.done then
    local p = self.part
    while p:read() do end
  end
  self.part = nil
  if not self.after_delim then -- skip the preamble up to the first delimiter
    while true do
      local i = find(self.buf, self.delim, self.pos, true)
      if i then self.pos = i + #self.delim; break end
      local keep = #self.delim - 1
      if #self.buf - self.pos + 1 > keep then self.pos = #self.buf - keep + 1 end
      if not self:fill() then fail(400, "multipart body without a boundary", self.req) end
    end
    self.after_delim = true
  end
  if not self:ensure(2) then fail(400, "multipart body ended after a delimiter", self.req) end
  if sub(self.buf, self.pos, self.pos + 1) == "--" then
    self.done = true -- close delimiter; the epilogue is ignored
    return nil
  end
  -- transport padding, then CRLF
  while true do
    if not self:ensure(1) then fail(400, "multipart body ended after a delimiter", self.req) end
    local c = sub(self.buf, self.pos, self.pos)
    if c ~= " " and c ~= "\t" then break end
    self.pos = self.pos + 1
  end
  if not self:ensure(2) or sub(self.buf, self.pos, self.pos + 1) ~= "\r\n" then
    fail(400, "malformed multipart delimiter line")
  end
  self.pos = self.pos + 2
  self.after_delim = false
  -- header block up to the empty line
  local block
  if not self:ensure(2) then fail(400, "multipart body ended in part headers", self.req) end
  if sub(self.buf, self.pos, self.pos + 1) == "\r\n" then
    block = ""
    self.pos = self.pos + 2
  else
    while true do
      local i = find(self.buf, "\r\n\r\n", self.pos, true)
      if i then
        if i - self.pos + 4 > self.max_header then fail(413, "multipart part headers too large", self.req) end
        block = sub(self.buf, self.pos, i + 1)
        self.pos = i + 4
        break
      end
      if #self.buf - self.pos + 1 > self.max_header then fail(413, "multipart part headers too large", self.req) end
      if not self:fill() then fail(400, "multipart body ended in part headers", self.req) end
    end
  end
  self.count = self.count + 1
  if self.count > self.max_parts then fail(413, "too many multipart parts", self.req) end
  local headers = parse_headers(block)
  local part = setmetatable({ reader = self, headers = headers, done = false,
                              content_type = headers["content-type"] }, Part)
  local cd = headers["content-disposition"]
  if cd then
    local _, params = parse_params(cd)
    part.name = params.name
    part.filename = params["filename*"] and ext_value(params["filename*"]) or params.filename
  end
  self.part = part
  return part
end

-- iterate(req[, opts]) → iterator of parts. opts: max_parts, max_header_size,
-- max_size, chunk_size (bytes asked of read_body), timeout (seconds).
function M.iterate(req, opts)
  opts = opts or {}
  local boundary, status, msg = M.boundary(req.headers["content-type"])
  if not boundary then fail(status, msg, req) end
  local reader = setmetatable({
    req = req,
    -- a virtual CRLF so that a delimiter at the very start of the body matches
    buf = "\r\n", pos = 1, fin = false, total = 0, count = 0, done = false,
    delim = "\r\n--" .. boundary, after_delim = false, part = nil,
    max_parts = opts.max_parts or limits.multipart_parts,
    max_header = opts.max_header_size or limits.multipart_header_size,
    max_size = opts.max_size or limits.multipart_size,
    chunk_size = opts.chunk_size or 65536,
    timeout = opts.timeout,
  }, Reader)
  return function() return reader:next_part() end
end

return M
