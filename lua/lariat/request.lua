-- lariat.request: the Lua half of the req methods. install() adds them to
-- core.req_methods (the __index table of every req userdata), next to the C
-- methods header/body/read_body/reply/stream_reply/write/trailers/set_header.
--
-- Bad input raises a lariat.http_error (400/413/415), which C answers with
-- that status; nothing is silently dropped or truncated.
local cookie = require "lariat.cookie"
local http_error = require "lariat.http_error"
local json = require "lariat.json"
local limits = require "lariat.limits"
local multipart = require "lariat.multipart"
local sse = require "lariat.sse"
local url = require "lariat.url"

local M = {}

-- the answer is JSON when the client asks for it (or, for req:json(), when
-- it sent JSON)
local function fail(status, msg, req, json_body)
  error(http_error.for_request(req, status, msg, nil, json_body), 0)
end

local function media_type(req)
  local ct = req.headers["content-type"]
  if type(ct) == "table" then ct = ct[1] end
  if not ct then return nil end
  return (ct:match("^%s*([^;%s]+)") or ""):lower()
end

-- whole request body, or a 408/400 error when it cannot be read
local function body_of(req, json_body)
  local body, err = req:body()
  if body == nil then
    if err == "timeout" then fail(408, "request body timed out", req, json_body) end
    if err == "too large" then fail(413, "request body too large", req, json_body) end
    fail(400, "request body could not be read (" .. tostring(err) .. ")", req, json_body)
  end
  return body
end

local methods = {}

-- query() → { key = value | {values...} } from req.qs.
function methods.query(req)
  local t, err = url.parse(req.qs, limits.query_params, "query parameters")
  if not t then fail(400, "bad query string: " .. err, req) end
  return t
end

-- cookies() → { name = value } from the cookie header(s).
function methods.cookies(req)
  return cookie.parse(req.headers.cookie)
end

-- set_cookie(name, value, {path, domain, max_age, expires, secure,
-- http_only, same_site}) → adds a set-cookie header to the coming reply.
function methods.set_cookie(req, name, value, opts)
  local line = cookie.serialize(name, value, opts)
  req:set_header("set-cookie", line)
  return line
end

local function add_value(t, k, v)
  local prev = t[k]
  if prev == nil then t[k] = v
  elseif type(prev) == "table" and getmetatable(prev) == nil and prev[1] ~= nil then prev[#prev + 1] = v
  else t[k] = { prev, v } end
end

-- form() → fields of an application/x-www-form-urlencoded body, or of a
-- multipart/form-data body, where file parts become
-- { filename=, content_type=, headers=, body= }. Other media types → 415.
function methods.form(req)
  local mt = media_type(req)
  if mt == "multipart/form-data" then
    local out = {}
    for part in multipart.iterate(req) do
      if part.name == nil then fail(400, "multipart part without a name", req) end
      if part.filename ~= nil then
        add_value(out, part.name, setmetatable({ filename = part.filename,
          content_type = part.content_type, headers = part.headers, body = part:body() },
          { __name = "lariat.file" }))
      else
        add_value(out, part.name, part:body())
      end
    end
    return out
  end
  if mt ~= nil and mt ~= "application/x-www-form-urlencoded" then
    fail(415, "expected an application/x-www-form-urlencoded or multipart/form-data body", req)
  end
  local body = body_of(req)
  if mt == nil and body ~= "" then
    fail(415, "form body without content-type", req)
  end
  local t, err = url.parse(body, limits.form_params, "form fields")
  if not t then fail(400, "bad form body: " .. err, req) end
  return t
end

-- json() → the decoded JSON body; 400 with the parser's message otherwise,
-- answered as JSON ({"error": "malformed JSON: …", "status": 400}): the
-- client speaks JSON.
function methods.json(req)
  local body = body_of(req, true)
  if body == "" then fail(400, "malformed JSON: empty body", req, true) end
  local v, err = json.decode(body)
  if v == nil then fail(400, "malformed JSON: " .. err, req, true) end
  return v
end

-- multipart([opts]) → iterator of streaming parts (see lariat.multipart).
function methods.multipart(req, opts)
  return multipart.iterate(req, opts)
end

-- redirect(url[, status]): replies at once (default 302), so both
-- `req:redirect(u)` and `return req:redirect(u)` work.
function methods.redirect(req, location, status)
  status = status or 302
  if math.type(status) ~= "integer" or status < 300 or status > 399 then
    error("redirect: status must be 3xx, got " .. tostring(status), 2)
  end
  if type(location) ~= "string" or location == "" or location:find("[%c]") then
    error("redirect: location must be a non-empty string without control characters", 2)
  end
  req:reply(status, { location = location, ["content-type"] = "text/plain; charset=utf-8" },
            "redirecting to " .. location .. "\n")
end

-- sse([opts]) → an event stream object (see lariat.sse): send{event=, data=,
-- id=, retry=}, comment(text), wait(seconds) with keep-alive comments.
function methods.sse(req, opts)
  return sse.open(req, opts)
end

M.methods = methods

-- install(req_methods): add the helpers; C's own methods are never replaced.
function M.install(t)
  for name, fn in pairs(methods) do
    if t[name] == nil then t[name] = fn end
  end
  t.__lariat_helpers = true
  return t
end

return M
