-- Outbound sockets and DNS (spec/integration/test_net_*.py). Peers are named by
-- the query string: ?port= of a TCP peer on 127.0.0.1 the test started.
local lariat = require "lariat"
local app = lariat.app()

local function opts(q)
  local o = { timeout = tonumber(q.ct) }
  if q.tls then o.tls = true end
  if q.ca then o.ca = q.ca end
  if q.sni then o.sni = q.sni end
  if q.verify == "0" then o.verify = false end
  return o
end

-- one line to an echo peer and back; the socket goes back to the pool
app:get("/tcp/echo", function(req)
  local q = req:query()
  local sock, err = lariat.tcp.connect(q.host or "127.0.0.1", tonumber(q.port), opts(q))
  if not sock then return { err = err } end
  local reused = sock:info().reused
  local msg = q.msg or "hello"
  local n, serr = sock:send(msg .. "\n")
  if not n then return { err = serr } end
  if q.timeout then sock:settimeout(tonumber(q.timeout)) end
  local line, rerr, partial = sock:receive(q.pattern or "*l")
  if not line then sock:close(); return { err = rerr, partial = partial, sent = n } end
  if q.nopool then sock:close() else sock:setkeepalive() end
  return { line = line, sent = n, reused = reused }
end)

-- n sockets open at once, then all back to a pool of `size`: the rest close
app:get("/tcp/many", function(req)
  local q = req:query()
  local socks, reused = {}, 0
  for i = 1, tonumber(q.n) do
    socks[i] = assert(lariat.tcp.connect("127.0.0.1", tonumber(q.port)))
    if socks[i]:info().reused then reused = reused + 1 end
  end
  for _, s in ipairs(socks) do s:setkeepalive(60, tonumber(q.size)) end
  return { reused = reused }
end)

