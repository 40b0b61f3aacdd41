-- lariat.proxy(upstream_url[, opts]) → handler: a reverse proxy. The bytes
-- never pass through Lua: bindings/http.c streams the request body up and
-- the response down with back-pressure; this file maps the path and lets
-- the app pick the upstream or edit headers.
--
--   lariat.proxy("http://h:p")          forwards the path and query unchanged
--   lariat.proxy("http://h:p/base/")    on a route ending in `*`: /base/ .. req.path_info
--                                       (nginx proxy_pass with a URI)
-- opts: headers = { name = value } set on the upstream request;
--       before = function(req, o) … end may change o.url, o.headers per request;
--       timeout (whole exchange, default none), connect_timeout (60), read_timeout
--       (60: each wait for the upstream), verify, ca for https upstreams;
--       version: nil (https: HTTP/2 if ALPN picks it, http: HTTP/1.1), "1.1", or "2"
--       (http: h2c with prior knowledge); keepalive_timeout (60) for idle upstream connections.
-- Upstream failures answer 502, timeouts 504, with a log line naming the upstream.
return function(core_or_fail)
  return function(upstream, opts)
    if type(upstream) ~= "string" then error("lariat.proxy: upstream must be a URL string", 2) end
    local origin, base = upstream:match("^(https?://[^/?#]+)(.*)$")
    if not origin then error("lariat.proxy: upstream must be http(s)://host[:port][/base/]", 2) end
    opts = opts or {}
    local core = core_or_fail("lariat.proxy")
    local proxy = core.http_proxy
    local before = opts.before
    if not before then
      -- a C function with the upstream worked out once (bindings/http.c
      -- px_handler): per request C joins base, path_info and the query and
      -- reads no option (no table or string in Lua)
      return core.http_proxy_handler(origin .. "/", base, opts)
    end
    return function(req)
      local o = {
        headers = opts.headers, timeout = opts.timeout, connect_timeout = opts.connect_timeout,
        read_timeout = opts.read_timeout, verify = opts.verify, ca = opts.ca,
        version = opts.version, keepalive_timeout = opts.keepalive_timeout,
      }
      if base == "" then
        o.url, o.same_target = origin .. "/", true
      else
        local info = req.path_info
        if info == nil then
          o.url = origin .. base .. (req.qs ~= "" and ("?" .. req.qs) or "")
        else
          if base:sub(-1) == "/" and info:sub(1, 1) == "/" then info = info:sub(2) end
          o.url = origin .. base .. info .. (req.qs ~= "" and ("?" .. req.qs) or "")
        end
      end
      before(req, o)
      return proxy(req, o)
    end
  end
end
