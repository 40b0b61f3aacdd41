-- lariat.log: log.debug/info/warn/error(fmt_or_msg, ...).
-- With extra arguments the first is a string.format pattern; otherwise it is
-- printed as is (so a message containing "%" needs no escaping).
local runtime = require "lariat.runtime"

local M = {}

local function emit(level, fmt, ...)
  local msg
  if select("#", ...) > 0 then msg = string.format(fmt, ...) else msg = tostring(fmt) end
  local core = runtime.core()
  if core and core.log then
    core.log(level, msg)
  else
    io.stderr:write("[", level, "] ", msg, "\n")
  end
end

for _, level in ipairs { "debug", "info", "warn", "error" } do
  M[level] = function(fmt, ...) return emit(level, fmt, ...) end
end

return M
