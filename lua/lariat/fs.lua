-- lariat.fs: the file system questions lariat.static asks. The server's core
-- answers them (core.stat, core.realpath); LuaFileSystem is the fallback
-- outside the server, when it is installed.
local runtime = require "lariat.runtime"

local M = {}

local has_lfs, lfs = pcall(require, "lfs")

-- stat(path) → { type = "file"|"directory"|"other", size=, mtime= } or nil, err
-- (follows symlinks, like stat(2)).
function M.stat(path)
  local core = runtime.core()
  if core and core.stat then return core.stat(path) end
  if has_lfs then
    local a, err = lfs.attributes(path)
    if not a then return nil, err end
    local t = (a.mode == "file" or a.mode == "directory") and a.mode or "other"
    return { type = t, size = a.size, mtime = a.modification }
  end
  return nil, "no stat available (lariat.core or lfs)"
end

-- realpath(path) → absolute path with every symlink resolved, or nil, err.
function M.realpath(path)
  local core = runtime.core()
  if core and core.realpath then return core.realpath(path) end
  if has_lfs then
    -- resolve component by component, following links (at most 40, like Linux)
    local cwd = lfs.currentdir()
    if path:sub(1, 1) ~= "/" then path = cwd .. "/" .. path end
    local pending, out, hops = {}, {}, 0
    for c in path:gmatch("[^/]+") do pending[#pending + 1] = c end
    local i = 1
    while i <= #pending do
      local c = pending[i]
      if c == ".." then out[#out] = nil
      elseif c ~= "." then
        local candidate = "/" .. table.concat(out, "/") .. (#out > 0 and "/" or "") .. c
        local a = lfs.symlinkattributes(candidate)
        if not a then return nil, candidate .. ": No such file or directory" end
        if a.mode == "link" then
          hops = hops + 1
          if hops > 40 then return nil, "too many levels of symbolic links" end
          local target = a.target
          local rest = {}
          for j = i + 1, #pending do rest[#rest + 1] = pending[j] end
          pending = {}
          for t in target:gmatch("[^/]+") do pending[#pending + 1] = t end
          for _, r in ipairs(rest) do pending[#pending + 1] = r end
          if target:sub(1, 1) == "/" then out = {} end
          i = 0
        else
          out[#out + 1] = c
        end
      end
      i = i + 1
    end
    return "/" .. table.concat(out, "/")
  end
  return nil, "no realpath available (lariat.core or lfs)"
end

return M