-- n bytes of a big body out and the same back, hash-compared by the test
app:post("/tcp/bulk", function(req)
  local q = req:query()
  local body = req:body()
  local sock, err = lariat.tcp.connect("127.0.0.1", tonumber(q.port), opts(q))
  if not sock then return 502, {}, err end
  -- one coroutine sends while this one receives: the peer echoes as it reads
  local sent, serr
  local done = lariat.channel("bulk" .. q.port)
  local sub = done:subscribe()
  lariat.spawn(function()
    sent, serr = sock:send(body)
    done:publish("sent")
  end)
  local back, rerr = sock:receive(#body)
  sub:recv(10)
  if not sent then return 502, {}, serr end
  sock:close()
  if not back then return 502, {}, rerr end
  return 200, { ["x-sent"] = tostring(sent) }, back
end)

-- connect only: the error string, or "ok"
app:get("/tcp/connect", function(req)
  local q = req:query()
  local t0 = lariat.now()
  local sock, err = lariat.tcp.connect(q.host or "127.0.0.1", tonumber(q.port), opts(q))
  local took = lariat.now() - t0
  if not sock then return { err = err, took = took } end
  sock:close()
  return { ok = true, took = took }
end)

-- read everything until the peer closes
app:get("/tcp/all", function(req)
  local q = req:query()
  local sock, err = lariat.tcp.connect("127.0.0.1", tonumber(q.port), opts(q))
  if not sock then return { err = err } end
  sock:send((q.msg or "") .. "\n")
  local data, rerr, partial = sock:receive("*a")
  return { data = data, err = rerr, partial = partial }
end)

-- waits on a peer that never answers: the client leaving must close the socket
app:get("/tcp/hang", function(req)
  local q = req:query()
  local sock = assert(lariat.tcp.connect("127.0.0.1", tonumber(q.port)))
  sock:send("hang\n")
  local line, err = sock:receive("*l")
  return { line = line, err = err }
end)

-- the same from a spawned task, reported through a channel
app:get("/tcp/spawned", function(req)
  local q = req:query()
  local sub = lariat.channel("spawned"):subscribe()
  lariat.spawn(function()
    local sock, err = lariat.tcp.connect("127.0.0.1", tonumber(q.port))
    if not sock then lariat.channel("spawned"):publish("err " .. err); return end
    sock:send("from task\n")
    local line = sock:receive("*l")
    sock:setkeepalive()
    lariat.channel("spawned"):publish(line)
  end)
  local msg = sub:recv(5)
  return { line = msg }
end)

-- receive bounds: max_line/max_all on connect, or sock:setlimits; then one more receive
app:get("/tcp/limit", function(req)
  local q = req:query()
  local sock = assert(lariat.tcp.connect("127.0.0.1", tonumber(q.port),
    { max_line = tonumber(q.max_line), max_all = tonumber(q.max_all) }))
  if q.set_line or q.set_all then sock:setlimits(tonumber(q.set_line), tonumber(q.set_all)) end
  local data, err, partial = sock:receive(q.pattern or "*l")
  local _, after = sock:receive(1)
  return { len = data and #data, err = err, partial = partial and #partial, after = after }
end)

app:get("/dns", function(req)
  local addrs, err = lariat.dns.resolve(req:query().name)
  if not addrs then return { err = err } end
  return { addrs = addrs }
end)

-- the HTTP client: the upstream's answer relayed as is, with what we learnt in x- headers
local function hopts(q)
  return {
    timeout = tonumber(q.timeout), connect_timeout = tonumber(q.ct), read_timeout = tonumber(q.rt),
    ca = q.ca, verify = q.verify ~= "0", max_body = tonumber(q.max_body),
    redirects = tonumber(q.redirects), version = q.version,
  }
end

local function relay(res, err)
  if not res then return 502, { ["x-err"] = err }, err end
  return res.status, {
    ["x-version"] = res.version, ["x-upstream-type"] = res.headers["content-type"],
    ["content-type"] = "application/octet-stream",
  }, res.body
end

-- res.headers first touched by pairs, by a write, by json.encode (which walks
-- it raw) and by a lookup, one response each: a plain table every time
app:get("/http/headers", function(req)
  local url, out = req:query().url, {}
  local function get()
    local res, err = lariat.http.get(url)
    if not res then error(err) end
    return res.headers
  end
  local h = get()
  local seen = {}
  for k, v in pairs(h) do seen[#seen + 1] = k .. "=" .. v end
  table.sort(seen)
  out.pairs = table.concat(seen, ";")
  h = get()
  h["x-mine"] = "set"
  out.after_write = h["x-mine"] .. "," .. h["x-rep"]
  out.json = lariat.json.decode(lariat.json.encode(get()))
  h = get()
  out.lookup = { h["x-one"], h["X-One"] == nil, h["x-rep"], type(h), getmetatable(h) == nil }
  return out
end)

-- two GETs back to back: the second takes the connection the first pooled
app:get("/http/twice", function(req)
  local url, out = req:query().url, {}
  for i = 1, 2 do
    local res, err = lariat.http.get(url)
    out[i] = res and res.body or err
  end
  return out
end)

app:get("/http/get", function(req)
  local q = req:query()
  return relay(lariat.http.get(q.url, hopts(q)))
end)

app:post("/http/post", function(req)
  local q = req:query()
  return relay(lariat.http.post(q.url, req:body(), hopts(q)))
end)

-- request body from a function: n chunks of `size` bytes ('a', 'b', ...)
app:get("/http/upload", function(req)
  local q = req:query()
  local n, size, i = tonumber(q.n), tonumber(q.size), 0
  local o = hopts(q)
  o.url, o.method = q.url, "POST"
  o.body = function()
    i = i + 1
    if i > n then return nil end
    if i % 4 == 0 then lariat.sleep(0.001) end -- the body function may wait
    return string.rep(string.char(96 + (i - 1) % 26 + 1), size)
  end
  return relay(lariat.http.request(o))
end)

-- stream = true: relayed chunk by chunk
app:get("/http/stream", function(req)
  local q = req:query()
  local o = hopts(q)
  o.url, o.stream = q.url, true
  local res, err = lariat.http.request(o)
  if not res then return 502, { ["x-err"] = err }, err end
  req:stream_reply(res.status, { ["x-version"] = res.version })
  while true do
    local chunk, rerr = res:read()
    if not chunk then
      if rerr then req:write("\nERROR " .. rerr) end
      break
    end
    req:write(chunk)
  end
end)

-- two upstream calls at once (lariat.spawn), joined through a channel
app:get("/http/both", function(req)
  local q = req:query()
  local ch = lariat.channel("both" .. tostring(req))
  local sub = ch:subscribe()
  local out = {}
  for i, u in ipairs({ q.a, q.b }) do
    lariat.spawn(function()
      local res, err = lariat.http.get(u)
      out[i] = res and res.body or err
      ch:publish("done")
    end)
  end
  sub:recv(10); sub:recv(10)
  return out
end)

-- the response as the client parsed it: status, version and headers (JSON) in
-- x- headers, the body as the body (read through res:read() with stream=1)
app:get("/http/raw", function(req)
  local q = req:query()
  local res, err = lariat.http.request({ url = q.url, method = q.m, stream = q.stream == "1",
                                         max_body = tonumber(q.max_body), timeout = tonumber(q.timeout) })
  if not res then return 502, { ["x-err"] = err }, err end
  local body = res.body
  if q.stream == "1" then
    local parts = {}
    while true do
      local chunk, rerr = res:read()
      if not chunk then
        if rerr then return 502, { ["x-err"] = rerr }, rerr end
        break
      end
      parts[#parts + 1] = chunk
    end
    body = table.concat(parts)
  end
  return 200, { ["x-status"] = tostring(res.status), ["x-version"] = res.version,
                ["x-headers"] = lariat.json.encode(res.headers) }, body
end)

app:get("/stats", function() return lariat.stats() end)
app:get("/fast", function() return "fast" end)

app:ws("/ws/echo", function(ws, req)
  local port = tonumber(req:query().port)
  for msg in ws:each() do
    local sock = assert(lariat.tcp.connect("127.0.0.1", port))
    sock:send(msg .. "\n")
    ws:send(sock:receive("*l"))
    sock:setkeepalive()
  end
end)

return app
