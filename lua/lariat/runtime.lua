-- lariat.runtime: the single place that finds the C core (`lariat.core`).
--
-- Inside the server, C preloads `lariat.core`. Under busted it does not exist,
-- so every module asks here, lazily, and specs inject a fake with use_core().
-- Finding the core also installs the Lua request helpers into
-- core.req_methods, the __index table of every req userdata.
local M = {}

local core -- nil: not looked up yet; false: looked up, absent

local function install(c)
  if c.req_methods and not c.req_methods.__lariat_helpers then
    require("lariat.request").install(c.req_methods)
  end
end

-- The core module, or nil when running outside the server.
function M.core()
  if core == nil then
    local ok, c = pcall(require, "lariat.core")
    core = ok and type(c) == "table" and c or false
    if core then install(core) end
  end
  return core or nil
end

-- Use `c` as the core (specs pass a fake); nil forgets it.
function M.use_core(c)
  core = c or false
  if c then install(c) end
  return c
end

return M
