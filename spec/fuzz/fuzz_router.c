/* lariat.router and lariat.path: routes registered from the input, then
 * matched against request lines from the input.
 * Input: route lines "METHODS PATTERN [HOST [CONSTRAINT]]" (METHODS "*" or
 * comma-separated; CONSTRAINT a digit picking a pattern for the first
 * binding), an empty line, then request lines "METHOD PATH [HOST]".
 * Allowed failures: add() raising a message without a source position (a
 * malformed pattern, documented); canonical() returning nil, message.
 * Anything else (a runtime error, a route or bindings of the wrong shape) is a bug. */
#include "lua_driver.h"

static const char harness[] =
    "local router = require 'lariat.router'\n"
    "local path = require 'lariat.path'\n"
    "local constraints = { '%d+', '[a-z]+', '%w+', '.*', '[0-9a-f]+', 'x' }\n"
    "local function bug(err) return type(err) ~= 'string' or err:find('%.lua:%d+:') end\n"
    "return function(data)\n"
    "  local r = router.new()\n"
    "  local sep = data:find('\\n\\n', 1, true) or #data + 1\n"
    "  local routes = {}\n"
    "  for line in data:sub(1, sep - 1):gmatch('[^\\n]+') do\n"
    "    local methods, pattern, host, c = line:match('^(%S+) (%S+) ?(%S*) ?(%d?)')\n"
    "    if pattern then\n"
    "      local ms = '*'\n"
    "      if methods ~= '*' then ms = {}; for m in methods:gmatch('[^,]+') do ms[#ms + 1] = m end end\n"
    "      local route = { methods = ms, pattern = pattern, host = host ~= '' and host or nil, id = #routes + 1 }\n"
    "      local name = c ~= '' and pattern:match(':([%w_]+)')\n"
    "      if name then route.constraints = { [name] = constraints[(tonumber(c) % #constraints) + 1] } end\n"
    "      local ok, err = pcall(r.add, r, route)\n"
    "      if ok then routes[#routes + 1] = route elseif bug(err) then error(err, 0) end\n"
    "    end\n"
    "  end\n"
    "  for line in data:sub(sep + 2):gmatch('[^\\n]+') do\n"
    "    local method, p, host = line:match('^(%S+) (%S+) ?(%S*)')\n"
    "    if p then\n"
    "      local cpath, segs = path.canonical(p)\n"
    "      if cpath then\n"
    "        assert(type(cpath) == 'string' and cpath:sub(1, 1) == '/')\n"
    "        local route, b, pi = r:match(host ~= '' and host or nil, method, cpath, segs)\n"
    "        if route then\n"
    "          assert(routes[route.id] == route, 'match returned a route never added')\n"
    "          if b then for k, v in pairs(b) do assert(type(k) == 'string' and type(v) == 'string') end end\n"
    "          assert(pi == nil or type(pi) == 'string')\n"
    "        else\n"
    "          assert(b == nil or type(b) == 'string', 'allow is a string')\n"
    "        end\n"
    "        path.under(cpath, '/a')\n"
    "      else\n"
    "        assert(type(segs) == 'string', 'canonical failed without a message')\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  assert(type(r:allow_all()) == 'string')\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lr_fuzz_lua_run(harness, data, size);
  return 0;
}
