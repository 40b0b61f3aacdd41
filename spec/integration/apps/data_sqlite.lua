-- spec/integration/test_data_sqlite.py: lariat.sqlite against a file in a temp dir
local lariat = require "lariat"
local app = lariat.app()

local path = assert(os.getenv("LARIAT_TEST_SQLITE"), "LARIAT_TEST_SQLITE unset")
local db = assert(lariat.sqlite.open(path))
-- at load time (no coroutine yet) calls block until the database thread answers
assert(db:exec [[
  CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT, worker INTEGER);
  CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v);
]])
local short = assert(lariat.sqlite.open(path, { timeout = 0.3 }))

local function null_or(v) if v == lariat.null then return "NULL" end return v end

app:get("/insert", function(req)
  local rows, err = db:query("INSERT INTO items (name, worker) VALUES (?, ?)", req:query().name or "x", lariat.worker_id())
  if not rows then return 500, {}, err end
  return { id = rows.last_insert_id, changes = rows.changes, worker = lariat.worker_id() }
end)

app:get("/count", function()
  local rows = assert(db:query("SELECT count(*) AS n, count(DISTINCT worker) AS workers FROM items"))
  return rows[1]
end)

-- every type one way (bound parameters) and back (result cells)
app:get("/types", function()
  local blob = "\0\1\2\255"
  local rows = assert(db:query(
    "SELECT ? AS i, ? AS f, ? AS s, ? AS n, ? AS b, ? AS t, ? AS big, typeof(?) AS tb, typeof(?) AS tn, 'x' || ? AS inj",
    42, 1.5, "héllo", lariat.null, blob, true, math.maxinteger, blob, nil, "'; DROP TABLE items; --"))
  local r = rows[1]
  return {
    i = r.i, i_type = math.type(r.i), f = r.f, f_type = math.type(r.f), s = r.s,
    n_is_null = r.n == lariat.null, null_same_as_json = lariat.null == lariat.json.null,
    b_ok = r.b == blob, t = r.t, big_ok = r.big == math.maxinteger, tb = r.tb, tn = r.tn, inj = r.inj,
    nrows = #rows, changes = rows.changes,
  }
end)

app:get("/kv", function(req)
  local q = req:query()
  if q.set then
    local v = q.v
    if q.type == "int" then v = math.tointeger(tonumber(v)) elseif q.type == "null" then v = lariat.null end
    assert(db:query("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", q.set, v))
    return { ok = true }
  end
  local rows = assert(db:query("SELECT v, typeof(v) AS t FROM kv WHERE k = ?", q.get))
  if #rows == 0 then return 404, {}, "no such key" end
  return { v = null_or(rows[1].v), t = rows[1].t }
end)

app:get("/error", function()
  local rows, err = db:query("SELECT * FROM no_such_table")
  local ok2, err2 = db:query("INSERT INTO kv (k, v) VALUES (?, ?)", "dup", 1)
  local _, err3 = db:query("INSERT INTO kv (k, v) VALUES (?, ?)", "dup", 2)
  db:query("DELETE FROM kv WHERE k = 'dup'")
  local _, err4 = db:query("SELECT ?", 1, 2)
  local raised = not pcall(db.query, db, "SELECT ?", {})
  return { rows = rows == nil, err = err, first = ok2 ~= nil, err3 = err3, err4 = err4, raised = raised }
end)

-- commit, and rollback on error (the error is returned, not raised)
app:get("/tx", function(req)
  local fail = req:query().fail
  local before = db:query("SELECT count(*) AS n FROM items")[1].n
  local a, b = db:transaction(function(tx)
    assert(tx:query("INSERT INTO items (name, worker) VALUES ('tx1', -1)"))
    lariat.sleep(0.05) -- other coroutines' queries wait for the transaction
    assert(db:query("INSERT INTO items (name, worker) VALUES ('tx2', -1)")) -- db: joins it too
    if fail then error("boom") end
    return "committed", 2
  end)
  local after = db:query("SELECT count(*) AS n FROM items")[1].n
  return { a = a, b = b, delta = after - before }
end)

-- a statement that runs for minutes unless interrupted
local SLOW = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) AS m FROM c"
app:get("/slow", function()
  local t0 = lariat.now()
  local rows, err = short:query(SLOW)
  return { err = err, took = lariat.now() - t0 }
end)

app:get("/slow-forever", function()
  local rows, err = db:query(SLOW .. " WHERE x < 1e12")
  return { err = err }
end)

app:get("/fast", function() return "fast" end)

return app
