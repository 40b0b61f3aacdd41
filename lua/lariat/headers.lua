-- lariat.headers: small helpers over header tables (lowercase names; a value
-- is a string or an array of strings for repeated fields).
local M = {}

-- join(v, sep) → string or nil: a repeated field as one value.
function M.join(v, sep)
  if type(v) == "table" then return table.concat(v, sep or ", ") end
  return v
end

-- copy(h) → a new table; response header tables may be shared constants, so a
-- middleware changing headers must copy first.
function M.copy(h)
  local out = {}
  if h then for k, v in pairs(h) do out[k] = v end end
  return out
end

-- qvalue(accept_value, token) → the q of `token` (or of "*") in an
-- Accept-Encoding-style list, 0 when not acceptable.
function M.qvalue(value, token)
  value = M.join(value)
  if not value then return 0 end
  token = token:lower()
  local star
  for item in value:gmatch("[^,]+") do
    local name, params = item:match("^%s*([^;%s]+)%s*(.*)$")
    if name then
      name = name:lower()
      local q = tonumber(params:match("[qQ]%s*=%s*([%d.]+)") or "1") or 0
      if name == token then return q end
      if name == "*" then star = q end
    end
  end
  return star or 0
end

-- accepts_gzip(req) → true when the client accepts a gzip content coding.
function M.accepts_gzip(req)
  local ae = req.headers["accept-encoding"]
  if not ae then return false end
  return M.qvalue(ae, "gzip") > 0 or M.qvalue(ae, "x-gzip") > 0
end

-- add_vary(req, token): adds `token` to the response's vary header through
-- req:set_header. set_header replaces non-cookie headers, so the tokens added
-- so far are kept in req.ctx and the whole list is set each time.
function M.add_vary(req, token)
  local ctx = req.ctx
  local list = ctx.lariat_vary
  if not list then list = {}; ctx.lariat_vary = list end
  for _, t in ipairs(list) do if t == token then return end end
  list[#list + 1] = token
  req:set_header("vary", table.concat(list, ", "))
end

return M
