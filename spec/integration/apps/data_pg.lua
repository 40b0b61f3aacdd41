-- spec/integration/test_data_pg.py: lariat.pg against a PostgreSQL the test starts
local lariat = require "lariat"
local app = lariat.app()

local url = assert(os.getenv("LARIAT_TEST_PG"), "LARIAT_TEST_PG unset")
local db = assert(lariat.pg.connect(url, { pool = 20 }))
local short = assert(lariat.pg.connect(url, { pool = 2, timeout = 0.3 }))

local function enc(v) if v == lariat.null then return "NULL" end return v end

app:get("/setup", function()
  return { ok = assert(db:exec [[
    DROP TABLE IF EXISTS items;
    CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, n int8, doc jsonb);
  ]]) }
end)

app:get("/types", function()
  local rows = assert(db:query([[
    SELECT 1::int2 AS i2, 2147483647::int4 AS i4, 9007199254740993::int8 AS i8,
           1.5::float4 AS f4, 0.1::float8 AS f8, 12345678901234567890.123::numeric AS num,
           true AS t, false AS f, 'héllo'::text AS s, '\x00ff'::bytea AS b,
           '{"a":[1,2,{"b":null}]}'::jsonb AS j, '[1,"x"]'::json AS js,
           '2024-01-02 03:04:05.25'::timestamp AS ts, NULL::text AS n,
           $1::int8 AS p_int, $2::float8 AS p_float, $3::text AS p_text, $4::bool AS p_bool,
           $5::text IS NULL AS p_null, $6::bytea AS p_bytes, $7::jsonb AS p_json, $8::text AS p_nil_is_null,
           'x' || $9 AS inj
  ]], 9007199254740993, 2.5, "wörld", true, lariat.null, "\0\1\255", { k = "v", list = { 1, 2 } }, nil,
      "'; DROP TABLE items; --"))
  local r = rows[1]
  return {
    i2 = r.i2, i4 = r.i4, i8_exact = r.i8 == 9007199254740993, i8_type = math.type(r.i8),
    f4 = r.f4, f8 = r.f8, f8_type = math.type(r.f8), num = r.num, t = r.t, f = r.f, s = r.s,
    b_ok = r.b == "\0\255", j_a2 = r.j.a[2], j_null = r.j.a[3].b == lariat.null, js = r.js,
    ts = r.ts, n_is_null = r.n == lariat.null,
    p_int_exact = r.p_int == 9007199254740993, p_float = r.p_float, p_text = r.p_text, p_bool = r.p_bool,
    p_null = r.p_null, p_bytes_ok = r.p_bytes == "\0\1\255", p_json = r.p_json,
    p_nil_is_null = r.p_nil_is_null == lariat.null, inj = r.inj, nrows = #rows,
  }
end)

app:get("/insert", function(req)
  local rows, err = db:query("INSERT INTO items (name, n) VALUES ($1, $2) RETURNING id", req:query().name or "x", 7)
  if not rows then return 500, {}, err end
  return { id = rows[1].id, changes = rows.changes }
end)

app:get("/count", function()
  return assert(db:query("SELECT count(*)::int AS n FROM items"))[1]
end)

app:get("/error", function()
  local rows, err, code = db:query("SELECT * FROM no_such_table")
  local _, err2, code2 = db:query("SELECT $1::int", "abc")
  local _, err3 = db:exec("SELEC 1")
  return { rows = rows == nil, err = err, code = code, err2 = err2, code2 = code2, err3 = err3 }
end)

app:get("/tx", function(req)
  local fail = req:query().fail
  local before = db:query("SELECT count(*)::int AS n FROM items")[1].n
  local a, b = db:transaction(function(tx)
    assert(tx:query("INSERT INTO items (name) VALUES ('tx1')"))
    assert(db:query("INSERT INTO items (name) VALUES ('tx2')")) -- db: joins the transaction
    if fail then error("boom") end
    return "committed", 2
  end)
  local after = db:query("SELECT count(*)::int AS n FROM items")[1].n
  return { a = a, b = b, delta = after - before }
end)

app:get("/sleep", function(req)
  local t0 = lariat.now()
  local rows, err = db:query("SELECT pg_sleep($1::float8) AS s, 'done' AS d", tonumber(req:query().s or 1))
  return { d = rows and rows[1].d, err = err, took = lariat.now() - t0 }
end)

app:get("/timeout", function()
  local t0 = lariat.now()
  local rows, err = short:query("SELECT pg_sleep(3)")
  return { err = err, took = lariat.now() - t0 }
end)

app:get("/listen", function(req)
  local q = req:query()
  local sub = assert(db:listen(q.ch or "news"))
  req:stream_reply(200, { ["content-type"] = "text/plain" })
  req:write("listening\n")
  for i = 1, tonumber(q.n or 2) do
    local payload, ch = sub:recv(tonumber(q.t or 5))
    req:write((ch or "nil") .. " " .. (payload or "nil") .. "\n")
    if not payload and not q.again then break end -- again: the next recv listens anew
  end
  sub:close()
end)

app:get("/notify", function(req)
  local q = req:query()
  return { ok = assert(db:query("SELECT pg_notify($1, $2)", q.ch or "news", q.msg or "hi")) ~= nil }
end)

app:get("/fast", function() return "fast" end)

return app
