-- A REST notes API that keeps its data: SQLite with zero setup, PostgreSQL
-- with one environment variable, live updates over server-sent events.
--
--   scripts/run examples/notes/app.lua                        # SQLite: ./notes.db
--   NOTES_DB=postgresql://user@127.0.0.1/notes scripts/run examples/notes/app.lua
--
--   curl -s localhost:8080/notes -d '{"title":"first","body":"hello"}'
--   curl -s 'localhost:8080/notes?limit=10&offset=0'
--   curl -s -X PATCH localhost:8080/notes/1 -d '{"body":"edited"}'
--   curl -s -X DELETE localhost:8080/notes/1
--   curl -sN localhost:8080/events                            # every change, live
--
-- Invalid input answers 422 with a JSON body naming each bad field; unknown
-- ids 404 JSON. Changes are published on lariat.channel("notes"), which every
-- worker's /events subscribers receive.
local lariat = require "lariat"
local json = lariat.json

local app = lariat.app()

-- ---- storage: one SQL dialect difference, the placeholders ----

local url = os.getenv("NOTES_DB") or "notes.db"
local pg = url:match("^postgres") ~= nil
local db = assert(pg and lariat.pg.connect(url) or lariat.sqlite.open(url))

-- queries are written with ?; PostgreSQL numbers them ($1, $2, …)
local function sql(text)
  if not pg then return text end
  local n = 0
  return (text:gsub("%?", function() n = n + 1; return "$" .. n end))
end

local SCHEMA = pg and [[
  CREATE TABLE IF NOT EXISTS notes (
    id bigserial PRIMARY KEY, title text NOT NULL, body text NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now())
]] or [[
  CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, body TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))
]]

-- SQLite can run the schema now (at load, calls block); PostgreSQL needs a
-- coroutine, so each worker makes sure of it on its first request
local ready = false
if not pg then ready = assert(db:exec(SCHEMA)) end
app:use(function(req, next)
  if not ready then
    local ok, err = db:exec(SCHEMA)
    if not ok then return lariat.http_error(503, { error = "database: " .. err }) end
    ready = true
  end
  return next()
end)

local function q(text, ...)
  local rows, err = db:query(sql(text), ...)
  if not rows then error(lariat.http_error(500, { error = "database: " .. err })) end
  return rows
end

-- ---- the API ----

local ID = { constraints = { id = "int" } }
local FIELDS = "id, title, body, updated_at"
local events = lariat.channel("notes")

local function not_found(id)
  return lariat.http_error(404, { error = "no note with id " .. tostring(id) })
end

local function validate(doc, partial)
  if type(doc) ~= "table" or doc[1] ~= nil then return { _ = "expected a JSON object" } end
  local errors = {}
  if doc.title ~= nil or not partial then
    if type(doc.title) ~= "string" or doc.title:match("^%s*$") then
      errors.title = "is required and must be a non-empty string"
    elseif #doc.title > 200 then
      errors.title = "must be at most 200 characters"
    end
  end
  if doc.body ~= nil and type(doc.body) ~= "string" then errors.body = "must be a string" end
  for k in pairs(doc) do
    if k ~= "title" and k ~= "body" then errors[k] = "is not a known field" end
  end
  if next(errors) then return errors end
end

local function invalid(errors)
  return lariat.http_error(422, { error = "validation failed", fields = errors })
end

local function publish(kind, note)
  events:publish(json.encode({ kind = kind, note = note }))
end

app:get("/notes", function(req)
  local query = req:query()
  local limit = math.tointeger(tonumber(query.limit or 20))
  local offset = math.tointeger(tonumber(query.offset or 0))
  if not limit or limit < 1 or limit > 100 then return invalid({ limit = "must be an integer in 1..100" }) end
  if not offset or offset < 0 then return invalid({ offset = "must be a non-negative integer" }) end
  local rows = q("SELECT " .. FIELDS .. " FROM notes ORDER BY id LIMIT ? OFFSET ?", limit, offset)
  local total = q("SELECT count(*) AS n FROM notes")[1].n
  local notes = json.array()
  for i, r in ipairs(rows) do notes[i] = r end
  return { notes = notes, limit = limit, offset = offset, total = math.tointeger(tonumber(total)) }
end)

app:post("/notes", function(req)
  local doc = req:json()
  local errors = validate(doc, false)
  if errors then return invalid(errors) end
  local note = q("INSERT INTO notes (title, body) VALUES (?, ?) RETURNING " .. FIELDS, doc.title, doc.body or "")[1]
  publish("created", note)
  return 201, { ["content-type"] = "application/json", location = "/notes/" .. note.id }, json.encode(note)
end)

app:get("/notes/:id", ID, function(req)
  return q("SELECT " .. FIELDS .. " FROM notes WHERE id = ?", req.bindings.id)[1] or not_found(req.bindings.id)
end)

app:patch("/notes/:id", ID, function(req)
  local id = req.bindings.id
  local doc = req:json()
  local errors = validate(doc, true)
  if errors then return invalid(errors) end
  local now = pg and "now()" or "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
  local note = q("UPDATE notes SET title = coalesce(?, title), body = coalesce(?, body), updated_at = " .. now ..
                 " WHERE id = ? RETURNING " .. FIELDS, doc.title, doc.body, id)[1]
  if not note then return not_found(id) end
  publish("updated", note)
  return note
end)

app:delete("/notes/:id", ID, function(req)
  local id = req.bindings.id
  local rows = q("DELETE FROM notes WHERE id = ? RETURNING id", id)
  if #rows == 0 then return not_found(id) end
  publish("deleted", { id = id })
  return 204
end)

-- every change, as it happens (server-sent events)
app:get("/events", function(req)
  local sub <close> = events:subscribe()
  local sse = req:sse()
  sse:comment("notes: changes follow")
  while true do
    local msg, err = sub:recv(15)
    if msg then
      if not sse:send({ event = "note", data = msg }) then return end
    elseif err == "timeout" then
      if not sse:comment("keep-alive") then return end
    else
      return
    end
  end
end)

return app
