-- spec/integration/test_data_redis.py: lariat.redis against a redis-server the test starts
local lariat = require "lariat"
local app = lariat.app()

local url = assert(os.getenv("LARIAT_TEST_REDIS"), "LARIAT_TEST_REDIS unset")
local r = assert(lariat.redis.connect(url))
local short = assert(lariat.redis.connect(url, { timeout = 0.3 }))

local function enc(v)
  if v == lariat.null then return "NULL" end
  return v
end

app:get("/types", function()
  local out = {}
  out.set = r:set("k:s", "héllo")
  out.get = r:get("k:s")
  out.missing = enc(r:get("k:missing"))
  out.missing_is_null = r:get("k:missing") == lariat.null
  r:del("k:n")
  out.incr = r:incr("k:n")
  out.incr_type = math.type(out.incr)
  out.num_arg = r:set("k:f", 1.5) and r:get("k:f")
  r:del("k:h")
  r:hset("k:h", "a", "1", "b", "2")
  out.hgetall = r:hgetall("k:h")
  r:del("k:l")
  r:rpush("k:l", "x", "y", "z")
  out.lrange = r:call("LRANGE", "k:l", 0, -1)
  local v, err = r:call("NOSUCHCMD")
  out.err_nil = v == nil
  out.err = err
  local _, err2 = r:incr("k:s")
  out.err2 = err2
  out.binary = r:set("k:b", "\0\1\255") and r:get("k:b") == "\0\1\255"
  return out
end)

app:get("/pipeline", function()
  local res = assert(r:pipeline(function(p)
    p:del("k:p")
    p:set("k:p", "1")
    p:incr("k:p")
    p:get("k:p")
    p:incr("k:s") -- an error reply in the middle
    p:multi()
    p:incr("k:p")
    p:get("k:p")
    p:exec()
  end))
  return { n = #res, del = res[1], set = res[2], incr = res[3], get = res[4],
           err = res[5][1] == false and res[5][2], exec = res[9] }
end)

-- concurrent commands from many coroutines share one pipelined connection
app:get("/concurrent", function(req)
  local n = tonumber(req:query().n or 50)
  local done, bad = 0, 0
  for i = 1, n do
    lariat.spawn(function()
      local v = r:incr("k:conc")
      if math.type(v) ~= "integer" then bad = bad + 1 end
      done = done + 1
    end)
  end
  local t0 = lariat.now()
  while done < n and lariat.now() - t0 < 10 do lariat.sleep(0.01) end
  return { done = done, bad = bad, v = r:get("k:conc") }
end)

app:get("/get", function(req)
  local v, err = r:get(req:query().k or "k:s")
  return { v = v and enc(v), err = err }
end)

app:get("/blpop", function(req)
  local t0 = lariat.now()
  local v, err = r:blpop("k:queue", tonumber(req:query().t or 2))
  return { v = v and (v == lariat.null and "NULL" or v), err = err, took = lariat.now() - t0 }
end)

app:get("/push", function()
  return { n = r:rpush("k:queue", "job1") }
end)

app:get("/slow", function()
  local t0 = lariat.now()
  local v, err = short:call("DEBUG", "SLEEP", "1")
  return { v = v, err = err, took = lariat.now() - t0 }
end)

app:get("/misuse", function()
  local ok1 = pcall(r.call, r, "SUBSCRIBE", "x")
  local ok2 = pcall(r.call, r, "MULTI")
  local ok3 = pcall(r.set, r, "k", {})
  local ok4 = pcall(r.pipeline, r, function(p) p:blpop("k:queue", 1) end)
  return { ok1 = ok1, ok2 = ok2, ok3 = ok3, ok4 = ok4 }
end)

-- pub/sub: a subscriber streams what it receives (SSE-like lines)
app:get("/sub", function(req)
  local q = req:query()
  local sub = assert(r:subscribe(q.ch or "news"))
  req:stream_reply(200, { ["content-type"] = "text/plain" })
  req:write("subscribed\n")
  for i = 1, tonumber(q.n or 3) do
    local ch, msg = sub:recv(tonumber(q.t or 5))
    req:write((ch or "nil") .. " " .. (msg or "nil") .. "\n")
    if not ch and not q.again then break end -- again: the next recv subscribes anew
  end
  sub:close()
end)

app:get("/pub", function(req)
  local q = req:query()
  return { n = r:publish(q.ch or "news", q.msg or "hi") }
end)

app:get("/fast", function() return "fast" end)

return app
