-- lariat.http: the HTTP client. The exchange itself is C (bindings/http.c,
-- core/http1_client.c); this file adds the conveniences: get/post and
-- redirects (off unless opts.redirects = n).
return function(core_or_fail)
  local http = {}

  local function origin(url)
    return url:match("^(https?://[^/?#]+)")
  end

  -- a Location value against the URL it answered (RFC 9110 §10.2.2)
  local function resolve(base, loc)
    if loc:match("^[%a][%w+.-]*://") then return loc end
    if loc:sub(1, 2) == "//" then return base:match("^(%a+:)") .. loc end
    if loc:sub(1, 1) == "/" then return origin(base) .. loc end
    local dir = base:match("^(https?://[^?#]*/)") or (origin(base) .. "/")
    return dir .. loc
  end

  local redirect = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }

  function http.request(opts)
    if type(opts) ~= "table" then error("lariat.http.request: expects a table of options", 2) end
    local core = core_or_fail("lariat.http.request")
    local left = opts.redirects or 0
    local res, err = core.http_request(opts)
    while res and left > 0 and redirect[res.status] and res.headers.location do
      left = left - 1
      local nxt = {}
      for k, v in pairs(opts) do nxt[k] = v end
      nxt.url = resolve(opts.url, res.headers.location)
      local m = (opts.method or "GET"):upper()
      if res.status == 303 or ((res.status == 301 or res.status == 302) and m == "POST") then
        nxt.method, nxt.body = "GET", nil
      end
      opts = nxt
      res, err = core.http_request(opts)
    end
    return res, err
  end

  local function with(opts, fields)
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    for k, v in pairs(fields) do o[k] = v end
    return o
  end

  function http.get(url, opts)
    if opts == nil then -- no options: the URL alone (no table, no redirects to follow)
      if type(url) ~= "string" then error("lariat.http.get: expects a URL string", 2) end
      return core_or_fail("lariat.http.request").http_request(url)
    end
    return http.request(with(opts, { url = url }))
  end

  function http.post(url, body, opts)
    return http.request(with(opts, { url = url, method = (opts and opts.method) or "POST", body = body }))
  end

  return http
end
