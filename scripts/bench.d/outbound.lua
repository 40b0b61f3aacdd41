-- The lariat side of scripts/bench's outbound and data rows: each route does the
-- one thing its row measures and answers the hello rows' 12 bytes. A route
-- exists only when scripts/bench.d/measure.py set the backend's variable.
local lariat = require "lariat"
local app = lariat.app()

app:get("/", function() return "Hello world!" end)

local upstream = os.getenv("BENCH_UPSTREAM")   -- http://127.0.0.1:port (nginx `return 200`)
if upstream then
  -- nginx anchor: location /proxy/ { proxy_pass http://backend/; }
  app:get("/proxy/*", lariat.proxy(upstream .. "/"))
  -- nginx anchor: /fetch, one lua-resty-http request_uri per request
  local url = upstream .. "/"
  app:get("/fetch", function()
    local res, err = lariat.http.get(url)
    if not res then return 502, {}, err end
    return res.body
  end)
end

local upstream_h2 = os.getenv("BENCH_UPSTREAM_H2")   -- the same nginx speaking h2c
if upstream_h2 then
  app:get("/proxy2/*", lariat.proxy(upstream_h2 .. "/", { version = "2" }))
  local url = upstream_h2 .. "/"
  app:get("/fetch2", function()
    local res, err = lariat.http.get(url, { version = "2" })
    if not res then return 502, {}, err end
    return res.body
  end)
end

local redis_url = os.getenv("BENCH_REDIS")
if redis_url then
  local r = assert(lariat.redis.connect(redis_url))
  app:get("/redis", function()   -- nginx anchor: /redis, one lua-resty-redis GET
    local v, err = r:get("greeting")
    if not v then return 502, {}, err end
    return v
  end)
end

local rows = tonumber(os.getenv("BENCH_SQL_ROWS") or "1000")

local sqlite_path = os.getenv("BENCH_SQLITE")
if sqlite_path then
  local db = assert(lariat.sqlite.open(sqlite_path))
  assert(db:exec("CREATE TABLE IF NOT EXISTS greetings (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
  if db:query("SELECT count(*) AS n FROM greetings")[1].n < rows then
    assert(db:transaction(function(tx)
      for i = 1, rows do
        assert(tx:query("INSERT OR REPLACE INTO greetings (id, v) VALUES (?, ?)", i, "Hello world!"))
      end
      return true
    end))
  end
  local n = 0
  app:get("/sqlite", function()   -- one primary-key SELECT, a different row each time
    n = n % rows + 1
    local got, err = db:query("SELECT v FROM greetings WHERE id = ?", n)
    if not got then return 502, {}, err end
    return got[1].v
  end)
end

local pg_url = os.getenv("BENCH_PG")
if pg_url then
  local db = assert(lariat.pg.connect(pg_url))
  local n = 0
  app:get("/pg", function()       -- one primary-key SELECT (table made by backends.py)
    n = n % rows + 1
    local got, err = db:query("SELECT v FROM greetings WHERE id = $1", n)
    if not got then return 502, {}, err end
    return got[1].v
  end)
end

return app
