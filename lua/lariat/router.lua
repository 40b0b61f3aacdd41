-- lariat.router: route patterns compiled into a segment trie.
--
-- Pattern syntax (Cowboy's, in Lua):
--   /users/:id           `:name` binds a whole segment
--   /users[/:id]         `[...]` optional part, may nest: /a[/b[/c]]
--   /static/*            trailing `*`: the (possibly empty) rest of the path
--                        lands in req.path_info, segments joined by "/"
-- Trailing slashes and empty segments are insignificant ("/a/" is "/a").
--
-- Precedence (most specific wins, ties by order): segments are compared left
-- to right and at each one a literal beats a binding with a constraint, which
-- beats a plain binding, which beats the `*` wildcard. When the preferred
-- branch fails deeper down, matching backtracks into the next one. Bindings
-- with different constraints that both accept a value: the first registered wins.
-- Hosts: an exact host beats host patterns (in registration order), which
-- beat routes registered without a host. Two routes with the same method and
-- the same path shape (one could never be reached) are an error at load.
--
-- Cost: a literal step is one hash lookup and literal-only routes are found by
-- a single lookup of the whole path, so matching does not grow with the
-- number of routes, only with the path depth and the bindings met on the way.
local url = require "lariat.url"

local concat, find, sub = table.concat, string.find, string.sub

local M = {}

-- Pattern parsing --------------------------------------------------------

-- expand("/a[/:b[/c]]") → { "/a", "/a/:b", "/a/:b/c" }
local function expand(p)
  local open = find(p, "[", 1, true)
  if not open then
    if find(p, "]", 1, true) then error("unbalanced ']'", 0) end
    return { p }
  end
  local depth, close = 0, nil
  for i = open, #p do
    local c = sub(p, i, i)
    if c == "[" then depth = depth + 1
    elseif c == "]" then
      depth = depth - 1
      if depth == 0 then close = i; break end
    end
  end
  if not close then error("unbalanced '['", 0) end
  local before, inner, after = sub(p, 1, open - 1), sub(p, open + 1, close - 1), sub(p, close + 1)
  if find(before, "]", 1, true) then error("unbalanced ']'", 0) end
  local out, seen = {}, {}
  local function push(s) if not seen[s] then seen[s] = true; out[#out + 1] = s end end
  for _, tail in ipairs(expand(after)) do
    push(before .. tail)
    for _, mid in ipairs(expand(inner)) do push(before .. mid .. tail) end
  end
  return out
end

-- every optional part doubles the expansions: bound them, so a pattern can't
-- keep add() busy for seconds (found by spec/fuzz/fuzz_router.lua)
local MAX_OPTIONAL = 8
local function expand_pattern(p)
  local _, n = p:gsub("%[", "")
  if n > MAX_OPTIONAL then error(("too many optional parts (%d, at most %d)"):format(n, MAX_OPTIONAL), 0) end
  return expand(p)
end

-- parse one expanded pattern into { {kind=,value=|name=}, ... }
local function parse_segments(p)
  local segs = {}
  for raw in p:gmatch("[^/]+") do
    if raw == "*" then
      segs[#segs + 1] = { kind = "wild" }
    elseif sub(raw, 1, 1) == ":" then
      local name = sub(raw, 2)
      if not name:match("^[%a_][%w_]*$") then
        error("bad binding name ':" .. name .. "'", 0)
      end
      segs[#segs + 1] = { kind = "bind", name = name }
    else
      if find(raw, "*", 1, true) then error("'*' must be a whole, final segment", 0) end
      local v, err = url.decode(raw)
      if not v then error(err, 0) end
      if v == "." or v == ".." then error("'.' and '..' segments can never match", 0) end
      segs[#segs + 1] = { kind = "lit", value = v }
    end
  end
  for i, s in ipairs(segs) do
    if s.kind == "wild" and i ~= #segs then error("'*' must be the last segment", 0) end
  end
  return segs
end

-- Constraints --------------------------------------------------------------

local builtin = {
  -- Cowboy's int: digits only, converted to an integer
  int = function(v)
    if find(v, "^%-?%d+$") then return math.tointeger(tonumber(v)) end
    return nil
  end,
  nonempty = function(v) if v ~= "" then return v end return nil end,
}

local function builtin_names()
  local t = {}
  for k in pairs(builtin) do t[#t + 1] = k end
  table.sort(t)
  return table.concat(t, ", ")
end

-- pattern → matcher; the pattern is anchored at both ends unless it already is
local function pattern_constraint(spec)
  if type(spec) ~= "string" then error("constraint { pattern = ... } needs a string, got " .. type(spec), 0) end
  local pat = spec
  if sub(pat, 1, 1) ~= "^" then pat = "^" .. pat end
  if sub(pat, -1) ~= "$" or sub(pat, -2) == "%$" then pat = pat .. "$" end
  local ok, err = pcall(find, "", pat)
  if not ok then error("bad constraint pattern " .. spec .. ": " .. err, 0) end
  return function(v) if find(v, pat) then return v end return nil end
end

-- A constraint is the name of a built-in ("int", "nonempty"), a Lua pattern
-- written { pattern = "^%d+$" } (anchored at both ends unless it already is),
-- or a function(value) returning false/nil (reject), true (accept as is) or a
-- converted value. A string that is a name but not a built-in's is an error
-- (a typo such as "integer" must not become a pattern); a string that is not
-- a name (it holds pattern characters: %u%u, [a-z]+) is still taken as a
-- pattern, as before the explicit form existed.
local function compile_constraint(spec)
  if type(spec) == "function" then
    return function(v)
      local r = spec(v)
      if r == true then return v end
      if r == false then return nil end
      return r
    end
  end
  if type(spec) == "table" then
    if spec.pattern == nil then error("a constraint table needs a pattern field: { pattern = \"^%d+$\" }", 0) end
    return pattern_constraint(spec.pattern)
  end
  if type(spec) ~= "string" then
    error("a constraint is a name (" .. builtin_names() .. "), { pattern = \"...\" } or a function, got "
      .. type(spec), 0)
  end
  if builtin[spec] then return builtin[spec] end
  if spec:match("^[%a_][%w_]*$") then
    error(("unknown constraint %q (known: %s; a Lua pattern is written { pattern = \"...\" })")
      :format(spec, builtin_names()), 0)
  end
  return pattern_constraint(spec)
end

-- check(pattern, constraints): raises a message on a malformed pattern or a
-- constraint naming no binding; used at registration for early, clear errors.
function M.check(pattern, constraints)
  if type(pattern) ~= "string" or sub(pattern, 1, 1) ~= "/" then
    error("route path must be a string starting with /, got " .. tostring(pattern), 0)
  end
  local names = {}
  for _, e in ipairs(expand_pattern(pattern)) do
    local seen = {}
    for _, s in ipairs(parse_segments(e)) do
      if s.kind == "bind" then
        if seen[s.name] then error("binding :" .. s.name .. " appears twice", 0) end
        seen[s.name] = true
        names[s.name] = true
      end
    end
  end
  for name, spec in pairs(constraints or {}) do
    if not names[name] then error("constraint for unknown binding :" .. tostring(name), 0) end
    local ok, err = pcall(compile_constraint, spec)
    if not ok then error(":" .. name .. ": " .. err, 0) end
  end
end

-- Hosts ---------------------------------------------------------------------

-- "Example.COM:8080." → "example.com"; IPv6 literals keep their brackets.
local function normalize_host(h)
  h = h:lower()
  if sub(h, 1, 1) == "[" then
    return h:match("^(%[[^%]]*%])") or h
  end
  h = h:gsub(":%d*$", "")
  if sub(h, -1) == "." then h = sub(h, 1, -2) end
  return h
end
M.normalize_host = normalize_host

-- host patterns: labels are literals or `:name`; a leading `*` stands for one
-- or more labels (its value lands in bindings.host_info).
local function compile_host(pattern)
  if type(pattern) ~= "string" or pattern == "" then
    error("host pattern must be a non-empty string", 0)
  end
  local labels, dynamic = {}, false
  for l in pattern:lower():gmatch("[^.]+") do
    if l == "*" then
      if #labels > 0 then error("'*' must be the first label of a host pattern", 0) end
      labels[#labels + 1] = { kind = "wild" }; dynamic = true
    elseif sub(l, 1, 1) == ":" then
      local name = sub(l, 2)
      if not name:match("^[%a_][%w_]*$") then error("bad binding name ':" .. name .. "'", 0) end
      labels[#labels + 1] = { kind = "bind", name = name }; dynamic = true
    else
      labels[#labels + 1] = { kind = "lit", value = l }
    end
  end
  return labels, dynamic
end
M.check_host = function(p) compile_host(p) end

local function match_host(labels, host)
  local parts = {}
  for l in host:gmatch("[^.]+") do parts[#parts + 1] = l end
  local offset = 0
  if labels[1].kind == "wild" then
    offset = #parts - (#labels - 1)
    if offset < 1 then return nil end
  elseif #parts ~= #labels then
    return nil
  end
  local b = {}
  if offset > 0 then b.host_info = concat(parts, ".", 1, offset) end
  local start = offset > 0 and 2 or 1
  for i = start, #labels do
    local l, v = labels[i], parts[i - start + 1 + offset]
    if l.kind == "lit" then
      if l.value ~= v then return nil end
    else
      b[l.name] = v
    end
  end
  return b
end

-- The trie ------------------------------------------------------------------

local function new_node()
  return { lit = {}, cbind = {}, bind = {}, wild = nil, leaf = nil }
end

local function new_leaf()
  return { methods = {}, any = nil }
end

local function new_tree()
  return { root = new_node(), static = {}, shapes = {} }
end

local function describe_route(route, m)
  return ("%s %s%s"):format(m, route.pattern, route.where and (" (" .. route.where .. ")") or "")
end

-- Two routes of one tree with the same shape (the same literals, bindings
-- with the same constraints, whatever their names) and a method in common:
-- the second could never be reached, so it is an error rather than a shadow.
local function check_duplicate(tree, route, segs)
  local key = {}
  for i, s in ipairs(segs) do
    if s.kind == "lit" then key[i] = "=" .. s.value
    elseif s.kind == "wild" then key[i] = "*"
    else
      local spec = route.constraints and route.constraints[s.name]
      key[i] = ":" .. (spec == nil and "" or type(spec) == "string" and spec
        or type(spec) == "table" and type(spec.pattern) == "string" and "~" .. spec.pattern or tostring(spec))
    end
  end
  key = concat(key, "/")
  local seen = tree.shapes[key]
  if not seen then seen = {}; tree.shapes[key] = seen end
  local list = route.methods == "*" and { "*" } or route.methods
  for _, m in ipairs(list) do
    local prev = seen[m]
    if prev and prev ~= route then
      error(("duplicate route: %s has the same method and path as %s, so it would never be reached")
        :format(describe_route(route, m), describe_route(prev, m)), 0)
    end
  end
  for _, m in ipairs(list) do seen[m] = route end
end

local function add_methods(leaf, route)
  if route.methods == "*" then
    leaf.any = leaf.any or route
  else
    for _, m in ipairs(route.methods) do
      if leaf.methods[m] == nil then leaf.methods[m] = route end
    end
  end
end

local function insert(tree, route)
  for _, e in ipairs(expand_pattern(route.pattern)) do
    local node, literal_only, lits = tree.root, true, {}
    local segs = parse_segments(e)
    check_duplicate(tree, route, segs)
    for _, s in ipairs(segs) do
      if s.kind == "lit" then
        if find(s.value, "/", 1, true) then error("a literal segment may not contain an encoded '/'", 0) end
        lits[#lits + 1] = s.value
        local child = node.lit[s.value]
        if not child then child = new_node(); node.lit[s.value] = child end
        node = child
      elseif s.kind == "bind" then
        literal_only = false
        local spec = route.constraints and route.constraints[s.name]
        local list = spec and node.cbind or node.bind
        local edge
        for _, ed in ipairs(list) do
          if ed.name == s.name and ed.spec == spec then edge = ed; break end
        end
        if not edge then
          edge = { name = s.name, spec = spec, node = new_node(),
                   check = spec and compile_constraint(spec) or nil }
          list[#list + 1] = edge
        end
        node = edge.node
      else -- wild: a leaf of its own, hanging off the node
        literal_only = false
        node.wild = node.wild or new_leaf()
        add_methods(node.wild, route)
        node = nil
      end
    end
    if node then
      node.leaf = node.leaf or new_leaf()
      add_methods(node.leaf, route)
      if literal_only then tree.static["/" .. concat(lits, "/")] = node end
    end
  end
end

local function pick(leaf, method)
  local m = leaf.methods
  return m[method] or (method == "HEAD" and m.GET) or leaf.any
end

-- Scratch for the depth-first search. Matching never yields, so one set per
-- Lua state is safe and spares a table per request.
local names, vals = {}, {}
local wild_at

-- search → route, depth (segments consumed before the wildcard or the end).
-- With `collect`, records every leaf the path reaches instead (for 405).
local function search(node, segs, i, n, method, collect)
  if i > n then
    local leaf = node.leaf
    if leaf then
      if collect then collect[#collect + 1] = leaf
      else
        local r = pick(leaf, method)
        if r then wild_at = nil; return r, n end
      end
    end
  else
    local seg = segs[i]
    local child = node.lit[seg]
    if child then
      names[i] = false
      local r, d = search(child, segs, i + 1, n, method, collect)
      if r then return r, d end
    end
    local edges = node.cbind
    for k = 1, #edges do
      local e = edges[k]
      local v = e.check(seg)
      if v ~= nil then
        names[i] = e.name; vals[i] = v
        local r, d = search(e.node, segs, i + 1, n, method, collect)
        if r then return r, d end
      end
    end
    edges = node.bind
    for k = 1, #edges do
      local e = edges[k]
      names[i] = e.name; vals[i] = seg
      local r, d = search(e.node, segs, i + 1, n, method, collect)
      if r then return r, d end
    end
  end
  local w = node.wild
  if w then
    if collect then collect[#collect + 1] = w
    else
      local r = pick(w, method)
      if r then wild_at = i; return r, i - 1 end
    end
  end
  return nil
end

local METHOD_ORDER = { "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS" }

-- allow header value for a set of methods; HEAD follows GET and OPTIONS is
-- always answered (explicitly or by the app).
local function allow_value(set)
  set = set or {}
  if set.GET then set.HEAD = true end
  set.OPTIONS = true
  local out, known = {}, {}
  for _, m in ipairs(METHOD_ORDER) do
    known[m] = true
    if set[m] then out[#out + 1] = m end
  end
  local extra = {}
  for m in pairs(set) do if not known[m] then extra[#extra + 1] = m end end
  table.sort(extra)
  for _, m in ipairs(extra) do out[#out + 1] = m end
  return concat(out, ", ")
end
M.allow_value = allow_value

-- by find, not gmatch: gmatch allocates a 600-byte match state per call
local function split(cpath)
  local segs, n, i, len = {}, 0, 2, #cpath
  while i <= len do
    local j = find(cpath, "/", i, true) or len + 1
    if j > i then n = n + 1; segs[n] = sub(cpath, i, j - 1) end
    i = j + 1
  end
  return segs
end

-- match_tree → route, bindings, path_info | nil, allow (path matched, method not)
local function match_tree(tree, method, cpath, segs)
  local node = tree.static[cpath]
  if node then
    local r = pick(node.leaf, method)
    if r then return r end
  end
  local n = #segs
  local r, depth = search(tree.root, segs, 1, n, method, nil)
  if r then
    local b
    for k = 1, depth do
      local nm = names[k]
      if nm then
        b = b or {}
        b[nm] = vals[k]
      end
    end
    local pi
    if wild_at then pi = concat(segs, "/", wild_at, n) end
    return r, b, pi
  end
  local leaves = {}
  search(tree.root, segs, 1, n, method, leaves)
  if #leaves == 0 then return nil end
  local set = {}
  for _, leaf in ipairs(leaves) do
    for m in pairs(leaf.methods) do set[m] = true end
  end
  return nil, allow_value(set)
end

-- The router ------------------------------------------------------------------

local Router = {}
Router.__index = Router

function M.new()
  return setmetatable({
    default = new_tree(),
    exact_hosts = {},     -- "api.example.com" → tree
    host_patterns = {},   -- { {labels=, tree=}, ... } in registration order
    host_by_pattern = {},
    has_hosts = false,
    methods = {},         -- every method some route accepts, for OPTIONS *
  }, Router)
end

-- add(route): route has methods ("*" or array of uppercase names), pattern,
-- optional host and constraints. Raises a message on a malformed pattern.
function Router:add(route)
  M.check(route.pattern, route.constraints)
  local tree = self.default
  if route.host then
    self.has_hosts = true
    local labels, dynamic = compile_host(route.host)
    if dynamic then
      local key = route.host:lower()
      local entry = self.host_by_pattern[key]
      if not entry then
        entry = { labels = labels, tree = new_tree() }
        self.host_by_pattern[key] = entry
        self.host_patterns[#self.host_patterns + 1] = entry
      end
      tree = entry.tree
    else
      local key = normalize_host(route.host)
      tree = self.exact_hosts[key]
      if not tree then tree = new_tree(); self.exact_hosts[key] = tree end
    end
  end
  insert(tree, route)
  if route.methods ~= "*" then
    for _, m in ipairs(route.methods) do self.methods[m] = true end
  else
    for _, m in ipairs(METHOD_ORDER) do self.methods[m] = true end
  end
end

-- match(host, method, cpath[, segs]) → route, bindings|nil, path_info|nil
--                                   or nil, allow|nil
-- cpath is canonical (lariat.path); segs its segments when already split.
function Router:match(host, method, cpath, segs)
  local allow
  if self.has_hosts and host then
    host = normalize_host(host)
    segs = segs or split(cpath)
    local t = self.exact_hosts[host]
    if t then
      local r, b, pi = match_tree(t, method, cpath, segs)
      if r then return r, b, pi end
      allow = b
    end
    for _, entry in ipairs(self.host_patterns) do
      local hb = match_host(entry.labels, host)
      if hb then
        local r, b, pi = match_tree(entry.tree, method, cpath, segs)
        if r then
          b = b or {}
          for k, v in pairs(hb) do if b[k] == nil then b[k] = v end end
          return r, b, pi
        end
        allow = allow or b
      end
    end
  end
  local tree = self.default
  local node = tree.static[cpath]
  if node then -- fast path: no split, no table
    local r = pick(node.leaf, method)
    if r then return r end
  end
  local r, b, pi = match_tree(tree, method, cpath, segs or split(cpath))
  if r then return r, b, pi end
  return nil, allow or b
end

-- wild_prefixes() → { {prefix=, wild=, leaf=}, ... }: the wildcard routes
-- "/lit/.../*" whose node has nothing else below it (no literal, binding or
-- constrained child). For a path under such a prefix the search can only end
-- at that wildcard (literals are tried first at every level), so the app
-- may skip splitting and searching: pick(wild, method), path_info the rest.
-- Empty with host routes (the host picks the tree first).
function Router:wild_prefixes()
  local out = {}
  if self.has_hosts then return out end
  local function walk(node, lits)
    if #lits > 0 and node.wild and next(node.lit) == nil and #node.cbind == 0 and #node.bind == 0 then
      out[#out + 1] = { prefix = "/" .. concat(lits, "/"), wild = node.wild, leaf = node.leaf }
    end
    for seg, child in pairs(node.lit) do
      lits[#lits + 1] = seg
      walk(child, lits)
      lits[#lits] = nil
    end
  end
  walk(self.default.root, {})
  table.sort(out, function(a, b) return a.prefix < b.prefix end)
  return out
end
M.pick = pick

-- allow value listing every method the app serves, for OPTIONS *.
function Router:allow_all()
  local set = {}
  for m in pairs(self.methods) do set[m] = true end
  return allow_value(set)
end

return M
