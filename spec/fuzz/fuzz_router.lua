-- lariat.router and lariat.path: routes registered from the input, then
-- matched against request lines from the input.
-- Input: route lines "METHODS PATTERN [HOST [CONSTRAINT]]" (METHODS "*" or
-- comma-separated; CONSTRAINT a digit picking a pattern for the first
-- binding), an empty line, then request lines "METHOD PATH [HOST]".
-- Allowed failures: add() raising a message without a source position (a
-- malformed pattern, documented); canonical() returning nil, message.
-- Anything else (a runtime error, a route or bindings of the wrong shape) is a bug.
local router = require 'lariat.router'
local path = require 'lariat.path'
local constraints = { '%d+', '[a-z]+', '%w+', '.*', '[0-9a-f]+', 'x' }
local function bug(err) return type(err) ~= 'string' or err:find('%.lua:%d+:') end
return function(data)
  local r = router.new()
  local sep = data:find('\n\n', 1, true) or #data + 1
  local routes = {}
  for line in data:sub(1, sep - 1):gmatch('[^\n]+') do
    local methods, pattern, host, c = line:match('^(%S+) (%S+) ?(%S*) ?(%d?)')
    if pattern then
      local ms = '*'
      if methods ~= '*' then ms = {}; for m in methods:gmatch('[^,]+') do ms[#ms + 1] = m end end
      local route = { methods = ms, pattern = pattern, host = host ~= '' and host or nil, id = #routes + 1 }
      local name = c ~= '' and pattern:match(':([%w_]+)')
      if name then route.constraints = { [name] = constraints[(tonumber(c) % #constraints) + 1] } end
      local ok, err = pcall(r.add, r, route)
      if ok then routes[#routes + 1] = route elseif bug(err) then error(err, 0) end
    end
  end
  for line in data:sub(sep + 2):gmatch('[^\n]+') do
    local method, p, host = line:match('^(%S+) (%S+) ?(%S*)')
    if p then
      local cpath, segs = path.canonical(p)
      if cpath then
        assert(type(cpath) == 'string' and cpath:sub(1, 1) == '/')
        local route, b, pi = r:match(host ~= '' and host or nil, method, cpath, segs)
        if route then
          assert(routes[route.id] == route, 'match returned a route never added')
          if b then for k, v in pairs(b) do assert(type(k) == 'string' and type(v) == 'string') end end
          assert(pi == nil or type(pi) == 'string')
        else
          assert(b == nil or type(b) == 'string', 'allow is a string')
        end
        path.under(cpath, '/a')
      else
        assert(type(segs) == 'string', 'canonical failed without a message')
      end
    end
  end
  assert(type(r:allow_all()) == 'string')
end
