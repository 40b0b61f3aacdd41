-- Shared by the attack-suite apps: mark() makes a to-be-closed value that
-- counts its close (a handler that ends or is cancelled), and stats(extra)
-- is lariat.stats() for a /stats route, without the route's own handler,
-- with that count as `closed`.
local lariat = require "lariat"

local M = { closed = 0 }

local close_mt = { __close = function() M.closed = M.closed + 1 end }

function M.mark() return setmetatable({}, close_mt) end

function M.stats()
  local s = lariat.stats()
  s.handlers = s.handlers - 1 -- not this one
  s.closed = M.closed
  return s
end

return M
