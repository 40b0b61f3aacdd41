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

app:get("/dns", function(req)
  local addrs, err = lariat.dns.resolve(req:query().name)
  if not addrs then return { err = err } end
  return { addrs = addrs }
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
