/* lariat.multipart (RFC 7578): the streaming multipart/form-data reader, fed
 * by a fake req:read_body. Input: the content-type line, "\n", one byte of
 * options (chunk size, read style), then the body.
 * Allowed failures: lariat.http_error values (400/413 on malformed or too
 * big bodies). Anything else out of the module (a Lua runtime error) is a bug. */
#include "lua_driver.h"

static const char harness[] =
    "local mp = require 'lariat.multipart'\n"
    "local http_error = require 'lariat.http_error'\n"
    "return function(data)\n"
    "  local nl = data:find('\\n', 1, true)\n"
    "  if not nl then return end\n"
    "  local ct = data:sub(1, nl - 1)\n"
    "  local opt = data:byte(nl + 1) or 0\n"
    "  local body = data:sub(nl + 2)\n"
    "  local step = (opt % 64) + 1\n"
    "  local pos = 1\n"
    "  local req = { headers = { ['content-type'] = ct } }\n"
    "  function req:read_body(o)\n"
    "    assert(type(o) == 'table' and o.length and o.length > 0, 'read_body without a length')\n"
    "    if pos > #body then return '', 'fin' end\n"
    "    local n = math.min(step, o.length)\n"
    "    local c = body:sub(pos, pos + n - 1)\n"
    "    pos = pos + n\n"
    "    return c, pos > #body and 'fin' or 'more'\n"
    "  end\n"
    "  local ok, err = pcall(function()\n"
    "    local n = 0\n"
    "    for part in mp.iterate(req, { max_parts = 16, max_header_size = 256, max_size = 1 << 16,\n"
    "                                  chunk_size = (opt & 64) ~= 0 and 7 or 4096 }) do\n"
    "      n = n + 1\n"
    "      assert(type(part.headers) == 'table')\n"
    "      assert(part.name == nil or type(part.name) == 'string')\n"
    "      assert(part.filename == nil or type(part.filename) == 'string')\n"
    "      if (opt & 128) ~= 0 then\n"
    "        local b = part:body(1024)\n"
    "        assert(type(b) == 'string' and #b <= 1024)\n"
    "      elseif n % 2 == 0 then\n"
    "        local c = part:read()\n"
    "        assert(c == nil or (type(c) == 'string' and #c > 0))\n"
    "      end\n"
    "    end\n"
    "  end)\n"
    "  if not ok and not http_error.is(err) then error(err, 0) end\n"
    "  if not ok then assert(err.status == 400 or err.status == 413 or err.status == 415, err.status) end\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lr_fuzz_lua_run(harness, data, size);
  return 0;
}
