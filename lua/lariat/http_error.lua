-- lariat.http_error: error values that C answers with their own status.
--
-- `error(lariat.http_error(400, "bad json"))` anywhere in a handler or
-- middleware makes C reply 400 with these headers and body instead of 500.
-- A handler may also *return* one; dispatch turns it into status, headers, body.
local M = {}

local HttpError = {}
HttpError.__index = HttpError
HttpError.__tostring = function(e)
  return ("http error %d: %s"):format(e.status, e.message)
end

local reasons = {
  [400] = "bad request", [401] = "unauthorized", [403] = "forbidden",
  [404] = "not found", [405] = "method not allowed", [406] = "not acceptable",
  [408] = "request timeout", [409] = "conflict", [410] = "gone",
  [411] = "length required", [412] = "precondition failed",
  [413] = "content too large", [415] = "unsupported media type",
  [416] = "range not satisfiable", [422] = "unprocessable content",
  [429] = "too many requests", [431] = "request header fields too large",
  [500] = "internal server error", [501] = "not implemented",
  [502] = "bad gateway", [503] = "service unavailable", [504] = "gateway timeout",
}
M.reasons = reasons

local TEXT = "text/plain; charset=utf-8"

-- new(status, message[, headers]): message is a string (text body) or a table
-- (JSON body, handy for 422 validation errors). Headers are copied, never shared.
function M.new(status, message, headers)
  if math.type(status) ~= "integer" or status < 100 or status > 599 then
    error("http_error: status must be an integer 100..599, got " .. tostring(status), 2)
  end
  local h = {}
  if headers then for k, v in pairs(headers) do h[k:lower()] = v end end
  local body
  if type(message) == "table" then
    body = require("lariat.json").encode(message)
    h["content-type"] = h["content-type"] or "application/json"
  else
    message = message ~= nil and tostring(message) or reasons[status] or "error"
    body = message .. "\n"
    h["content-type"] = h["content-type"] or TEXT
  end
  return setmetatable({ status = status, headers = h, body = body,
                        message = type(message) == "string" and message or "json" },
                      HttpError)
end

-- wants_json(req): does the client's accept header ask for JSON at least as
-- much as for text? ("application/json", "application/problem+json";
-- browsers, which ask for text/html, and "*/*" get text)
function M.wants_json(req)
  local accept = req.headers and req.headers.accept
  if type(accept) ~= "string" then return false end
  local jq, tq = 0, 0
  for range in accept:gmatch("[^,]+") do
    local mt = (range:match("^%s*([^;%s]+)") or ""):lower()
    local q = tonumber(range:match(";%s*[qQ]%s*=%s*([%d.]+)")) or 1
    if mt == "application/json" or mt:find("^application/[%w.%-]+%+json$") then
      if q > jq then jq = q end
    elseif mt:find("^text/") then
      if q > tq then tq = q end
    end
  end
  return jq > 0 and jq >= tq
end

local function json_body(status, message)
  return require("lariat.json").encode { error = message, status = status }
end

-- for_request(req, status, message[, headers[, force_json]]): the error
-- lariat itself answers: {"error": message, "status": status} as JSON when
-- force_json or the client asks for JSON, the message as text otherwise.
function M.for_request(req, status, message, headers, force_json)
  local e = M.new(status, message, headers)
  if type(message) ~= "table" and (force_json or M.wants_json(req)) then
    e.body = json_body(status, e.message)
    e.headers["content-type"] = "application/json"
  end
  return e
end

function M.is(v)
  return getmetatable(v) == HttpError
end

-- raise(status, message[, headers]): error() with a new http error.
function M.raise(status, message, headers)
  error(M.new(status, message, headers), 0)
end

return M
